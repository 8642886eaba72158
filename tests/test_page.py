"""The control page at the byte level, over real sockets and the real curl: GET / sends the page
built by web/pack.py from the flash, gzipped when the client takes it, plain otherwise; HEAD, ETag
and 304; the favicon; /page/streams; the token; a page missing from the flash; and a client that
does not read its page holding only its own slot."""
import gzip
import json
import os
import socket
import threading
import time

import pytest
import requests

from conftest import Firmware, curl, flash

OSID = "ObjetoESP32"
# A device with a control of each kind: a switch, a slider (PWM), a number field with a range and
# a unit, a text field; and the usual sensors.
STREAMS = (
    {"id": "led", "format": "boolean", "type": "actuator", "hw": "pin", "pin": 2},
    {"id": "brillo", "format": "integer", "type": "actuator", "hw": "pwm", "pin": 5},
    {"id": "consigna", "format": "float", "type": "actuator", "hw": "custom", "read": "knob:read",
     "write": "knob:write", "min": -50, "max": 150, "unit": "°C"},
    {"id": "nota", "format": "string", "type": "actuator", "hw": "custom", "read": "note:read", "write": "note:write"},
    {"id": "reloj", "format": "timestamp", "type": "sensor", "hw": "rtc"},
    {"id": "temperatura", "format": "float", "type": "sensor", "hw": "mcu_temp"},
    {"id": "memoria", "format": "integer", "type": "sensor", "hw": "mem_free"},
)
STORE = "value = [20.0]\n\ndef read():\n    return value[0]\n\ndef write(v):\n    value[0] = v\n"
FILES = {"knob.py": STORE, "note.py": STORE.replace("20.0", "'hola'")}
TOKEN = "p4ge-t0ken"
PAGE = flash.pack.page()  # what the device must serve: the build step's output
BOUND_S = 1.0  # every other client is answered within this, whatever a page client does


@pytest.fixture(scope="module")
def fw(tmp_path_factory):
    d = tmp_path_factory.mktemp("page")
    f = Firmware(str(d / "flash"), {"STREAMS": STREAMS}, extra_files=FILES).start()
    yield f
    f.stop()
    assert "Traceback" not in f.log(), f.log()


def etag(r):
    return r.headers["etag"]


def test_gzip_when_accepted_and_it_is_the_page(fw):
    r = fw.get("/", headers=b"Accept-Encoding: gzip, deflate, br\r\n")
    assert r.status == 200 and r.headers["content-encoding"] == "gzip"
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert int(r.headers["content-length"]) == len(r.body) < len(PAGE) / 2
    assert gzip.decompress(r.body) == PAGE
    with open(os.path.join(fw.flash, "index.html.gz"), "rb") as f:
        assert r.body == f.read()
    assert r.headers["vary"] == "Accept-Encoding" and r.headers["cache-control"] == "no-cache"
    assert "connect-src 'self'" in r.headers["content-security-policy"]
    print("\npage: %d B gzipped, %d B plain" % (len(r.body), len(PAGE)))
    # the clients people use decode it
    code, out = curl("--compressed", fw.url + "/")
    assert code == 0 and out.encode() == PAGE
    got = requests.get(fw.url + "/", timeout=5)
    assert got.headers["content-encoding"] == "gzip" and got.content == PAGE


@pytest.mark.parametrize("accept", [None, b"identity", b"gzip;q=0", b"gzip; q=0.000, identity", b"br"])
def test_plain_for_a_client_that_does_not_take_gzip(fw, accept):
    r = fw.get("/", headers=b"Accept-Encoding: %s\r\n" % accept if accept else b"")
    assert r.status == 200 and "content-encoding" not in r.headers
    assert int(r.headers["content-length"]) == len(r.body) and r.body == PAGE


def test_gzip_with_q_or_a_star(fw):
    for accept in (b"gzip;q=0.5", b"*", b"identity, *;q=0.1", b"GZip", b"x-gzip"):
        r = fw.get("/", headers=b"Accept-Encoding: %s\r\n" % accept)
        assert r.headers.get("content-encoding") == "gzip", accept


def test_head_has_the_headers_and_no_body(fw):
    for accept in (b"gzip", b"identity"):
        get = fw.get("/", headers=b"Accept-Encoding: %s\r\n" % accept)
        head = fw.request("HEAD", "/", headers=b"Accept-Encoding: %s\r\n" % accept)
        assert head.status == 200 and head.body == b"" and head.headers == get.headers


def test_etag_answers_304_and_reloads_cost_nothing(fw):
    r = fw.get("/", headers=b"Accept-Encoding: gzip\r\n")
    tag = etag(r)
    assert tag.startswith('W/"') and tag == etag(fw.get("/")), "one tag for both encodings of the page"
    for match in (tag, tag[2:], '"00000000", ' + tag, "*"):
        again = fw.get("/", headers=b"Accept-Encoding: gzip\r\nIf-None-Match: %s\r\n" % match.encode())
        assert again.status == 304 and again.body == b"" and etag(again) == tag, match
        assert "content-length" not in again.headers
    other = fw.get("/", headers=b'If-None-Match: W/"00000000"\r\n')
    assert other.status == 200 and other.body == PAGE
    # curl as a cache: it saves the tag, then asks with it
    tagfile = os.path.join(os.path.dirname(fw.flash), "etag.txt")
    code, out = curl("--compressed", "--etag-save", tagfile, fw.url + "/")
    assert code == 0 and out.encode() == PAGE
    code, out = curl("--compressed", "--etag-compare", tagfile, "-w", "%{http_code}", fw.url + "/")
    assert code == 0 and out == "304"


def test_favicon_is_an_empty_204(fw):
    r = fw.get("/favicon.ico")
    assert r.status == 204 and r.body == b"" and "max-age" in r.headers["cache-control"]


def test_page_streams_gives_ranges_and_units(fw):
    r = fw.get("/page/streams")
    assert r.status == 200 and r.headers["access-control-allow-origin"] == "*"
    got = {s["id"]: s for s in r.json()["streams"]}
    assert list(got) == [s["id"] for s in STREAMS]
    assert got["brillo"] == {"id": "brillo", "min": 0, "max": 1023, "unit": ""}
    assert got["consigna"] == {"id": "consigna", "min": -50, "max": 150, "unit": "°C"}
    assert got["led"]["min"] is None and got["nota"]["max"] is None
    assert got["temperatura"]["unit"] == "°C" and got["memoria"]["unit"] == "B"
    assert fw.request("POST", "/page/streams").status == 405


def test_page_routes_and_the_token(make_firmware):
    fw = make_firmware(API_TOKEN=TOKEN, API_TOKEN_READS=True)
    assert fw.get("/").status == 200, "the page loads without the token (a browser cannot send one)"
    assert fw.get("/favicon.ico").status == 204
    r = fw.get("/page/streams")
    assert r.status == 401 and r.json()["message"] == "No autorizado"
    assert fw.get("/page/streams", headers=b"Authorization: Bearer %s\r\n" % TOKEN.encode()).status == 200
    assert TOKEN.encode() not in fw.get("/").body


def test_no_page_on_the_flash_is_a_404_and_the_device_goes_on(make_firmware):
    fw = make_firmware()
    os.remove(os.path.join(fw.flash, "index.html"))
    r = fw.get("/")
    assert r.status == 404 and "upload.sh" in r.json()["message"]
    assert fw.get("/", headers=b"Accept-Encoding: gzip\r\n").status == 200, "the gzipped one is there"
    os.remove(os.path.join(fw.flash, "index.html.gz"))
    r = fw.get("/", headers=b"Accept-Encoding: gzip\r\n")
    assert r.status == 404 and r.json()["status"] == "error"
    assert fw.alive() and "Traceback" not in fw.log()


def _longest_health(fw, seconds):
    worst, n, end = 0.0, 0, time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        r = fw.get("/Datastreams/health", timeout=10)
        assert r.status == 200
        worst = max(worst, time.monotonic() - t0)
        n += 1
        time.sleep(0.05)
    return worst, n


def test_clients_that_never_read_a_large_page_hold_only_their_slots(make_firmware):
    """Three clients ask for a 6 MB page (plain: no gzip; larger than the kernel's 4 MB send
    buffer, so the socket does fill) with a tiny receive window and never read: each holds its
    slot until HTTP_TIMEOUT_MS, the loop goes on and health is answered meanwhile."""
    big = PAGE + b"<!-- %s -->\n" % (b"x" * 65536) * 96
    fw = make_firmware(HTTP_TIMEOUT_MS=2000, extra_files={"index.html": big.decode()})
    stuck = []
    for _ in range(3):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        s.connect(("127.0.0.1", fw.port))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        stuck.append(s)
    t0 = time.monotonic()
    worst, n = _longest_health(fw, 3.0)
    print("\nthree clients not reading a %d MB page: %d health answers, longest %.1f ms" % (
        len(big) >> 20, n, worst * 1000))
    assert worst < BOUND_S and n > 20
    for s in stuck:  # each was closed at its deadline, its page cut short
        s.settimeout(5)
        got = b""
        while True:
            try:
                chunk = s.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        s.close()
        head, _, body = got.partition(b"\r\n\r\n")
        assert b"Content-Length: %d\r\n" % len(big) in head and 0 < len(body) < len(big)
        assert big.startswith(body)
    assert time.monotonic() - t0 < 8
    assert fw.alive() and "Traceback" not in fw.log()


def test_page_downloads_alongside_api_clients(fw):
    """Four clients fetching the page in a loop and one asking for health every 50 ms: every page
    whole, every health answer on time (the longest is printed)."""
    stop, pages, bad = threading.Event(), [0], []

    def fetch():
        while not stop.is_set():
            r = fw.get("/", headers=b"Accept-Encoding: gzip\r\n")
            if r.status == 200 and gzip.decompress(r.body) == PAGE:
                pages[0] += 1
            elif r.status != 503:  # a burst over the slots and the queue is told to come back
                bad.append(r.raw[:200])

    threads = [threading.Thread(target=fetch, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        worst, n = _longest_health(fw, 3.0)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    print("\n4 clients loading the page: %d pages, %d health answers, longest %.1f ms" % (
        pages[0], n, worst * 1000))
    assert not bad and pages[0] > 20 and worst < BOUND_S
    json.loads(fw.get("/Datastreams/health").text)


def test_the_page_on_a_low_ram_heap(make_firmware):
    """The default device in the low-RAM profile's heap (test.sh's LOWRAM_HEAP): the page, both
    encodings, and /page/streams, again and again, while the API answers as ever."""
    fw = make_firmware(heap=os.environ.get("LOWRAM_HEAP", "112K"))  # test.sh exports it
    for i in range(40):
        r = fw.get("/", headers=b"Accept-Encoding: gzip\r\n" if i % 2 else b"")
        assert r.status == 200 and (gzip.decompress(r.body) if i % 2 else r.body) == PAGE
        assert fw.get("/page/streams").status == 200
    assert fw.alive() and "MemoryError" not in fw.log() and "Traceback" not in fw.log()
