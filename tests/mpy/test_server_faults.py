# The server's slot handling against sockets that fail the way lwIP and Linux sockets fail:
# EAGAIN, resets, broken pipes, partial writes, peers that never finish, more peers than slots.
import http
import time
from errno import EAGAIN, ECONNRESET

EPIPE = 32  # Linux and lwIP; MicroPython's errno module does not name it

REQ = b"GET /x HTTP/1.0\r\n\r\n"


class Sock:
    """A peer: `reads` and `writes` are played in order; an OSError is raised, None means
    would-block, bytes are received, an int is how many bytes the window takes."""

    def __init__(self, reads=(), writes=()):
        self.reads = list(reads)
        self.writes = list(writes)
        self.sent = b""
        self.closed = False

    def setblocking(self, flag):
        pass

    def readinto(self, mv):
        r = self.reads.pop(0) if self.reads else None
        if isinstance(r, OSError):
            raise r
        if r is None:
            return None
        mv[0:len(r)] = r
        return len(r)

    def recv(self, n):
        raise OSError(EAGAIN)

    def write(self, data, off=0, n=None):  # MicroPython's stream write(buf, off, max)
        data = data[off:] if n is None else data[off:off + n]
        w = self.writes.pop(0) if self.writes else len(data)
        if isinstance(w, OSError):
            raise w
        if w is None:
            return None
        self.sent += bytes(data[:w])
        return min(w, len(data))

    def close(self):
        self.closed = True


class Listener:
    def __init__(self):
        self.queue = []

    def accept(self):
        if not self.queue:
            raise OSError(EAGAIN)
        return self.queue.pop(0), None

    def close(self):
        pass


class Poller:
    def __init__(self):
        self.mask = {}

    def register(self, obj, mask):
        self.mask[id(obj)] = mask

    def modify(self, obj, mask):
        self.mask[id(obj)] = mask

    def unregister(self, obj):
        del self.mask[id(obj)]


def answer(c):
    c.add(b"{}")
    c.finish(200)


def server(slots=2, timeout=3000, queue=0):
    s = http.Server(answer, "127.0.0.1", 0, slots, 1024, timeout, queue)
    s.lsock.close()
    s.lsock = Listener()
    s.attach(Poller())
    return s


def arrive(s, sock):
    s.lsock.queue.append(sock)
    s.handle(s.lsock, http._IN)
    return sock


def test_eagain_on_read_keeps_the_slot_and_partial_writes_wait_for_pollout():
    s = server()
    p = arrive(s, Sock(reads=[OSError(EAGAIN), REQ[:5], None, REQ[5:]], writes=[10, None]))
    for _ in range(4):
        s.handle(p, http._IN)
        if p.sent:
            break
    assert s.busy == 1 and p.sent == b"HTTP/1.0 2" and not p.closed
    assert s.poller.mask[id(p)] == http._OUT
    p.writes = [OSError(EAGAIN)]
    s.handle(p, http._OUT)
    assert s.busy == 1 and not p.closed
    s.handle(p, http._OUT)
    assert p.closed and s.busy == 0 and p.sent.startswith(b"HTTP/1.0 200 OK\r\n") and p.sent.endswith(b"{}")


def test_reset_and_broken_pipe_free_the_slot():
    s = server()
    p = arrive(s, Sock(reads=[REQ[:4], OSError(ECONNRESET)]))
    s.handle(p, http._IN)
    s.handle(p, http._IN)
    assert p.closed and s.busy == 0 and p.sent == b""
    p = arrive(s, Sock(reads=[REQ], writes=[3, OSError(EPIPE)]))
    s.handle(p, http._IN)
    assert p.closed and s.busy == 0
    p = arrive(s, Sock(reads=[REQ[:4], b""]))  # half-closed before a complete request
    s.handle(p, http._IN)
    s.handle(p, http._IN)
    assert p.closed and s.busy == 0 and p.sent == b""


def test_error_event_while_writing_frees_the_slot():
    s = server()
    p = arrive(s, Sock(reads=[REQ], writes=[None]))
    s.handle(p, http._IN)
    assert s.busy == 1
    s.handle(p, http.select.POLLHUP)
    assert p.closed and s.busy == 0


def test_full_newcomer_takes_a_slow_clients_slot_or_gets_503():
    s = server(slots=2)
    a = arrive(s, Sock(reads=[REQ[:3]]))
    s.handle(a, http._IN)
    b = arrive(s, Sock())
    late = arrive(s, Sock())  # both are still young: nobody is put off
    assert late.closed and late.sent.startswith(b"HTTP/1.0 503 Service Unavailable\r\n")
    assert s.busy == 2 and not a.closed and not b.closed
    s.conns[0].deadline = time.ticks_add(time.ticks_ms(), 3000 - 300)  # a has been sending for 300 ms
    new = arrive(s, Sock(reads=[REQ]))
    assert a.closed and a.sent.startswith(b"HTTP/1.0 408 ") and not b.closed and not new.closed
    s.handle(new, http._IN)
    assert new.sent.startswith(b"HTTP/1.0 200 OK") and s.busy == 1
    # A slot that is answering (window full) is never taken, however old.
    s.handle(b, http._IN)
    b.reads, b.writes = [REQ], [None]
    s.handle(b, http._IN)
    s.conns[1].deadline = time.ticks_add(time.ticks_ms(), 3000 - 300)
    c = arrive(s, Sock())
    late = arrive(s, Sock())
    assert late.closed and late.sent.startswith(b"HTTP/1.0 503 ") and not b.closed and not c.closed


def test_a_burst_waits_in_the_bounded_queue_then_503():
    s = server(slots=1, queue=2)
    a = arrive(s, Sock(reads=[None, REQ]))  # its request is not there yet when w1 comes
    w1 = arrive(s, Sock(reads=[REQ]))
    w2 = arrive(s, Sock(reads=[REQ]))
    late = arrive(s, Sock())
    assert late.closed and late.sent.startswith(b"HTTP/1.0 503 ")
    assert s.busy == 1 and s.waiting == [w1, w2] and not w1.closed and not w2.closed
    s.handle(a, http._IN)  # a is answered; its slot goes to the oldest waiting, w1
    assert a.closed and a.sent.startswith(b"HTTP/1.0 200 ") and s.waiting == [w2]
    s.handle(w1, http._IN)
    s.handle(w2, http._IN)
    assert w1.sent.startswith(b"HTTP/1.0 200 ") and w2.sent.startswith(b"HTTP/1.0 200 ")
    assert s.busy == 0 and not s.waiting


def test_a_waiting_client_takes_a_trickler_slot_in_time():
    s = server(slots=1, queue=1)
    slow = arrive(s, Sock(reads=[REQ[:3]]))
    s.handle(slow, http._IN)
    w = arrive(s, Sock(reads=[REQ]))
    assert s.waiting == [w] and 0 < s.service(time.ticks_ms()) <= 250
    s.conns[0].deadline = time.ticks_add(time.ticks_ms(), 3000 - 300)  # slow has sent for 300 ms
    s.service(time.ticks_ms())
    assert slow.closed and slow.sent.startswith(b"HTTP/1.0 408 ") and not s.waiting
    s.handle(w, http._IN)
    assert w.sent.startswith(b"HTTP/1.0 200 ")


def test_deadline_frees_silent_and_slow_slots():
    s = server(timeout=100)
    quiet = arrive(s, Sock())
    slow = arrive(s, Sock(reads=[REQ[:3]]))
    s.handle(slow, http._IN)
    assert s.service(time.ticks_ms()) > 0
    s.service(time.ticks_add(time.ticks_ms(), 200))
    assert quiet.closed and quiet.sent == b""
    assert slow.closed and slow.sent.startswith(b"HTTP/1.0 408 ")
    assert s.busy == 0 and s.service(time.ticks_ms()) == -1


def test_an_early_answer_drains_the_rest_of_the_request_before_the_close():
    s = server(slots=1)
    line = b"GET /x?" + b"a" * 2000 + b" HTTP/1.0\r\n\r\n"
    p = arrive(s, Sock(reads=[line[:1024], line[1024:1500], None]))
    s.handle(p, http._IN)  # the buffer is full: 414 at once, the rest read and dropped
    assert p.sent.startswith(b"HTTP/1.0 414 ") and not p.closed and s.busy == 1
    assert s.poller.mask[id(p)] == http._IN
    p.reads = [line[1500:1990], None]
    s.handle(p, http._IN)
    assert not p.closed  # the head has not ended yet
    p.reads = [line[1990:], None]
    s.handle(p, http._IN)
    assert p.closed and s.busy == 0  # its blank line came: the request is over
    # A body of known length is drained to its end; a peer that stops sending is closed when it
    # has been quiet, and never later than the linger bound.
    body = b"x" * 3000
    req = b"POST /x HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body)
    p = arrive(s, Sock(reads=[req + body[:500], body[500:2000], None]))
    s.handle(p, http._IN)
    assert p.sent.startswith(b"HTTP/1.0 200 ") and not p.closed
    p.reads = [body[2000:], None]
    s.handle(p, http._IN)
    assert p.closed and s.busy == 0
    p = arrive(s, Sock(reads=[req + body[:500], None]))
    s.handle(p, http._IN)
    assert not p.closed and 0 < s.service(time.ticks_ms()) <= 200
    s.service(time.ticks_add(time.ticks_ms(), 250))
    assert p.closed and s.busy == 0


def test_a_complete_request_is_closed_at_once_and_a_newcomer_outranks_a_long_lingering_peer():
    s = server(slots=1)
    p = arrive(s, Sock(reads=[REQ]))
    s.handle(p, http._IN)
    assert p.closed and s.busy == 0
    slow = arrive(s, Sock(reads=[b"GET /" + b"a" * 1019]))  # fills the 1024 B buffer
    s.handle(slow, http._IN)
    assert slow.sent.startswith(b"HTTP/1.0 414 ") and not slow.closed
    late = arrive(s, Sock())  # slow has lingered for less than 250 ms: it keeps its slot
    assert late.closed and late.sent.startswith(b"HTTP/1.0 503 ") and not slow.closed
    s.conns[0].linger_end = time.ticks_add(time.ticks_ms(), 2000 - 300)  # lingering for 300 ms
    new = arrive(s, Sock(reads=[REQ]))
    assert slow.closed and not new.closed and s.busy == 1
    s.handle(new, http._IN)
    assert new.sent.startswith(b"HTTP/1.0 200 ") and new.closed
