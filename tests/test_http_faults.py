"""The HTTP faults found from outside (issue #10) and the automation service's requests (issue #13),
end to end against the firmware under micropython: raw sockets, curl, requests and httpx."""
import json
import os
import socket
import threading
import time

import httpx
import pytest
import requests

from conftest import Firmware, Response, curl

OSID = "ObjetoESP32"
STREAMS = (
    {"id": "led", "format": "boolean", "type": "actuator", "hw": "pin", "pin": 2},
    {"id": "dimmer", "format": "integer", "type": "actuator", "hw": "pwm", "pin": 5},
    {"id": "setpoint", "format": "float", "type": "actuator", "hw": "custom", "read": "knob:read",
     "write": "knob:write", "min": -50, "max": 150},
    {"id": "reloj", "format": "timestamp", "type": "sensor", "hw": "rtc"},
)
KNOB = "value = [20.0]\n\ndef read():\n    return value[0]\n\ndef write(v):\n    value[0] = v\n"
TOKEN = "t0k-3n_s3cr3t"
CORS = "access-control-allow-origin"


def target_set(sid, comando="set", osid=OSID):
    return "/Datastreams/SetDatastream?osid=%s&idDataStream=%s&comando=%s" % (osid, sid, comando)


def target_data(sid):
    return "/Datastreams/SendData?osid=%s&variableEstado=%s&tipove=1" % (OSID, sid)


def post_raw(target, body, head=b"Content-Type: application/json\r\n", version=b"HTTP/1.1"):
    """The automation service's request as bytes: POST, JSON body, its Content-Length."""
    return b"POST %s %s\r\nHost: device\r\n%sContent-Length: %d\r\n\r\n%s" % (
        target.encode(), version, head, len(body), body)


@pytest.fixture(scope="module")
def fw(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    f = Firmware(str(d / "flash"), {"STREAMS": STREAMS}, extra_files={"knob.py": KNOB}).start()
    yield f
    f.stop()
    assert "Traceback" not in f.log(), f.log()


def value(fw, sid):
    return fw.get(target_data(sid)).json()["value"]


def exchange(port, data, timeout=10.0):
    """Send all of `data`, then read until the device closes. Returns (answer, error): error names
    a reset or broken pipe, on either side of the exchange (what a client sees as a failure)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError as e:
            return b"", "send: %r" % e
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except OSError as e:
                return b"".join(chunks), "recv: %r" % e
            if not b:
                return b"".join(chunks), None
            chunks.append(b)


def answer(fw, data):
    out, err = exchange(fw.port, data)
    assert err is None, (err, out[:200])
    r = Response(out)
    assert int(r.headers["content-length"]) == len(r.body), out[:300]
    return r


# --- issue #10: the HTTP faults found from outside ------------------------------------------------
@pytest.mark.quick
def test_absolute_form_target_is_served_as_the_path_it_names(fw):
    for target in (b"http://device/Datastreams/health", b"HTTP://192.168.1.23:8003/Datastreams/health",
                   b"https://device.local/Datastreams/health"):
        r = answer(fw, b"GET %s HTTP/1.1\r\nHost: device\r\n\r\n" % target)
        assert r.status == 200 and r.json()["status"] == "healthy", target
    r = answer(fw, b"GET http://device%s HTTP/1.1\r\n\r\n" % target_data("led").encode())
    assert r.status == 200 and r.json()["datastream_id"] == "led"
    r = answer(fw, b"POST http://device%s HTTP/1.1\r\n\r\n" % target_set("led", "on").encode())
    assert r.json()["code"] == "1001" and value(fw, "led") == "true"
    # No path after the authority is the empty path, which no route has.
    for target in (b"http://device", b"http://device?osid=" + OSID.encode()):
        assert answer(fw, b"GET %s HTTP/1.1\r\n\r\n" % target).status == 404, target
    for bad in (b"ftp://device/Datastreams/health", b"http:/device/Datastreams/health",
                b"http:///Datastreams/health", b"httpx://device/Datastreams/health", b"httpss://x/Datastreams/health",
                b"://device/Datastreams/health", b"http:device/Datastreams/health", b"device/Datastreams/health",
                b"http://dev\x01ice/Datastreams/health"):
        r = answer(fw, b"GET %s HTTP/1.1\r\n\r\n" % bad)
        assert r.status == 400 and r.json() == {"status": "error", "message": "Bad request"}, bad
    code, out = curl("--request-target", "http://device/Datastreams/health", fw.url + "/")
    assert code == 0 and json.loads(out)["status"] == "healthy", out
    fw.alive()


def test_escaped_control_bytes_on_a_small_heap_never_cost_a_500(make_firmware):
    # At 104K, 250 "%01" in a stream id made the 1026 message escape through json.dumps, whose
    # copies did not fit the heap: a 500 with a MemoryError traceback. Now they are escaped in place.
    dev = make_firmware(heap="104K")
    for count, status in ((250, 414), (600, 414), (100, 200)):
        r = answer(dev, b"GET %s HTTP/1.0\r\n\r\n" % target_data("%01" * count).encode())
        assert r.status == status and r.headers[CORS] == "*", (count, r.raw[:200])
        if status == 414:
            assert r.json() == {"status": "error", "message": "URI too long"}
        else:
            assert r.json() == {"status": "error", "code": "1026", "message": "Datastream '%s' no existe" % ("\x01" * count)}
    dev.alive()
    log = dev.log()
    assert "MemoryError" not in log and "Traceback" not in log, log


def test_out_of_memory_in_a_request_is_a_503_and_the_device_goes_on(make_firmware):
    streams = STREAMS[:1] + ({"id": "glotona", "format": "integer", "type": "actuator", "hw": "custom",
                              "read": "hungry:read", "write": "hungry:write"},)
    hungry = "def read():\n    return 0\n\ndef write(v):\n    if v:\n        bytearray(1 << 26)\n"
    dev = make_firmware(STREAMS=streams, extra_files={"hungry.py": hungry})
    for _ in range(3):
        r = dev.post(target_set("glotona", "1"))
        assert r.status == 503 and r.json() == {"status": "error", "message": "Service unavailable"}, r.raw
        assert r.headers[CORS] == "*"
        assert dev.post(target_set("led", "on")).json()["code"] == "1001"
    dev.alive()
    assert "Traceback" not in dev.log() and "out of memory" in dev.log()


def test_head_ends_at_the_earliest_blank_line_never_inside_the_body(fw):
    # Bare-LF header lines and a blank "\n\n", then a body holding "\r\n\r\n" (and a control byte):
    # the body is not part of the head.
    body = b"ab\x01\r\n\r\nX-Not-A-Header: 1\r\n\r\n"
    raw = b"POST %s HTTP/1.0\nHost: x\nContent-Length: %d\n\n%s" % (target_set("led", "off").encode(), len(body), body)
    r = answer(fw, raw)
    assert r.status == 200 and r.json()["code"] == "1001" and value(fw, "led") == "false", r.raw
    body = b'{"value": 700}\r\n\r\n'
    r = answer(fw, b"POST %s HTTP/1.1\nContent-Length: %d\n\n%s" % (target_set("dimmer").encode(), len(body), body))
    assert r.json()["data"]["value"] == 700 and value(fw, "dimmer") == "700", r.raw
    # A CRLF head whose body holds "\n\n" and "\r\n\r\n" too.
    body = b"x\n\ny\r\n\r\n"
    r = answer(fw, b"GET /Datastreams/health HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    assert r.status == 200 and r.json()["status"] == "healthy"


def test_a_header_in_the_body_is_not_taken_for_one(make_firmware):
    dev = make_firmware(API_TOKEN=TOKEN)
    body = b"\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
    raw = b"POST %s HTTP/1.0\nHost: x\nContent-Length: %d\n\n%s" % (target_set("led", "on").encode(), len(body), body)
    r = answer(dev, raw)
    assert r.status == 401 and r.json() == {"status": "error", "message": "No autorizado"}, r.raw
    assert r.headers[CORS] == "*" and r.headers["www-authenticate"] == "Bearer"
    raw = raw.replace(b"Host: x\n", b"Host: x\nAuthorization: Bearer " + TOKEN.encode() + b"\n")
    assert answer(dev, raw).json()["code"] == "1001"


BIG = 1 << 20  # more than the socket buffers take without the device reading


@pytest.mark.parametrize("kind", ["414", "431", "400", "400-length", "413", "ignored-body"])
def test_early_answer_with_a_large_unread_body_reaches_the_client(fw, kind):
    """Before, the device answered and closed with the client's bytes unread: the kernel reset the
    connection and the client got ECONNRESET or EPIPE instead of the answer."""
    raw, status = {
        "414": (b"GET /Datastreams/health?x=" + b"a" * BIG + b" HTTP/1.0\r\n\r\n", 414),
        "431": (b"GET /Datastreams/health HTTP/1.0\r\nX-A: " + b"b" * BIG + b"\r\n\r\n", 431),
        "400": (b"GET /Datastreams/he\x01alth HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (BIG, b"c" * BIG), 400),
        "400-length": (b"POST %s HTTP/1.0\r\nContent-Length: 1e6\r\n\r\n%s" % (target_set("led").encode(), b"d" * BIG), 400),
        "413": (post_raw(target_set("dimmer"), b'{"value": 1%s}' % (b" " * BIG)), 413),
        "ignored-body": (post_raw(target_set("led", "on"), b"e" * BIG), 200),
    }[kind]
    t = time.monotonic()
    out, err = exchange(fw.port, raw)
    took = time.monotonic() - t
    assert err is None, (err, out[:200])
    r = Response(out)
    assert r.status == status and int(r.headers["content-length"]) == len(r.body) and r.headers[CORS] == "*", out[:300]
    assert r.json()["status"] == ("success" if status == 200 else "error")
    assert took < 2.0, took  # the drain is bounded
    fw.alive()


def test_clients_read_an_early_413_instead_of_a_reset(fw):
    before = value(fw, "dimmer")
    big = {"value": 5, "pad": "x" * BIG}
    r = requests.post(fw.url + target_set("dimmer"), json=big, timeout=10)
    assert r.status_code == 413 and r.json() == {"status": "error", "message": "Payload too large"}
    assert r.headers[CORS] == "*"
    r = httpx.post(fw.url + target_set("dimmer"), json=big, timeout=10)
    assert r.status_code == 413 and r.json()["message"] == "Payload too large"
    path = os.path.join(fw.flash, "..", "big.json")
    with open(path, "w") as f:
        json.dump(big, f)
    code, out = curl("-X", "POST", "-H", "Content-Type: application/json", "--data-binary", "@" + path,
                     "-w", "\n%{http_code}", fw.url + target_set("dimmer"))
    assert code == 0 and out.endswith("\n413") and json.loads(out.rsplit("\n", 1)[0])["message"] == "Payload too large", out
    assert value(fw, "dimmer") == before


def test_a_burst_of_30_connections_is_answered_at_once(fw):
    """With a listen backlog of 4 the kernel dropped the SYNs of a burst, and those clients waited
    1-3 s for the retransmit. Each of 30 simultaneous clients now gets its answer (200, or 503 once
    the slots and waiting places are taken) within a fraction of a second."""
    n = 30
    start = threading.Barrier(n)
    results = [None] * n

    def client(i):
        start.wait()
        t = time.monotonic()
        out, err = exchange(fw.port, b"GET /Datastreams/health HTTP/1.0\r\nHost: x\r\n\r\n")
        results[i] = (time.monotonic() - t, out, err)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    statuses = {}
    for took, out, err in results:
        assert err is None, err
        r = Response(out)
        assert r.status in (200, 503) and int(r.headers["content-length"]) == len(r.body), out[:200]
        statuses[r.status] = statuses.get(r.status, 0) + 1
    longest = max(took for took, _, _ in results)
    print("\nburst of %d: %s, longest %.0f ms" % (n, statuses, longest * 1000))
    assert longest < 0.5, "a client waited %.2f s" % longest
    for _ in range(5):
        fw.alive()


# --- issue #13: comando=set with the value in a JSON body, as the automation service sends it -----
@pytest.mark.quick
def test_set_with_a_json_value_drives_pwm_boolean_and_float_actuators(fw):
    cases = (("dimmer", 512, "512", 512), ("dimmer", 0, "0", 0), ("led", True, "true", True),
             ("led", "off", "false", False), ("led", "ON", "true", True), ("led", False, "false", False),
             ("led", 1, "true", True), ("setpoint", 21.5, "21.5", 21.5), ("setpoint", -50, "-50.0", -50))
    for i, (sid, v, shown, applied) in enumerate(cases):
        client = requests.post if i % 2 else httpx.post
        r = client(fw.url + target_set(sid), json={"value": v}, timeout=5)
        assert r.status_code == 200 and r.headers[CORS] == "*", (sid, v, r.text)
        assert r.json() == {"status": "success", "code": "1001", "message": "Datastream '%s' actualizado a 'set'" % sid,
                            "data": {"datastream_id": sid, "comando": "set", "applied": True, "value": applied}}, r.text
        assert value(fw, sid) == shown, (sid, v)


@pytest.mark.quick
def test_the_automation_services_exact_request(fw):
    # What it sends: its own query-string order, Content-Type application/json, a body of ~15 bytes.
    params = {"osid": OSID, "idDataStream": "dimmer", "comando": "set"}
    with requests.Session() as s:
        r = s.post(fw.url + "/Datastreams/SetDatastream", params=params, data=json.dumps({"value": 321}),
                   headers={"Content-Type": "application/json"}, timeout=5)
    assert r.request.headers["Content-Length"] == "14"
    assert r.status_code == 200 and r.json()["data"]["value"] == 321 and value(fw, "dimmer") == "321"
    with httpx.Client(base_url=fw.url) as c:
        r = c.post("/Datastreams/SetDatastream", params=params | {"idDataStream": "led"}, json={"value": "on"})
    assert r.status_code == 200 and r.json()["code"] == "1001" and value(fw, "led") == "true"


@pytest.mark.quick
def test_set_with_a_missing_or_bad_value_is_1027_and_changes_nothing(fw):
    requests.post(fw.url + target_set("dimmer"), json={"value": 100}, timeout=5)
    requests.post(fw.url + target_set("led"), json={"value": True}, timeout=5)
    for sid, body in (("dimmer", b"{}"), ("dimmer", b'{"value": null}'), ("dimmer", b"{value: 5}"), ("dimmer", b""),
                      ("dimmer", b'{"value": 5000}'), ("dimmer", b'{"value": -1}'), ("dimmer", b'{"value": 12.5}'),
                      ("dimmer", b'{"value": true}'), ("dimmer", b'{"value": "abc"}'), ("dimmer", b'{"value": [5]}'),
                      ("dimmer", b"[5]"), ("dimmer", b'{"valor": 5}'), ("dimmer", b'{"value": 5'),
                      ("led", b'{"value": "maybe"}'), ("led", b'{"value": 2}'), ("led", b'{"value": {"on": 1}}'),
                      ("led", b'{"value": "%s"}' % (b"o" * 70)), ("reloj", b'{"value": "on"}')):
        r = answer(fw, post_raw(target_set(sid), body))
        j = r.json()
        assert r.status == 200 and j["status"] == "error" and j["code"] == "1027", (sid, body, j)
        assert j["message"].startswith("Error ejecutando comando: ") and r.headers[CORS] == "*"
    assert value(fw, "dimmer") == "100" and value(fw, "led") == "true"


@pytest.mark.quick
def test_set_without_a_content_length_is_411(fw):
    length_required = {"status": "error", "message": "Length required"}
    for raw in (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n" % target_set("dimmer").encode(),
                b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0e\r\n{\"value\": 512}\r\n0\r\n\r\n"
                % target_set("dimmer").encode()):
        r = answer(fw, raw)
        assert r.status == 411 and r.json() == length_required and r.headers[CORS] == "*", r.raw
    # A client that streams its body (chunked, no length) reads the 411 too.
    r = requests.post(fw.url + target_set("dimmer"), data=(b for b in (b'{"value": ', b"512}")), timeout=5)
    assert r.status_code == 411 and r.json() == length_required
    assert value(fw, "dimmer") != "512"
    # Other commands need no body.
    assert answer(fw, b"POST %s HTTP/1.0\r\n\r\n" % target_set("led", "off").encode()).json()["code"] == "1001"


def test_set_body_in_later_packets_than_the_head(fw):
    body = b'{"value": 222}'
    raw = post_raw(target_set("dimmer"), body)
    head = len(raw) - len(body)
    with socket.create_connection(("127.0.0.1", fw.port), timeout=5) as s:
        for a, b in ((0, 20), (20, head), (head, head + 4), (head + 4, len(raw))):  # head split too
            s.sendall(raw[a:b])
            time.sleep(0.2)
        r = Response(s.recv(4096))
    assert r.status == 200 and r.json()["data"]["value"] == 222 and value(fw, "dimmer") == "222", r.raw


def test_set_body_that_never_comes_is_408(make_firmware):
    dev = make_firmware(STREAMS=STREAMS, extra_files={"knob.py": KNOB}, HTTP_TIMEOUT_MS=600)
    raw = post_raw(target_set("dimmer"), b'{"value": 999}')
    t = time.monotonic()
    out, err = exchange(dev.port, raw[:-5])  # 5 bytes of the body never sent
    r = Response(out)
    assert err is None and r.status == 408 and r.headers[CORS] == "*" and 0.4 < time.monotonic() - t < 3, (err, out)
    assert value(dev, "dimmer") == "0"


def test_bodies_on_other_routes_are_drained_and_ignored(fw):
    for raw in (post_raw(target_set("led", "off"), b'{"value": true}'),
                b"GET /Datastreams/health HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello"):
        r = answer(fw, raw)
        assert r.status == 200 and r.json()["status"] in ("success", "healthy"), r.raw
    assert value(fw, "led") == "false"


@pytest.mark.quick
def test_cors_header_on_every_json_answer(make_firmware, fw):
    def check(r, status, code=None):
        assert r.status == status and r.headers.get(CORS) == "*" and r.raw.lower().count(b"access-control-allow-origin") == 1, r.raw
        if code:
            assert r.json()["code"] == code, r.raw

    check(fw.get(target_data("led").replace(OSID, "otro")), 200, "1025")
    check(fw.post(target_set("led", "on", osid="otro")), 200, "1025")
    check(fw.post(target_set("nope", "on")), 200, "1026")
    check(fw.get(target_data("nope")), 200, "1026")
    check(fw.post(target_set("led", "maybe")), 200, "1027")
    check(fw.get(target_data("led").replace("tipove=1", "tipove=2")), 200, "1099")
    check(fw.get("/Datastreams/SendState?osid=otro"), 200, "1025")
    check(fw.get("/Datastreams/SendData?osid=" + OSID), 400)
    check(fw.get("/Datastreams/SendState"), 400)
    check(fw.post("/Datastreams/SetDatastream?osid=" + OSID), 400)
    check(Response(fw.raw(b"GET /Datastreams/health?x=%zz HTTP/1.0\r\n\r\n")), 400)
    check(Response(fw.raw(b"GET /Datastreams/health?x=" + b"a" * 5000 + b" HTTP/1.0\r\n\r\n")), 414)
    check(Response(fw.raw(b"GET /Datastreams/health HTTP/1.0\r\nX-A: " + b"b" * 5000 + b"\r\n\r\n")), 431)
    check(Response(fw.raw(b"POST %s HTTP/1.0\r\n\r\n" % target_set("led").encode())), 411)
    check(Response(fw.raw(post_raw(target_set("led"), b" " * 5000))), 413)
    for path in ("/Datastreams/health", "/Datastreams/SendState?osid=" + OSID, target_data("led"), "/telemetry/status"):
        check(fw.get(path), 200)
    check(fw.post(target_set("led", "on")), 200, "1001")
    dev = make_firmware(API_TOKEN=TOKEN, HTTP_TIMEOUT_MS=400)
    check(dev.post(target_set("led", "on")), 401)
    with socket.create_connection(("127.0.0.1", dev.port), timeout=5) as s:
        s.sendall(b"GET /Datastreams/health HTTP/1.0\r\n")
        check(Response(s.recv(4096)), 408)
