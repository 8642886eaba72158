"""A ThingsBoard peer for the tests: a paho client on the tests' mosquitto that plays the platform's
side of the device API as ThingsBoard's MQTT transport does (MqttTransportHandler, JsonConverter):
shared attributes (answers to attribute requests, pushes of changed keys), getSessionLimits,
provisioning, software packages in chunks. Everything the device publishes is recorded, as Platform
does."""
import hashlib
import json
import re
import threading
import time

import paho.mqtt.client as mqtt

from test_telemetry import Platform

ATTR_REQUEST = "v1/devices/me/attributes/request/"
ATTR_RESPONSE = "v1/devices/me/attributes/response/"
RPC_REQUEST = "v1/devices/me/rpc/request/"
RPC_RESPONSE = "v1/devices/me/rpc/response/"
SW_REQUEST = "v2/sw/request/"  # + <requestId>/chunk/<chunkIndex>, the chunk size as decimal text
SW_RESPONSE = "v2/sw/response/%s/chunk/%d"
# ThingsBoard reports a software package's errors on the firmware's error topic: sendOtaPackageError
# publishes on DEVICE_FIRMWARE_ERROR_TOPIC whatever the package's type.
OTA_ERROR = "v2/fw/error"
_CHUNK_TOPIC = re.compile(r"v2/sw/request/(\d+)/chunk/(\d+)")  # SW_REQUEST_PATTERN, found as Matcher.find does
_MAX_PAYLOAD = 65536  # the transport's own limit (netty max_payload_size) when max_payload is None


class ThingsBoard(Platform):
    """shared: the device's shared attributes (key -> JSON value). max_payload: the getSessionLimits
    answer's maxPayloadSize, or None for a platform that never answers it. provision: (key, secret,
    token) of a device profile that provisions, "silent" for a platform that never answers, None:
    every request is refused as ThingsBoard refuses an unknown key. device_id: the device's MQTT client
    id, which the peer takes over to close the device's session (tb_ + its OSID).

    Software packages (offer()): chunk requests are answered as MqttTransportHandler answers them;
    each is recorded in `chunks` as (index, size asked, time.monotonic()); the size is None when the
    payload is not a number (the session is closed). Fault knobs, sets of chunk
    indexes the test may change at any time: `corrupt` (one byte of the answer flipped) and `silent`
    (no answer): both apply to every request of an index for as long as it is in the set, so a
    test that wants one bad answer removes the index after it (from on_chunk, say). `on_chunk`:
    called as on_chunk(index) on the peer's network thread before a chunk is answered; returning
    False leaves that request unanswered (a test may stop the broker there, after n chunks)."""

    TOPICS = Platform.TOPICS + [("/provision/request", 1), (SW_REQUEST + "+/chunk/+", 1)]

    def __init__(self, port, shared=None, max_payload=65536, provision=None, device_id="tb_ObjetoESP32"):
        self.shared = dict(shared or {})
        self.max_payload = max_payload
        self.provision = provision
        self.port = port
        self.device_id = device_id
        self.package = None  # the offered software package's bytes
        self.chunks = []
        self.corrupt = set()
        self.silent = set()
        self.on_chunk = None
        self._chunk_sizes = {}  # requestId -> the last chunk size asked in it, as ThingsBoard keeps them
        self.sent = []  # (topic, payload bytes) of what the device published, in order
        self.own = set()  # what this peer published itself (the broker hands it back)
        super().__init__(port)
        self.c.on_message = self._on_message

    def publish(self, topic, payload):
        payload = payload if isinstance(payload, bytes) else payload.encode()
        self.own.add((topic, payload))
        self.c.publish(topic, payload)

    def _on_message(self, c, u, m):
        if (m.topic, bytes(m.payload)) in self.own:
            return
        self.sent.append((m.topic, bytes(m.payload)))
        self.messages.put((m.topic, m.payload, time.monotonic()))
        try:
            if m.topic.startswith(ATTR_REQUEST):
                self._attributes(m.topic[len(ATTR_REQUEST):], json.loads(m.payload))
            elif m.topic.startswith(RPC_REQUEST):
                self._rpc(m.topic[len(RPC_REQUEST):], json.loads(m.payload))
            elif m.topic == "/provision/request":
                self._provision(json.loads(m.payload))
            elif m.topic.startswith(SW_REQUEST):
                self._chunk(m.topic, bytes(m.payload))
        except ValueError:
            pass  # not JSON: the platform drops it

    def _attributes(self, rid, req):
        """JsonConverter.toJson(GetAttributeResponseMsg): "shared" only when one of the keys exists."""
        keys = [k for k in req.get("sharedKeys", "").split(",") if k in self.shared]
        body = {"shared": {k: self.shared[k] for k in keys}} if keys else {}
        self.publish(ATTR_RESPONSE + rid, json.dumps(body))

    def _rpc(self, rid, req):
        if isinstance(req, dict) and req.get("method") == "getSessionLimits" and self.max_payload:
            self.publish(RPC_RESPONSE + rid, json.dumps({
                "maxPayloadSize": self.max_payload, "maxInflightMessages": 100,
                "rateLimits": {"messages": "200:1,6000:60,14000:3600", "telemetryMessages": "100:1,3000:60,7000:3600",
                               "telemetryDataPoints": "200:1,6000:60,14000:3600"}}))

    def _provision(self, req):
        """JsonConverter.toJson(ProvisionDeviceResponseMsg), for a profile that allows creating devices."""
        if self.provision == "silent":
            return
        key, secret, token = self.provision or (None, None, None)
        if req.get("provisionDeviceKey") == key and req.get("provisionDeviceSecret") == secret:
            body = {"credentialsValue": token, "credentialsType": "ACCESS_TOKEN", "status": "SUCCESS"}
        else:
            body = {"errorMsg": "Failed to provision device!", "status": "FAILURE"}
        self.publish("/provision/response", json.dumps(body))

    def push(self, changed):
        """An attribute update notification: only the keys that changed."""
        self.shared.update(changed)
        self.publish("v1/devices/me/attributes", json.dumps(changed))

    def requests(self, prefix):
        return [(t, p) for t, p in list(self.sent) if t.startswith(prefix)]

    def offer(self, data, title, version, checksum=None, algorithm="SHA256"):
        """Assign a software package to the device, as ThingsBoard does: its bytes are kept for the chunk
        requests, and the sw_* shared attributes are pushed (and answered to attribute requests).
        The checksum is the package's own (with `algorithm`) unless one is given: a wrong one, say."""
        self.package = bytes(data)
        self._chunk_sizes.clear()
        self.push({"sw_title": title, "sw_version": version, "sw_size": len(self.package),
                   "sw_checksum_algorithm": algorithm,
                   "sw_checksum": checksum or hashlib.new(algorithm.lower(), self.package).hexdigest()})

    def _chunk(self, topic, payload):
        """MqttTransportHandler.getOtaPackageCallback: the payload is the chunk size (kept per request
        id; empty: the one kept, else 0, the whole package); a size over the transport's limit is an
        error that ends the session; an index past the end is answered with no bytes."""
        m = _CHUNK_TOPIC.search(topic)
        if not m:
            return
        rid, index = m.group(1), int(m.group(2))
        try:
            size = int(payload) if payload else 0
        except ValueError:  # Integer.parseInt throws: the session is closed
            self.chunks.append((index, None, time.monotonic()))
            threading.Thread(target=self._close_device_session, daemon=True).start()
            return
        self.chunks.append((index, size, time.monotonic()))
        if size > 0:
            self._chunk_sizes[rid] = size
        else:
            size = self._chunk_sizes.get(rid, 0)
        if self.on_chunk is not None and self.on_chunk(index) is False:
            return
        if size > (self.max_payload or _MAX_PAYLOAD):
            return self._refuse("PAYLOAD_TOO_LARGE")
        if self.package is None:
            return self._refuse("NOT_FOUND")  # no package assigned: GetOtaPackageResponseMsg's status
        if index in self.silent:
            return
        data = self.package if size == 0 else self.package[index * size:(index + 1) * size]
        if index in self.corrupt and data:
            data = data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1:]
        # QoS 1: the device's subscription decides, as ThingsBoard answers at the subscribed QoS
        self.c.publish(SW_RESPONSE % (rid, index), data, qos=1)

    def _refuse(self, error):
        """sendOtaPackageError: the error on OTA_ERROR, then the device's session closed."""
        sent = self.c.publish(OTA_ERROR, error, qos=1)
        threading.Thread(target=self._close_device_session, args=(sent,), daemon=True).start()

    def _close_device_session(self, sent=None):
        """Close the device's connection, as the platform closes a session. A peer cannot close another
        client's socket: a client with the device's id connects (mosquitto drops the older session),
        then leaves. Off the network thread, after the broker has the error to pass on."""
        if sent is not None:
            try:
                sent.wait_for_publish(2)
            except (RuntimeError, ValueError):
                pass
        self._chunk_sizes.clear()  # they belong to the session
        taker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.device_id)
        connected = threading.Event()
        taker.on_connect = lambda c, u, f, rc, p: connected.set()
        taker.connect("127.0.0.1", self.port)
        taker.loop_start()
        connected.wait(5)
        taker.disconnect()
        taker.loop_stop()
