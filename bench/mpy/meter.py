# Runs inside each benchmarked server (under micropython). The server calls tick() once per request
# and ready() once when it serves; BENCH_MODE picks what is measured:
#   alloc: for each phase, BENCH_WARM requests to warm up, then BENCH_N requests with the collector
#          off, so the gc.mem_alloc() delta is every byte the server allocated for them;
#   load:  free heap sampled every 20 ms while requests come, for the plot.
# Everything on the request path allocates nothing itself (small ints, module globals only).
import gc
import os
import time

import micropython

OWN = 0  # heap this module keeps (set by the launcher), not counted as the server's
_MODE = os.getenv("BENCH_MODE") or "load"
_WARM = int(os.getenv("BENCH_WARM") or "10")
_N = int(os.getenv("BENCH_N") or "100")
_PHASES = (os.getenv("BENCH_PHASES") or "x").split(",")
_PER = _WARM + _N

_count = 0
_ready = False
_a0 = 0
_t0 = 0
_last = 0


def ready():
    """Report the heap in use once the server is set up (after a collection)."""
    global _ready
    if _ready:
        return
    _ready = True
    gc.collect()
    print("@bench ready %d %d" % (gc.mem_alloc() - OWN, gc.mem_free()))


def tick():
    """One request served."""
    global _count, _a0, _t0, _last
    _count += 1
    if _MODE == "alloc":
        i = _count % _PER
        if i == _WARM:
            gc.collect()
            gc.disable()
            _a0 = gc.mem_alloc()
            _t0 = micropython.mem_total()
        elif i == 0:
            a1 = gc.mem_alloc()
            t1 = micropython.mem_total()
            gc.enable()
            k = _count // _PER - 1
            print("@bench alloc %s %d %d %d" % (_PHASES[k] if k < len(_PHASES) else "?", a1 - _a0, t1 - _t0, _N))
    else:
        now = time.ticks_ms()
        if time.ticks_diff(now, _last) >= 20:
            _last = now
            print("@bench mem %d %d" % (now, gc.mem_free()))
