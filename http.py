# Bytes in, bytes out: a non-blocking HTTP/1.0 server on select.poll.
# Each connection owns one slot with a buffer allocated at start; the request is read into it with
# readinto, parsed in place, and the response is written back into the same buffer, so serving a
# request allocates only a few small objects. One request per connection, then close.
import select
import socket
import sys
import time
from errno import EAGAIN, EIO
from micropython import const

_IN = select.POLLIN
_OUT = select.POLLOUT
_ERR = select.POLLERR | select.POLLHUP

_FREE = const(0)
_READ = const(1)
_WRITE = const(2)
_LINGER = const(3)  # answered; taking what the peer still sends before the close

# The body is written from here on; the headers are then placed right before it.
HEAD_ROOM = const(256)

# A connection keeps its slot at least this long while its request comes in: long enough for a
# client on a slow WiFi link, short next to the read timeout (see Server._slot).
_EVICT_AFTER_MS = const(250)

# After an answer sent before the whole request was read (an early 400/413/414/431, a body the
# route ignores), the input is drained before the close: closing with unread data makes the kernel
# reset the connection, and the peer, still sending, could lose the answer. MicroPython's sockets
# have no shutdown() (neither the ESP32 nor the unix port), so the peer sees the end of the answer
# at the close: draining stops when the request is over (its Content-Length, or the blank line that
# ends an over-long head), when the peer closes, after _QUIET_MS without a byte, or at _LINGER_MS.
_LINGER_MS = const(2000)
_QUIET_MS = const(200)

# A file answer (page.send_file) goes out in slices of the slot buffer; each poll event sends this
# many at most, so a large file on a fast peer takes its turns like everyone else.
_SLICES = const(4)

# Listen backlog. Linux (the host) keeps this many handshaken connections for accept(): 32 takes a
# burst of 30 clients at once (with 4, the rest had their SYNs dropped and waited 1-3 s for the
# retransmit). lwIP on the ESP32 honours the backlog too (ESP-IDF builds it with
# TCP_LISTEN_BACKLOG), but posts each new connection to an accept mailbox of
# CONFIG_LWIP_TCP_ACCEPTMBOX_SIZE (6 by default) and resets any that does not fit: there a backlog
# above 6 would turn the client's slow retry into a refused connection, so it stays at 6.
_BACKLOG = 6 if sys.platform == "esp32" else 32

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
    411: b"HTTP/1.0 411 Length Required\r\n",
    413: b"HTTP/1.0 413 Payload Too Large\r\n",
    414: b"HTTP/1.0 414 URI Too Long\r\n",
    431: b"HTTP/1.0 431 Request Header Fields Too Large\r\n",
    500: b"HTTP/1.0 500 Internal Server Error\r\n",
    503: b"HTTP/1.0 503 Service Unavailable\r\n",
}


def canned(status, message, extra=b""):
    """A complete JSON error response as one bytes constant: sent as is, never copied."""
    body = b'{"status":"error","message":"' + message + b'"}'
    return b"%s%s%s%sContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
        _STATUS[status], JSON, CORS, extra, len(body), body)


_FULL = canned(503, b"Service unavailable")  # for a connection no slot takes (the others: Conn.error)


_HEX = b"0123456789abcdef"


class BadRequest(Exception):
    pass


class Refused(Exception):
    """Raised while answering a request: Refused(status, message) is sent instead (Conn.error)."""


def _hex(c):
    """Value of one hex digit byte, or -1."""
    if 48 <= c <= 57:
        return c - 48
    c |= 0x20
    if 97 <= c <= 102:
        return c - 87
    return -1


def _utf8(b):
    """True if `b` is well-formed UTF-8 (MicroPython's decoder lets surrogates and overlong forms
    through, which would make our JSON invalid for clients)."""
    i, n = 0, len(b)
    while i < n:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            k, lo, hi = 1, 0x80, 0xBF
        elif 0xE0 <= c <= 0xEF:
            k, lo, hi = 2, 0xA0 if c == 0xE0 else 0x80, 0x9F if c == 0xED else 0xBF
        elif 0xF0 <= c <= 0xF4:
            k, lo, hi = 3, 0x90 if c == 0xF0 else 0x80, 0x8F if c == 0xF4 else 0xBF
        else:
            return False
        if i + k >= n or not lo <= b[i + 1] <= hi:
            return False
        for j in range(i + 2, i + k + 1):
            if not 0x80 <= b[j] <= 0xBF:
                return False
        i += k + 1
    return True


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

    def add_int(self, n):
        """Append an int in decimal without making a str of it."""
        if n < 0:
            self.add(b"-")
            n = -n
        digits = 1
        while n >= 10 ** digits:
            digits += 1
        p = self.pos
        if p + digits > len(self.buf):
            self.overflow = True
            return
        for i in range(p + digits - 1, p - 1, -1):
            self.buf[i] = 48 + n % 10
            n //= 10
        self.pos = p + digits

    def add_str(self, s, quote=True):
        """Append `s` (str, or UTF-8 bytes) as a JSON string literal; without quote, only its
        escaped inside (to continue a string already opened)."""
        data = s.encode() if isinstance(s, str) else s
        if quote:
            self.add(b'"')
        for c in data:
            if c < 32 or c == 34 or c == 92:  # control, '"', '\\'
                self._escaped(data)
                break
        else:
            self.add(data)
        if quote:
            self.add(b'"')

    def _escaped(self, data):
        # Escaped byte by byte straight into the buffer: nothing is allocated, however many bytes
        # need it (a request full of %01 once cost a MemoryError here on a small heap).
        buf, p, last = self.buf, self.pos, len(self.buf) - 6  # room for the longest escape
        for c in data:
            if p > last:
                self.overflow = True
                return
            if c >= 32 and c != 34 and c != 92:
                buf[p] = c
                p += 1
            elif c >= 32 or c == 10 or c == 13 or c == 9:  # '"', '\\' and the short escapes
                buf[p] = 92
                buf[p + 1] = c if c >= 32 else 110 if c == 10 else 114 if c == 13 else 116
                p += 2
            else:
                buf[p] = 92
                buf[p + 1] = 117  # "\\u00XX"
                buf[p + 2] = buf[p + 3] = 48
                buf[p + 4] = _HEX[c >> 4]
                buf[p + 5] = _HEX[c & 15]
                p += 6
        self.pos = p


class Conn(Writer):
    """One connection slot: its socket, its buffer, the parsed request and the response window."""

    # A file answer: the open file whose bytes follow the head, and how many are still to send
    # (set by page.send_file, which writes the head). Class defaults, set on a slot only once it
    # sends a file: a slot that never does carries no more attributes than before.
    file = None
    left = 0

    def __init__(self, size):
        super().__init__(size)
        self.sock = None
        self.state = _FREE
        self.deadline = time.ticks_ms()  # a ticks value (the stubs keep ticks apart from ints)
        self.n = 0
        self.method = 0
        self.path = 0  # request target spans, as offsets into buf
        self.query = 0
        self.end = 0  # end of the request target
        self.head_end = 0  # end of the header block (0 until the head is complete)
        self.body_at = 0  # where the body starts
        self.clen = -1  # Content-Length: -1 when absent, -2 when malformed
        self.rest = 0  # bytes of the request still to come (a body not read); -1: unknown
        self.tail = 0  # last 3 bytes read while lingering, to see a blank line end the head
        self.linger_end = self.deadline
        self.va = 0  # span of the last argument found
        self.vb = 0
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
        return self._decode(self.va, self.vb) if self._find(name) else None

    def has(self, name):
        """Whether the query carries parameter `name` with a non-empty value."""
        return self._find(name)

    def arg_is(self, name, value):
        """Whether parameter `name` equals `value` (bytes), None if it is absent or empty: the
        common checks (osid, stream ids) without making a str of the argument."""
        if not self._find(name):
            return None
        a, b = self.va, self.vb
        if self.buf.find(b"%", a, b) < 0 and self.buf.find(b"+", a, b) < 0:
            return b - a == len(value) and self.buf.find(value, a, b) == a
        return self._decode(a, b).encode() == value

    def _find(self, name):
        """Locate the first `name=value` of the query: its value's span in self.va/self.vb."""
        buf, i, end = self.buf, self.query + 1, self.end
        k = len(name)
        while i < end:
            amp = buf.find(b"&", i, end)
            if amp < 0:
                amp = end
            if buf.find(name, i, i + k) == i and (i + k == amp or buf[i + k] == 61):  # "="
                self.va = i + k + 1
                self.vb = amp
                return self.va < amp  # an empty value counts as missing
            i = amp + 1
        return False

    def _decode(self, a, b):
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
            s = str(raw, "utf-8")
        except UnicodeError:
            raise BadRequest()
        if len(s) != len(raw) and not _utf8(raw):  # only non-ASCII values need the strict check
            raise BadRequest()
        return s

    def header(self, name):
        """Value of header `name` (lower-case bytes, e.g. b"authorization") as bytes, or None."""
        return bytes(self.mv[self.va:self.vb]) if self._header(name) else None

    def _header(self, name):
        """Locate the first header `name`: its value's span, trimmed, in self.va/self.vb."""
        buf, k = self.buf, len(name)
        i = buf.find(b"\n", 0, self.head_end) + 1
        while 0 < i < self.head_end:
            eol = buf.find(b"\n", i, self.head_end)
            if eol < 0:
                return False
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
                    self.va, self.vb = a, b
                    return True
            i = eol + 1
        return False

    def body(self):
        """The request body, a memoryview into the buffer (valid until the answer is written).
        Raises Refused: 411 without a Content-Length, 413 when it does not fit the buffer."""
        n = self.clen
        if n < 0:
            if self._header(b"transfer-encoding"):  # a chunked body: drained up to its last chunk
                self.rest = -1
                self.tail = 0
                _tail(self, self.n if self.n > self.body_at else 0)
            raise Refused(411, b"Length required")
        if self.body_at + n > len(self.buf):
            raise Refused(413, b"Payload too large")
        return self.mv[self.body_at:self.body_at + n]

    # --- response ---------------------------------------------------------------------------
    def finish(self, status, ctype=JSON, extra=b""):
        """Complete the response whose body was written with add(): the headers are written right
        to left into the head room before the body, so nothing is allocated."""
        if self.overflow:
            # Buffers are sized for the largest SendState, so only request text echoed back (a
            # long id full of escaped bytes) can overflow: the request was too long for the device.
            self.error(414, b"URI too long")
            return
        blen = self.pos - HEAD_ROOM
        p = self._before(HEAD_ROOM, b"Connection: close\r\n\r\n")
        p = self._before(p, extra)
        if ctype is JSON:
            p = self._before(p, CORS)  # on every JSON answer, errors too, as the original did
        if ctype:
            p = self._before(p, b"\r\n")
            n = blen
            while True:
                p -= 1
                self.buf[p] = 48 + n % 10
                n //= 10
                if not n:
                    break
            p = self._before(p, b"Content-Length: ")
            p = self._before(p, ctype)
        self.out = self.mv
        self.pos = self._before(p, _STATUS[status])
        self.out_end = HEAD_ROOM if self.head_only else HEAD_ROOM + blen

    def _before(self, end, data):
        start = end - len(data)
        self.buf[start:end] = data
        return start

    def error(self, status, message, extra=b""):
        """Answer with docs/API.md's JSON error {"status":"error","message":<message>}. Written into
        the buffer like any answer: error answers cost no heap while the device waits."""
        self.end_file()  # a handler that failed after starting a file answer: the error goes instead
        self.pos = HEAD_ROOM
        self.overflow = False
        self.add(b'{"status":"error","message":"')
        self.add(message)
        self.add(b'"}')
        self.finish(status, JSON, extra)

    def send_const(self, data):
        """Send a complete prebuilt response (bytes) as the answer."""
        self.out = data
        self.pos = 0
        self.out_end = len(data)

    def next_slice(self, at=0):
        """Put the file's next slice in the buffer, after its first `at` bytes (the answer's head,
        when the file's answer starts: page.send_file); False once the file is all sent (then it is
        closed). A file shorter than it was announced raises OSError: the peer must see the answer
        cut short, not complete."""
        f = self.file
        if f is None:
            return False
        n = len(self.buf) - at
        if n > self.left:
            n = self.left
        k = f.readinto(self.mv[at:] if at else self.buf, n) if n > 0 else 0
        self.left -= k
        self.pos = 0
        self.out_end = at + k
        if self.out_end:
            return True
        short = self.left
        self.end_file()
        if short:
            raise OSError(EIO)
        return False

    def end_file(self):
        f = self.file
        if f is not None:  # only a slot that sent a file gets these attributes (see above)
            self.file = None
            self.left = 0
            try:
                f.close()
            except OSError:
                pass


class Server:
    """The listening socket and its connection slots, driven by the caller's poll loop."""

    def __init__(self, handler, host, port, slots, size, timeout_ms, queue=0):
        self.handler = handler
        self.timeout_ms = timeout_ms
        self.conns = [Conn(size) for _ in range(slots)]
        self.queue = queue
        self.waiting = []  # accepted connections waiting for a slot, oldest first (at most `queue`)
        self.busy = 0
        self.served = 0
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(socket.getaddrinfo(host, port)[0][-1])
        s.listen(_BACKLOG)
        s.setblocking(False)
        self.lsock = s
        self.poller = None

    def attach(self, poller):
        self.poller = poller
        poller.register(self.lsock, _IN)

    def service(self, now):
        """Close connections past their deadline; return ms until the next deadline (or -1)."""
        self._admit()
        wait = _EVICT_AFTER_MS // 4 if self.waiting else -1  # soon a slow slot may be taken
        for c in self.conns:
            if c.state == _FREE:
                continue
            left = time.ticks_diff(c.deadline, now)
            if left <= 0:
                if c.state == _READ and c.n:
                    self._answer_now(c, 408, b"Request timeout")
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
                if ev & _ERR and c.state != _READ:
                    self._close(c)
                elif c.state == _READ:
                    self._read(c, ev)
                elif c.state == _WRITE:
                    self._write(c)
                elif c.state == _LINGER:
                    self._linger(c)
                self._admit()
                return True
        return False

    def _accept(self):
        # Empty the listen backlog each round: a full backlog drops new connections silently, and
        # their clients wait a second or more before trying again (see _BACKLOG).
        for _ in range(len(self.conns) + self.queue + 1):
            try:
                sock, _ = self.lsock.accept()
            except OSError:
                return  # EAGAIN: the backlog is empty (or the peer left it already)
            sock.setblocking(False)
            c = None if self.waiting else self._slot()  # those waiting already go first
            if c is not None:
                self._open(c, sock)
            elif len(self.waiting) < self.queue:
                self.waiting.append(sock)  # a burst of clients waits a few ms instead of a 503
            else:
                _reject(sock)

    def _admit(self):
        """Give waiting connections the slots that are free (or taken from slow clients)."""
        while self.waiting:
            c = self._free_or_slowest()
            if c is None:
                return
            self._open(c, self.waiting.pop(0))

    def _open(self, c, sock):
        c.sock = sock
        c.state = _READ
        c.n = 0
        c.head_end = 0
        c.head_only = False
        c.deadline = time.ticks_add(time.ticks_ms(), self.timeout_ms)
        self.poller.register(sock, _IN)
        self.busy += 1

    def _slot(self):
        """A free slot; else the slot of the client that has been sending its request for longest,
        if for more than _EVICT_AFTER_MS (it is told 408); else None (the newcomer waits in the
        bounded queue, or gets 503 when that is full too).
        Why: a client that sends its request at once is served within a poll round, so an old
        unfinished request is a slow one (a Slowloris trickler) and a newcomer is worth more;
        the queue stays short, and the lwIP socket budget is never exceeded for long."""
        c = self._free_or_slowest()
        if c is None:
            # Before turning the newcomer away, read what the others sent: a peer that reset, or
            # completed its request, frees its slot now rather than later in this poll round.
            for d in self.conns:
                if d.state == _READ:
                    self._read(d, 0)
                elif d.state == _LINGER:
                    self._linger(d)
            c = self._free_or_slowest()
        return c

    def _free_or_slowest(self):
        now = time.ticks_ms()
        oldest = lingering = None
        for c in self.conns:
            if c.state == _FREE:
                return c
            if c.state == _LINGER:
                if time.ticks_diff(c.linger_end, now) < _LINGER_MS - _EVICT_AFTER_MS:
                    lingering = c  # answered, and still sending after _EVICT_AFTER_MS: it goes first
            elif c.state == _READ and (oldest is None or time.ticks_diff(c.deadline, oldest.deadline) < 0):
                oldest = c
        if lingering is not None:
            self._close(lingering)
            return lingering
        if oldest is None or time.ticks_diff(oldest.deadline, now) > self.timeout_ms - _EVICT_AFTER_MS:
            return None
        self._answer_now(oldest, 408, b"Request timeout")
        if oldest.state != _FREE:
            self._close(oldest)  # its window is full: it is not reading, and it gets no more time
        return oldest

    def _read(self, c, ev):
        try:
            k = c.sock.readinto(c.buf if not c.n else c.mv[c.n:])  # no slice for the usual one read
        except OSError as e:
            if e.errno != EAGAIN:  # reset, or gone
                self._close(c)
            return
        if k is None:
            return
        if not k:
            self._close(c)  # the peer gave up before a complete request
            return
        old, c.n = c.n, c.n + k
        n = c.n
        if not c.head_end:
            if not _head(c, old - 2 if old > 2 else 0):
                if n == len(c.buf):
                    if c.buf.find(b"\n", 0, n) >= 0:
                        self._answer_now(c, 431, b"Request header fields too large")
                    else:
                        self._answer_now(c, 414, b"URI too long")
                return
        end = c.body_at + c.clen
        if n < end <= len(c.buf):
            return  # the body fits the buffer and is still coming (within the deadline)
        c.rest = end - n if n < end else 0
        if c.clen < -1:
            _unknown_rest(c)  # a malformed Content-Length: 400, and no knowing where the body ends
        self._respond(c)

    def _respond(self, c):
        c.pos = HEAD_ROOM
        c.overflow = False
        c.head_only = False
        try:
            _parse(c)
            self.handler(c)
        except BadRequest:
            c.error(400, b"Bad request")
        except Refused as e:
            c.error(*e.args)
        except MemoryError:
            # No traceback: printing one needs memory too. The device goes on serving.
            print("http: out of memory, 503")
            c.error(503, b"Service unavailable")
        except Exception as e:  # a handler's bug costs this request, never the connection slot
            sys.print_exception(e)
            c.error(500, b"Internal error")
        self.served += 1
        c.state = _WRITE
        c.deadline = time.ticks_add(time.ticks_ms(), self.timeout_ms)
        self._write(c)

    def _answer_now(self, c, status, message):
        """Answer before the request is complete. After an error, the rest of the request is
        drained once the answer is out; a client too slow for the deadline (408) is not waited for."""
        if status == 408:
            c.rest = 0
        else:
            _unknown_rest(c)
        c.error(status, message)
        c.state = _WRITE
        self._write(c)

    def _write(self, c):
        try:
            for _ in range(_SLICES):
                while c.pos < c.out_end:
                    k = c.sock.write(c.out, c.pos, c.out_end - c.pos)
                    if not k:
                        break
                    c.pos += k
                if c.pos < c.out_end or not c.next_slice():
                    break
        except OSError as e:
            if e.errno != EAGAIN:  # the peer reset or vanished: drop the rest
                self._close(c)
                return
        if c.pos < c.out_end:
            self.poller.modify(c.sock, _OUT)  # the peer's window is full: wait for it
            return
        c.out = None
        c.state = _LINGER
        c.linger_end = time.ticks_add(time.ticks_ms(), _LINGER_MS)
        self._linger(c)

    def _linger(self, c):
        """Drain what the peer sends past the request answered; close once that is over, else
        wait for more: _QUIET_MS at most each time, never past linger_end."""
        if self._drained(c):
            self._close(c)
            return
        self.poller.modify(c.sock, _IN)
        c.deadline = time.ticks_add(time.ticks_ms(), _QUIET_MS)
        if time.ticks_diff(c.linger_end, c.deadline) < 0:
            c.deadline = c.linger_end

    def _drained(self, c):
        """Read and drop what the peer sent past the request we answered; True once it is all in
        (or the peer closed or reset). c.rest counts the bytes still due, or is -1 when unknown:
        then the request is over when what came last is the blank line that ends a head."""
        for _ in range(8):  # a bounded share of the loop per event, however fast the peer sends
            try:
                k = c.sock.readinto(c.buf)
            except OSError as e:
                if e.errno != EAGAIN:
                    return True
                break
            if k is None:
                break
            if not k:
                return True
            if c.rest >= 0:
                c.rest = c.rest - k if c.rest > k else 0
            else:
                _tail(c, k)
        else:
            return False  # more is waiting: the next poll round takes it
        if c.rest < 0:
            t = c.tail
            return t & 0xFFFF == 0x0A0A or t == 0x0A0D0A  # "\n\n" or "\n\r\n"
        return c.rest == 0

    def _close(self, c):
        sock = c.sock
        c.sock = None
        c.state = _FREE
        c.out = None
        c.end_file()
        try:
            self.poller.unregister(sock)
        except (OSError, ValueError, KeyError):
            pass
        try:
            sock.close()
        except OSError:
            pass
        self.busy -= 1


def _reject(sock):
    """503 to a connection no slot can take: one short write that fits any socket buffer, then close."""
    try:
        sock.write(_FULL)
        sock.recv(HEAD_ROOM)  # take its request if it came already: unread data turns close into reset
    except OSError:
        pass
    sock.close()


def _tail(c, n):
    """Keep the last 3 of the n bytes in the buffer (after those kept before) in c.tail."""
    t = c.tail
    for i in range(n - 3 if n > 3 else 0, n):
        t = (t << 8 | c.buf[i]) & 0xFFFFFF
    c.tail = t


def _unknown_rest(c):
    """The request is answered before its end could be known: drain until a blank line ends it."""
    c.rest = -1
    c.tail = 0
    _tail(c, c.n)


def _head(c, start):
    """True once the request head is complete: its end is the earliest blank line ("\n\n" or
    "\n\r\n", whichever comes first; never one inside the body). Sets head_end, body_at and clen
    (Content-Length: -1 when absent, -2 when it is not a number). `start`: where to search from."""
    buf, n = c.buf, c.n
    e = buf.find(b"\n\r\n", start, n)
    f = buf.find(b"\n\n", start, e + 1 if e >= 0 else n)
    if f >= 0:
        e, skip = f, 2
    elif e >= 0:
        skip = 3
    else:
        return False
    c.head_end = e + 1
    c.body_at = e + skip
    c.clen = -1
    if c._header(b"content-length"):
        a, b = c.va, c.vb
        v = 0 if a < b else -2
        while a < b:
            d = buf[a] - 48
            if d < 0 or d > 9:
                v = -2
                break
            if v < 100000000:  # past any buffer already: stays a small int
                v = v * 10 + d
            a += 1
        c.clen = v
    return True


def _absolute(buf, a, end):
    """Where the path starts in an absolute-form target, "http://host[:port]/path?query" (RFC 9112
    3.2.2: served as the path it names; the scheme may be http or https, in any case; the
    authority is skipped). The path may be empty ("http://host?q"): no route has that one."""
    i = buf.find(b"://", a, end)
    k = i - a  # the scheme's length
    if not 4 <= k <= 5:
        raise BadRequest()
    for j in range(k):
        if buf[a + j] | 0x20 != b"https"[j]:
            raise BadRequest()
    i += 3
    p = i
    while p < end and buf[p] != 47 and buf[p] != 63:  # up to "/" or "?"
        p += 1
    if p == i:
        raise BadRequest()  # no host
    return p


def _parse(c):
    """Split the request line in place: method, path, query; raise BadRequest if the line is
    malformed or a header holds control bytes."""
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
    v = sp2 + 1  # "HTTP/d.d" and the end of the line
    if (sp2 < 0 or line_end - v != 8 or buf.find(b"HTTP/", v, line_end) != v
            or not 48 <= buf[v + 5] <= 57 or buf[v + 6] != 46 or not 48 <= buf[v + 7] <= 57
            or c.clen < -1):
        raise BadRequest()
    path = a if buf[a] == 47 else _absolute(buf, a, sp2)  # "/"
    i = a
    while i < sp2:
        ch = buf[i]
        if ch <= 32 or ch == 127:
            raise BadRequest()
        if ch == 37 and (i + 2 >= sp2 or _hex(buf[i + 1]) < 0 or _hex(buf[i + 2]) < 0):
            raise BadRequest()
        i += 1
    i = eol + 1
    while i < c.head_end:
        ch = buf[i]
        if (ch < 32 and ch != 9 and ch != 10 and ch != 13) or ch == 127:
            raise BadRequest()
        i += 1
    q = buf.find(b"?", path, sp2)
    c.path = path
    c.query = q if q >= 0 else sp2
    c.end = sp2
    c.head_only = c.method == HEAD
