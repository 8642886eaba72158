"""A ThingsBoard peer for the tests: a paho client on the tests' mosquitto that plays the platform's
side of the device API as ThingsBoard's MQTT transport does (MqttTransportHandler, JsonConverter):
shared attributes (answers to attribute requests, pushes of changed keys), getSessionLimits,
provisioning. Everything the device publishes is recorded, as Platform does."""
import json
import time

from test_telemetry import Platform

ATTR_REQUEST = "v1/devices/me/attributes/request/"
ATTR_RESPONSE = "v1/devices/me/attributes/response/"
RPC_REQUEST = "v1/devices/me/rpc/request/"
RPC_RESPONSE = "v1/devices/me/rpc/response/"


class ThingsBoard(Platform):
    """shared: the device's shared attributes (key -> JSON value). max_payload: the getSessionLimits
    answer's maxPayloadSize, or None for a platform that never answers it. provision: (key, secret,
    token) of a device profile that provisions, "silent" for a platform that never answers, None:
    every request is refused as ThingsBoard refuses an unknown key."""

    TOPICS = Platform.TOPICS + [("/provision/request", 1)]

    def __init__(self, port, shared=None, max_payload=65536, provision=None):
        self.shared = dict(shared or {})
        self.max_payload = max_payload
        self.provision = provision
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
