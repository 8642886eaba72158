# Import cost of each module named in BENCH_MODS, in that order (so a module's cost is what
# it adds to those before it): heap kept after a collection, and heap allocated during the import
# with the collector off (the free heap an import needs when nothing can be collected). Each line is
# followed by micropython.qstr_info()'s, so that the host can take the qstr pools apart: they grow
# in steps, and the module that happens to fill a pool would otherwise be charged the next one.
import gc
import os

import micropython


def cost(name):
    gc.collect()
    a = gc.mem_alloc()
    gc.disable()
    __import__(name)
    peak = gc.mem_alloc() - a
    gc.enable()
    gc.collect()
    print("@bench import %s %d %d" % (name, gc.mem_alloc() - a, peak))
    micropython.qstr_info()


micropython.qstr_info()
for n in (os.getenv("BENCH_MODS") or "").split():
    cost(n)
