# Where the firmware's per-request allocation and time go: the router, handler and response header
# alone (a parsed connection from tests/mpy/reqs.py, no socket), the request-line parser, and the
# reading of each stream's value. Arguments: name, method, target, ... Allocation as in meter.py
# (collector off, gc.mem_alloc delta); time as the mean of _RUNS runs with time.ticks_us.
import gc
import sys
import time

import http

import thingsboard
import reqs
import router
import streams

router.setup(thingsboard.Telemetry())
_SIZE = 4096
_RUNS = 200


def alloc(f, arg):
    f(arg)  # once to warm up (first-use caches)
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    f(arg)
    b = gc.mem_alloc()
    gc.enable()
    return b - a


def micros(f, arg):
    t = time.ticks_us()
    for _ in range(_RUNS):
        f(arg)
    return time.ticks_diff(time.ticks_us(), t) / _RUNS


def parse(c):
    http._parse(c)


def handle(raw):
    router.handle(reqs.conn(raw, _SIZE))


def made(raw):
    reqs.conn(raw, _SIZE)  # what building the test connection costs, taken off below


args = sys.argv[1:]
for i in range(0, len(args), 3):
    raw = b"%s %s HTTP/1.0\r\nHost: device\r\n\r\n" % (args[i + 1].encode(), args[i + 2].encode())
    print("@bench handler %s %d" % (args[i], alloc(handle, raw) - alloc(made, raw)))
    c = reqs.conn(raw, _SIZE)
    print("@bench parse_us %s %.1f" % (args[i], micros(parse, c)))
    print("@bench handler_us %s %.1f" % (args[i], micros(handle, raw) - micros(made, raw)))
out = http.Writer(256)


def value(s):
    """What SendState does for one stream: read it, write its value as the API's string."""
    out.pos = 0
    streams.add_value(out, s.value(), True)


for s in streams.STREAMS:
    print("@bench value %s %d" % (s.id, alloc(value, s)))
