"""The firmware's memory as a board sees it, measured from outside on any MicroPython unix build
(the pinned 64-bit one, or a 32-bit build of the unix port), with the bench's cfg.py (8
streams, telemetry on to a local mosquitto): the heap in use once serving, where it goes, each
module's import cost and the heap allocated per request; and the memory budget in bench/budget.json
that tests/test_budget.py holds every change to.

Usage: bench/memory.py [--micropython PATH] [--layout mpy|frozen|romfs] [--min-heap] [--update] [--out DIR]
  --update   record the figures as this interpreter's section of bench/budget.json (64-bit,
             32-bit, 32-bit frozen, ...) and rewrite bench/results/memory.md from every section.
bench/run.sh --budget [--micropython PATH] runs it with --update."""
import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import servers  # noqa: E402
from servers import Broker, flash  # noqa: E402

BUDGET = os.path.join(HERE, "budget.json")
# A figure may exceed its recorded value by 3 %, at most 1 KB and at least 64 B (the figures are
# deterministic: the same bytes every run of the same code on the same interpreter).
MARGIN = {"fraction": 0.03, "max": 1024, "min": 64}
_QSTR = re.compile(r"qstr pool: .*n_total_bytes=(\d+)")


# The modules imported when their work begins and dropped when it ends (cfg checks at boot, the
# exchanges with ThingsBoard, an update, the page), each measured on top of the resident ones and of
# those before it: an update's download holds fwswitch and ota, its install unpack too. (mqtt_tls
# needs the port's ssl module: bench/tls.py measures it.)
ON_DEMAND = ("check", "shared", "provision", "software", "fwswitch", "ota", "unpack", "page")


def import_order(entry=("boot", "main")):
    """The firmware's own modules (top-level .py files and lib/), dependencies first, in the order
    boot.py and main.py pull them in: module-level imports only (not under an if), read with CPython's
    ast; less those that are dropped from sys.modules after use (check.py)."""
    def path(name):
        for p in (os.path.join(flash.ROOT, name + ".py"), os.path.join(flash.ROOT, "lib", name.replace(".", "/") + ".py")):
            if os.path.exists(p):
                return p
        return None

    def deps(p):
        tree = ast.parse(open(p).read())
        out = []
        todo = list(tree.body)
        while todo:
            node = todo.pop(0)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.If)):
                continue  # (under an if: imported only then, as fwswitch.py is for an update's switch and trial)
            if isinstance(node, ast.Import):
                out += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:  # a module, or modules of a package
                out += [node.module] + ["%s.%s" % (node.module, a.name) for a in node.names]
            elif isinstance(node, ast.Delete):  # del sys.modules["check"]: imported, used once, dropped
                for t in node.targets:
                    if isinstance(t, ast.Subscript) and ast.unparse(t.value) == "sys.modules":
                        dropped.add(ast.literal_eval(t.slice))
            todo[:0] = list(ast.iter_child_nodes(node))
        return out

    order, dropped = [], set()

    def visit(name, seen):
        p = path(name)
        if p is None or name in order or name in seen:
            return
        seen.add(name)
        for d in deps(p):
            visit(d, seen)
        if name not in entry:
            order.append(name)

    for e in entry:
        visit(e, set())
    return [m for m in order if m not in dropped]


def run_time_calls():
    """What main.run() calls of the firmware's modules before its loop ("module.name": wifi.Wifi,
    http.Server, ...), read with ast, so that where.py can measure what each call keeps."""
    tree = ast.parse(open(os.path.join(flash.ROOT, "main.py")).read())
    names = {}  # from wifi import Wifi: Wifi -> wifi.Wifi
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and os.path.exists(
                os.path.join(flash.ROOT, node.module + ".py")):
            names.update({a.asname or a.name: "%s.%s" % (node.module, a.name) for a in node.names})
    run = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run")
    out = []
    for stmt in run.body:
        if isinstance(stmt, ast.While):
            break
        call = getattr(stmt, "value", None)
        if not isinstance(call, ast.Call):
            continue
        f = call.func
        if isinstance(f, ast.Name) and f.id in names:
            out.append(names[f.id])
        elif (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
              and os.path.exists(os.path.join(flash.ROOT, f.value.id + ".py"))):
            out.append("%s.%s" % (f.value.id, f.attr))
    return out


def interpreter():
    """(label word size, version line) of the interpreter flash.MICROPYTHON names."""
    out = subprocess.run([flash.MICROPYTHON, "-c", "import sys;print(sys.maxsize > 2**32, sys.version)"],
                         capture_output=True, text=True, check=True).stdout.split(None, 1)
    return ("64-bit" if out[0] == "True" else "32-bit"), out[1].strip()


def qstr_steps(lines, prefix):
    """{name: qstr pool bytes added by that step}, from lines "<prefix>NAME ..." each followed by
    a micropython.qstr_info() line (and one such line before the first)."""
    out, last, name = {}, None, None
    for line in lines:
        m = _QSTR.match(line)
        if m:
            if name is not None:
                out[name] = int(m.group(1)) - last
            last, name = int(m.group(1)), None
        elif line.startswith(prefix):
            name = line[len(prefix):].split()[0]
    return out


def parts(lines, slots):
    """Where the heap goes, from where.py's console: [(part, bytes, of which new qstrs)]."""
    rows, qstr, q_prev, start_q = [], None, 0, 0
    pending = None
    for line in lines:
        m = _QSTR.match(line)
        if m:
            qstr = int(m.group(1))
            if pending is not None:
                name, value = pending
                if name == "main.py_start":
                    start_q = qstr
                elif name != "-":
                    rows.append([name, value, qstr - (start_q if name == "main.py" else q_prev)])
                pending = None
            q_prev = qstr
            continue
        if line.startswith("@bench part "):
            _, _, name, value = line.split()
            pending = (name, int(value))
    rows = [r for r in rows if r[0] != "main.py_compiled"] + [r for r in rows if r[0] == "main.py_compiled"]
    out, main = [], None
    for name, value, q in rows:
        if name == "main.py":
            main = [value, q]
            continue
        out.append([name, value, q])
    if main is not None:  # main.py's own share: all it added, less the run-time parts measured within
        inner = [r for r in out if r[0].endswith("()")]
        compiled = [r for r in out if r[0] == "main.py_compiled"]
        rest = [main[0] - sum(r[1] for r in inner), main[1] - sum(r[2] for r in inner)]
        if compiled:  # compiled once apart: its code comes again with the import, its qstrs do not
            rest[0] -= compiled[0][1] - compiled[0][2]
        out.append(["main.py, the rest (module globals, poll, ...)", rest[0], rest[1]])
    for r in out:
        if r[0] == "interpreter":
            r[0] = "interpreter at start, with where.py's own code"
        if r[0] == "where.py_hooks":
            r[0] = "where.py's hooks (not the firmware's)"
        if r[0] == "http.Server()" and slots:
            r[0] = "http.Server(): %s slots of %s B" % slots
        if r[0] == "main.py_compiled":
            r[0] = "main.py compiled at boot (its code)"
    return out


def measure(layout="mpy", per_request=True, min_heap=False, log=print):
    """Every memory figure of the firmware as uploaded, on flash.MICROPYTHON, with the bench's cfg
    and telemetry to a mosquitto of its own. Its files go to a folder whose path always has the same
    length: the paths on sys.path and in module names are strings on the heap."""
    work = tempfile.mkdtemp(prefix="mem-", dir="/tmp")
    try:
        return _measure(work, layout, per_request, min_heap, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(work, layout, per_request, min_heap, log):
    import bench

    servers.LAYOUT = layout
    label, version = interpreter()
    fig = {"interpreter": version, "layout": layout, "measured": time.strftime("%Y-%m-%d", time.gmtime())}
    servers.build_extras(os.path.join(work, "extras-mpy"), True, microdot=False)
    b = bench.Bench(True, work)
    b.broker = Broker(work).start()
    try:
        with b.server("firmware", mpy=True) as s:
            if not s.start():
                raise SystemExit("the firmware did not start:\n" + s.log()[-2000:])
            fig["ready"] = s.ready[0]
        log("memory: heap in use once serving %d B" % fig["ready"])
        mods = import_order()
        b.import_costs(True, mods + list(ON_DEMAND))
        qstr = qstr_steps(b.stdout.splitlines(), "@bench import ")
        fig["imports"] = {m: b.imports[m]["mpy"][0] - qstr[m] for m in mods if m in qstr}
        fig["on_demand"] = {m: b.imports[m]["mpy"][0] - qstr[m] for m in ON_DEMAND if m in qstr}
        qstr = {m: q for m, q in qstr.items() if m in mods}
        fig["qstr"] = sum(qstr.values())
        fig["import_peaks"] = {m: b.imports[m]["mpy"][1] for m in mods if m in qstr}
        env = {"BENCH_MODS": " ".join(mods), "BENCH_WRAP": " ".join(run_time_calls())}
        with b.server("firmware", mpy=True, env=env, entry="import where") as s:
            if not s.start():
                raise SystemExit("where.py did not reach the loop:\n" + s.log()[-2000:])
            m = re.search(r"(\d+) slots of (\d+) B", s.log())
            fig["parts"] = parts(s.lines, m.groups() if m else None)
            fig["where_total"] = s.ready[0]
        if per_request:  # the full run's counts (10 to warm up, 200 measured): a rare allocation averages out
            b.quick = False
            b.alloc(("firmware",), mpy=True)
            b.quick = True
            fig["per_request"] = {k[6:]: round(v) for k, v in b.fig["firmware"].items() if k.startswith("alloc_")}
        if min_heap:  # the bench's full bisection: 5,000 mixed requests at concurrency 4, 1 KB steps
            b.quick = False
            b.min_heap(("firmware",), (True,))
            fig["min_heap"] = b.fig["firmware"].get("min_heap_mpy")
            log("memory: smallest heap %s B" % fig["min_heap"])
        if b.notes:
            fig["notes"] = b.notes
    finally:
        b.broker.stop()
    return ("%s %s" % (label, layout)).replace(" mpy", ""), fig


def limit(recorded):
    """The most a figure may grow to: its recorded value plus the margin."""
    return recorded + max(MARGIN["min"], min(MARGIN["max"], round(recorded * MARGIN["fraction"])))


def load_budget():
    with open(BUDGET) as f:
        return json.load(f)


def kb(v):
    return "%.1f KB" % (v / 1024)


def report(sections):
    """Markdown: the figures of every recorded section side by side."""
    names = list(sections)
    head = "| | %s |\n|---|%s\n" % (" | ".join(names), "---:|" * len(names))

    def row(label, values):
        return "| %s | %s |\n" % (label, " | ".join("—" if v is None else v for v in values))

    text = "# Memory figures\n\nWritten by `bench/memory.py --update` (`bench/run.sh --budget`) from `bench/budget.json`.\n"
    text += "Each column is one interpreter and layout; cfg.py as the bench's (8 streams, telemetry on).\n\n"
    text += "| | %s |\n|---|%s\n" % (" | ".join(names), "---|" * len(names))
    text += row("interpreter", [sections[n]["interpreter"].split(";")[-1].strip() for n in names])
    text += row("measured", [sections[n]["measured"] for n in names])
    text += "\n## Heap in use once serving, and allocation per request\n\n" + head
    text += row("**heap in use once serving**", ["**%s**" % kb(sections[n]["ready"]) for n in names])
    text += row("smallest heap surviving the standard load (`--min-heap`)",
                [kb(sections[n]["min_heap"]) if sections[n].get("min_heap") else None for n in names])
    for ep in ("health", "SendState", "SendData", "SetDatastream"):
        text += row("allocated per request: " + ep,
                    ["%d B" % sections[n]["per_request"][ep] if ep in sections[n].get("per_request", {}) else None
                     for n in names])
    text += ("\n## Import cost per module (heap kept after a collection, in the order main.py pulls them in; "
             "the qstr pools apart, as they grow in steps)\n\n") + head
    mods = []
    for n in names:
        mods += [m for m in sections[n]["imports"] if m not in mods]
    for m in mods:
        text += row(m, ["%d B" % sections[n]["imports"][m] if m in sections[n]["imports"] else None for n in names])
    text += row("qstr pools, all of them", ["%d B" % sections[n]["qstr"] for n in names])
    text += ("\n## Import cost of the modules loaded on demand (each on top of the resident ones and of those "
             "above it; dropped when their work ends)\n\n") + head
    for m in ON_DEMAND:
        text += row(m, ["%d B" % sections[n]["on_demand"][m] if m in sections[n].get("on_demand", {}) else None
                        for n in names])
    text += "\n## Where the heap in use once serving goes (bench/mpy/where.py: each step's heap kept; "
    text += "in brackets, how much of it is new qstrs)\n\n" + head
    labels = []
    for n in names:
        labels += [p[0] for p in sections[n].get("parts", []) if p[0] not in labels]
    for lab in labels:
        cells = []
        for n in names:
            got = [p for p in sections[n].get("parts", []) if p[0] == lab]
            cells.append("%d B (%d)" % (got[0][1], got[0][2]) if got else None)
        text += row(lab, cells)
    text += row("total of where.py's run", [kb(sections[n]["where_total"]) if "where_total" in sections[n] else None
                                           for n in names])
    text += row("heap in use once serving (the run without where.py)", [kb(sections[n]["ready"]) for n in names])
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--micropython", help="the interpreter (default: the pinned unix port in .venv)")
    ap.add_argument("--layout", choices=servers.LAYOUTS, default="mpy",
                    help="where the modules are: .mpy files (as upload.sh), frozen (a --frozen build), romfs")
    ap.add_argument("--update", action="store_true", help="record the figures in bench/budget.json")
    ap.add_argument("--min-heap", action="store_true",
                    help="also the smallest heap surviving the standard load (bisection, a few minutes)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    if args.micropython:
        flash.MICROPYTHON = os.environ["MICROPYTHON"] = os.path.abspath(args.micropython)
    label, fig = measure(args.layout, min_heap=args.min_heap)
    old = (load_budget()["sections"] if os.path.exists(BUDGET) else {}).get(label, {})
    if "min_heap" in old and "min_heap" not in fig:  # kept from the last --min-heap run
        fig["min_heap"], fig["min_heap_measured"] = old["min_heap"], old.get("min_heap_measured", old["measured"])
    elif "min_heap" in fig:
        fig["min_heap_measured"] = fig["measured"]
    budget = load_budget() if os.path.exists(BUDGET) else {"margin": MARGIN, "sections": {}}
    print(json.dumps({label: fig}, indent=1))
    if args.update:
        budget["margin"] = MARGIN
        budget["sections"][label] = fig
        with open(BUDGET, "w") as f:
            json.dump(budget, f, indent=1)
            f.write("\n")
        print("memory: recorded as %r in %s" % (label, BUDGET))
    sections = dict(budget["sections"])
    sections[label] = fig
    text = report(sections)
    print(text)
    if args.update:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "memory.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
