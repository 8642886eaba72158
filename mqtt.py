# The MQTT channel (3.1.1): bytes on one broker socket, turned by the main loop and never waiting
# on it. What the device sends (CONNECT, SUBSCRIBE, PUBLISH, PINGREQ, PUBACK) is encoded straight
# into one gathering buffer and leaves as one segment; every answer is assembled by an incremental
# reader from the bytes that are there when the socket is readable, into one buffer allocated at
# start. Each operation has a deadline for the whole of it (connect with CONNACK, subscribe with
# SUBACK, an incoming packet from its first byte to its last, a queued write, a QoS 1 PUBACK); past
# it the link is dropped and retried with backoff. Nothing is handled inside a publish or another
# handler: messages are delivered from the reader only. Knows nothing of ThingsBoard.
# Why not umqtt.simple: its reads block by design (CONNACK, SUBACK, PUBACK are awaited inside
# connect, subscribe and publish), and importing it for its four encoders costs 5.5 KB of an
# ESP32's heap (measured, 32-bit) where these take about 1 KB.
# MQTT over TLS is mqtt_tls.Channel, a subclass imported only when cfg.MQTT_TLS is on (a device
# without TLS pays nothing for it): the methods marked as its hooks are where it steps in.
import errno
import random
import select
import socket
import time

from micropython import const

_IN = select.POLLIN
_OUT = select.POLLOUT

DOWN = const(0)
OPENING = const(1)  # TCP connect and CONNACK
SUBSCRIBING = const(2)
UP = const(3)

_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(60000)
_STABLE_MS = const(60000)  # a link must live this long, hearing from the broker, to reset the backoff
_PING_WAIT_MS = const(10000)  # a PINGREQ (or a QoS 1 PUBLISH) unanswered for this long: the link is dead
_INFLIGHT_MAX = const(8)  # QoS 1 publishes awaiting PUBACK; more are refused (the caller keeps them)
_PACKETS_PER_TURN = const(4)  # then the loop gets its turn back (poll is level-triggered)
_OUT_BUF = const(256)  # a packet gathered to leave in one segment (a larger payload is written straight)


_addr = {}  # resolved broker addresses: DNS can take seconds, so only the first connect pays it


class Channel:
    """One broker link. on_up() runs once the subscriptions are acknowledged; on_msg(topic,
    payload, retained) for each PUBLISH received (memoryviews into the receive buffer, valid during
    the call; payload None when it was larger than the buffer and skipped)."""

    handshaking = False  # mqtt_tls: a TLS handshake is under way

    def __init__(self, host, port, client_id, user, keepalive, timeout_ms, rx_size, topics, on_up, on_msg):
        self.host = host
        self.port = port
        self.client_id = client_id.encode()
        self.user = None if user is None else user.encode()
        self.keepalive = keepalive
        self.timeout_ms = timeout_ms
        self.connect_ms = timeout_ms  # the deadline of a whole connect (mqtt_tls: longer)
        self.topics = topics
        self.on_up = on_up
        self.on_msg = on_msg
        self.poller = None
        self.s = None  # the socket, in the poll set
        self.io = None  # what bytes go through: the socket (mqtt_tls: its TLS wrapper)
        self.state = DOWN
        self.tcp = False  # the TCP connect has completed
        now = time.ticks_ms()
        self.until = now  # deadline of the connect or subscribe under way
        self.subs = 0  # SUBACKs still awaited
        self.out = bytearray(_OUT_BUF)
        self.out_n = 0
        self.out_since = now
        self.waiting = False  # gathered bytes wait for the socket (registered for POLLOUT)
        self.rx = bytearray(rx_size)
        self.rmv = memoryview(self.rx)
        self.b1 = bytearray(1)
        self.pid = 0
        self.ack = bytearray(b"\x40\x02\0\0")
        self.rtype = -1  # first byte of the packet being read; -1: none begun
        self.rlen = -1  # its remaining length; -1: still being read
        self.rn = self.rmul = self.rgot = self.rkeep = 0
        self.rx_until = now
        self.inflight = []  # [pid, tick sent] of QoS 1 publishes awaiting PUBACK, oldest first
        self.lost = 0  # QoS 1 publishes never acknowledged before a drop
        self.connects = 0
        self.last_error = None
        self.backoff = _BACKOFF_MIN_MS
        self.next_connect = now
        self.up_since = now
        self.heard = False  # a packet came from the broker after the link was up
        self.last_rx = now
        self.ping_sent = None

    def attach(self, poller):
        self.poller = poller

    # --- encoding: each packet gathered in `out`, then sent by _flush() ------------------------
    def write(self, data):
        """Gather a packet's pieces so that it leaves in one segment: a header sent alone would wait
        for the peer's delayed ACK (Nagle). A piece larger than the buffer, a payload, goes straight
        to the socket after what was gathered. Slices are assigned, never copied into new objects:
        a publish allocates nothing here."""
        m = len(data)
        if self.out_n + m > _OUT_BUF:
            self._flush()
            if self.out_n + m > _OUT_BUF:
                data = self._overflow(data)
                m = len(data)
        self.out[self.out_n:self.out_n + m] = data
        self.out_n += m

    def _overflow(self, data):
        """A piece the buffer cannot take even emptied: what is left of it to gather once the
        socket took what it could (a hook of mqtt_tls, which gathers all)."""
        if self.out_n or not self.tcp:
            raise OSError(errno.ENOBUFS)  # the broker does not read: dropped, data kept by the caller
        k = self.io.write(data) or 0  # None: the socket takes nothing now
        if len(data) - k > _OUT_BUF:
            raise OSError(errno.ENOBUFS)
        return memoryview(data)[k:]

    def _room(self, m):
        if self.out_n + m > _OUT_BUF:
            self._flush()
            if self.out_n + m > _OUT_BUF:
                raise OSError(errno.ENOBUFS)

    def _head(self, first, size):
        """A fixed header: the packet type and the length of what follows."""
        self._room(5)
        out, p = self.out, self.out_n
        out[p] = first
        while True:
            p += 1
            out[p] = size & 0x7F | (0x80 if size > 0x7F else 0)
            size >>= 7
            if not size:
                break
        self.out_n = p + 1

    def _u16(self, n):
        self._room(2)
        p = self.out_n
        self.out[p] = n >> 8
        self.out[p + 1] = n & 0xFF
        self.out_n = p + 2

    def _field(self, b):
        """A length-prefixed string (topic, client id, user)."""
        self._u16(len(b))
        self.write(b)

    def _next_pid(self):
        self.pid = self.pid % 0xFFFF + 1  # 1..65535: packet id 0 is invalid
        return self.pid

    def _connect_packet(self):
        cid, user = self.client_id, self.user
        self._head(0x10, 12 + len(cid) + (0 if user is None else 4 + len(user)))
        self.write(b"\0\4MQTT\4\x02" if user is None else b"\0\4MQTT\4\xc2")  # clean session; user, empty password
        self._u16(self.keepalive)
        self._field(cid)
        if user is not None:
            self._field(user)
            self._field(b"")

    # --- the loop's interface ----------------------------------------------------------------
    def service(self, now):
        """Start a connect when due, enforce every deadline, ping; return ms until the next deadline."""
        if self.state == DOWN and time.ticks_diff(now, self.next_connect) >= 0:
            self._open(now)
        t = self.timeout_ms
        if self.state == UP:
            wait = self._keepalive(now)
        elif self.state == SUBSCRIBING:
            wait = self._late(now, self.until, t, "SUBACK")
        elif self.state == OPENING:
            wait = self._late(now, self.until, self.connect_ms, "TLS handshake" if self.handshaking else "CONNACK")
        if self.state != DOWN and self.rtype >= 0:
            wait = min(wait, self._late(now, self.rx_until, t, "end of the packet begun"))
        if self.state != DOWN and self.waiting:
            wait = min(wait, self._late(now, time.ticks_add(self.out_since, t), t, "progress writing"))
        if self.state != DOWN and self.inflight:
            wait = min(wait, self._late(now, time.ticks_add(self.inflight[0][1], _PING_WAIT_MS), _PING_WAIT_MS, "PUBACK"))
        if self.state == DOWN:
            return max(0, time.ticks_diff(self.next_connect, now))
        return wait

    def handshake_json(self):
        """The TLS handshake's figures as JSON: none here (mqtt_tls tells them)."""
        return b"null"

    def _late(self, now, deadline, limit, what):
        """ms left until `deadline`; past it the link is dropped (and 0 returned)."""
        left = time.ticks_diff(deadline, now)
        if left > 0:
            return left
        self._drop("no %s within %d ms" % (what, limit))
        return 0

    def handle(self, obj, ev):
        """Serve a poll event of the broker socket; False if `obj` is not it."""
        if self.s is None or obj is not self.s:
            return False
        try:
            if ev & _OUT:
                if not self.tcp:
                    self._tcp_up(ev)
                self._flush()
            if ev & _IN:
                self._receive()
            elif ev & (select.POLLERR | select.POLLHUP):
                raise OSError(errno.ECONNRESET)
        except Exception as e:
            self._drop(e)
        return True

    def publish(self, topic, payload, qos=0):
        """Send one PUBLISH without waiting; False if the link is not up, or QoS 1 has too many
        unacknowledged (the caller keeps its data)."""
        if not (self.room() if qos else self.state == UP):
            return False
        try:
            self._head(0x30 | qos << 1, 2 + len(topic) + (2 if qos else 0) + len(payload))
            self._field(topic)
            if qos:  # the PUBACK comes through the reader
                self._u16(self._next_pid())
                self.inflight.append([self.pid, time.ticks_ms()])
            self.write(payload)
            self._flush()
        except Exception as e:
            self._drop(e)
            return False
        return True

    def room(self):
        """Whether a QoS 1 publish would be taken now."""
        return self.state == UP and len(self.inflight) < _INFLIGHT_MAX

    # --- connection --------------------------------------------------------------------------
    def _open(self, now):
        """Start a connect: the socket's connect completes later (POLLOUT), CONNECT waits in `out`."""
        self.state = OPENING
        self.tcp = False
        self.until = time.ticks_add(now, self.connect_ms)
        self.pid = 0
        try:
            key = (self.host, self.port)
            if key not in _addr:
                _addr[key] = socket.getaddrinfo(self.host, self.port)[0][-1]
            s = socket.socket()
            self.s = self.io = s
            s.setblocking(False)
            self.waiting = True
            self.out_since = now
            self.poller.register(s, _IN | _OUT)
            try:
                s.connect(_addr[key])
                connected = True
            except OSError as e:
                if e.errno != errno.EINPROGRESS:
                    raise
                connected = False
            self._connect_packet()
            if connected:
                self._tcp_up(_OUT)
                self._flush()
        except Exception as e:
            self._drop(e)

    def _tcp_up(self, ev):
        """The TCP connect completed, or failed: poll event `ev` (a hook of mqtt_tls)."""
        self.tcp = True

    def _subscribe(self):
        self.subs = len(self.topics)
        self.until = time.ticks_add(time.ticks_ms(), self.timeout_ms)
        self.state = SUBSCRIBING
        for t in self.topics:  # at QoS 0; each SUBACK comes through the reader
            self._head(0x82, 5 + len(t))
            self._u16(self._next_pid())
            self._field(t)
            self.write(b"\0")
        self._flush()
        if not self.subs:
            self._up()

    def _up(self):
        self.state = UP
        self.connects += 1
        self.last_error = None
        self.up_since = time.ticks_ms()
        self.heard = False
        self.on_up()

    def drop(self, why):
        """Close the link (e.g. it is unusable to the caller); the next attempt follows the backoff."""
        if self.state != DOWN:
            self._drop(why)

    def _drop(self, err):
        now = time.ticks_ms()
        s, self.s, self.io = self.s, None, None
        if s is not None:
            try:
                self.poller.unregister(s)
            except (OSError, ValueError, KeyError, AttributeError):
                pass
            try:
                s.close()
            except OSError:
                pass
        if self.state == UP and self.heard and time.ticks_diff(now, self.up_since) >= _STABLE_MS:
            self.backoff = _BACKOFF_MIN_MS  # a link that worked; one dropped at once keeps backing off
        self.state = DOWN
        self.out_n = 0
        self.waiting = False
        self.rtype = -1
        self.lost += len(self.inflight)
        self.inflight.clear()
        self.ping_sent = None
        self.last_error = err if isinstance(err, str) else _describe(err)
        wait = self.backoff - self.backoff // 4 + random.getrandbits(16) % (self.backoff // 2 + 1)
        self.next_connect = time.ticks_add(now, wait)
        self.backoff = min(self.backoff * 2, _BACKOFF_MAX_MS)
        print("mqtt: %s:%d: %s; next attempt in %d ms" % (self.host, self.port, self.last_error, wait))

    def _keepalive(self, now):
        """PINGREQ when the broker has been silent for half the keepalive; drop if unanswered."""
        if self.ping_sent is not None:
            left = _PING_WAIT_MS - time.ticks_diff(now, self.ping_sent)
            if left <= 0:
                self._drop("no PINGRESP within %d ms" % _PING_WAIT_MS)
                return 0
            return left
        left = self.keepalive * 500 - time.ticks_diff(now, self.last_rx)
        if left > 0:
            return left
        try:
            self.write(b"\xc0\0")  # PINGREQ
            self._flush()
            self.ping_sent = now
        except Exception as e:
            self._drop(e)
            return 0
        return _PING_WAIT_MS

    def _flush(self):
        """Send what is gathered, as much as the socket takes now; the rest waits for POLLOUT."""
        if not self.tcp:
            return
        while self.out_n:
            k = self._send(self.out_n)
            if not k:
                break
            if k < self.out_n:
                self.out[:self.out_n - k] = self.out[k:self.out_n]  # rare: only a congested link keeps a rest
            self.out_n -= k
        waiting = self.out_n > 0 and not self.handshaking
        if waiting != self.waiting:
            if waiting:
                self.out_since = time.ticks_ms()
            self.waiting = waiting
            self.poller.modify(self.s, _IN | _OUT if waiting else _IN)

    def _send(self, n):
        """Write the first n gathered bytes; the count the socket took (a hook of mqtt_tls)."""
        return self.io.write(self.out, 0, n)

    # --- the reader ---------------------------------------------------------------------------
    def _receive(self):
        """Read and handle what came, a few packets at most; True if it stopped at that limit."""
        for _ in range(_PACKETS_PER_TURN):
            if not self._take():
                return False
            self._dispatch()
            if self.s is None:
                return False
            self.rtype = -1
        return True

    def _take(self):
        """Read what is there of the current packet; True once it is whole in the buffer (beyond
        the buffer, a PUBLISH's payload is read and thrown away, its topic kept)."""
        s = self.io
        while self.rtype < 0 or self.rlen < 0:  # fixed header: type, then the length a byte at a time
            if not _read(s, self.b1):
                return False
            b = self.b1[0]
            self.last_rx = time.ticks_ms()
            if self.rtype < 0:
                if b >> 4 not in _FROM_BROKER:
                    raise OSError("protocol error: packet type %d" % (b >> 4))
                self.rtype, self.rlen, self.rn, self.rmul = b, -1, 0, 1
                self.rx_until = time.ticks_add(self.last_rx, self.timeout_ms)
                continue
            self.rn += (b & 0x7F) * self.rmul
            if b & 0x80:
                self.rmul <<= 7
                if self.rmul > 0x200000:
                    raise OSError("protocol error: length")
                continue
            self.rlen, self.rgot, self.rkeep = self.rn, 0, -1
            t = self.rtype >> 4
            if (self.rlen < 2 if t == 3 else self.rlen > 8) or (t == 2 and self.rlen != 2):
                raise OSError("protocol error: length %d for type %d" % (self.rlen, t))
        cap = len(self.rx)
        while self.rgot < self.rlen:
            a = self.rgot
            if a >= cap:
                a = self._keep_topic()
            k = _read(s, self.rmv[a:min(cap, a + self.rlen - self.rgot)])
            if not k:
                return False
            self.rgot += k
            self.last_rx = time.ticks_ms()
        return True

    def _keep_topic(self):
        """Where the skipped rest of an oversized PUBLISH goes: after its topic (and packet id)."""
        if self.rkeep < 0:
            k = 2 + (self.rx[0] << 8 | self.rx[1]) + (2 if self.rtype & 6 else 0)
            self.rkeep = k if k < len(self.rx) - 16 else 0  # 0: not even the topic fits
        return self.rkeep

    def _dispatch(self):
        t, rx = self.rtype >> 4, self.rx
        if t == 3:
            self._message()
        elif t == 4:  # PUBACK
            pid = rx[0] << 8 | rx[1]
            for i, f in enumerate(self.inflight):
                if f[0] == pid:
                    del self.inflight[i]
                    break
        elif t == 13:  # PINGRESP
            self.ping_sent = None
        elif t == 2:
            if self.state != OPENING:
                raise OSError("protocol error: CONNACK")
            if rx[1]:
                self._drop("connection refused by broker (code %d)" % rx[1])
                return
            self._subscribe()
            return
        elif t == 9 and self.state == SUBSCRIBING:
            if rx[2] & 0x80:
                raise OSError("subscription refused")
            self.subs -= 1
            if not self.subs:
                self._up()
            return
        if self.state == UP:
            self.heard = True

    def _message(self):
        h, rx, n = self.rtype, self.rx, self.rlen
        qos = h >> 1 & 3
        end = 2 + (rx[0] << 8 | rx[1])
        skipped = n > len(rx)
        if end + (2 if qos else 0) > n:
            raise OSError("protocol error: topic length")
        if qos:
            if skipped and not self.rkeep:
                raise OSError("protocol error: topic longer than the buffer")
            self.ack[2], self.ack[3] = rx[end], rx[end + 1]
            self.write(self.ack)  # QoS 1 (we subscribe at 0; a broker may still send 1)
            self._flush()
        if skipped and not self.rkeep:
            return  # nothing left to tell whom to answer
        start = end + (2 if qos else 0)
        try:
            self.on_msg(self.rmv[2:end], None if skipped else self.rmv[start:n], bool(h & 1))
        except Exception as e:  # what a peer sends must never cost the link
            print("mqtt: message handler: %r" % e)


_FROM_BROKER = (2, 3, 4, 9, 11, 13)  # CONNACK PUBLISH PUBACK SUBACK UNSUBACK PINGRESP


def _read(s, mv):
    """readinto: the count read, 0 when nothing is there now; raises when the broker closed."""
    k = s.readinto(mv)
    if k is None:
        return 0
    if not k:
        raise OSError("closed by broker")
    return k


def _describe(e):
    """A short, secret-free description of an error for logs and status."""
    if isinstance(e, OSError) and e.args and isinstance(e.args[0], int):
        return "socket error %s" % errno.errorcode.get(e.args[0], e.args[0])
    return "%s: %s" % (type(e).__name__, e.args[0] if e.args else "")
