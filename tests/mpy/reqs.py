# Helpers for the in-MicroPython tests: a parsed connection from raw request bytes, and the
# response a connection would send.
import http


def conn(raw, size=1024):
    """A Conn whose buffer holds `raw` as if read from a socket, parsed like the server does."""
    c = http.Conn(size)
    c.buf[0:len(raw)] = raw
    c.n = len(raw)
    http._head(c, 0)
    c.pos = http.HEAD_ROOM
    http._parse(c)
    return c


def sent(c):
    """The bytes the connection would write."""
    return bytes(c.out[c.pos:c.out_end])


def status(c):
    return int(sent(c).split(b" ")[1])


def body(c):
    return sent(c).split(b"\r\n\r\n", 1)[1]


def raises(exc, f, *args):
    try:
        f(*args)
    except exc:
        return True
    raise AssertionError("%s not raised" % exc.__name__)
