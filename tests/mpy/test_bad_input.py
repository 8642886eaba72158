# Malformed requests the parser must refuse (400), and the strict UTF-8 check of decoded values.
import http
from reqs import conn, raises


def test_version_must_be_http_d_d_and_end_the_line():
    assert conn(b"GET / HTTP/1.1\r\n\r\n").method == http.GET
    for raw in (b"GET / HTTP/\r\n\r\n", b"GET / HTTP/1\r\n\r\n", b"GET / HTTP/1.0x\r\n\r\n", b"GET / HTTP/a.b\r\n\r\n",
                b"GET / HTTP/1.0 \r\n\r\n", b"GET / http/1.0\r\n\r\n", b"GET / HTTP/1.0\x00\r\n\r\n",
                b"GET /  HTTP/1.0\r\n\r\n", b"GET / HTTP/1,0\r\n\r\n", b"GET HTTP/1.0\r\n\r\n"):
        raises(http.BadRequest, conn, raw)


def test_control_bytes_in_headers():
    assert conn(b"GET / HTTP/1.0\r\nUser-Agent: a\tb\xc3\xa9\r\n\r\n").method == http.GET  # tab, obs-text
    for bad in (b"\x00", b"\x01", b"\x1b", b"\x7f", b"\x0b"):
        raises(http.BadRequest, conn, b"GET / HTTP/1.0\r\nX-A: a" + bad + b"b\r\n\r\n")


def test_strict_utf8():
    for ok in (b"", b"abc", b"\xc3\xb1", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\xed\x9f\xbf", b"\xf4\x8f\xbf\xbf"):
        assert http._utf8(ok), ok
    for bad in (b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
                b"\xf0\x80\x80\x80", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff", b"\x80", b"\xc3",
                b"\xe2\x82", b"a\xc3(", b"\xe2(\xac"):
        assert not http._utf8(bad), bad


def test_surrogates_and_overlong_forms_are_bad_requests():
    for value in (b"%ED%A0%80", b"%C0%AF", b"%E0%80%80", b"%F4%90%80%80", b"%C3%28", b"%80"):
        c = conn(b"GET /p?a=" + value + b" HTTP/1.0\r\n\r\n")
        raises(http.BadRequest, c.arg, b"a")
    c = conn(b"GET /p?a=%C3%B1%F0%9F%98%80&b=\xc3\xb1 HTTP/1.0\r\n\r\n")
    assert c.arg(b"a") == "\u00f1\U0001F600"
    assert c.arg(b"b") == "\u00f1"
    c = conn(b"GET /p?b=\xed\xa0\x80 HTTP/1.0\r\n\r\n")  # raw (not percent-encoded) bytes too
    raises(http.BadRequest, c.arg, b"b")
