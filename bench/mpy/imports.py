# Import cost of each module named on the command line, in that order (so a module's cost is what
# it adds to those before it): heap kept after a collection, and heap allocated during the import
# with the collector off (the free heap an import needs when nothing can be collected).
import gc
import sys


def cost(name):
    gc.collect()
    a = gc.mem_alloc()
    gc.disable()
    __import__(name)
    peak = gc.mem_alloc() - a
    gc.enable()
    gc.collect()
    print("@bench import %s %d %d" % (name, gc.mem_alloc() - a, peak))


for n in sys.argv[1:]:
    cost(n)
