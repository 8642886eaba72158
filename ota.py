# A software update from ThingsBoard (an OTA "software" package, fetched on the v2 chunk topics),
# imported when one starts and dropped when it ends: at rest it costs nothing. Everything happens in
# steps as the loop turns, each bounded: a chunk is asked, and awaited under a deadline; each answer
# is written straight to the package file and into a running SHA-256 (the package is never held in
# RAM); then the package is checked whole, and unpack.py installs it. The state goes to the platform
# as ThingsBoard's OTA widgets read it (sw_state, sw_error). A failure leaves the running version as it was, and the
# package is not tried again until the platform names another (fwswitch.outcome).
#
# The package (host/package.py): one line of JSON, {"format":"dspkg/1","title":…,"version":…,
# "files":[[name, size, sha256], …]}, then the files' bytes in that order.
import binascii
import hashlib
import os
import sys
import time

import cfg
import fwswitch
import thingsboard as tb
from micropython import const

RESPONSE = b"v2/sw/response/"
_CHUNK_TRIES = const(3)  # asks of one chunk before the update fails (a QoS 0 answer may be lost)
_DEADLINE_MS = const(1800000)  # the whole update, the broker's absences included


def start(t, sw):
    """Begin the update to the package the sw_* attributes `sw` name, unless they cannot work."""
    u = Update(t, sw)
    why = u.problem()
    if why:
        u.fail(why)
    else:
        t.update = u
        u.begin()


class Update:
    def __init__(self, t, sw):
        self.t = t
        self.target = fwswitch.target(sw)
        self.algorithm = sw.get("sw_checksum_algorithm")
        self.size = sw.get("sw_size")
        limit = min(getattr(cfg, "UPDATE_CHUNK", 2048), getattr(cfg, "MQTT_MAX_PACKET", 2304) - 96)
        if t.max_payload:
            limit = min(limit, t.max_payload - 96)  # ThingsBoard refuses a chunk over it (PAYLOAD_TOO_LARGE)
        self.chunk = limit
        t.req = t.req % 1000000 + 1
        self.rid = t.req  # one request id for the whole download; ThingsBoard takes digits only
        self.index = 0  # the chunk to ask next
        self.got = 0  # bytes written to the package so far
        self.asked = None  # while a chunk is awaited: its deadline
        self.wait = getattr(cfg, "UPDATE_CHUNK_WAIT_MS", 10000)
        self.tries = 0
        self.until = time.ticks_add(time.ticks_ms(), _DEADLINE_MS)
        self.f = self.out = None
        self.step = _download
        self.phase = "download"  # the step's name (bound methods do not compare equal in MicroPython)

    def json(self):
        """For /telemetry/status: where the update is."""
        return tb.to_json({"version": self.target["version"], "phase": self.phase, "bytes": self.got, "of": self.size})

    def wants(self, sw):
        return self.target == fwswitch.target(sw)

    def problem(self):
        """Why the named package cannot be installed, or None."""
        if not isinstance(self.size, int) or self.size <= 0:
            return "sw_size missing or not a positive number"
        if str(self.algorithm).upper() != "SHA256":
            return "checksum algorithm %s not supported (SHA256 is)" % self.algorithm
        c = self.target["checksum"]
        if not isinstance(c, str) or len(c) != 64:
            return "sw_checksum is not a SHA-256"
        if self.chunk < 256:
            return "chunks would be %d B: MQTT_MAX_PACKET (or the session's maxPayloadSize) is too small" % self.chunk
        try:
            st = os.statvfs("/" if sys.platform == "esp32" else ".")
            free = st[0] * st[4]
        except (AttributeError, OSError):
            return None
        if free < 3 * self.size + 8192:  # the package, its unpacked files, and the copies of those they replace
            return "no space on flash: %d B free, %d B needed" % (free, 3 * self.size + 8192)
        return None

    def begin(self):
        print("update: %s %s, %d B in chunks of %d B" % (self.target["title"], self.target["version"], self.size,
                                                         self.chunk))
        self._clean()
        self.f = open(fwswitch.PACKAGE, "wb")
        self.h = hashlib.sha256()
        self.state("DOWNLOADING")

    # --- the loop's interface ----------------------------------------------------------------
    def service(self, now):
        """Do the next step; ms until the update needs the loop again."""
        if time.ticks_diff(now, self.until) >= 0:
            self.fail("not done within %d s" % (_DEADLINE_MS // 1000))
            return 0
        try:
            wait = self.step(self, now)
            return 0 if wait is None else wait  # None: it failed
        except OSError as e:
            self.fail(_flash(e))
        except MemoryError:  # not kept as the outcome: tried again at the next connect
            self.fail("not enough memory to %s the package" % self.phase, False)
        return 0

    def chunk_in(self, topic, payload):
        """A chunk's answer, on v2/sw/response/<rid>/chunk/<index>."""
        head = RESPONSE + b"%d/chunk/" % self.rid
        if self.phase != "download" or self.asked is None or not topic.startswith(head):
            return  # an answer to an earlier request, or a duplicate
        try:
            n = int(topic[len(head):])
        except ValueError:
            return
        if n != self.index:
            return
        if payload is None:
            return self.fail("chunk %d is larger than the receive buffer" % n)
        want = min(self.chunk, self.size - self.got)
        if len(payload) != want:
            if not len(payload):
                return self.fail("the package ends at %d B of %d (chunk %d is empty)" % (self.got, self.size, n))
            return self.fail("chunk %d: %d B, expected %d" % (n, len(payload), want))
        try:
            self.f.write(payload)
        except OSError as e:
            return self.fail(_flash(e))
        self.h.update(payload)
        self.got += want
        self.index += 1
        self.asked = None  # the next chunk is asked on the next turn
        self.tries = 0
        if self.got == self.size:
            self._downloaded()

    def refused(self, payload):
        """ThingsBoard's answer on v2/fw/error (PAYLOAD_TOO_LARGE: a chunk over the session's limit)."""
        try:
            why = bytes(payload[:64]).decode() if payload is not None else "too long to read"
        except UnicodeError:
            why = "not text"
        self.fail("the platform refused: %s" % why)

    # --- the steps ---------------------------------------------------------------------------
    def _downloaded(self):
        self.f.close()
        self.f = None
        self.state("DOWNLOADED")
        digest = binascii.hexlify(self.h.digest()).decode()
        if digest != self.target["checksum"].lower():
            return self.fail("checksum mismatch: the package's SHA-256 is %s" % digest)
        self.state("VERIFIED")
        try:
            import unpack  # the rest of the update, in a module of its own: each import needs less heap at once
        except MemoryError:
            return self.fail("not enough memory to install the package", False)
        self.step, self.phase = unpack.opening, "open"

    # --- the end -----------------------------------------------------------------------------
    def state(self, s, error=None):
        d = {"sw_state": s}
        if error:
            d["sw_error"] = error
        self.t.publish(tb.TELEMETRY, tb.to_json(d))

    def fail(self, why, kept=True):
        """FAILED with `why`: the running version stays, the update's files go. Kept: the outcome is
        on flash, and the package is not tried again until the platform names another."""
        print("update: %s %s FAILED: %s" % (self.target["title"], self.target["version"], why))
        for f in (self.f, self.out):
            if f is not None:
                f.close()
        self.f = self.out = None
        self._clean()
        if self.phase == "backup":
            fwswitch.clear(fwswitch.OLD)
        if kept:
            fwswitch.outcome(self.target, "FAILED", why)
        self.state("FAILED", why)
        self.t.update = None
        for m in ("ota", "unpack", "fwswitch"):
            sys.modules.pop(m, None)

    def _clean(self):
        fwswitch.discard(fwswitch.PACKAGE)
        fwswitch.clear(fwswitch.NEW)


def _download(u, now):
    t = u.t
    if not t.connected:
        u.asked = None  # asked again once the link is back: the download resumes where it stopped
        return 1000
    if u.asked is None:
        if u.tries >= _CHUNK_TRIES:
            u.fail("chunk %d not received (%d asks of %d ms)" % (u.index, _CHUNK_TRIES, u.wait))
            return 0
        if not t.publish(b"v2/sw/request/%d/chunk/%d" % (u.rid, u.index), b"%d" % u.chunk):
            return 100  # the link is busy: asked again shortly
        u.tries += 1
        u.asked = time.ticks_add(now, u.wait)
    left = time.ticks_diff(u.asked, now)
    if left <= 0:
        u.asked = None
        return 0
    return left


def _flash(e):
    return "no space on flash" if e.args and e.args[0] == 28 else "flash: %r" % e  # 28: ENOSPC
