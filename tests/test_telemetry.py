"""Telemetry, attributes and RPC against a real mosquitto, with paho-mqtt playing ThingsBoard."""
import json
import queue
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import Broker, free_port

OSID = "ObjetoESP32"
TOKEN = "tb-device-token"


def reading(payload):
    """Whether a telemetry payload is a reading (not the software report sent at each connect)."""
    return b"current_sw_version" not in payload


class Platform:
    """The ThingsBoard side: subscribes to everything the device sends, sends RPC requests."""

    TOPICS = [("v1/devices/me/#", 1)]

    def __init__(self, port, persistent=False):
        self.messages = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="platform-peer",
                             clean_session=not persistent)
        self.c.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload, time.monotonic()))
        self.subscribed = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(self.TOPICS)
        self.c.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.set()
        self.c.reconnect_delay_set(0.2, 0.5)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.subscribed.wait(5)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()

    def next(self, topic, timeout=5.0, where=lambda payload: True):
        """The next message on `topic`, or on any topic under it when it ends with "/" (others
        are skipped: the device also asks on v1/devices/me/attributes/request/<n>)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no message on %s within %.1fs" % (topic, timeout))
            try:
                got, payload, t = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if (got.startswith(topic) if topic.endswith("/") else got == topic) and where(payload):
                return got, payload, t

    def telemetry(self, timeout=5.0, where=lambda j: True):
        """The next reading (the software report the device sends at each connect is skipped)."""
        _, payload, t = self.next("v1/devices/me/telemetry", timeout,
                                  lambda p: reading(p) and where(json.loads(p)))
        return json.loads(payload), t

    def rpc(self, rid, method, params=None):
        self.c.publish("v1/devices/me/rpc/request/%d" % rid, json.dumps({"method": method, "params": params}))
        _, payload, _ = self.next("v1/devices/me/rpc/response/%d" % rid)
        return json.loads(payload)


@pytest.fixture
def platform(broker):
    p = Platform(broker.port)
    yield p
    p.close()


def mqtt_cfg(port, **kw):
    base = dict(MQTT_HOST="127.0.0.1", MQTT_PORT=port, MQTT_TOKEN=TOKEN, TELEMETRY_INTERVAL=1)
    base.update(kw)
    return base


@pytest.mark.quick
def test_telemetry_on_time_with_flat_payload_and_identity(make_firmware, broker, platform):
    fw = make_firmware(**mqtt_cfg(broker.port))
    first, t0 = platform.telemetry(timeout=5, where=lambda j: "_mem_free" in j)
    second, t1 = platform.telemetry(timeout=5, where=lambda j: "_mem_free" in j)
    for j in (first, second):
        assert list(j) == ["led", "rele", "reloj", "temperatura", "memoria", "_mem_free"]
        assert isinstance(j["led"], bool) and isinstance(j["rele"], bool)
        assert isinstance(j["reloj"], str) and isinstance(j["temperatura"], (int, float))
        assert isinstance(j["memoria"], int) and j["_mem_free"] > 0
    assert 0.5 < t1 - t0 < 1.6, "published every TELEMETRY_INTERVAL (1 s)"
    log = broker.log()
    assert "as tb_%s" % OSID in log and "u'%s'" % TOKEN in log and "k60" in log
    status = fw.get("/telemetry/status").json()
    assert status["enabled"] and status["connected"] and status["published"] >= 2
    assert status["host"] == "127.0.0.1" and status["port"] == broker.port and status["interval_s"] == 1
    assert status["topic"] == "v1/devices/me/telemetry" and status["last_error"] is None
    assert 0 <= status["last_publish_ms_ago"] < 1500 and status["queued"] == 0
    assert fw.get("/Datastreams/health").json()["mqtt"] == "connected"
    assert TOKEN not in fw.log(), "the token is a secret"


@pytest.mark.quick
def test_attributes_on_connect(make_firmware, broker, platform):
    make_firmware(**mqtt_cfg(broker.port))
    _, payload, _ = platform.next("v1/devices/me/attributes")
    a = json.loads(payload)
    assert a["osid"] == OSID and a["title"] == "Objeto ESP32" and a["firmware_version"]
    assert a["ip"] == "127.0.0.1"
    assert a["datastreams"][0] == {"id": "led", "format": "boolean", "type": "actuator"}
    assert [d["id"] for d in a["datastreams"]] == ["led", "rele", "reloj", "temperatura", "memoria"]


@pytest.mark.quick
def test_change_is_published_at_once(make_firmware, broker, platform):
    fw = make_firmware(**mqtt_cfg(broker.port, TELEMETRY_INTERVAL=3600))
    platform.next("v1/devices/me/attributes")
    t0 = time.monotonic()
    fw.post("/Datastreams/SetDatastream?osid=%s&idDataStream=rele&comando=on" % OSID)
    j, t = platform.telemetry(timeout=3)
    assert j == {"rele": True} and t - t0 < 1.0
    fw.post("/Datastreams/SetDatastream?osid=%s&idDataStream=rele&comando=nope" % OSID)
    fw.post("/Datastreams/SetDatastream?osid=%s&idDataStream=rele&comando=off" % OSID)
    j, _ = platform.telemetry(timeout=3)
    assert j == {"rele": False}, "a failed command publishes nothing"


@pytest.mark.quick
def test_rpc_methods(make_firmware, broker, platform):
    fw = make_firmware(**mqtt_cfg(broker.port, TELEMETRY_INTERVAL=3600))
    platform.next("v1/devices/me/attributes")
    led = "/Datastreams/SendData?osid=%s&variableEstado=led&tipove=1" % OSID
    assert platform.rpc(1, "setValue", True) is True
    assert fw.get(led).json()["value"] == "true"
    assert platform.rpc(2, "getValue") is True
    assert platform.rpc(3, "setState", False) is False
    assert platform.rpc(4, "getState") is False
    assert fw.get(led).json()["value"] == "false"
    assert platform.rpc(5, "setDatastream", {"id": "rele", "value": "on"}) == {"id": "rele", "value": True}
    assert platform.rpc(6, "getDatastream", {"id": "rele"}) == {"id": "rele", "value": True}
    assert isinstance(platform.rpc(7, "getDatastream", {"id": "memoria"})["value"], int)
    # bad requests: an error reply, nothing changes
    for rid, method, params in ((10, "explode", None), (11, "setDatastream", {"id": "nope", "value": 1}),
                                (12, "setDatastream", {"id": "reloj", "value": 1}),
                                (13, "setDatastream", {"id": "rele", "value": "maybe"}),
                                (14, "setDatastream", "rele"), (15, "setValue", [1]),
                                (16, "getDatastream", None)):
        reply = platform.rpc(rid, method, params)
        assert set(reply) == {"error"} and reply["error"], (method, params)
    platform.c.publish("v1/devices/me/rpc/request/20", b"\xff not json")
    _, payload, _ = platform.next("v1/devices/me/rpc/response/20")
    assert "error" in json.loads(payload)
    assert fw.get(led).json()["value"] == "false"
    assert fw.get("/Datastreams/SendData?osid=%s&variableEstado=rele&tipove=1" % OSID).json()["value"] == "true"


def test_unreadable_stream_is_left_out_of_the_payload(make_firmware, broker, platform):
    streams = (
        {"id": "led", "format": "boolean", "type": "actuator", "hw": "pin", "pin": 2},
        {"id": "roto", "format": "float", "type": "sensor", "hw": "custom", "read": "faulty:read"},
        {"id": "nota", "format": "string", "type": "sensor", "hw": "custom", "read": "faulty:note"},
    )
    make_firmware(**mqtt_cfg(broker.port), STREAMS=streams,
                  extra_files={"faulty.py": "def read():\n    raise OSError(5)\n\n\ndef note():\n    return 'a \"b\"'\n"})
    j, _ = platform.telemetry(where=lambda j: "_mem_free" in j)
    assert set(j) == {"led", "nota", "_mem_free"} and j["nota"] == 'a "b"'


def test_ping_keeps_a_silent_connection_alive(make_firmware, broker):
    fw = make_firmware(**mqtt_cfg(broker.port, TELEMETRY_INTERVAL=3600, MQTT_KEEPALIVE=2))
    time.sleep(4.5)  # more than 1.5 x keepalive with nothing to publish
    log = broker.log()
    assert "Received PINGREQ from tb_%s" % OSID in log
    assert "tb_%s has exceeded timeout" % OSID not in log
    status = fw.get("/telemetry/status").json()
    assert status["connected"] and status["connects"] == 1


def test_broker_outage_buffers_and_resends_in_order(make_firmware, tmp_path):
    broker = Broker(str(tmp_path), persistent=True).start()
    platform = Platform(broker.port, persistent=True)
    try:
        fw = make_firmware(**mqtt_cfg(broker.port))
        platform.telemetry(where=lambda j: "_mem_free" in j)
        broker.stop()
        worst = 0.0
        answered = 0
        t_end = time.monotonic() + 4.5
        while time.monotonic() < t_end:  # HTTP is answered throughout the outage
            t0 = time.monotonic()
            assert fw.get("/Datastreams/health", timeout=5).status == 200
            worst = max(worst, time.monotonic() - t0)
            answered += 1
            time.sleep(0.05)
        status = fw.get("/telemetry/status").json()
        assert not status["connected"] and status["queued"] >= 3 and status["last_error"]
        print("longest HTTP answer during the outage: %.0f ms over %d requests" % (worst * 1000, answered))
        broker.start()
        batch = None
        deadline = time.monotonic() + 15
        while batch is None and time.monotonic() < deadline:
            topic, payload, _ = platform.next("v1/devices/me/telemetry", timeout=15, where=reading)
            j = json.loads(payload)
            if isinstance(j, list):
                batch = j
        assert batch, "the buffered readings arrive as a ts batch"
        stamps = [r["ts"] for r in batch]
        assert stamps == sorted(stamps) and len(stamps) >= 2
        assert all(abs(s / 1000 - time.time()) < 60 for s in stamps), "ms since the epoch"
        assert all("_mem_free" in r["values"] and "led" in r["values"] for r in batch)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            status = fw.get("/telemetry/status").json()
            if status["connected"] and status["queued"] == 0:
                break
            time.sleep(0.1)
        assert status["connected"] and status["queued"] == 0 and status["connects"] == 2
    finally:
        platform.close()
        broker.stop()


def test_broker_absent_at_boot(make_firmware, tmp_path):
    port = free_port()
    fw = make_firmware(**mqtt_cfg(port))
    assert fw.alive()
    status = fw.get("/telemetry/status").json()
    assert not status["connected"] and status["last_error"] == "socket error ECONNREFUSED"
    assert fw.get("/Datastreams/health").json()["mqtt"] == "disconnected"
    broker = Broker(str(tmp_path), port=port).start()
    platform = Platform(port)
    try:
        j, _ = platform.telemetry(timeout=12, where=lambda j: isinstance(j, dict) and "_mem_free" in j)
        assert fw.get("/telemetry/status").json()["connected"]
    finally:
        platform.close()
        broker.stop()


def test_ring_drops_oldest_when_full(make_firmware):
    fw = make_firmware(**mqtt_cfg(free_port(), TELEMETRY_BUFFER=2))
    time.sleep(4.5)
    status = fw.get("/telemetry/status").json()
    assert status["queued"] == 2 and status["dropped"] >= 2
    assert fw.alive()


@pytest.mark.quick
def test_status_when_disabled(device):
    status = device.get("/telemetry/status").json()
    assert status["enabled"] is False and status["connected"] is False and status["host"] is None
    assert status["port"] is None and status["local"] is None
    assert status["published"] == 0 and status["last_publish_ms_ago"] is None and status["queued"] == 0
    assert status["mem_free"] > 0
    keys = {"enabled", "connected", "host", "port", "topic", "interval_s", "published", "failed",
            "last_publish_ms_ago", "last_error", "queued", "mem_free"}
    assert keys <= set(status)


def test_qos1_publishes_are_acknowledged(make_firmware, broker, platform):
    fw = make_firmware(**mqtt_cfg(broker.port, MQTT_QOS=1))
    for _ in range(3):
        platform.telemetry(where=lambda j: "_mem_free" in j)
    assert "Sending PUBACK to tb_%s" % OSID in broker.log()
    status = fw.get("/telemetry/status").json()
    assert status["connected"] and status["connects"] == 1 and status["failed"] == 0


class Listener:
    """The automation service's side: subscribes to one topic on the system's own broker."""

    def __init__(self, port, topic="datastream/telemetry"):
        self.messages = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="automation-%d" % port)
        self.c.on_message = lambda c, u, m: self.messages.put(json.loads(m.payload))
        ready = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic)
        self.c.on_subscribe = lambda c, u, mid, rc, p: ready.set()
        self.c.reconnect_delay_set(0.2, 0.5)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ready.wait(5)

    def next(self, where=lambda j: True, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                j = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if where(j):
                return j
        raise AssertionError("nothing on the local topic within %.1fs" % timeout)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def test_local_broker_gets_the_same_telemetry_and_each_broker_is_lost_alone(make_firmware, broker, platform, tmp_path):
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    local = Broker(str(local_dir)).start()
    listener = Listener(local.port)
    try:
        fw = make_firmware(**mqtt_cfg(broker.port, LOCAL_MQTT_HOST="127.0.0.1", LOCAL_MQTT_PORT=local.port))
        periodic = listener.next(lambda j: "_mem_free" in j)
        assert list(periodic) == ["led", "rele", "reloj", "temperatura", "memoria", "_mem_free"]
        platform.telemetry(where=lambda j: "_mem_free" in j)
        fw.post("/Datastreams/SetDatastream?osid=%s&idDataStream=rele&comando=on" % OSID)
        assert listener.next(lambda j: "_mem_free" not in j) == {"rele": True}
        assert platform.telemetry(where=lambda j: "_mem_free" not in j)[0] == {"rele": True}
        assert "as ds_%s" % OSID in local.log(), "its own client id, anonymous"
        # the local broker goes: ThingsBoard does not notice
        local.stop()
        platform.telemetry(where=lambda j: "_mem_free" in j)
        platform.telemetry(where=lambda j: "_mem_free" in j)
        status = fw.get("/telemetry/status").json()
        assert status["connected"] and status["connects"] == 1 and not status["local"]["connected"]
        assert status["local"]["topic"] == "datastream/telemetry" and status["local"]["last_error"]
        local.start()
        listener.next(lambda j: "_mem_free" in j, timeout=10)
        # ThingsBoard's broker goes: the local copy goes on
        broker.stop()
        listener.next(lambda j: "_mem_free" in j)
        listener.next(lambda j: "_mem_free" in j)
        status = fw.get("/telemetry/status").json()
        assert not status["connected"] and status["local"]["connected"] and status["local"]["connects"] == 2
        assert fw.alive() and "Traceback" not in fw.log()
    finally:
        listener.close()
        local.stop()


@pytest.mark.quick
def test_local_broker_alone(make_firmware, tmp_path):
    local = Broker(str(tmp_path)).start()
    listener = Listener(local.port, topic="plant/one")
    try:
        fw = make_firmware(LOCAL_MQTT_HOST="127.0.0.1", LOCAL_MQTT_PORT=local.port, LOCAL_MQTT_TOPIC="plant/one",
                           TELEMETRY_INTERVAL=1)
        assert "_mem_free" in listener.next()
        assert fw.get("/Datastreams/health").json()["mqtt"] == "off"
        status = fw.get("/telemetry/status").json()
        assert status["host"] is None and status["port"] is None and status["local"]["connected"]
    finally:
        listener.close()
        local.stop()


KNOB = "value = [20.0]\n\ndef read():\n    return value[0]\n\ndef write(v):\n    value[0] = v\n"


@pytest.mark.quick
def test_a_float_reads_the_same_over_http_telemetry_and_rpc(make_firmware, broker, platform):
    # A whole float once showed as "40" over HTTP and 40.0 over RPC; a long one as "0.333333" and
    # 0.333333333. Now every path writes a float one way: 6 significant digits, always with a point.
    streams = ({"id": "setpoint", "format": "float", "type": "actuator", "hw": "custom", "read": "knob:read",
                "write": "knob:write", "min": -50, "max": 150},
               {"id": "dimmer", "format": "integer", "type": "actuator", "hw": "pwm", "pin": 5})
    fw = make_firmware(**mqtt_cfg(broker.port, TELEMETRY_INTERVAL=3600), STREAMS=streams, extra_files={"knob.py": KNOB})
    platform.next("v1/devices/me/attributes")

    def rpc_raw(rid, method, params):
        platform.c.publish("v1/devices/me/rpc/request/%d" % rid, json.dumps({"method": method, "params": params}))
        return platform.next("v1/devices/me/rpc/response/%d" % rid)[1]

    for rid, (given, shown) in enumerate((("40", "40.0"), ("21.125", "21.125"), ("0.333333333333", "0.333333"),
                                          ("-50", "-50.0"), ("99.9999999", "100.0"))):
        over_http = rid % 2 == 0
        if over_http:
            r = fw.post("/Datastreams/SetDatastream?osid=%s&idDataStream=setpoint&comando=%s" % (OSID, given))
            assert r.status == 200 and r.body.endswith(b'"value":%s}}' % shown.encode()), r.body
        else:
            assert rpc_raw(100 + rid, "setDatastream", {"id": "setpoint", "value": float(given)}) == \
                b'{"id":"setpoint","value":%s}' % shown.encode()
        _, payload, _ = platform.next("v1/devices/me/telemetry", where=reading)
        assert payload == b'{"setpoint":%s}' % shown.encode(), (given, payload)
        assert rpc_raw(200 + rid, "getDatastream", {"id": "setpoint"}) == b'{"id":"setpoint","value":%s}' % shown.encode()
        data = fw.get("/Datastreams/SendData?osid=%s&variableEstado=setpoint" % OSID).json()
        assert data["value"] == shown, given
        state = fw.get("/Datastreams/SendState?osid=%s" % OSID).json()
        assert state["datastreams"][0]["value"] == shown
    # An integer stream stays an integer everywhere.
    fw.post("/Datastreams/SetDatastream?osid=%s&idDataStream=dimmer&comando=40" % OSID)
    assert platform.next("v1/devices/me/telemetry", where=reading)[1] == b'{"dimmer":40}'
    assert rpc_raw(300, "getDatastream", {"id": "dimmer"}) == b'{"id":"dimmer","value":40}'
    assert fw.get("/Datastreams/SendData?osid=%s&variableEstado=dimmer" % OSID).json()["value"] == "40"
