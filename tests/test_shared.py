"""Remote configuration through ThingsBoard's shared attributes, and the session's limits, against a
real mosquitto with a peer that plays ThingsBoard's side (tests/tbpeer.py)."""
import json
import os
import time

import pytest

from conftest import Broker
from tbpeer import ATTR_REQUEST, RPC_REQUEST, ThingsBoard
from test_telemetry import OSID, mqtt_cfg, reading

KEYS = "telemetry_interval,led,rele,sw_title,sw_version,sw_size,sw_checksum,sw_checksum_algorithm"
LED = "/Datastreams/SendData?osid=%s&variableEstado=led&tipove=1" % OSID
RELE = "/Datastreams/SendData?osid=%s&variableEstado=rele&tipove=1" % OSID


@pytest.fixture
def tb(broker):
    peer = ThingsBoard(broker.port)
    yield peer
    peer.close()


def value(fw, path):
    return fw.get(path).json()["value"]


def wait_for(check, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, "no %s within %.1f s" % (what, timeout)
        time.sleep(0.05)


def kept(fw):
    """The platform's values as state.json holds them."""
    try:
        with open(os.path.join(fw.flash, "state.json")) as f:
            return json.load(f).get("_platform")
    except FileNotFoundError:
        return None


def periods(tb, n):
    stamps = [tb.telemetry(timeout=8, where=lambda j: isinstance(j, dict) and "_mem_free" in j)[1] for _ in range(n)]
    return [round(b - a, 1) for a, b in zip(stamps, stamps[1:])]


def test_shared_attributes_are_requested_at_connect_and_applied(make_firmware, broker, tb):
    tb.shared.update(telemetry_interval=1, led=True, colour="red")
    fw = make_firmware(**mqtt_cfg(broker.port, TELEMETRY_INTERVAL=3600))
    topic, payload, _ = tb.next(ATTR_REQUEST, timeout=5)
    assert json.loads(payload) == {"sharedKeys": KEYS}
    assert topic[len(ATTR_REQUEST):].isdigit(), "ThingsBoard takes integer request ids only"
    assert tb.telemetry(where=lambda j: j == {"led": True})[0], "the change is published as usual"
    assert value(fw, LED) == "true"
    gaps = periods(tb, 3)
    assert all(0.6 < g < 1.6 for g in gaps), gaps  # the period came from the platform, not cfg.py
    status = fw.get("/telemetry/status").json()
    assert status["interval_s"] == 1 and status["shared"] == {"telemetry_interval": 1, "led": True}
    assert wait_for(lambda: kept(fw) == {"telemetry_interval": 1, "led": True}, what="state.json")
    log = fw.log()
    assert "shared: led = true" in log and "colour" not in log
    assert "Traceback" not in log


def test_pushes_take_effect_at_once_and_bad_values_are_ignored(make_firmware, broker, tb):
    fw = make_firmware(**mqtt_cfg(broker.port, TELEMETRY_INTERVAL=3600))
    tb.next("v1/devices/me/attributes", timeout=5)
    t0 = time.monotonic()
    tb.push({"telemetry_interval": 1})
    first = tb.telemetry(timeout=3, where=lambda j: isinstance(j, dict) and "_mem_free" in j)[1]
    assert first - t0 < 1.8, "the new period starts now, not after the old hour"
    tb.push({"rele": "on"})
    assert tb.telemetry(where=lambda j: j == {"rele": True})[0]
    assert value(fw, RELE) == "true"
    for bad in ({"telemetry_interval": 0}, {"telemetry_interval": "fast"}, {"telemetry_interval": 1.5},
                {"telemetry_interval": 10 ** 9}, {"telemetry_interval": True}, {"rele": "maybe"},
                {"rele": [1, 2]}, {"reloj": "2020-01-01 00:00:00"}, {"colour": "red"}, {"deleted": ["led"]}):
        tb.push(bad)
    tb.c.publish("v1/devices/me/attributes", b"\xff not json")
    tb.c.publish("v1/devices/me/attributes", b"[" * 100 + b"]" * 100)
    tb.c.publish("v1/devices/me/attributes", json.dumps({"x": "y" * 5000}))  # beyond the receive buffer
    tb.push({"led": True})  # still listening, on the same link
    assert tb.telemetry(where=lambda j: j == {"led": True})[0]
    status = fw.get("/telemetry/status").json()
    assert status["interval_s"] == 1 and value(fw, RELE) == "true"
    assert status["shared"] == {"telemetry_interval": 1, "rele": "on", "led": True}
    assert status["connected"] and status["connects"] == 1
    log = fw.log()
    for line in ("telemetry_interval: 0 is not valid", 'telemetry_interval: "fast" is not valid',
                 "telemetry_interval: 1.5 is not valid", "telemetry_interval: true is not valid",
                 'rele: "maybe" is not valid', "rele: [1, 2] is not valid", "attributes not understood"):
        assert line in log, line
    assert "reloj" not in log and "colour" not in log and "Traceback" not in log  # a sensor, an unknown key
    assert fw.alive()


def test_kept_on_flash_applied_at_boot_and_a_local_change_survives_a_reconnect(make_firmware, tmp_path):
    broker = Broker(str(tmp_path)).start()
    tb = ThingsBoard(broker.port, shared={"telemetry_interval": 2, "led": True})
    try:
        fw = make_firmware(**mqtt_cfg(broker.port, TELEMETRY_INTERVAL=3600, STATE_SAVE_INTERVAL=2))
        wait_for(lambda: kept(fw) == {"telemetry_interval": 2, "led": True}, what="the first write")
        tb.push({"led": False})
        tb.push({"rele": True})
        time.sleep(0.5)
        assert kept(fw) == {"telemetry_interval": 2, "led": True}, "later changes wait for the save interval"
        wait_for(lambda: kept(fw) == {"telemetry_interval": 2, "led": False, "rele": True}, what="the later write")
        fw.stop()
        broker.stop()
        fw.start()  # no broker now: what was kept applies at boot
        assert value(fw, LED) == "false" and value(fw, RELE) == "true"
        status = fw.get("/telemetry/status").json()
        assert not status["connected"] and status["interval_s"] == 2
        # a person switches the relay off locally; the platform did not change its value meanwhile
        fw.post("/Datastreams/SetDatastream?osid=%s&idDataStream=rele&comando=off" % OSID)
        tb.shared["led"] = True  # ...but it did change the LED's, while the device was away
        broker.start()
        wait_for(lambda: fw.get("/telemetry/status").json()["connected"], timeout=15, what="a reconnect")
        wait_for(lambda: value(fw, LED) == "true", what="the LED the platform changed")
        time.sleep(0.5)
        assert value(fw, RELE) == "false", "an unchanged platform value does not undo a local change"
    finally:
        tb.close()
        broker.stop()


def test_session_limits_keep_every_publish_and_batch_under_max_payload(make_firmware, tmp_path):
    """10 sensors make a periodic payload of about 160 B: with a 150 B limit it goes in parts, the
    readings kept offline go in batches that fit, and the client attributes go in parts too (the
    datastreams list alone is over the limit: it cannot go, and is counted as failed)."""
    broker = Broker(str(tmp_path)).start()
    tb = ThingsBoard(broker.port, max_payload=150)
    streams = [{"id": "s%d" % i, "format": "integer", "type": "sensor", "hw": "mem_free"} for i in range(10)]
    try:
        fw = make_firmware(**mqtt_cfg(broker.port, TELEMETRY_BUFFER=8), STREAMS=streams)
        wait_for(lambda: fw.get("/telemetry/status").json()["max_payload"] == 150, what="the limits")
        time.sleep(1.5)
        broker.stop()  # readings are kept, already in parts that fit
        wait_for(lambda: fw.get("/telemetry/status").json()["queued"] >= 4, timeout=10, what="readings kept")
        broker.start()
        wait_for(lambda: fw.get("/telemetry/status").json()["queued"] == 0, timeout=15, what="the flush")
        wait_for(lambda: [p for t, p in tb.sent if p.startswith(b"[")], what="the batches at the peer")
        time.sleep(1.5)
        status = fw.get("/telemetry/status").json()
        assert status["connected"] and status["max_payload"] == 150
        device = [(t, p) for t, p in tb.sent if t in ("v1/devices/me/telemetry", "v1/devices/me/attributes")]
        sizes = [4 + len(t) + len(p) for t, p in device]
        assert max(sizes) <= 150, sizes
        assert [p for t, p in device if p.startswith(b"[")], "the kept readings came as ts batches"
        values, attrs = {}, {}
        for t, p in device:
            j = json.loads(p)
            if t.endswith("attributes"):
                attrs.update(j)
            elif isinstance(j, dict) and reading(p):
                values.update(j)
        assert {"s%d" % i for i in range(10)} | {"_mem_free"} == set(values)
        assert attrs["osid"] == OSID and "datastreams" not in attrs and status["failed"] >= 1
        assert "maxPayloadSize 150 B" in fw.log() and "Traceback" not in fw.log()
    finally:
        tb.close()
        broker.stop()


def test_a_platform_that_never_answers_the_limits_still_gets_the_attributes(make_firmware, broker):
    tb = ThingsBoard(broker.port, max_payload=None)
    try:
        t0 = time.monotonic()
        make_firmware(**mqtt_cfg(broker.port))
        _, payload, t = tb.next(RPC_REQUEST, timeout=5)
        assert json.loads(payload) == {"method": "getSessionLimits", "params": {}}
        _, payload, t = tb.next("v1/devices/me/attributes", timeout=5)
        assert json.loads(payload)["osid"] == OSID
        assert t - t0 < 5
    finally:
        tb.close()
