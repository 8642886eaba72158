# Where the firmware's heap goes once serving. Boots it as the board does, one step at a time, and
# prints the heap each step keeps after a collection ("@bench part NAME BYTES"), each followed by
# micropython.qstr_info()'s line so that the host can tell how much of it is new qstrs:
#   the firmware's modules, imported in BENCH_MODS order (dependencies first, as main.py pulls
#   them in), then boot.py; main.py compiled on its own (when it is a file: frozen or in ROMFS it
#   is read in place); then main.py runs, and the objects made by the callables named in BENCH_WRAP
#   ("module.name", e.g. http.Server) are measured as main.run() makes them; what else main.py keeps
#   until its loop first turns is the last part. This script's own code and hooks are parts too, so
#   that the parts add up to the total. Nothing of the firmware is changed.
import gc
import os
import sys

import micropython

def mark(name, a):
    gc.collect()
    b = gc.mem_alloc()
    print("@bench part %s %d" % (name, b - a))
    micropython.qstr_info()
    return b


def wrap(mod, name):
    f = getattr(mod, name)

    def measured(*args, **kw):
        a = mark("-", 0)  # a collection first; its line is ignored
        r = f(*args, **kw)
        mark("%s.%s()" % (mod.__name__, name), a)
        return r

    setattr(mod, name, measured)


a = mark("interpreter", 0)  # with this script's own code
for name in (os.getenv("BENCH_MODS") or "").split():
    try:
        __import__(name)
    except ImportError as e:
        print("@bench absent %s %s" % (name, e))
    a = mark(name, a)
import boot  # noqa: E402,F401

a = mark("boot.py", a)
for spec in (os.getenv("BENCH_WRAP") or "").split():
    m, _, n = spec.partition(".")
    mod = sys.modules.get(m)
    if mod is not None and hasattr(mod, n):
        wrap(mod, n)
import streams  # noqa: E402

_uptime_s = streams.uptime_s
_start = None


def uptime_s():
    global _start
    if _start is not None:  # the loop's first turn: main.py is set up
        mark("main.py", _start)  # all of it: the host takes the parts above off
        gc.collect()
        print("@bench ready %d %d" % (gc.mem_alloc(), gc.mem_free()))
        _start = None
    return _uptime_s()


streams.uptime_s = uptime_s
a = mark("where.py_hooks", a)
try:
    with open("main.py") as f:
        code = compile(f.read(), "main.py", "exec")
    mark("main.py_compiled", a)
    del code
    f = None
except OSError:
    pass  # frozen, or in ROMFS
_start = mark("main.py_start", 0)
import main  # noqa: E402,F401  (runs the loop)
