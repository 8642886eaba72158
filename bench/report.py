"""The figures as a Markdown table (with the ratios firmware/microdot and firmware/floor and the
firmware's targets), the import costs, and the plot of free heap under load."""
import glob
import json
import os

from servers import HEAP, NAMES

import load

# How the rows call the firmware "as uploaded" in each layout (servers.LAYOUT).
AS_UPLOADED = {"mpy": ".mpy", "frozen": "frozen", "romfs": "ROMFS"}


def _kb(v):
    return "%.1f KB" % (v / 1024)


def _b(v):
    return "%d B" % round(v)


def _us(v):
    return "%.0f µs" % v if v >= 10 else "%.1f µs" % v


def _ms(v):
    return "%.1f ms" % v


def _rps(v):
    return "%.0f/s" % v


def _target(value, limit, fmt):
    if value is None:
        return "target %s: not measured" % fmt(limit)
    if value <= limit:
        return "meets ≤ %s" % fmt(limit)
    return "**misses ≤ %s by %s (%.1f×)**" % (fmt(limit), fmt(value - limit), value / limit)


def rows(b, targets, layout="mpy"):
    """(label, key, formatter, target text for the firmware or '')."""
    fw = b.fig["firmware"]
    up = AS_UPLOADED[layout]
    out = []
    for name in load.REQUESTS:
        k = "alloc_" + name
        out.append(("heap allocated per request: %s" % name, k, _b, _target(fw.get(k), targets["alloc"], _b)))
    for name in load.REQUESTS:
        out.append(("  gross (micropython.mem_total): %s" % name, "gross_" + name, _b, ""))
    out += [
        ("heap in use after start, .py", "ready_py", _kb, ""),
        ("heap in use after start, " + up, "ready_mpy", _kb, _target(fw.get("ready_mpy"), targets["ready_mpy"], _kb)),
        ("smallest heap surviving the standard load, .py", "min_heap_py", _kb, ""),
        ("smallest heap surviving the standard load, " + up, "min_heap_mpy", _kb,
         _target(fw.get("min_heap_mpy"), targets["min_heap_mpy"], _kb)),
    ]
    for c in (1, 4):
        t = ""
        if fw.get("cpu_c%d" % c) and b.fig["floor"].get("cpu_c%d" % c):
            ratio = fw["cpu_c%d" % c] / b.fig["floor"]["cpu_c%d" % c]
            t = ("meets" if ratio <= targets["cpu"] else "**misses**") + " ≤ %.1f× floor (%.2f×)" % (targets["cpu"], ratio)
        out.append(("server CPU per request, concurrency %d" % c, "cpu_c%d" % c, _us, t))
    for c in (1, 4):
        out.append(("requests/s, concurrency %d" % c, "rps_c%d" % c, _rps, ""))
    for c in (1, 4):
        out.append(("  load generator CPU / server CPU busy, concurrency %d" % c, "busy_c%d" % c, str, ""))
    out += [
        ("telemetry period jitter p50 (1 s period, under load)", "jit_p50", _ms, ""),
        ("telemetry period jitter p99", "jit_p99", _ms, ""),
        ("telemetry period jitter max", "jit_max", _ms, ""),
        ("longest HTTP stall, broker killed (refused)", "stall_killed", _ms, ""),
        ("longest HTTP stall, broker frozen (SIGSTOP)", "stall_frozen", _ms, ""),
        ("longest HTTP stall, broker trickles a PUBLISH (a byte / 0.5 s)", "stall_trickling_publish", _ms, ""),
        ("longest HTTP stall, broker never sends SUBACK, link alive", "stall_suback_never_link_alive", _ms, ""),
        ("longest HTTP stall, broker trickles CONNACK (a byte / 0.7 s)", "stall_connack_trickled", _ms, ""),
        ("longest HTTP stall, broker sends garbage after SUBACK", "stall_garbage_after_suback", _ms, ""),
    ]
    return out


def table(b, targets, layout="mpy"):
    for f in b.fig.values():
        for c in (1, 4):
            if "client_c%d" % c in f:
                f["busy_c%d" % c] = "%.0f%% / %.0f%%" % (100 * f["client_c%d" % c], 100 * f["server_c%d" % c])
    lines = ["| figure | firmware | microdot | floor | firmware/microdot | firmware/floor | firmware target |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for label, key, fmt, target in rows(b, targets, layout):
        vals = [b.fig[k].get(key) for k in NAMES]
        cells = ["—" if v is None else fmt(v) for v in vals]
        for i, k in enumerate(NAMES):  # requests that got no answer at all, e.g. during a stall
            if b.fig[k].get(key + "_failed"):
                cells[i] = "≥ %s (%d never answered)" % (cells[i], b.fig[k][key + "_failed"])
        ratios = []
        for other in vals[1:]:
            ok = isinstance(vals[0], (int, float)) and isinstance(other, (int, float)) and other
            ratios.append("%.2f" % (vals[0] / other) if ok else "")
        lines.append("| %s | %s | %s | %s | %s |" % (label, " | ".join(cells), ratios[0], ratios[1], target))
    lines += ["", "Import cost per module (in the order main.py imports them; heap kept after a collection, "
              "heap allocated during the import with the collector off; the .mpy file is mostly bytecode, "
              "which a frozen module would keep in flash instead):", "",
              "| module | kept, .py | during import, .py | kept, .mpy | during import, .mpy | .mpy file |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, v in b.imports.items():
        cells = v.get("py", (None, None)) + v.get("mpy", (None, None)) + (v.get("size"),)
        lines.append("| %s | %s |" % (name, " | ".join("—" if x is None else _b(x) for x in cells)))
    if b.breakdown:
        fw = b.fig["firmware"]
        part = {(kind, name): v for kind, name, v in b.breakdown}
        lines += ["", "Where the firmware's allocation and CPU per request go, measured on a parsed connection "
                  "without a socket (the rest of each total is the socket work: accept, poll, read, write, "
                  "close; for SetDatastream also the change published over MQTT at once):", "",
                  "| request | router + handler + response: allocated | the rest | parse request line: CPU "
                  "| router + handler + response: CPU |",
                  "|---|---:|---:|---:|---:|"]
        for name in load.REQUESTS:
            a, t = part.get(("handler", name)), fw.get("alloc_" + name)
            p, h = part.get(("parse_us", name)), part.get(("handler_us", name))
            lines.append("| %s | %s | %s | %s | %s |" % (name, _b(a), "—" if t is None else _b(t - a), _us(p), _us(h)))
        cpu = fw.get("cpu_c1")
        if cpu is not None:
            mean = sum(part[("parse_us", n)] + part[("handler_us", n)] for n in load.MIX) / len(load.MIX)
            lines += ["", "Of the %s of CPU per request of the standard mix at concurrency 1, parsing, routing, "
                      "handlers and responses take %s; the rest, %s, is the loop and the socket calls." % (
                          _us(cpu), _us(mean), _us(cpu - mean))]
        values = ["%s %s" % (name, _b(v)) for kind, name, v in b.breakdown if kind == "value"]
        lines += ["", "Reading each stream's value allocates: " + ", ".join(values) + "."]
    if b.notes:
        lines += [""] + ["- note: " + n for n in b.notes]
    return lines


def save(b, path):
    """The run's figures as JSON, for across(): the interpreter, the layout and every figure."""
    import servers

    with open(path, "w") as f:
        json.dump({"interpreter": servers.flash.MICROPYTHON, "layout": servers.LAYOUT, "fig": b.fig,
                   "imports": b.imports}, f, indent=1)


# The firmware's figures that depend on the interpreter's word size and the layout.
ACROSS = [("heap allocated per request: %s" % n, "alloc_" + n, _b) for n in load.REQUESTS] + [
    ("heap in use after start, .py", "ready_py", _kb),
    ("heap in use after start, as uploaded", "ready_mpy", _kb),
    ("smallest heap surviving the standard load, .py", "min_heap_py", _kb),
    ("smallest heap surviving the standard load, as uploaded", "min_heap_mpy", _kb),
    ("server CPU per request, concurrency 1", "cpu_c1", _us),
    ("server CPU per request, concurrency 4", "cpu_c4", _us),
]


def across(out, suffix):
    """The firmware's figures from every run saved in `out` (figures*<suffix>.json: the pinned
    64-bit build, bench.py --micropython runs, layouts) side by side, with the microdot and floor
    peers of the same run for the ratios to stay within one interpreter."""
    runs = []
    for path in glob.glob(os.path.join(out, "figures*%s.json" % suffix)):
        name = os.path.basename(path)[len("figures"):-len(suffix + ".json")].strip("-")
        if suffix == "" and name.endswith("quick"):
            continue
        with open(path) as f:
            runs.append((name or "64bit (pinned)", json.load(f)))
    runs.sort(key=lambda r: (r[0] != "64bit (pinned)", r[0]))  # then 32bit, 32bit-frozen, 32bit-romfs
    if len(runs) < 2:
        return []
    lines = ["", "The firmware across interpreters and layouts (each column one run of bench/run.sh; "
             "`as uploaded` is .mpy files, frozen or ROMFS as the column says; firmware/floor of that run "
             "in brackets):", "", "| figure | %s |" % " | ".join(n for n, _ in runs),
             "|---|%s" % ("---:|" * len(runs))]
    for label, key, fmt in ACROSS:
        cells = []
        for _, r in runs:
            v, floor = r["fig"]["firmware"].get(key), r["fig"]["floor"].get(key)
            cell = "—" if v is None else fmt(v)
            if v is not None and floor:
                cell += " (%.2f)" % (v / floor)
            cells.append(cell)
        lines.append("| %s | %s |" % (label, " | ".join(cells)))
    return lines


def plot(samples, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for kind in NAMES:
        pts = samples.get(kind)
        if not pts:
            continue
        t0 = pts[0][0]
        ts = [(t - t0) / 1000 for t, _, _ in pts]
        line, = ax.plot(ts, [lo / 1024 for _, lo, _ in pts], label="%s (lowest)" % kind)
        ax.fill_between(ts, [lo / 1024 for _, lo, _ in pts], [hi / 1024 for _, _, hi in pts],
                        color=line.get_color(), alpha=0.2, label="%s (range)" % kind)
    ax.set_xlabel("time under load (s): concurrency 4, the standard mix, telemetry every second")
    ax.set_ylabel("free heap (KB) of -X heapsize=%s" % HEAP)
    ax.set_ylim(bottom=0)
    ax.set_title("Free heap after each request, lowest and highest per 100 ms")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
