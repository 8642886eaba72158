# The request parser, in place on the connection buffer.
import http
from reqs import conn, raises, sent


def test_methods():
    assert conn(b"GET / HTTP/1.0\r\n\r\n").method == http.GET
    assert conn(b"HEAD / HTTP/1.0\r\n\r\n").method == http.HEAD
    assert conn(b"POST / HTTP/1.1\r\n\r\n").method == http.POST
    assert conn(b"OPTIONS / HTTP/1.1\r\n\r\n").method == http.OPTIONS
    assert conn(b"DELETE / HTTP/1.1\r\n\r\n").method == http.OTHER
    assert conn(b"GET / HTTP/1.0\n\n").method == http.GET  # bare LF is tolerated


def test_malformed_request_lines():
    for raw in (b"get / HTTP/1.0\r\n\r\n", b"GET /\r\n\r\n", b"GET / FTP/1.0\r\n\r\n", b"GET x HTTP/1.0\r\n\r\n",
                b" / HTTP/1.0\r\n\r\n", b"G3T / HTTP/1.0\r\n\r\n", b"GET /a\tb HTTP/1.0\r\n\r\n",
                b"GET /%zz HTTP/1.0\r\n\r\n", b"GET /%a HTTP/1.0\r\n\r\n", b"GET /\x7f HTTP/1.0\r\n\r\n"):
        raises(http.BadRequest, conn, raw)


def test_path_match_and_trailing_slash():
    c = conn(b"GET /Datastreams/SendState/?osid=1 HTTP/1.0\r\n\r\n")
    assert c.is_path(b"/Datastreams/SendState", True)
    assert not c.is_path(b"/Datastreams/SendState", False)
    assert not c.is_path(b"/Datastreams/Send", True)
    c = conn(b"GET /Datastreams/SendStateX HTTP/1.0\r\n\r\n")
    assert not c.is_path(b"/Datastreams/SendState", True)


def test_args_decoding_first_wins_empty_missing():
    c = conn(b"GET /p?a=1&b=x%20y+z&a=2&e=&f&%C3%B1=n&u=%C3%BA HTTP/1.0\r\n\r\n")
    assert c.arg(b"a") == "1"
    assert c.arg(b"b") == "x y z"
    assert c.arg(b"e") is None and c.arg(b"f") is None and c.arg(b"zz") is None
    assert c.arg(b"u") == "\u00fa"
    assert c.arg(b"ab") is None


def test_arg_name_is_not_a_prefix_match():
    c = conn(b"GET /p?osidx=1&osid=2 HTTP/1.0\r\n\r\n")
    assert c.arg(b"osid") == "2"


def test_arg_invalid_utf8_is_bad_request():
    c = conn(b"GET /p?a=%FF%FE HTTP/1.0\r\n\r\n")
    raises(http.BadRequest, c.arg, b"a")


def test_header_lookup_case_insensitive():
    c = conn(b"POST /p HTTP/1.1\r\nHost: x\r\nAUTHORIZATION:  Bearer abc \r\n\r\n")
    assert c.header(b"authorization") == b"Bearer abc"
    assert c.header(b"host") == b"x"
    assert c.header(b"cookie") is None


def test_response_headers_before_body():
    c = conn(b"GET / HTTP/1.0\r\n\r\n")
    c.add(b'{"a":')
    c.add_str('q"\n')
    c.add(b"}")
    c.finish(200)
    out = bytes(c.out[c.pos:c.out_end])
    assert out.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"Content-Length: 13\r\n" in out
    assert out.endswith(b'\r\n\r\n{"a":"q\\"\\n"}')


def test_response_overflow_is_414_not_a_crash():
    c = conn(b"GET / HTTP/1.0\r\n\r\n", size=400)  # 256 of head room + 144 of body
    c.add(b"x" * 100)
    assert not c.overflow
    c.add(b"y" * 100)
    c.finish(200)
    assert sent(c).startswith(b"HTTP/1.0 414")


def test_head_ends_at_the_earliest_blank_line():
    c = conn(b"POST /p HTTP/1.0\nContent-Length: 6\n\nab\r\n\r\n")
    assert c.body_at == len(b"POST /p HTTP/1.0\nContent-Length: 6\n\n") and c.clen == 6
    assert bytes(c.body()) == b"ab\r\n\r\n"
    c = conn(b"GET /p HTTP/1.0\r\nX: 1\r\n\r\nq\n\nz")
    assert c.body_at == len(b"GET /p HTTP/1.0\r\nX: 1\r\n\r\n") and c.clen == -1
    raises(http.Refused, c.body)  # 411: no Content-Length
    c = conn(b"POST /p HTTP/1.0\r\ncontent-length:  3 \r\n\r\nabc")
    assert bytes(c.body()) == b"abc"
    raises(http.BadRequest, conn, b"POST /p HTTP/1.0\r\nContent-Length: 1e3\r\n\r\n")
    raises(http.BadRequest, conn, b"POST /p HTTP/1.0\r\nContent-Length: -1\r\n\r\n")
    c = conn(b"POST /p HTTP/1.0\r\nContent-Length: 99999999999999\r\n\r\n")
    assert c.clen > 1 << 20
    raises(http.Refused, c.body)  # 413: larger than the buffer


def test_absolute_form_targets():
    for raw in (b"GET http://h/Datastreams/health?a=1 HTTP/1.1\r\n\r\n", b"GET HTTPS://h:80/Datastreams/health?a=1 HTTP/1.1\r\n\r\n"):
        c = conn(raw)
        assert c.is_path(b"/Datastreams/health", False) and c.arg(b"a") == "1", raw
    c = conn(b"GET http://h?a=1 HTTP/1.1\r\n\r\n")
    assert not c.is_path(b"/", True) and c.arg(b"a") == "1"
    for bad in (b"ftp://h/", b"http:/h/", b"http:///p", b"httpss://h/", b"h", b"*", b"http//h/"):
        raises(http.BadRequest, conn, b"GET " + bad + b" HTTP/1.1\r\n\r\n")


def test_escaping_allocates_nothing():
    import gc
    import json

    w = http.Writer(4096)
    data = b"\x01" * 250 + b'"q\\\n\t\x1f\xc3\xba'
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    w.add_str(data)
    b = gc.mem_alloc()
    gc.enable()
    assert b == a, b - a
    assert json.loads(bytes(w.buf[:w.pos])) == data.decode()
    w = http.Writer(100)
    w.add_str(b"\x01" * 30)
    assert w.overflow
