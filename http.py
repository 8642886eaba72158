# Bytes in, bytes out: a non-blocking HTTP/1.0 server on select.poll.
# Each connection owns one slot with a buffer allocated at start; the request is read into it with
# readinto, parsed in place, and the response is written back into the same buffer, so serving a
# request allocates only a few small objects. One request per connection, then close.
import select
import socket
import sys
import time
from micropython import const

_IN = select.POLLIN
_OUT = select.POLLOUT
_ERR = select.POLLERR | select.POLLHUP

_FREE = const(0)
_READ = const(1)
_WRITE = const(2)

# The body is written from here on; the headers are then placed right before it.
HEAD_ROOM = const(256)

GET = const(1)
HEAD = const(2)
POST = const(3)
OPTIONS = const(4)
OTHER = const(5)  # a well-formed method no route takes: 405 on known paths
_METHODS = ((b"GET", GET), (b"HEAD", HEAD), (b"POST", POST), (b"OPTIONS", OPTIONS))

JSON = b"Content-Type: application/json\r\n"
TEXT = b"Content-Type: text/plain\r\n"
CORS = b"Access-Control-Allow-Origin: *\r\n"

_STATUS = {
    200: b"HTTP/1.0 200 OK\r\n",
    204: b"HTTP/1.0 204 No Content\r\n",
    400: b"HTTP/1.0 400 Bad Request\r\n",
    401: b"HTTP/1.0 401 Unauthorized\r\n",
    404: b"HTTP/1.0 404 Not Found\r\n",
    405: b"HTTP/1.0 405 Method Not Allowed\r\n",
    408: b"HTTP/1.0 408 Request Timeout\r\n",
    413: b"HTTP/1.0 413 Payload Too Large\r\n",
    414: b"HTTP/1.0 414 URI Too Long\r\n",
    431: b"HTTP/1.0 431 Request Header Fields Too Large\r\n",
    500: b"HTTP/1.0 500 Internal Server Error\r\n",
    503: b"HTTP/1.0 503 Service Unavailable\r\n",
}


def canned(status, message):
    """A complete JSON error response as one bytes constant: sent as is, never copied."""
    body = b'{"status":"error","message":"' + message + b'"}'
    return b"%s%s%sContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
        _STATUS[status], JSON, CORS, len(body), body)


BAD_REQUEST = canned(400, b"Bad request")
_TIMEOUT = canned(408, b"Request timeout")
_URI_TOO_LONG = canned(414, b"URI too long")
_HEADERS_TOO_LARGE = canned(431, b"Request header fields too large")
_TOO_LARGE = canned(500, b"Response too large")
_INTERNAL = canned(500, b"Internal error")

class BadRequest(Exception):
    pass


def _hex(c):
    """Value of one hex digit byte, or -1."""
    if 48 <= c <= 57:
        return c - 48
    c |= 0x20
    if 97 <= c <= 102:
        return c - 87
    return -1


class Writer:
    """Bytes and JSON strings appended to a buffer allocated once; overflow is noted, never raised."""

    def __init__(self, size):
        self.buf = bytearray(size)
        self.mv = memoryview(self.buf)
        self.pos = 0
        self.overflow = False

    def add(self, data):
        """Append bytes."""
        p = self.pos
        q = p + len(data)
        if q > len(self.buf):
            self.overflow = True
            return
        self.buf[p:q] = data
        self.pos = q

    def add_str(self, s):
        """Append str `s` as a JSON string literal."""
        data = s.encode()
        for c in data:
            if c < 32 or c == 34 or c == 92:  # control, '"', '\\'
                import json  # rare path: let json escape it

                self.add(json.dumps(s).encode())
                return
        self.add(b'"')
        self.add(data)
        self.add(b'"')


class Conn(Writer):
    """One connection slot: its socket, its buffer, the parsed request and the response window."""

    def __init__(self, size):
        super().__init__(size)
        self.sock = None
        self.state = _FREE
        self.deadline = 0
        self.n = 0
        self.method = 0
        self.path = 0  # request target spans, as offsets into buf
        self.query = 0
        self.end = 0  # end of the request target
        self.head_end = 0  # end of the header block
        self.head_only = False
        self.out = None
        self.out_end = 0

    # --- request -----------------------------------------------------------------------------
    def is_path(self, path, slash_ok):
        """True if the request path is `path` (bytes), or `path` + "/" when slash_ok."""
        a, k = self.path, len(path)
        length = self.query - a
        if self.buf.find(path, a, a + k) != a:
            return False
        return length == k or (slash_ok and length == k + 1 and self.buf[a + k] == 47)

    def arg(self, name):
        """The URL-decoded value of query parameter `name` (bytes) as str; None if absent or empty.
        The first occurrence wins. Raises BadRequest for bytes that are not UTF-8."""
        buf, i, end = self.buf, self.query + 1, self.end
        k = len(name)
        while i < end:
            amp = buf.find(b"&", i, end)
            if amp < 0:
                amp = end
            if buf.find(name, i, i + k) == i:
                if i + k == amp:
                    return None  # a bare "name" is an empty value
                if buf[i + k] == 61:  # "="
                    return self._decode(i + k + 1, amp)
            i = amp + 1
        return None

    def _decode(self, a, b):
        if a >= b:
            return None
        buf = self.buf
        if buf.find(b"%", a, b) < 0 and buf.find(b"+", a, b) < 0:
            raw = self.mv[a:b]
        else:
            # Decode into the free part of the buffer (the body is written only after the handler
            # has read its arguments); the target was validated, so every "%" has two hex digits.
            out, j = buf, max(self.n, HEAD_ROOM)
            if j + b - a > len(buf):
                out, j = bytearray(b - a), 0  # rare: the request filled the buffer
            start = j
            while a < b:
                c = buf[a]
                if c == 37:  # "%"
                    c = _hex(buf[a + 1]) << 4 | _hex(buf[a + 2])
                    a += 2
                elif c == 43:  # "+"
                    c = 32
                out[j] = c
                j += 1
                a += 1
            raw = memoryview(out)[start:j]
        try:
            return str(raw, "utf-8")
        except UnicodeError:
            raise BadRequest()

    def header(self, name):
        """Value of header `name` (lower-case bytes, e.g. b"authorization") as bytes, or None."""
        buf, k = self.buf, len(name)
        i = buf.find(b"\n", 0, self.head_end) + 1
        while 0 < i < self.head_end:
            eol = buf.find(b"\n", i, self.head_end)
            if eol < 0:
                return None
            if eol - i > k and buf[i + k] == 58:  # ":"
                j = 0
                while j < k and buf[i + j] | 0x20 == name[j]:
                    j += 1
                if j == k:
                    a, b = i + k + 1, eol
                    while a < b and buf[a] in b" \t":
                        a += 1
                    while b > a and buf[b - 1] in b" \t\r":
                        b -= 1
                    return bytes(self.mv[a:b])
            i = eol + 1
        return None

    # --- response ---------------------------------------------------------------------------
    def finish(self, status, ctype=JSON, extra=b""):
        """Complete the response whose body was written with add(): headers go before the body."""
        if self.overflow:
            self.send_const(_TOO_LARGE)
            return
        blen = self.pos - HEAD_ROOM
        head = b"%s%sContent-Length: %d\r\n%sConnection: close\r\n\r\n" % (
            _STATUS[status], ctype, blen, extra) if ctype else b"%s%sConnection: close\r\n\r\n" % (
            _STATUS[status], extra)
        start = HEAD_ROOM - len(head)
        self.buf[start:HEAD_ROOM] = head
        self.out = self.mv
        self.pos = start
        self.out_end = HEAD_ROOM if self.head_only else HEAD_ROOM + blen

    def send_const(self, data):
        """Send a complete prebuilt response (bytes) as the answer."""
        self.out = data
        self.pos = 0
        self.out_end = len(data)


class Server:
    """The listening socket and its connection slots, driven by the caller's poll loop."""

    def __init__(self, handler, host, port, slots, size, timeout_ms):
        self.handler = handler
        self.timeout_ms = timeout_ms
        self.conns = [Conn(size) for _ in range(slots)]
        self.busy = 0
        self.served = 0
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(socket.getaddrinfo(host, port)[0][-1])
        s.listen(slots)
        s.setblocking(False)
        self.lsock = s
        self.poller = None

    def attach(self, poller):
        self.poller = poller
        poller.register(self.lsock, _IN)

    def service(self, now):
        """Close connections past their deadline; return ms until the next deadline (or -1)."""
        wait = -1
        for c in self.conns:
            if c.state == _FREE:
                continue
            left = time.ticks_diff(c.deadline, now)
            if left <= 0:
                if c.state == _READ and c.n:
                    self._answer_now(c, _TIMEOUT)
                else:
                    self._close(c)
            elif wait < 0 or left < wait:
                wait = left
        return wait

    def handle(self, obj, ev):
        """Serve a poll event; False if the object is not one of this server's sockets."""
        if obj is self.lsock:
            self._accept()
            return True
        for c in self.conns:
            if c.sock is obj:
                if c.state == _READ:
                    self._read(c, ev)
                elif c.state == _WRITE:
                    if ev & _ERR:
                        self._close(c)
                    else:
                        self._write(c)
                return True
        return False

    def _accept(self):
        try:
            sock, _ = self.lsock.accept()
        except OSError:
            return  # the peer left the backlog already
        for c in self.conns:
            if c.state == _FREE:
                break
        else:  # cannot happen: the listener is not polled while full
            sock.close()
            return
        sock.setblocking(False)
        c.sock = sock
        c.state = _READ
        c.n = 0
        c.deadline = time.ticks_add(time.ticks_ms(), self.timeout_ms)
        self.poller.register(sock, _IN)
        self.busy += 1
        if self.busy == len(self.conns):
            # Full: leave newcomers in the (bounded) listen backlog until a slot frees.
            self.poller.modify(self.lsock, 0)

    def _read(self, c, ev):
        try:
            k = c.sock.readinto(c.mv[c.n:])
        except OSError:
            self._close(c)
            return
        if k is None:
            return
        if not k:
            self._close(c)  # the peer gave up before a complete request
            return
        old, c.n = c.n, c.n + k
        buf, n = c.buf, c.n
        start = old - 3 if old > 3 else 0
        end = buf.find(b"\n\r\n", start, n)
        if end < 0:
            end = buf.find(b"\n\n", start, n)
        if end < 0:
            if n == len(buf):
                self._answer_now(c, _HEADERS_TOO_LARGE if buf.find(b"\n", 0, n) >= 0 else _URI_TOO_LONG)
            return
        c.head_end = end + 1
        self._respond(c)

    def _respond(self, c):
        c.pos = HEAD_ROOM
        c.overflow = False
        c.head_only = False
        try:
            _parse(c)
            self.handler(c)
        except BadRequest:
            c.send_const(BAD_REQUEST)
        except Exception as e:  # a handler's bug costs this request, never the connection slot
            sys.print_exception(e)
            c.send_const(_INTERNAL)
        self.served += 1
        c.state = _WRITE
        c.deadline = time.ticks_add(time.ticks_ms(), self.timeout_ms)
        self._write(c)

    def _answer_now(self, c, data):
        c.send_const(data)
        c.state = _WRITE
        self._write(c)

    def _write(self, c):
        try:
            while c.pos < c.out_end:
                k = c.sock.write(c.out[c.pos:c.out_end])
                if not k:
                    break
                c.pos += k
        except OSError:
            self._close(c)
            return
        if c.pos < c.out_end:
            self.poller.modify(c.sock, _OUT)  # the peer's window is full: wait for it
            return
        self._close(c)

    def _close(self, c):
        sock = c.sock
        if c.state == _WRITE:
            # Take what the peer still sent (a body we ignore): closing with unread data makes
            # the kernel reset the connection, and the peer could lose the answer.
            try:
                sock.readinto(c.mv)
            except OSError:
                pass
        c.sock = None
        c.state = _FREE
        c.out = None
        try:
            self.poller.unregister(sock)
        except (OSError, ValueError, KeyError):
            pass
        try:
            sock.close()
        except OSError:
            pass
        if self.busy == len(self.conns):
            self.poller.modify(self.lsock, _IN)
        self.busy -= 1


def _parse(c):
    """Split the request line in place: method, path, query; raise BadRequest if malformed."""
    buf = c.buf
    eol = buf.find(b"\n", 0, c.head_end)
    line_end = eol - 1 if eol > 0 and buf[eol - 1] == 13 else eol
    sp = buf.find(b" ", 0, line_end)
    if sp <= 0:
        raise BadRequest()
    c.method = OTHER
    for name, code in _METHODS:
        if sp == len(name) and buf.find(name, 0, sp) == 0:
            c.method = code
    if c.method == OTHER:
        for i in range(sp):
            if not 65 <= buf[i] <= 90:  # a method is upper-case letters
                raise BadRequest()
    a = sp + 1
    sp2 = buf.find(b" ", a, line_end)
    if sp2 < 0 or buf.find(b"HTTP/", sp2 + 1, line_end) != sp2 + 1 or buf[a] != 47:  # "/"
        raise BadRequest()
    i = a
    while i < sp2:
        ch = buf[i]
        if ch <= 32 or ch == 127:
            raise BadRequest()
        if ch == 37 and (i + 2 >= sp2 or _hex(buf[i + 1]) < 0 or _hex(buf[i + 2]) < 0):
            raise BadRequest()
        i += 1
    q = buf.find(b"?", a, sp2)
    c.path = a
    c.query = q if q >= 0 else sp2
    c.end = sp2
    c.head_only = c.method == HEAD
