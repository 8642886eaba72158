# ThingsBoard telemetry and control over MQTT (umqtt.simple), as one more participant of the main
# loop: its socket sits in the loop's poll set, and service() does the timed work (publish, ping,
# reconnect) and says how long the loop may sleep. umqtt.simple blocks on connect, on reads after
# the first byte and on writes; every one of those is bounded here by a socket timeout, so the HTTP
# server is never held up for longer than cfg.MQTT_TIMEOUT_MS.
import errno
import gc
import json
import random
import select
import socket
import time

import cfg
import hw
import streams
from http import Writer
from micropython import const
from umqtt import simple

TELEMETRY = b"v1/devices/me/telemetry"
ATTRIBUTES = b"v1/devices/me/attributes"
RPC_REQUESTS = b"v1/devices/me/rpc/request/+"
_RPC_PREFIX_LEN = const(26)  # len("v1/devices/me/rpc/request/")
_RPC_RESPONSE = "v1/devices/me/rpc/response/"

_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(60000)
_PING_WAIT_MS = const(10000)  # a PINGREQ unanswered for this long means the link is dead
_BATCH = const(4)  # buffered readings per message when they are sent after a reconnect

# ms since the Unix epoch from the RTC: ThingsBoard's "ts". Bare-metal ports count from 2000.
_EPOCH_MS = 946684800000 if time.gmtime(0)[0] == 2000 else 0


def now_ms():
    return time.time_ns() // 1000000 + _EPOCH_MS


class _Socket:
    """The broker socket as umqtt.simple sees it: 'blocking' means blocking for at most the
    configured timeout, so no read or write it does can hold the loop for longer."""

    def __init__(self):
        self.s = socket.socket()
        self.s.settimeout(cfg.MQTT_TIMEOUT_MS / 1000)

    def connect(self, addr):
        self.s.connect(addr)

    def setblocking(self, flag):
        self.s.settimeout(cfg.MQTT_TIMEOUT_MS / 1000 if flag else 0)

    def read(self, n):
        return self.s.read(n)

    def write(self, data, n=-1):
        return self.s.write(data if n < 0 else memoryview(data)[:n])

    def close(self):
        self.s.close()


_addr = {}  # resolved broker address: DNS can take seconds, so only the first connect pays it


class _Net:
    """Stands in for umqtt.simple's `socket` module (it creates its socket inside connect())."""

    socket = _Socket

    @staticmethod
    def getaddrinfo(host, port):
        key = (host, port)
        if key not in _addr:
            _addr[key] = socket.getaddrinfo(host, port)
        return _addr[key]


simple.socket = _Net  # type: ignore[attr-defined]  # the stubs do not list the module umqtt uses


class Telemetry:
    """Publishes readings every cfg.TELEMETRY_INTERVAL s, keeps them while offline, answers RPC."""

    def __init__(self, ip=lambda: "127.0.0.1"):
        self.enabled = bool(cfg.MQTT_HOST)
        self.ip = ip
        self.client = None
        self.poller = None
        self.published = 0
        self.failed = 0
        self.dropped = 0
        self.connects = 0
        self.last_publish = None  # ticks of the last successful publish
        self.last_error = None
        self.backoff = _BACKOFF_MIN_MS
        now = time.ticks_ms()
        self.next_connect = now
        self.next_publish = time.ticks_add(now, cfg.TELEMETRY_INTERVAL * 1000)
        self.last_rx = now
        self.ping_sent = None
        self.changed = []  # streams set since the last service()
        self.ring = [None] * cfg.TELEMETRY_BUFFER  # readings kept while offline, oldest first
        self.head = 0
        self.queued = 0
        self.switch = _switch_stream()
        if self.enabled:
            self.out = Writer(_payload_max())
            streams.on_change.append(self.changed.append)

    def attach(self, poller):
        self.poller = poller

    def state_json(self):
        """The link's state as a JSON string, for /Datastreams/health."""
        if not self.enabled:
            return b'"off"'
        return b'"connected"' if self.client else b'"disconnected"'

    # --- the loop's interface ----------------------------------------------------------------
    def service(self, now):
        """Do what is due; return ms until the next deadline (-1: none)."""
        if not self.enabled:
            return -1
        if self.client is None and time.ticks_diff(now, self.next_connect) >= 0:
            self._connect()
        if time.ticks_diff(now, self.next_publish) >= 0:
            late = time.ticks_diff(now, self.next_publish) >= cfg.TELEMETRY_INTERVAL * 1000
            self.next_publish = time.ticks_add(now if late else self.next_publish, cfg.TELEMETRY_INTERVAL * 1000)
            self._send(streams.STREAMS, True)
        if self.changed:
            self._send(self.changed, False)
            self.changed.clear()
        wait = time.ticks_diff(self.next_publish, now)
        if self.client is None:
            return min(wait, max(0, time.ticks_diff(self.next_connect, now)))
        return min(wait, self._keepalive(now))

    def handle(self, obj, ev):
        """Serve a poll event of the broker socket; False if `obj` is not it."""
        if self.client is None or obj is not self.client.sock.s:
            return False
        try:
            if ev & select.POLLIN:
                self.last_rx = time.ticks_ms()
                self.ping_sent = None
                self.client.check_msg()
            elif ev & (select.POLLERR | select.POLLHUP):
                raise OSError("connection lost")
        except Exception as e:
            self._drop(e)
        return True

    # --- connection --------------------------------------------------------------------------
    def _connect(self):
        c = simple.MQTTClient("tb_" + cfg.OSID, cfg.MQTT_HOST, cfg.MQTT_PORT, user=cfg.MQTT_TOKEN,
                              password="", keepalive=cfg.MQTT_KEEPALIVE)
        c.set_callback(self._rpc)
        try:
            c.connect()
            self.client = c
            c.subscribe(RPC_REQUESTS)
        except Exception as e:
            self.client = c
            self._drop(e)
            return
        self.connects += 1
        self.backoff = _BACKOFF_MIN_MS
        self.last_rx = time.ticks_ms()
        self.ping_sent = None
        if self.poller is not None:
            self.poller.register(c.sock.s, select.POLLIN)
        print("mqtt: connected to %s:%d" % (cfg.MQTT_HOST, cfg.MQTT_PORT))
        self._publish(ATTRIBUTES, _attributes(self.ip()))
        self._flush()

    def _drop(self, err):
        """Forget the connection and schedule the next attempt with backoff and jitter."""
        c, self.client = self.client, None
        if c is not None and c.sock is not None:
            if self.poller is not None:
                try:
                    self.poller.unregister(c.sock.s)
                except (OSError, ValueError, KeyError):
                    pass
            try:
                c.sock.close()
            except OSError:
                pass
        self.last_error = _describe(err)
        wait = self.backoff - self.backoff // 4 + random.getrandbits(16) % (self.backoff // 2 + 1)
        self.next_connect = time.ticks_add(time.ticks_ms(), wait)
        self.backoff = min(self.backoff * 2, _BACKOFF_MAX_MS)
        print("mqtt: %s; next attempt in %d ms" % (self.last_error, wait))

    def _keepalive(self, now):
        """PINGREQ when the broker has been silent for half the keepalive; drop if unanswered."""
        half = cfg.MQTT_KEEPALIVE * 500
        if self.ping_sent is not None:
            left = _PING_WAIT_MS - time.ticks_diff(now, self.ping_sent)
            if left <= 0:
                self._drop(OSError("no PINGRESP"))
                return max(0, time.ticks_diff(self.next_connect, now))
            return left
        left = half - time.ticks_diff(now, self.last_rx)
        if left <= 0:
            try:
                self.client.ping()
                self.ping_sent = now
            except Exception as e:
                self._drop(e)
                return 0
            return _PING_WAIT_MS
        return left

    # --- telemetry ---------------------------------------------------------------------------
    def _send(self, which, with_mem):
        """Publish the current values of `which`; while offline keep them in the ring."""
        out = self.out
        out.pos = 0
        out.overflow = False
        _values(out, which, with_mem)
        if out.overflow:  # cannot happen with VALUE_MAX-clipped values; never send half a payload
            self.failed += 1
            self.last_error = "payload too large"
            return
        if self.client is not None and self._publish(TELEMETRY, out.mv[:out.pos]):
            self.published += 1
            self.last_publish = time.ticks_ms()
            return
        self._keep(b'{"ts":%d,"values":%s}' % (now_ms(), bytes(out.mv[:out.pos])))

    def _publish(self, topic, payload):
        try:
            self.client.publish(topic, payload, qos=cfg.MQTT_QOS)
            return True
        except Exception as e:
            self.failed += 1
            self._drop(e)
            return False

    def _keep(self, record):
        size = len(self.ring)
        if not size:
            self.dropped += 1
            return
        if self.queued == size:
            self.head = (self.head + 1) % size  # full: the oldest reading goes
            self.queued -= 1
            self.dropped += 1
        self.ring[(self.head + self.queued) % size] = record
        self.queued += 1

    def _flush(self):
        """Send the kept readings, oldest first, as ThingsBoard ts batches."""
        size = len(self.ring)
        while self.queued and self.client is not None:
            n = min(self.queued, _BATCH)
            batch = b"[" + b",".join(self.ring[(self.head + i) % size] for i in range(n)) + b"]"  # type: ignore[misc]
            if not self._publish(TELEMETRY, batch):
                return
            for i in range(n):
                self.ring[(self.head + i) % size] = None
            self.head = (self.head + n) % size
            self.queued -= n
            self.published += 1
            self.last_publish = time.ticks_ms()

    # --- RPC ---------------------------------------------------------------------------------
    def _rpc(self, topic, msg):
        """Answer a server-side RPC request on its response topic."""
        reply = self._call(msg)
        self._publish(_RPC_RESPONSE + topic[_RPC_PREFIX_LEN:].decode(), _json(reply))

    def _call(self, msg):
        try:
            req = json.loads(msg)
            method = req["method"]
            params = req.get("params")
        except (ValueError, KeyError, TypeError, AttributeError):
            return {"error": "bad request"}
        try:
            if method in ("getValue", "getState", "setValue", "setState"):
                if self.switch is None:
                    return {"error": "no switch datastream"}
                if method[0] == "s":
                    self.switch.set(self.switch.parse(_param_text(params)))
                return self.switch.value()
            if method in ("getDatastream", "setDatastream"):
                s = streams.find(params["id"]) if isinstance(params, dict) else None
                if s is None:
                    return {"error": "unknown datastream"}
                if method == "setDatastream":
                    s.set(s.parse(_param_text(params.get("value"))))
                return {"id": s.id, "value": s.value()}
        except (ValueError, KeyError, TypeError, OSError) as e:
            return {"error": streams.reason(e)}
        return {"error": "unknown method"}

    # --- /telemetry/status -------------------------------------------------------------------
    def status(self, c):
        now = time.ticks_ms()
        c.add(b'{"enabled":%s,"connected":%s,"host":' % (
            b"true" if self.enabled else b"false", b"true" if self.client else b"false"))
        if self.enabled:
            c.add_str(cfg.MQTT_HOST)
        else:
            c.add(b"null")
        c.add(b',"port":%d,"topic":"%s","interval_s":%d,"published":%d,"failed":%d,"last_publish_ms_ago":' % (
            cfg.MQTT_PORT, TELEMETRY, cfg.TELEMETRY_INTERVAL, self.published, self.failed))
        c.add(b"null" if self.last_publish is None else b"%d" % time.ticks_diff(now, self.last_publish))
        c.add(b',"last_error":')
        if self.last_error is None:
            c.add(b"null")
        else:
            c.add_str(self.last_error)
        c.add(b',"queued":%d,"dropped":%d,"connects":%d,"mem_free":%d}' % (
            self.queued, self.dropped, self.connects, gc.mem_free()))
        c.finish(200)


def _values(out, which, with_mem):
    """Flat ThingsBoard payload: {"<id>": value, ...}; a stream that cannot be read is left out."""
    out.add(b"{")
    first = True
    for s in which:
        try:
            v = s.value()
        except Exception:
            continue
        if not first:
            out.add(b",")
        first = False
        out.add(s.jid)
        out.add(b":")
        streams.add_value(out, v, False)
    if with_mem:
        out.add(b'%s"_mem_free":%d' % (b"" if first else b",", gc.mem_free()))
    out.add(b"}")


def _json(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def _attributes(ip):
    return _json({
        "firmware_version": streams.VERSION, "osid": cfg.OSID, "title": cfg.TITLE, "ip": ip,
        "platform": "esp32" if hw.BOARD else "host",
        "datastreams": [{"id": s.id, "format": s.format, "type": "actuator" if s.actuator else "sensor"}
                        for s in streams.STREAMS],
    })


def _payload_max():
    return 32 + sum(len(s.jid) + streams.VALUE_MAX + 8 for s in streams.STREAMS)


def _switch_stream():
    """The stream the switch widgets drive: cfg.RPC_SWITCH, else the first boolean actuator."""
    sid = getattr(cfg, "RPC_SWITCH", "")
    for s in streams.STREAMS:
        if (s.id == sid) if sid else (s.actuator and s.format == "boolean"):
            return s
    return None


def _param_text(p):
    """An RPC parameter as the text SetDatastream's `comando` would carry."""
    if p is True or p is False:
        return "on" if p else "off"
    if isinstance(p, (int, float, str)):
        return str(p)
    raise ValueError("bad params")


def _describe(e):
    """A short, secret-free description of an error for logs and status."""
    if isinstance(e, simple.MQTTException):
        return "connection refused by broker (code %s)" % (e.args[0] if e.args else "?")
    if isinstance(e, OSError) and e.args and isinstance(e.args[0], int):
        return "socket error %s" % errno.errorcode.get(e.args[0], e.args[0])
    return "%s: %s" % (type(e).__name__, e.args[0] if e.args else "")
