# Runs inside each benchmarked server (under micropython). The server calls tick() once per request
# and ready() once when it serves; BENCH_MODE picks what is measured:
#   alloc: for each phase, BENCH_WARM requests to warm up, then BENCH_N requests with the collector
#          off, so the gc.mem_alloc() delta is every byte the server allocated for them;
#   heap:  the lowest and highest free heap seen after each request, printed every 100 ms, for
#          the plot (gc.mem_free() scans the heap: not for runs that measure time);
#   load:  nothing beyond counting.
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
_lo = 1 << 30
_hi = 0


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
    global _count, _a0, _t0, _last, _lo, _hi
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
    elif _MODE == "heap":
        free = gc.mem_free()
        if free < _lo:
            _lo = free
        if free > _hi:
            _hi = free
        now = time.ticks_ms()
        if time.ticks_diff(now, _last) >= 100:
            print("@bench mem %d %d %d" % (now, _lo, _hi))
            _last = now
            _lo = 1 << 30
            _hi = 0
