# The device's one loop: HTTP, telemetry and WiFi share a select.poll, each saying how long it
# may wait until its next deadline. Nothing in the loop blocks for longer than a bounded time.
import gc
import select
import sys
import time

import cfg

# Taken before the other imports and freed right before the long-lived buffers (connection slots,
# the MQTT channels') are placed: the imports leave the heap in small holes, where on a low-RAM
# board those buffers find no whole block (at 104 KB they failed with 18 KB free in holes of 1.4 KB).
_hole = bytearray(cfg.HTTP_SLOTS * (cfg.HTTP_BUF + 1024) + getattr(cfg, "MQTT_MAX_PACKET", 2304) + 4096)
import guard  # counts this boot first (and an update's trial); streams (imported by thingsboard) then checks cfg

try:
    import http
    import router
    import streams
    import thingsboard
    from wifi import Wifi
except Exception as e:  # a module that cannot load (a broken update): reset, as a crash does, for the counters
    guard.reboot(e)
from micropython import const

_MAX_WAIT_MS = const(1000)  # upper bound of one poll: the loop's own heartbeat
_GC_EVERY = const(16384)  # collect after this many bytes allocated: keeps the heap unfragmented


def _soonest(a, b):
    """The smaller of two waits, where -1 means no deadline."""
    if a < 0:
        return b
    if b < 0:
        return a
    return a if a < b else b


_SAFE_MODE = http.canned(503, b"Modo seguro")


def _safe_routes():
    """Safe mode: the datastream routes answer 503 (these come first, so they win); health stays."""
    for path, method in ((b"/Datastreams/SendState", http.GET), (b"/Datastreams/SendData", http.GET),
                         (b"/Datastreams/SetDatastream", http.POST)):
        router.add(path, lambda c: c.send_const(_SAFE_MODE), method, True)


def run():
    size = max(cfg.HTTP_BUF, http.HEAD_ROOM + streams.body_max())
    # The slot buffers first, the largest blocks, into the hole kept for them: the imports'
    # leftovers are collected, and nothing else has been placed yet.
    global _hole
    del _hole
    gc.collect()
    server = http.Server(router.handle, cfg.HTTP_BIND, cfg.HTTP_PORT, cfg.HTTP_SLOTS, size, cfg.HTTP_TIMEOUT_MS,
                         getattr(cfg, "HTTP_QUEUE", 3))  # a board's cfg.py older than this key works
    wifi = Wifi()
    streams.restore()  # the actuators' boot values, and what the platform set last (shared attributes)
    telemetry = thingsboard.Telemetry(wifi.ip)
    if guard.SAFE:
        _safe_routes()
    router.setup(telemetry)
    poller = select.poll()
    server.attach(poller)
    telemetry.attach(poller)
    gc.collect()
    gc.threshold(_GC_EVERY)
    guard.watchdog()
    print("datastream: serving http://%s:%d/ (%d slots of %d B), mem_free %d" % (
        cfg.HTTP_BIND, cfg.HTTP_PORT, cfg.HTTP_SLOTS, size, gc.mem_free()))
    while True:
        try:
            now = time.ticks_ms()
            guard.feed(now)
            if guard.TRIAL:  # an update's new version, kept or rolled back (imported for the trial only)
                __import__("fwswitch").probation(now, telemetry)
            streams.uptime_s()
            wait = _soonest(_soonest(server.service(now), telemetry.service(now)), wifi.service(now))
            wait = _soonest(wait, streams.save_due(now))
            for obj, ev in poller.ipoll(_soonest(wait, _MAX_WAIT_MS)):
                server.handle(obj, ev) or telemetry.handle(obj, ev)
        except MemoryError:
            gc.collect()
            print("main: MemoryError, heap collected, mem_free %d" % gc.mem_free())
        except Exception as e:  # log and go on: the device must keep serving
            sys.print_exception(e)


try:
    run()
except KeyboardInterrupt:  # Ctrl-C: the REPL is wanted (a person, ampy, mpremote)
    guard.park()
    raise
except Exception as e:  # e.g. the port is taken: reset, and let the boot counter see it
    guard.reboot(e)
