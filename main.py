# The device's one loop: HTTP, telemetry and WiFi share a select.poll, each saying how long it
# may wait until its next deadline. Nothing in the loop blocks for longer than a bounded time.
import gc
import select
import sys
import time

import cfg
import http
import hw
import mqtt
import router
import streams
from micropython import const

_MAX_WAIT_MS = const(1000)  # upper bound of one poll: the loop's own heartbeat
_GC_EVERY = const(16384)  # collect after this many bytes allocated: keeps the heap unfragmented


class Wifi:
    """Station mode on the board, nothing on the host: connect, wait with a deadline, retry."""

    def __init__(self):
        self.wlan = None
        self.deadline = 0
        if hw.BOARD and cfg.WIFI_SSID:
            import network

            self.wlan = network.WLAN(network.STA_IF)
            self.wlan.active(True)
            self._connect(time.ticks_ms())

    def _connect(self, now):
        print("wifi: connecting to %s" % cfg.WIFI_SSID)
        try:
            self.wlan.connect(cfg.WIFI_SSID, cfg.WIFI_PASSWORD)
        except OSError as e:
            print("wifi: connect failed: %s" % e)
        self.deadline = time.ticks_add(now, 15000)
        self.up = False

    def service(self, now):
        w = self.wlan
        if w is None:
            return -1
        up = w.isconnected()
        if up != self.up:
            self.up = up
            print("wifi: %s" % (("up, ip " + w.ifconfig()[0]) if up else "down"))
        if not up and time.ticks_diff(now, self.deadline) >= 0:
            w.disconnect()
            self._connect(now)
        return _MAX_WAIT_MS

    def ip(self):
        return self.wlan.ifconfig()[0] if self.wlan is not None and self.wlan.isconnected() else "127.0.0.1"


def _soonest(a, b):
    """The smaller of two waits, where -1 means no deadline."""
    if a < 0:
        return b
    if b < 0:
        return a
    return a if a < b else b


def run():
    wifi = Wifi()
    telemetry = mqtt.Telemetry(wifi.ip)
    router.setup(telemetry)
    streams.restore()
    size = max(cfg.HTTP_BUF, http.HEAD_ROOM + streams.body_max())
    server = http.Server(router.handle, cfg.HTTP_BIND, cfg.HTTP_PORT, cfg.HTTP_SLOTS, size, cfg.HTTP_TIMEOUT_MS)
    poller = select.poll()
    server.attach(poller)
    telemetry.attach(poller)
    gc.collect()
    gc.threshold(_GC_EVERY)
    print("datastream: serving http://%s:%d/ (%d slots of %d B), mem_free %d" % (
        cfg.HTTP_BIND, cfg.HTTP_PORT, cfg.HTTP_SLOTS, size, gc.mem_free()))
    while True:
        try:
            now = time.ticks_ms()
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


run()
