# The device on ThingsBoard: telemetry every cfg.TELEMETRY_INTERVAL s and on change, readings kept
# while offline, server-side RPC, every publish within the session's limits; and the same telemetry,
# publish-only, to the system's own broker (LOCAL_MQTT_*) when one is set. The rarer exchanges (what
# the device asks at each connect and the answers, client attributes, shared attributes; getting a
# token by provisioning) are in shared.py and provision.py, each imported when one begins and
# dropped when it ends; their state lives here. Topics and
# JSON on top of the MQTT channel (mqtt.py), which does the bytes and never makes the loop wait:
# what the device asks the platform is answered through the reader, so each question is a request
# id and a deadline, never a wait.
import gc
import json
import sys
import time

import cfg
import mqtt
import persist
import streams
from http import Writer
from micropython import const

TELEMETRY = b"v1/devices/me/telemetry"
ATTRIBUTES = b"v1/devices/me/attributes"
RPC_REQUESTS = b"v1/devices/me/rpc/request/+"
RPC_REQUEST = b"v1/devices/me/rpc/request/"
_RPC_RESPONSE = b"v1/devices/me/rpc/response/"
ATTR_REQUEST = b"v1/devices/me/attributes/request/"
ATTR_RESPONSE = b"v1/devices/me/attributes/response/"
# Server-side RPC, shared attribute pushes, and the answers to the device's own requests (a plain
# broker also hands the device its own publishes on these: answers to other ids are ignored).
SW_RESPONSE = b"v2/sw/response/"  # an update's chunks (ota.py)
SW_ERROR = b"v2/fw/error"  # ThingsBoard's errors for software packages too (MqttTransportHandler)
TOPICS = (RPC_REQUESTS, ATTRIBUTES, ATTR_RESPONSE + b"+", _RPC_RESPONSE + b"+", SW_RESPONSE + b"+/chunk/+", SW_ERROR)
_RPC_NEST_MAX = const(8)  # brackets in one request: params are flat, and each level costs heap
INTERVAL_MAX = 86400  # s: the longest telemetry_interval the platform may set (a day)
LIMITS = b'{"method":"getSessionLimits","params":{}}'  # the device's question (client-side RPC)
TOKEN_FILE = "token.json"  # the access token provisioning got
PROVISION_RESPONSE = b"/provision/response"
PROVISION_WAIT_MS = const(5000)  # for the provisioning answer (the platform creates the device)

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
        self.changed = []  # streams set since the last service(), each once
        self.ring = [None] * cfg.TELEMETRY_BUFFER  # readings kept while offline, oldest first
        self.head = 0
        self.queued = 0
        self.switch = _switch_stream()
        self.req = 0  # the last request id the device used (attributes, client-side RPC)
        self.attr_id = self.limits_id = None  # ids of the requests awaiting an answer
        self.limits_until = None  # while the session limits are awaited: the deadline
        self.max_payload = 0  # the session's maxPayloadSize (0: not known); kept across reconnects
        self.sw = {}  # sw_* shared attributes: the software the platform wants on the device
        self.update = None  # an update under way (ota.Update): ota.py is imported only meanwhile
        self.sw_due = False  # software.py has something to do: the report after a connect, a package named
        self.sw_reported = False
        self.own = 0  # size of the client attributes last published
        self.link = self.local = None
        token = cfg.MQTT_TOKEN or persist.load(TOKEN_FILE)
        # No token yet: the link first connects as "provision" to get one (provision.py), then as itself.
        # (With X.509 credentials the certificate is the identity: no token, and nothing to provision.)
        self.provisioning = bool(cfg.MQTT_HOST and not token and not (cfg.MQTT_TLS and cfg.MQTT_CERT))
        self.token = None  # the token provisioning got, until the loop has stored it
        self.until = None  # the deadline of the provisioning answer
        if cfg.MQTT_HOST:
            who, topics = ("provision", (PROVISION_RESPONSE,)) if self.provisioning else ("tb_" + cfg.OSID, TOPICS)
            args = (cfg.MQTT_HOST, cfg.MQTT_PORT, who, "provision" if self.provisioning else (token or None),
                    cfg.MQTT_KEEPALIVE, cfg.MQTT_TIMEOUT_MS, getattr(cfg, "MQTT_MAX_PACKET", 2304), topics,
                    self._connected, self._message)
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
        n = streams.platform.get("telemetry_interval")  # the platform's, kept on flash (shared.py)
        if isinstance(n, int) and 0 < n <= INTERVAL_MAX:
            cfg.TELEMETRY_INTERVAL = n
        self.next_publish = time.ticks_add(time.ticks_ms(), cfg.TELEMETRY_INTERVAL * 1000)

    def attach(self, poller):
        for link in self.links:
            link.attach(poller)

    @property
    def connected(self):
        return self.link is not None and self.link.state == mqtt.UP and not self.provisioning

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
        if self.token is not None:
            self.call("provision", "store")  # from the loop, not in the message callback
        elif self.until is not None:
            if self.link.state != mqtt.UP:
                self.until = None  # asked again at the next connect
            elif time.ticks_diff(now, self.until) >= 0:
                self.until = None
                self.link.drop("no provisioning answer within %d ms" % PROVISION_WAIT_MS)
            else:
                wait = min(wait, time.ticks_diff(self.until, now))
        if self.limits_until is not None:
            if not self.connected:
                self.limits_until = None  # asked again at the next connect
                sys.modules.pop("shared", None)
            elif time.ticks_diff(now, self.limits_until) >= 0:
                self.platform("ready")  # a platform that does not answer getSessionLimits: go on without
            else:
                wait = min(wait, time.ticks_diff(self.limits_until, now))
        if time.ticks_diff(now, self.next_publish) >= 0:
            late = time.ticks_diff(now, self.next_publish) >= cfg.TELEMETRY_INTERVAL * 1000
            self.next_publish = time.ticks_add(now if late else self.next_publish, cfg.TELEMETRY_INTERVAL * 1000)
            self._send(streams.STREAMS, True)
        if self.changed:
            self._send(self.changed, False)
            self.changed.clear()
        if self.queued and self.link.room() and self.limits_until is None:  # kept while the link was busy
            self.flush()
        if self.sw_due and self.limits_until is None:
            self.sw_due = False
            self.call("software", "check")
        if self.update is not None:
            wait = min(wait, self.update.service(now))
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
        if self.provisioning:
            self.call("provision", "ask")
        else:
            self.sw_reported = False
            self.platform("connected")

    def platform(self, fn, *args):
        return self.call("shared", fn, *args)

    def call(self, module, fn, *args):
        """module.<fn>(self, *args): the code of the rarer exchanges with the platform is imported
        when one begins and dropped when it ends, as check.py is at boot: at rest it costs nothing.
        The connect's exchange spans messages (its answers, or their deadline): shared.py stays
        imported meanwhile, so that each answer does not import it again."""
        mod = __import__(module)
        try:
            return getattr(mod, fn)(self, *args)
        finally:
            if module != "shared" or self.limits_until is None:
                sys.modules.pop(module, None)

    # --- telemetry ---------------------------------------------------------------------------
    def _send(self, which, with_mem):
        """Publish the current values of `which`; while offline keep them in the ring."""
        payload = self.payload(which, with_mem)
        if payload is None:
            return
        if self.local is not None:
            self.local.publish(self.local_topic, payload)  # live values only: the ring is ThingsBoard's
        if self.link is not None:
            self.send_tb(which, with_mem, payload)

    def payload(self, which, with_mem):
        out = self.out
        out.pos = 0
        out.overflow = False
        _values(out, which, with_mem)
        if out.overflow:  # cannot happen with VALUE_MAX-clipped values; never send half a payload
            self.failed += 1
            self.last_error = "payload too large"
            return None
        return out.mv[:out.pos]

    def send_tb(self, which, with_mem, payload):
        if not self.fits(TELEMETRY, payload) and len(which) > 1:
            self.platform("split", which, with_mem)  # in parts under the session's limit (rare)
            return
        if self.publish(TELEMETRY, payload):
            self.published += 1
            self.last_publish = time.ticks_ms()
            return
        self._keep(b'{"ts":%d,"values":%s}' % (now_ms(), bytes(payload)))

    def fits(self, topic, payload):
        """Whether a PUBLISH of `payload` (or of that many bytes) stays within the session's
        maxPayloadSize (ThingsBoard's MQTT decoder counts all that follows the fixed header: topic,
        packet id, payload)."""
        m = self.max_payload
        return not m or 4 + len(topic) + (payload if isinstance(payload, int) else len(payload)) <= m

    def publish(self, topic, payload):
        if self.provisioning:
            return False  # a provisioning session takes nothing else: readings are kept
        if not self.fits(topic, payload):
            if self.connected:
                self.failed += 1
                self.last_error = "%d B over the session's maxPayloadSize" % len(payload)
            return False
        if self.link.publish(topic, payload, cfg.MQTT_QOS):
            return True
        if self.connected and (self.link.room() or not cfg.MQTT_QOS):
            self.failed += 1  # up, yet not sent: the link dropped (QoS 1 with 8 awaiting PUBACK only defers)
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

    def flush(self):
        """Send the kept readings, oldest first, as ThingsBoard ts batches within the session's
        limit; a reading too large for it alone is dropped."""
        size = len(self.ring)
        while self.queued:
            n, total = 0, 2
            while n < min(self.queued, _BATCH):
                more = len(self.ring[(self.head + n) % size]) + 1  # type: ignore[arg-type]
                if n and not self.fits(TELEMETRY, total + more):
                    break
                n += 1
                total += more
            batch = b"[" + b",".join(self.ring[(self.head + i) % size] for i in range(n)) + b"]"  # type: ignore[misc]
            if not self.fits(TELEMETRY, batch):  # one reading, alone over the limit: never sendable
                n = 1
                self.dropped += 1
            elif not self.publish(TELEMETRY, batch):
                return
            else:
                self.published += 1
                self.last_publish = time.ticks_ms()
            for i in range(n):
                self.ring[(self.head + i) % size] = None
            self.head = (self.head + n) % size
            self.queued -= n

    # --- what the platform sends -------------------------------------------------------------
    def _message(self, topic, payload, retained):
        """Route a message by its topic. A retained one is an old message the broker keeps: it is
        never acted on (again), as on every reconnect it would be."""
        if retained:
            return
        if self.provisioning:
            self.call("provision", "answer", payload)
            return
        t = bytes(topic)
        if t.startswith(RPC_REQUEST):
            if payload is None or bytes(payload) != LIMITS:  # (its own question, from a plain broker)
                self._rpc(t[len(RPC_REQUEST):], payload)
        elif t == ATTRIBUTES:
            if payload is None or len(payload) != self.own or bytes(payload[:20]) != b'{"firmware_version":':
                self.platform("shared", payload, True)  # (a plain broker hands back its own client attributes)
        elif _answers(t, ATTR_RESPONSE, self.attr_id):
            self.attr_id = None
            if payload is None or len(payload) > 2:  # {}: none of the keys is set
                self.platform("shared", payload, False)
        elif _answers(t, _RPC_RESPONSE, self.limits_id):
            self.platform("limits", payload)
        elif self.update is not None:
            if t.startswith(SW_RESPONSE):
                self.update.chunk_in(t, payload)
            elif t == SW_ERROR:
                self.update.refused(payload)

    def _rpc(self, rid, payload):
        """Answer a server-side RPC request on its response topic."""
        try:
            msg = None if payload is None else bytes(payload)
            if msg is None:
                reply = {"error": "payload too large"}
            elif msg.count(b"[") + msg.count(b"{") > _RPC_NEST_MAX:  # bounds the nesting, counted in C
                reply = {"error": "bad request: nested too deeply"}
            else:
                reply = self._call(msg)
            data = reply if isinstance(reply, bytes) else to_json(reply)
        except MemoryError:
            gc.collect()
            data = b'{"error":"out of memory"}'
        self.publish(_RPC_RESPONSE + rid, data)  # the id as bytes: any UTF-8 goes back as it came

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
                    self.switch.set(self.switch.parse(streams.command(params)))
                return self.switch.value()
            if method in ("getDatastream", "setDatastream"):
                s = streams.find(params["id"]) if isinstance(params, dict) else None
                if s is None:
                    return {"error": "unknown datastream"}
                if method == "setDatastream":
                    s.set(s.parse(streams.command(params.get("value"))))
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
        c.add(b'{"enabled":%s,"connected":%s,"provisioning":%s,"host":' % (
            b"true" if self.enabled else b"false", b"true" if self.connected else b"false",
            b"true" if self.provisioning else b"false"))
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
        c.add(b',"max_payload":')
        c.add(b"%d" % self.max_payload if self.max_payload else b"null")
        c.add(b',"shared":')
        c.add(to_json(streams.platform))
        c.add(b',"update":')
        c.add(b"null" if self.update is None else self.update.json())
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


def _answers(topic, prefix, rid):
    """Whether `topic` is the answer to the request `rid` (None: none awaited) sent under `prefix`."""
    return rid is not None and topic.startswith(prefix) and topic[len(prefix):] == rid


def to_json(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def _payload_max():
    return 32 + sum(len(s.jid) + streams.VALUE_MAX + 8 for s in streams.STREAMS)


def _switch_stream():
    """The stream the switch widgets drive: cfg.RPC_SWITCH, else the first boolean actuator."""
    sid = getattr(cfg, "RPC_SWITCH", "")
    for s in streams.STREAMS:
        if (s.id == sid) if sid else (s.actuator and s.format == "boolean"):
            return s
    return None
