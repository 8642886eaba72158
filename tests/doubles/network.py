# Test double of the ESP32 port's `network` (station interface only). The access point is
# described by board.json "wifi": {"ssid", "password", "up" (default true), "delay_ms" (how long
# an association takes, default 200)}; changing it while the firmware runs takes the AP down or
# up. Like the real driver, connect() returns at once and status() tells how it goes on.
import time

import _board

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_ASSOC_FAIL = 203
STAT_CONNECT_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204


class WLAN:
    def __init__(self, interface_id=STA_IF):
        self._active = False
        self._target = None  # (ssid, key) of the current connect()
        self._since = 0
        self._got_ip = False

    def active(self, is_active=None):
        if is_active is None:
            return self._active
        self._active = bool(is_active)
        _board.log("wlan active %s" % self._active)

    def connect(self, ssid=None, key=None, *, bssid=None):
        if not self._active:
            raise OSError("Wifi Not Started")
        if self._target is not None and self.status() == STAT_CONNECTING:
            raise OSError("Wifi Internal State Error")
        self._target = (ssid, key)
        self._since = time.ticks_ms()
        self._got_ip = False
        _board.log("wlan connect %s" % ssid)  # never the key

    def disconnect(self):
        self._target = None
        self._got_ip = False
        _board.log("wlan disconnect")

    def status(self, param=None):
        if param is not None:
            return -50 if param == "rssi" else None
        if self._target is None:
            return STAT_IDLE
        ap = _board.get("wifi", {})
        if time.ticks_diff(time.ticks_ms(), self._since) < ap.get("delay_ms", 200) and not self._got_ip:
            return STAT_CONNECTING
        if not ap.get("up", True) or ap.get("ssid") != self._target[0]:
            lost, self._got_ip = self._got_ip, False
            return STAT_BEACON_TIMEOUT if lost else STAT_NO_AP_FOUND
        if ap.get("password", "") != (self._target[1] or ""):
            return STAT_WRONG_PASSWORD
        self._got_ip = True
        return STAT_GOT_IP

    def isconnected(self):
        return self.status() == STAT_GOT_IP

    def ifconfig(self, config=None):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1") if self.isconnected() else ("0.0.0.0",) * 4

    def config(self, *args, **kwargs):
        if args == ("mac",):
            return b"\x24\x0a\xc4\x00\x00\x01"
        return None
