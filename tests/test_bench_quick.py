"""The benchmarks' quick mode, as CI runs it: every benchmark runs against all three servers and
prints its figure. Timings are printed, never judged here."""
import os
import re
import subprocess

from conftest import ROOT

SERVERS = ("firmware", "microdot", "floor")


def test_quick_bench_prints_every_figure_for_every_server(tmp_path):
    p = subprocess.run([os.path.join(ROOT, "bench", "run.sh"), "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    print(p.stdout, p.stderr[-3000:])
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    assert re.search(r"^- micropython: .*MicroPython", out, re.M)
    assert re.search(r"^- microdot 2\.\d+\.\d+", out, re.M)

    table = out.split("| figure | firmware | microdot | floor |", 1)[1].split("\n\n", 1)[0]
    rows = [r.split("|")[1:-1] for r in table.strip().splitlines()[2:]]  # after header and rule
    labels = [r[0].strip() for r in rows]
    for wanted in ("heap allocated per request: health", "heap allocated per request: SendState",
                   "heap allocated per request: SendData", "heap allocated per request: SetDatastream",
                   "heap in use after start, .py", "heap in use after start, .mpy",
                   "smallest heap surviving the standard load, .py", "smallest heap surviving the standard load, .mpy",
                   "server CPU per request, concurrency 1", "server CPU per request, concurrency 4",
                   "requests/s, concurrency 1", "requests/s, concurrency 4",
                   "telemetry period jitter p99", "longest HTTP stall, broker killed (refused)",
                   "longest HTTP stall, broker frozen (SIGSTOP)",
                   "longest HTTP stall, broker trickles a PUBLISH (a byte / 0.5 s)",
                   "longest HTTP stall, broker never sends SUBACK, link alive",
                   "longest HTTP stall, broker trickles CONNACK (a byte / 0.7 s)",
                   "longest HTTP stall, broker sends garbage after SUBACK"):
        assert wanted in labels, wanted
    for r in rows:
        cells = [c.strip() for c in r[1:4]]
        assert all(re.match(r"^(≥ )?[\d.]+", c) for c in cells), "%s has no figure for some server: %s" % (r[0], cells)
        if "load generator" not in r[0]:
            assert re.match(r"^[\d.]+$", r[4].strip()) and re.match(r"^[\d.]+$", r[5].strip()), r  # both ratios
    assert re.search(r"^\| heap allocated per request: health \|.*\| (meets|\*\*misses) ", out, re.M)

    imports = out.split("| module |", 1)[1].split("\n\n", 1)[0]
    for module in ("http", "streams", "mqtt", "microdot"):
        assert re.search(r"^\| %s \| \d+ B \| \d+ B \| \d+ B \| \d+ B \|" % module, imports, re.M), module
    assert "Where the firmware's allocation and CPU per request go" in out

    with open(tmp_path / "heap-quick.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "figures-quick.md") as f:
        assert "| figure | firmware | microdot | floor |" in f.read()
