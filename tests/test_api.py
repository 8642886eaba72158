"""The wire contract of docs/API.md, end to end against the firmware under micropython."""
import socket
import threading
import time

import pytest

from conftest import Response, curl

pytestmark = pytest.mark.quick

OSID = "ObjetoESP32"
STATE = "/Datastreams/SendState?osid=" + OSID


def data(stream, tipove="1"):
    return "/Datastreams/SendData?osid=%s&variableEstado=%s&tipove=%s" % (OSID, stream, tipove)


def setds(stream, comando, osid=OSID):
    return "/Datastreams/SetDatastream?osid=%s&idDataStream=%s&comando=%s" % (osid, stream, comando)


def test_health(device):
    r = device.get("/Datastreams/health")
    assert r.status == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["connection"] == "close"
    assert int(r.headers["content-length"]) == len(r.body)
    j = r.json()
    assert (j["status"], j["service"], j["osid"], j["title"]) == ("healthy", "datastream", OSID, "Objeto ESP32")
    assert j["mem_free"] > 0 and j["uptime_s"] >= 0


def test_send_state_lists_streams_in_declaration_order_as_strings(device):
    r = device.get(STATE)
    assert r.status == 200
    assert r.headers["access-control-allow-origin"] == "*"
    j = r.json()
    assert j["osid"] == OSID
    ids = [d["datastream_id"] for d in j["datastreams"]]
    assert ids == ["led", "rele", "reloj", "temperatura", "memoria"]
    assert j["count"] == 5
    for d in j["datastreams"]:
        assert set(d) == {"datastream_id", "datastream_format", "datastream_type", "value"}
        assert isinstance(d["value"], str)
    by = {d["datastream_id"]: d for d in j["datastreams"]}
    assert by["led"]["datastream_format"] == "boolean" and by["led"]["datastream_type"] == "actuator"
    assert by["led"]["value"] in ("true", "false")
    assert by["reloj"]["datastream_type"] == "sensor"
    assert time.strptime(by["reloj"]["value"], "%Y-%m-%d %H:%M:%S")
    assert 0 < float(by["temperatura"]["value"]) < 100
    assert int(by["memoria"]["value"]) > 0


def test_send_state_errors(device):
    r = device.get("/Datastreams/SendState")
    assert r.status == 400 and r.json() == {"status": "error", "message": "Parámetro osid faltante"}
    r = device.get("/Datastreams/SendState?osid=")
    assert r.status == 400, "an empty value counts as missing"
    r = device.get("/Datastreams/SendState?osid=objetoesp32")
    assert r.status == 200 and r.json() == {"status": "error", "code": "1025", "message": "ID incorrecto"}


def test_send_data(device):
    r = device.get(data("reloj"))
    assert r.status == 200 and r.headers["access-control-allow-origin"] == "*"
    j = r.json()
    assert set(j) == {"osid", "datastream_id", "datastream_format", "value"}
    assert (j["osid"], j["datastream_id"], j["datastream_format"]) == (OSID, "reloj", "timestamp")
    assert isinstance(j["value"], str)
    assert device.get(data("led")).json()["value"] in ("true", "false")


def test_send_data_errors_in_order(device):
    missing = {"status": "error", "message": "Parámetros faltantes"}
    r = device.get("/Datastreams/SendData?osid=" + OSID)
    assert r.status == 400 and r.json() == missing
    r = device.get("/Datastreams/SendData?variableEstado=led")
    assert r.status == 400 and r.json() == missing
    # osid first, then tipove, then the stream
    assert device.get("/Datastreams/SendData?osid=x&variableEstado=nope&tipove=2").json()["code"] == "1025"
    no_type = {"status": "error", "code": "1099", "message": "Tipo no implementado"}
    for t in ("2", "abc", "1.5", "-1"):
        r = device.get(data("nope", t))
        assert r.status == 200 and r.json() == no_type, t
    r = device.get(data("nope"))
    assert r.status == 200
    assert r.json() == {"status": "error", "code": "1026", "message": "Datastream 'nope' no existe"}


def test_set_datastream_on_off_and_read_back(device):
    for comando, expect in (("on", True), ("OFF", False), ("True", True), ("0", False), ("1", True), ("off", False)):
        r = device.post(setds("rele", comando))
        assert r.status == 200 and r.headers["access-control-allow-origin"] == "*"
        assert r.json() == {
            "status": "success", "code": "1001",
            "message": "Datastream 'rele' actualizado a '%s'" % comando,
            "data": {"datastream_id": "rele", "comando": comando, "applied": True, "value": expect},
        }
        assert device.get(data("rele")).json()["value"] == ("true" if expect else "false")


def test_set_datastream_errors_keep_state(device):
    device.post(setds("led", "on"))
    missing = {"status": "error", "message": "Parámetros faltantes"}
    for target in ("/Datastreams/SetDatastream?osid=%s&idDataStream=led" % OSID,
                   "/Datastreams/SetDatastream?osid=%s&comando=off" % OSID,
                   "/Datastreams/SetDatastream?idDataStream=led&comando=off",
                   setds("led", "")):
        r = device.post(target)
        assert r.status == 400 and r.json() == missing, target
    assert device.post(setds("led", "off", osid="other")).json()["code"] == "1025"
    r = device.post(setds("nope", "off"))
    assert r.json() == {"status": "error", "code": "1026", "message": "Datastream 'nope' no existe"}
    for bad in ("maybe", "2", "%22%3Cscript%3E", "onn"):
        r = device.post(setds("led", bad))
        j = r.json()
        assert r.status == 200 and j["status"] == "error" and j["code"] == "1027", bad
        assert j["message"].startswith("Error ejecutando comando: ")
    r = device.post(setds("reloj", "on"))
    assert r.json()["code"] == "1027", "a sensor cannot be set"
    r = device.get("/Datastreams/SetDatastream?osid=%s&idDataStream=led&comando=off" % OSID)
    assert r.status == 405 and r.headers["allow"] == "POST, OPTIONS"
    assert device.get(data("led")).json()["value"] == "true", "no failed command changed the LED"


def test_trailing_slash_and_case_sensitive_paths(device):
    assert device.get("/Datastreams/SendState/?osid=" + OSID).status == 200
    assert device.get("/Datastreams/SendData/?osid=%s&variableEstado=led&tipove=1" % OSID).json()["value"]
    assert device.post("/Datastreams/SetDatastream/?osid=%s&idDataStream=led&comando=on" % OSID).json()["code"] == "1001"
    assert device.get("/datastreams/sendstate?osid=" + OSID).status == 404
    assert device.get("/Datastreams/SendState//?osid=" + OSID).status == 404


def test_unknown_path_and_wrong_method(device):
    r = device.get("/nope")
    assert r.status == 404 and r.headers["content-type"] == "text/plain" and r.body == b"Not found"
    r = device.request("DELETE", STATE)
    assert r.status == 405 and r.body == b"Method not allowed" and r.headers["allow"] == "GET, HEAD, OPTIONS"
    r = device.post(STATE)
    assert r.status == 405


def test_head_and_options(device):
    full = device.get("/Datastreams/health")
    r = device.request("HEAD", "/Datastreams/health")
    assert r.status == 200 and r.body == b""
    assert abs(int(r.headers["content-length"]) - len(full.body)) <= 3  # uptime/mem digits may differ
    r = device.request("OPTIONS", "/Datastreams/SetDatastream")
    assert r.status == 204 and r.headers["allow"] == "POST, OPTIONS" and r.body == b""
    # a browser page preflights comando=set with its JSON body: Content-Type must be allowed
    assert r.headers["access-control-allow-headers"] == "Authorization, Content-Type"
    r = device.request("OPTIONS", "/Datastreams/SendState")
    assert r.status == 204 and r.headers["allow"] == "GET, HEAD, OPTIONS"


def test_percent_decoding_plus_and_repeated_params(device):
    r = device.get("/Datastreams/SendState?osid=Objeto%45SP32")
    assert r.json()["osid"] == OSID
    r = device.get("/Datastreams/SendState?osid=%4fbjetoESP32&osid=wrong")
    assert r.json()["osid"] == OSID, "the first of repeated names wins"
    r = device.get("/Datastreams/SendData?osid=%s&variableEstado=no+pe&tipove=1" % OSID)
    assert r.json()["message"] == "Datastream 'no pe' no existe"
    r = device.get("/Datastreams/SendData?osid=%s&variableEstado=%%22q%%5C%%01&tipove=1" % OSID)
    assert r.json()["message"] == "Datastream '\"q\\\x01' no existe", "quotes and control bytes are escaped"
    r = device.get("/Datastreams/SendData?osid=%s&variableEstado=n%%C3%%BA&tipove=1" % OSID)
    assert r.json()["message"] == "Datastream 'nú' no existe"


def test_bad_requests_get_400_and_server_goes_on(device):
    bad = {"status": "error", "message": "Bad request"}
    for raw in (b"GET /Datastreams/health?x=%zz HTTP/1.0\r\n\r\n",
                b"GET /Datastreams/health?x=%4 HTTP/1.0\r\n\r\n",
                b"GET /Datastreams/SendState?osid=%FF HTTP/1.0\r\n\r\n",
                b"GET /Datastreams/health\r\n\r\n",
                b"GET\r\n\r\n",
                b"get /Datastreams/health HTTP/1.0\r\n\r\n",
                b"GET Datastreams/health HTTP/1.0\r\n\r\n",
                b"GET /Datastreams/health\x00 HTTP/1.0\r\n\r\n",
                b"GET /Datastreams/he\x01alth HTTP/1.0\r\n\r\n",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
                b"\r\n\r\n"):
        r = Response(device.raw(raw))
        assert r.status == 400 and r.json() == bad, raw
    assert device.alive()


def test_oversized_request_line_and_headers(device):
    r = Response(device.raw(b"GET /Datastreams/health?x=" + b"a" * 5000 + b" HTTP/1.0\r\n\r\n"))
    assert r.status == 414
    r = Response(device.raw(b"GET /Datastreams/health HTTP/1.0\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n"))
    assert r.status == 431
    assert device.alive()


def test_post_with_body_is_answered(device):
    r = Response(device.raw(b"POST /Datastreams/SetDatastream?osid=%s&idDataStream=led&comando=off HTTP/1.1\r\n"
                            b"Host: x\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n"
                            b'{"ignored":true}\n' % OSID.encode()))
    assert r.status == 200 and r.json()["code"] == "1001"


def test_curl_examples(device):
    code, out = curl(device.url + "/Datastreams/SendState?osid=" + OSID)
    assert code == 0 and '"count":5' in out
    code, out = curl("-X", "POST", device.url + "/Datastreams/SetDatastream?osid=%s&idDataStream=led&comando=on" % OSID)
    assert code == 0 and '"code":"1001"' in out
    code, out = curl("-I", device.url + "/Datastreams/health")
    assert code == 0 and out.startswith("HTTP/1.0 200 OK")


def test_concurrent_clients_all_answered(device):
    results = []

    def client(i):
        stream = ("led", "rele", "reloj", "temperatura", "memoria")[i % 5]
        r = device.get(data(stream))
        results.append((r.status, r.json()["datastream_id"] == stream))

    # As many at once as the default cfg takes: 4 slots and 3 waiting (more would get 503).
    threads = [threading.Thread(target=client, args=(i,)) for i in range(7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(results) == 7 and all(ok == (200, True) for ok in results)


def test_slow_client_does_not_block_others(device):
    slow = socket.create_connection(("127.0.0.1", device.port))
    slow.sendall(b"GET /Datastreams/health HTTP/1.0\r\nHost: sl")  # half a request, then silence
    t0 = time.monotonic()
    r = device.get(STATE)
    assert r.status == 200 and time.monotonic() - t0 < 1.0
    slow.sendall(b"ow\r\n\r\n")  # it finishes later and is still answered
    answer = Response(slow.recv(4096))
    slow.close()
    assert answer.status == 200


def test_idle_client_times_out_with_408(make_firmware):
    fw = make_firmware(HTTP_TIMEOUT_MS=500)
    s = socket.create_connection(("127.0.0.1", fw.port), timeout=5)
    s.sendall(b"GET /Datastreams/health HTTP/1.0\r\n")
    t0 = time.monotonic()
    answer = s.recv(4096)
    assert Response(answer).status == 408 and 0.3 < time.monotonic() - t0 < 3
    s.close()
    assert fw.alive()


def test_failed_sensor_read_gives_zero_for_that_item_only(make_firmware):
    streams = (
        {"id": "led", "format": "boolean", "type": "actuator", "hw": "pin", "pin": 2},
        {"id": "roto", "format": "float", "type": "sensor", "hw": "custom", "read": "faulty:read"},
        {"id": "memoria", "format": "integer", "type": "sensor", "hw": "mem_free"},
    )
    fw = make_firmware(STREAMS=streams, extra_files={"faulty.py": "def read():\n    raise OSError(5)\n"})
    j = fw.get(STATE).json()
    assert [d["value"] for d in j["datastreams"]][1] == "0"
    assert int(j["datastreams"][2]["value"]) > 0 and j["count"] == 3


def test_pwm_actuator_takes_numbers_in_range(make_firmware):
    streams = ({"id": "brillo", "format": "integer", "type": "actuator", "hw": "pwm", "pin": 5},)
    fw = make_firmware(STREAMS=streams)
    r = fw.post(setds("brillo", "512")).json()
    assert r["code"] == "1001" and r["data"]["value"] == 512
    for bad in ("-1", "1024", "nan", "1e9", "12.5", "99999999999999999999999"):
        j = fw.post(setds("brillo", bad)).json()
        assert j["code"] == "1027", bad
    assert fw.get(data("brillo")).json()["value"] == "512"
