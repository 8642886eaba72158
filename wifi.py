# WiFi station mode on the board (nothing on the host), turned by the main loop: it never waits on
# the network for longer than one bounded step.
import time

import cfg
import hw
from micropython import const

_OFF = const(0)
_CONNECTING = const(1)
_UP = const(2)
_BACKOFF = const(3)
_BACKOFF_MIN_MS = const(1000)
_NTP_EVERY_MS = const(6 * 3600 * 1000)  # the RTC drifts seconds a day


class Wifi:
    """Station mode on the board, nothing on the host. A state machine the loop turns: connect
    (the driver's connect returns at once), wait for an address until a deadline, back off
    (doubling), reconnect when the link drops. Each change is logged once; the password never."""

    def __init__(self):
        self.wlan = None
        self.state = _OFF
        self.until = 0  # tick that ends the current wait
        self.backoff = _BACKOFF_MIN_MS
        self.why = None  # the failure last logged, to log a repeated one only once
        self.synced = None  # tick of the last clock sync
        if hw.BOARD and cfg.WIFI_SSID:
            import network

            self.net = network
            if cfg.NTP_HOST:
                import ntptime  # now: at boot the heap has room; later it may be fragmented

                ntptime.host = cfg.NTP_HOST
                ntptime.timeout = 1
                self.ntp = ntptime
            self.wlan = network.WLAN(network.STA_IF)
            self.wlan.active(True)
            print("wifi: connecting to %s" % cfg.WIFI_SSID)
            self._connect(time.ticks_ms())

    def _connect(self, now):
        try:
            self.wlan.connect(cfg.WIFI_SSID, cfg.WIFI_PASSWORD)
        except OSError as e:
            self._fail(now, "connect: %s" % e)
            return
        self.state = _CONNECTING
        self.until = time.ticks_add(now, cfg.WIFI_TIMEOUT_MS)

    def _fail(self, now, why):
        if why != self.why:
            print("wifi: %s; retrying, backing off up to %d s" % (why, cfg.WIFI_BACKOFF_MAX_MS // 1000))
            self.why = why
        self.wlan.disconnect()
        self.state = _BACKOFF
        self.until = time.ticks_add(now, self.backoff)
        self.backoff = min(self.backoff * 2, cfg.WIFI_BACKOFF_MAX_MS)

    def service(self, now):
        """One step; returns ms until it needs the loop again (-1: no deadline)."""
        w, st = self.wlan, self.state
        if w is None:
            return -1
        if st == _UP:
            if not w.isconnected():
                print("wifi: link lost, reconnecting")
                self.why = None
                w.disconnect()
                self._connect(now)
            elif self.synced is None or time.ticks_diff(now, self.synced) >= _NTP_EVERY_MS:
                self._sync(now)
        elif st == _CONNECTING:
            s = w.status()
            n = self.net
            if s == n.STAT_GOT_IP:
                print("wifi: up, ip %s" % w.ifconfig()[0])
                self.state = _UP
                self.backoff = _BACKOFF_MIN_MS
                self.why = None
                return 0
            if s == n.STAT_WRONG_PASSWORD:
                self._fail(now, "wrong password")
            elif s == n.STAT_NO_AP_FOUND:
                self._fail(now, "no access point %s" % cfg.WIFI_SSID)
            elif s != n.STAT_CONNECTING and s != n.STAT_IDLE:
                self._fail(now, "connect failed (status %d)" % s)
            elif time.ticks_diff(now, self.until) >= 0:
                self._fail(now, "no address within %d ms" % cfg.WIFI_TIMEOUT_MS)
        elif time.ticks_diff(now, self.until) >= 0:  # _BACKOFF over
            self._connect(now)
        if self.state == _UP:
            return -1
        left = time.ticks_diff(self.until, now)
        return left if left > 0 else 0

    def _sync(self, now):
        """Set the RTC by NTP: one UDP exchange, bounded by ntptime.timeout (1 s)."""
        self.synced = now
        if not cfg.NTP_HOST:
            return
        try:
            self.ntp.settime()
            print("wifi: clock set from %s" % cfg.NTP_HOST)
        except (OSError, OverflowError, MemoryError) as e:
            print("wifi: clock sync failed: %r" % e)
            self.synced = time.ticks_add(now, 60000 - _NTP_EVERY_MS)  # try again in a minute

    def ip(self):
        return self.wlan.ifconfig()[0] if self.wlan is not None and self.wlan.isconnected() else "127.0.0.1"
