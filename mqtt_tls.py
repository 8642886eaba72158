# MQTT over TLS (ThingsBoard serves it on 8883): the channel of mqtt.py with its socket wrapped by
# mbedtls once the TCP connect completes. The broker's certificate must chain to the CA in MQTT_CA
# and carry the server's name (CERT_REQUIRED: no setting turns the check off); MQTT_CERT/MQTT_KEY,
# when set, are the device's own X.509 credentials. thingsboard.py imports this module only when
# cfg.MQTT_TLS is on: a device without TLS pays nothing for it.
# The handshake is driven by the loop like every other step: each write is a step (CPU inside
# mbedtls, during which the loop waits: measured, in /telemetry/status), taken when the broker's
# bytes come, and the whole connect (TCP, handshake, CONNACK) has one deadline. The context is made
# for each connect and dropped with the link: between attempts TLS holds nothing, and a CA file
# put right on the flash is read at the next attempt.
import binascii
import errno
import select
import time

import mqtt
import tls
from micropython import const

_NUDGE_MS = const(50)  # a handshake step waiting to write (rare: a full socket) is tried again this often
_YEAR_SET = const(2024)  # an RTC before this has not been set (an ESP32's starts at 2000)


class Channel(mqtt.Channel):
    """mqtt.Channel over TLS; `tls` is (ca, cert, key, server_hostname, connect_ms): the files on
    flash, the name the broker's certificate must carry, the deadline of the whole connect."""

    def __init__(self, tls, *args):
        super().__init__(*args)
        self.tls = tls
        self.connect_ms = tls[4]  # an ESP32 spends 1-3 s of CPU on a handshake
        self.ctx = None  # the context of the connect under way
        self.hs_began = self.hs_last = time.ticks_ms()  # ticks the latest handshake and its latest step began
        self.hs_ms = self.hs_step = -1  # the last handshake done: all of it; the longest step of the latest
        self.owed = 0  # length of a write mbedtls holds: it must be retried with the same bytes
        self.more = False  # the reader stopped at its packet limit: mbedtls may hold decrypted bytes

    def service(self, now):
        if self.handshaking and time.ticks_diff(now, self.hs_last) >= _NUDGE_MS:
            self._guarded(self._flush)
        if self.more:  # the socket's poll does not show what mbedtls has already decrypted
            self._guarded(self._receive)
        wait = super().service(now)
        if self.more and self.state != mqtt.DOWN:
            return 0
        return min(wait, _NUDGE_MS) if self.handshaking else wait

    def handshake_json(self):
        """The last handshake and the longest step of the latest (how long it held the loop), as JSON."""
        return b'{"handshake_ms":%s,"longest_step_ms":%s}' % (_ms(self.hs_ms), _ms(self.hs_step))

    def _guarded(self, step):
        try:
            step()
        except Exception as e:
            self._drop(e)

    def _open(self, now):
        try:  # first: a missing or bad file, an unset clock cost no connection
            self.ctx = context(self.tls[0], self.tls[1], self.tls[2])
        except Exception as e:
            self._drop(e)
            return
        super()._open(now)

    def _tcp_up(self, ev):
        if ev & (select.POLLERR | select.POLLHUP):  # refused: that error, as a plain link tells it
            mqtt._read(self.s, self.b1)
            raise OSError(errno.ECONNRESET)
        self.tcp = True
        self.io = self.ctx.wrap_socket(self.s, server_hostname=self.tls[3], do_handshake_on_connect=False)
        self.handshaking = True
        self.hs_began = self.hs_last = time.ticks_ms()
        self.hs_step = 0
        self.waiting = False  # the connect's deadline covers the handshake
        self.poller.modify(self.s, select.POLLIN)  # each step waits for the broker's answer

    def _overflow(self, data):
        """Every write comes from the gathering buffer, which keeps the bytes a held write needs
        again: a large payload is gathered and sent in pieces of the buffer's size (one record each)."""
        mv, out = memoryview(data), self.out
        while len(mv) > len(out) - self.out_n:
            room = len(out) - self.out_n
            if not room:
                raise OSError(errno.ENOBUFS)  # the broker does not read: dropped, data kept by the caller
            out[self.out_n:] = mv[:room]
            self.out_n = len(out)
            mv = mv[room:]
            self._flush()
        return mv

    def _send(self, n):
        n = self.owed or n  # mbedtls took this record and holds it: the same bytes go again
        t = time.ticks_ms()
        k = self.io.write(self.out, 0, n)
        self.owed = 0 if k else n
        if self.handshaking:
            self._stepped(t, k)
        return k

    def _stepped(self, t, k):
        """A handshake step began at tick t; the first write that goes through ends the handshake."""
        now = self.hs_last = time.ticks_ms()
        self.hs_step = max(self.hs_step, time.ticks_diff(now, t))
        if k:
            self.hs_ms = time.ticks_diff(now, self.hs_began)
            self.handshaking = False
            print("mqtt: %s:%d: TLS handshake done in %d ms, its longest step %d ms" % (
                self.host, self.port, self.hs_ms, self.hs_step))

    def _receive(self):
        if self.handshaking:
            self._flush()  # the handshake takes what came and answers; CONNECT leaves at its end
            return False
        self.more = super()._receive()
        return self.more

    def _drop(self, err):
        if not isinstance(err, str):
            why = _describe(err)
            if self.handshaking:
                if isinstance(err, OSError) and len(err.args) == 1:  # the socket's own error: the broker hung up
                    why = "the broker closed the link (%s): its TLS port? a client certificate wanted?" % why
                why = "TLS handshake: " + why
            err = why
        io = self.io
        if io is not None and io is not self.s:
            try:
                io.close()  # frees mbedtls' buffers now (the socket is closed by the channel)
            except (OSError, ValueError):
                pass
        self.ctx = None
        self.handshaking = False
        self.owed = 0
        self.more = False
        super()._drop(err)


def _ms(v):
    return b"null" if v < 0 else b"%d" % v


def _describe(e):
    """mbedtls' errors in words; others as the channel tells them."""
    a = e.args
    if isinstance(e, OSError) and len(a) == 2:  # (mbedtls' code, its text)
        return a[1]
    if isinstance(e, ValueError) and a and isinstance(a[0], str):  # a file, the clock, a certificate
        if a[0][:1] != "\n":
            return a[0]
        return "certificate rejected: " + "; ".join(r for r in a[0].split("\n") if r)  # a line per reason
    return mqtt._describe(e)


def context(ca, cert, key):
    """A client context for one connect; ValueError with a clear text when a file cannot serve."""
    if time.gmtime()[0] < _YEAR_SET:
        # mbedtls checks a certificate's dates against this clock: every handshake would fail, and
        # each costs seconds of an ESP32's CPU. wifi.py sets the clock by NTP once WiFi is up.
        raise ValueError("the clock is not set yet (NTP): certificate dates cannot be checked")
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    # A client context's default, said here and never changed (the port's C attribute; its stub lacks it).
    ctx.verify_mode = tls.CERT_REQUIRED  # type: ignore[attr-defined]
    data = _read("MQTT_CA", ca)
    try:
        ctx.load_verify_locations(data)
    except ValueError:
        for der in _ders("MQTT_CA", ca, data):  # one file may hold several CAs
            _named(ctx.load_verify_locations, der, None, "MQTT_CA %r" % ca)
    if cert:
        c, k = _read("MQTT_CERT", cert), _read("MQTT_KEY", key)
        try:
            ctx.load_cert_chain(c, k)
        except ValueError:
            _named(ctx.load_cert_chain, _ders("MQTT_CERT", cert, c)[0], _ders("MQTT_KEY", key, k)[0],
                   "MQTT_CERT %r / MQTT_KEY %r" % (cert, key))
    return ctx


def _named(load, a, b, what):
    """load(a) or load(a, b); its error ("invalid cert", "invalid key": never the key's bytes) names the files."""
    try:
        if b is None:
            load(a)
        else:
            load(a, b)
    except ValueError as e:
        raise ValueError("%s: %s" % (what, e.args[0] if e.args else "invalid"))


def _read(what, path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        code = e.args[0] if e.args else 0
        raise ValueError("%s %r cannot be read (%s)" % (what, path, errno.errorcode.get(code, code)))


def _ders(what, path, data):
    """The DER of each PEM block but parameters (openssl ecparam writes them before an EC key): some
    ports' mbedtls (the unix one) are built without PEM."""
    out = []
    i = data.find(b"-----BEGIN")
    while i >= 0:
        a = data.find(b"\n", i) + 1
        b = data.find(b"-----END", a)
        if not a or b < 0:
            break
        if data.find(b"PARAMETERS", i, a) < 0:
            try:
                out.append(binascii.a2b_base64(data[a:b]))
            except ValueError:
                break
        i = data.find(b"-----BEGIN", b + 8)
    if not out:
        raise ValueError("%s %r: no certificate or key in it (PEM or DER)" % (what, path))
    return out
