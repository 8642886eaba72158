# The device on ThingsBoard: telemetry every cfg.TELEMETRY_INTERVAL s and on change, readings kept
# while offline, client attributes on connect, server-side RPC; and the same telemetry, publish-only,
# to the system's own broker (LOCAL_MQTT_*) when one is set. Topics and JSON on top of the MQTT
# channel (mqtt.py), which does the bytes and never makes the loop wait.
import gc
import json
import time

import cfg
import hw
import mqtt
import streams
from http import Writer
from micropython import const

TELEMETRY = b"v1/devices/me/telemetry"
ATTRIBUTES = b"v1/devices/me/attributes"
RPC_REQUESTS = b"v1/devices/me/rpc/request/+"
_RPC_PREFIX = b"v1/devices/me/rpc/request/"
_RPC_RESPONSE = b"v1/devices/me/rpc/response/"
_RPC_NEST_MAX = const(8)  # brackets in one request: params are flat, and each level costs heap

_BATCH = const(4)  # buffered readings per message when they are sent after a reconnect

# ms since the Unix epoch from the RTC: ThingsBoard's "ts". Bare-metal ports count from 2000.
_EPOCH_MS = 946684800000 if time.gmtime(0)[0] == 2000 else 0


def now_ms():
    return time.time_ns() // 1000000 + _EPOCH_MS


class Telemetry:
    """Publishes readings every cfg.TELEMETRY_INTERVAL s, keeps them while offline, answers RPC."""

    def __init__(self, ip=lambda: "127.0.0.1"):
        local = getattr(cfg, "LOCAL_MQTT_HOST", "")  # a board's cfg.py older than these keys works
        self.enabled = bool(cfg.MQTT_HOST) or bool(local)
        self.ip = ip
        self.published = 0
        self.failed = 0
        self.dropped = 0
        self.last_publish = None  # ticks of the last successful publish
        self.last_error = None  # a failure of this layer (the link's own is the channel's)
        now = time.ticks_ms()
        self.next_publish = time.ticks_add(now, cfg.TELEMETRY_INTERVAL * 1000)
        self.changed = []  # streams set since the last service(), each once
        self.ring = [None] * cfg.TELEMETRY_BUFFER  # readings kept while offline, oldest first
        self.head = 0
        self.queued = 0
        self.switch = _switch_stream()
        self.link = self.local = None
        if cfg.MQTT_HOST:
            args = (cfg.MQTT_HOST, cfg.MQTT_PORT, "tb_" + cfg.OSID, cfg.MQTT_TOKEN or None, cfg.MQTT_KEEPALIVE,
                    cfg.MQTT_TIMEOUT_MS, getattr(cfg, "MQTT_MAX_PACKET", 2304), (RPC_REQUESTS,), self._connected,
                    self._message)
            if not cfg.MQTT_TLS:  # check.py gave a board's older cfg.py the TLS keys
                self.link = mqtt.Channel(*args)
            else:
                import mqtt_tls  # only with MQTT_TLS on: a device without it pays nothing

                self.link = mqtt_tls.Channel((cfg.MQTT_CA, cfg.MQTT_CERT, cfg.MQTT_KEY, cfg.MQTT_SERVER_HOSTNAME
                                              or cfg.MQTT_HOST, cfg.MQTT_TLS_TIMEOUT_MS), *args)
        if local:
            # Publish-only: no subscription, so its receive buffer only ever holds CONNACK, PINGRESP, PUBACK.
            self.local = mqtt.Channel(local, getattr(cfg, "LOCAL_MQTT_PORT", 1883), "ds_" + cfg.OSID, None,
                                      cfg.MQTT_KEEPALIVE, cfg.MQTT_TIMEOUT_MS, 8, (), _nothing, _nothing)
            self.local_topic = getattr(cfg, "LOCAL_MQTT_TOPIC", "datastream/telemetry").encode()
        self.links = [link for link in (self.link, self.local) if link is not None]
        if self.enabled:
            self.out = Writer(_payload_max())
            streams.on_change.append(self._changed)

    def attach(self, poller):
        for link in self.links:
            link.attach(poller)

    @property
    def connected(self):
        return self.link is not None and self.link.state == mqtt.UP

    def state_json(self):
        """ThingsBoard's link as a JSON string, for /Datastreams/health."""
        if self.link is None:
            return b'"off"'
        return b'"connected"' if self.connected else b'"disconnected"'

    # --- the loop's interface ----------------------------------------------------------------
    def service(self, now):
        """Do what is due; return ms until the next deadline (-1: none)."""
        if not self.enabled:
            return -1
        wait = cfg.TELEMETRY_INTERVAL * 1000
        for link in self.links:
            wait = min(wait, link.service(now))
        if time.ticks_diff(now, self.next_publish) >= 0:
            late = time.ticks_diff(now, self.next_publish) >= cfg.TELEMETRY_INTERVAL * 1000
            self.next_publish = time.ticks_add(now if late else self.next_publish, cfg.TELEMETRY_INTERVAL * 1000)
            self._send(streams.STREAMS, True)
        if self.changed:
            self._send(self.changed, False)
            self.changed.clear()
        if self.queued and self.link.room():  # kept while the link was busy: sent once it has room
            self._flush()
        return min(wait, time.ticks_diff(self.next_publish, now))

    def handle(self, obj, ev):
        """Serve a poll event of a broker socket; False if `obj` is not one."""
        for link in self.links:
            if link.handle(obj, ev):
                return True
        return False

    def _changed(self, s):
        if s not in self.changed:  # many sets in one round: one publish, with the last value
            self.changed.append(s)

    def _connected(self):
        print("mqtt: connected to %s:%d" % (cfg.MQTT_HOST, cfg.MQTT_PORT))
        self._publish(ATTRIBUTES, _attributes(self.ip()))
        self._flush()

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
        payload = out.mv[:out.pos]
        if self.local is not None:
            self.local.publish(self.local_topic, payload)  # live values only: the ring is ThingsBoard's
        if self.link is None:
            return
        if self._publish(TELEMETRY, payload):
            self.published += 1
            self.last_publish = time.ticks_ms()
            return
        self._keep(b'{"ts":%d,"values":%s}' % (now_ms(), bytes(payload)))

    def _publish(self, topic, payload):
        if self.link.publish(topic, payload, cfg.MQTT_QOS):
            return True
        if self.connected:
            self.failed += 1  # up, yet not sent: the link dropped, or too many await PUBACK
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
        while self.queued:
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
    def _message(self, topic, payload, retained):
        """Answer a server-side RPC request on its response topic. A retained request is an old one
        the broker keeps: it is never run (again), as on every reconnect it would be."""
        k = len(_RPC_PREFIX)
        if retained or len(topic) <= k or bytes(topic[:k]) != _RPC_PREFIX:
            return
        try:
            msg = None if payload is None else bytes(payload)
            if msg is None:
                reply = {"error": "payload too large"}
            elif msg.count(b"[") + msg.count(b"{") > _RPC_NEST_MAX:  # bounds the nesting, counted in C
                reply = {"error": "bad request: nested too deeply"}
            else:
                reply = self._call(msg)
            data = reply if isinstance(reply, bytes) else _json(reply)
        except MemoryError:
            gc.collect()
            data = b'{"error":"out of memory"}'
        self._publish(_RPC_RESPONSE + bytes(topic[k:]), data)  # the id as bytes: any UTF-8 goes back as it came

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
                out = self.out  # the value written as telemetry and HTTP write it: a float to 6 digits, with its point
                out.pos = 0
                streams.add_value(out, s.value(), False)
                return b'{"id":%s,"value":%s}' % (s.jid, bytes(out.mv[:out.pos]))
        except (ValueError, KeyError, TypeError, OSError) as e:
            return {"error": streams.reason(e)}
        return {"error": "unknown method"}

    # --- /telemetry/status -------------------------------------------------------------------
    def status(self, c):
        now = time.ticks_ms()
        link = self.link
        c.add(b'{"enabled":%s,"connected":%s,"host":' % (
            b"true" if self.enabled else b"false", b"true" if self.connected else b"false"))
        if link is None:
            c.add(b'null,"port":null')
        else:
            c.add_str(link.host)
            c.add(b',"port":%d' % link.port)
        c.add(b',"topic":"%s","interval_s":%d,"published":%d,"failed":%d,"last_publish_ms_ago":' % (
            TELEMETRY, cfg.TELEMETRY_INTERVAL, self.published, self.failed))
        c.add(b"null" if self.last_publish is None else b"%d" % time.ticks_diff(now, self.last_publish))
        c.add(b',"last_error":')
        _add_text(c, link.last_error if link is not None and link.last_error else self.last_error)
        c.add(b',"queued":%d,"dropped":%d,"connects":%d,"lost":%d,"tls":' % (
            self.queued, self.dropped, link.connects if link else 0, link.lost if link else 0))
        c.add(link.handshake_json() if link else b"null")
        c.add(b',"local":')
        local = self.local
        if local is None:
            c.add(b"null")
        else:
            c.add(b'{"host":')
            c.add_str(local.host)
            c.add(b',"port":%d,"topic":' % local.port)
            c.add_str(self.local_topic)
            c.add(b',"connected":%s,"connects":%d,"last_error":' % (
                b"true" if local.state == mqtt.UP else b"false", local.connects))
            _add_text(c, local.last_error)
            c.add(b"}")
        c.add(b',"mem_free":%d}' % gc.mem_free())
        c.finish(200)


def _nothing(*args):
    pass


def _add_text(c, text):
    """A JSON string, or null for None."""
    if text is None:
        c.add(b"null")
    else:
        c.add_str(text)


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
