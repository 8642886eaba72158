"""The software package on its way to a device: host/package.py builds it, the ThingsBoard peer
(tbpeer.py) offers it and serves it in chunks as the platform does; here a paho client plays the
device's side of the exchange (the firmware's own is tested with the firmware)."""
import hashlib
import json
import queue

import paho.mqtt.client as mqtt
import pytest

import package
from tbpeer import OTA_ERROR, ThingsBoard

DEVICE_ID = "tb_ObjetoESP32"


class Device:
    """The device's side of the MQTT exchange: the sw_* push, chunk requests and their answers."""

    def __init__(self, port):
        self.got = queue.Queue()
        self.gone = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=DEVICE_ID)
        self.c.on_message = lambda c, u, m: self.got.put((m.topic, bytes(m.payload)))
        self.c.on_disconnect = lambda c, u, f, rc, p: self.gone.put(rc)
        subscribed = queue.Queue()
        self.c.on_subscribe = lambda c, u, mid, rc, p: subscribed.put(mid)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe([("v1/devices/me/attributes", 1), ("v2/sw/response/+/chunk/+", 1), (OTA_ERROR, 1)])
        subscribed.get(timeout=5)

    def next(self, timeout=5):
        return self.got.get(timeout=timeout)

    def ask(self, rid, index, size):
        self.c.publish("v2/sw/request/%d/chunk/%d" % (rid, index), "" if size is None else str(size), qos=1)
        topic, payload = self.next()
        assert topic == "v2/sw/response/%d/chunk/%d" % (rid, index), topic
        return payload

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def test_the_peer_serves_a_built_package_in_chunks_as_thingsboard_does(broker, tmp_path):
    path = str(tmp_path / "fw.pkg")
    size, sha = package.build(path, "2.0.0")
    with open(path, "rb") as f:
        data = f.read()
    tb = ThingsBoard(broker.port)
    device = Device(broker.port)
    try:
        tb.offer(data, "datastream", "2.0.0")
        topic, payload = device.next()
        assert topic == "v1/devices/me/attributes"
        assert json.loads(payload) == {"sw_title": "datastream", "sw_version": "2.0.0", "sw_size": size,
                                       "sw_checksum_algorithm": "SHA256", "sw_checksum": sha}
        got, index = b"", 0
        while True:  # as a device downloads: chunk after chunk, until a short one
            chunk = device.ask(7, index, 4096)
            got += chunk
            index += 1
            if len(chunk) < 4096:
                break
        assert got == data and hashlib.sha256(got).hexdigest() == sha
        assert [(i, n) for i, n, _ in tb.chunks] == [(i, 4096) for i in range(index)]
        assert device.ask(7, index + 3, 4096) == b"", "past the end: no bytes"
        assert device.ask(7, 1, None) == data[4096:8192], "no size: the one asked before in this request"
        assert device.ask(8, 0, None) == data, "no size ever: the whole package"

        tb.corrupt, tb.silent = {2}, {3}
        bad = device.ask(9, 2, 1000)
        assert len(bad) == 1000 and sum(a != b for a, b in zip(bad, data[2000:3000])) == 1
        device.c.publish("v2/sw/request/9/chunk/3", "1000", qos=1)
        with pytest.raises(queue.Empty):
            device.next(timeout=1)
        assert tb.chunks[-1][:2] == (3, 1000), "asked and recorded, not answered"
    finally:
        tb.close()
        device.close()


def test_a_chunk_over_the_payload_limit_is_an_error_and_the_session_ends(broker):
    tb = ThingsBoard(broker.port, max_payload=4096)
    device = Device(broker.port)
    try:
        tb.offer(b"x" * 10000, "datastream", "2.0.1")
        device.next()  # the push
        assert len(device.ask(1, 0, 4096)) == 4096
        device.c.publish("v2/sw/request/2/chunk/0", "4097", qos=1)
        assert device.next() == (OTA_ERROR, b"PAYLOAD_TOO_LARGE")
        assert device.gone.get(timeout=5) is not None, "the platform closed the device's session"
        assert "already connected, closing old connection" in broker.log()
    finally:
        tb.close()
        device.close()
