# Routing: handlers, 404/405, OPTIONS, HEAD, the optional token.
import cfg
import json
import router
from reqs import body, conn, sent, status


class NoTelemetry:
    def state_json(self):
        return b'"off"'

    def status(self, c):
        c.add(b"{}")
        c.finish(200)


router.setup(NoTelemetry())


def answer(raw):
    c = conn(raw)
    router.handle(c)
    return c


def test_routes():
    assert status(answer(b"GET /Datastreams/health HTTP/1.0\r\n\r\n")) == 200
    assert status(answer(b"GET /telemetry/status HTTP/1.0\r\n\r\n")) == 200
    c = answer(b"GET /Datastreams/SendState?osid=%s HTTP/1.0\r\n\r\n" % cfg.OSID.encode())
    assert json.loads(body(c))["count"] == len(cfg.STREAMS)


def test_not_found_and_wrong_method():
    c = answer(b"GET /Datastreams/healthz HTTP/1.0\r\n\r\n")
    assert status(c) == 404 and body(c) == b"Not found"
    c = answer(b"PUT /Datastreams/health HTTP/1.0\r\n\r\n")
    assert status(c) == 405 and b"Allow: GET, HEAD, OPTIONS\r\n" in sent(c)
    c = answer(b"GET /Datastreams/SetDatastream HTTP/1.0\r\n\r\n")
    assert status(c) == 405 and b"Allow: POST, OPTIONS\r\n" in sent(c)


def test_head_has_no_body():
    c = answer(b"HEAD /Datastreams/health HTTP/1.0\r\n\r\n")
    assert status(c) == 200 and body(c) == b"" and b"Content-Length: " in sent(c)


def test_options():
    c = answer(b"OPTIONS /Datastreams/SendData HTTP/1.0\r\n\r\n")
    assert status(c) == 204 and b"Allow: GET, HEAD, OPTIONS\r\n" in sent(c)


def test_token_compare():
    assert router._same(b"abc", b"abc")
    assert not router._same(b"abd", b"abc")
    assert not router._same(b"ab", b"abc")
    assert not router._same(b"abcd", b"abc")
    assert not router._same(b"", b"abc")
