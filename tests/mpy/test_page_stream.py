# A file answer (page.send_file, http.Conn.next_slice: the page's GET /) against peers whose window
# takes a little at a time: every write is a slice of the slot buffer, the bytes arrive whole, the heap an answer takes
# does not grow with the file, and the file is closed however the connection ends.
import gc
import hashlib
import os
import sys
import time

import http
from errno import ECONNRESET
from test_server_faults import Listener, Poller, Sock

gc.collect()  # the test modules are compiled here: room for the firmware's own
import router  # noqa: E402
from test_router import NoTelemetry  # noqa: E402,F401  (its import sets the routes up)

SIZE = 1024  # the slot buffer of these tests
HEAD_MAX = 600  # the answer's head fits in this
GZ = "index.html.gz"


class Peer(Sock):
    """A peer that reads at most `window` bytes per write call and records each call's length;
    with `keep`, also the first bytes and a hash of all (off, the peer itself allocates nothing)."""

    def __init__(self, req, window=300, keep=True, reset_after=-1):
        super().__init__(reads=[req])
        self.window = window
        self.keep = keep
        self.reset_after = reset_after  # >= 0: the peer resets once it has taken this many bytes
        self.calls = 0
        self.largest = 0
        self.total = 0
        self.start = bytearray(HEAD_MAX)
        self.hash = hashlib.sha256()

    def write(self, data, off=0, n=None):
        if n is None:
            n = len(data) - off
        if 0 <= self.reset_after <= self.total:
            raise OSError(ECONNRESET)
        k = n if n < self.window else self.window
        self.calls += 1
        if n > self.largest:
            self.largest = n
        if self.keep:
            mv = memoryview(data)[off:off + k]
            if self.total < HEAD_MAX:
                m = min(k, HEAD_MAX - self.total)
                self.start[self.total:self.total + m] = mv[:m]
            self.hash.update(mv)
        self.total += k
        return k

    def head(self):
        return bytes(self.start[:self.start.find(b"\r\n\r\n") + 4])

    def body_is(self, name):
        """Whether what followed the head is the file `name`, byte for byte."""
        head = self.head()
        h = hashlib.sha256(head)
        size = 0
        with open(name, "rb") as f:
            buf = bytearray(512)
            n = f.readinto(buf)
            while n:
                h.update(memoryview(buf)[:n])
                size += n
                n = f.readinto(buf)
        return self.total == len(head) + size and h.digest() == self.hash.digest()


def server(handler=router.handle):
    s = http.Server(handler, "127.0.0.1", 0, 2, SIZE, 3000, 0)
    s.lsock.close()
    s.lsock = Listener()
    s.attach(Poller())
    return s


def serve(s, peer, rounds=1000):
    """Accept `peer`, then play the poll loop's writable events until the server closes it."""
    s.lsock.queue.append(peer)
    s.handle(s.lsock, http._IN)
    s.handle(peer, http._IN)
    for _ in range(rounds):
        if peer.closed:
            return peer
        s.handle(peer, http._OUT)
    raise AssertionError("still open after %d rounds" % rounds)


def size(name):
    return os.stat(name)[6]


def test_the_page_goes_out_whole_in_slices_of_the_buffer():
    assert size(GZ) > SIZE  # else nothing here is sliced
    for window in (1, 97, 300, 5000):
        p = serve(server(), Peer(b"GET / HTTP/1.0\r\nAccept-Encoding: gzip, br\r\n\r\n", window))
        head = p.head()
        assert head.startswith(b"HTTP/1.0 200 OK\r\n") and b"\r\nContent-Encoding: gzip\r\n" in head
        assert b"\r\nContent-Length: %d\r\n" % size(GZ) in head
        assert p.body_is(GZ), window
        assert 0 < p.largest <= SIZE, p.largest
    p = serve(server(), Peer(b"GET / HTTP/1.0\r\n\r\n"))
    assert b"Content-Encoding" not in p.head() and p.body_is("index.html")


def test_head_sends_no_file():
    p = serve(server(), Peer(b"HEAD / HTTP/1.0\r\nAccept-Encoding: gzip\r\n\r\n"))
    head = p.head()
    assert b"\r\nContent-Length: %d\r\n" % size(GZ) in head and p.total == len(head)


def _answer_with(open_file, n):
    """A handler answering with the file open_file() gives, of n bytes, through page.send_file."""
    import page

    send = page.send_file
    del sys.modules["page"]  # as the router does: the tests below see it imported afresh
    return lambda c: send(c, open_file(), n, (b"HTTP/1.0 200 OK\r\n",))


def _file_answer(name):
    return _answer_with(lambda: open(name, "rb"), size(name))


def _allocated(name):
    s = server(_file_answer(name))
    p = Peer(b"GET /f HTTP/1.0\r\n\r\n", window=700, keep=False)
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        serve(s, p, rounds=100000)
        return gc.mem_alloc() - before, p
    finally:
        gc.enable()


def test_the_heap_an_answer_takes_does_not_grow_with_the_file():
    chunk = bytes(range(256)) * 4
    for name, kb in (("small.bin", 4), ("large.bin", 256)):
        with open(name, "wb") as f:
            for _ in range(kb):
                f.write(chunk)
    try:
        small, ps = _allocated("small.bin")
        large, pl = _allocated("large.bin")
        assert ps.total > 4096 and pl.total > 256 * 1024 and pl.largest <= SIZE
        print("heap allocated per file answer: %d B for 4 KB, %d B for 256 KB (%d write calls)" % (
            small, large, pl.calls))
        assert large - small <= 64, (small, large)  # a few boxed ints at most, not a copy of the file
    finally:
        os.remove("small.bin")
        os.remove("large.bin")


class Tracked:
    """A file that remembers whether it was closed."""
    opened = []

    def __init__(self, name, cut=None):
        self.f = open(name, "rb")
        self.cut = cut  # give only this many bytes, as a file changed on flash meanwhile would
        self.given = 0
        self.closed = False
        Tracked.opened.append(self)

    def readinto(self, buf, n):
        if self.cut is not None:
            n = min(n, self.cut - self.given)
            if n <= 0:
                return 0
        k = self.f.readinto(buf, n)
        self.given += k
        return k

    def close(self):
        self.closed = True
        self.f.close()


def _tracked(cut=None):
    return _answer_with(lambda: Tracked(GZ, cut), size(GZ))


def test_the_file_is_closed_however_the_connection_ends():
    Tracked.opened = []
    serve(server(_tracked()), Peer(b"GET / HTTP/1.0\r\n\r\n"))  # sent whole
    p = serve(server(_tracked()), Peer(b"GET / HTTP/1.0\r\n\r\n", window=100, reset_after=100))
    assert p.total == 100
    s = server(_tracked())
    p = Peer(b"GET / HTTP/1.0\r\n\r\n", window=50)
    s.lsock.queue.append(p)
    s.handle(s.lsock, http._IN)
    s.handle(p, http._IN)
    s.service(time.ticks_add(time.ticks_ms(), 5000))  # a peer too slow for the deadline
    assert p.closed and s.busy == 0
    assert len(Tracked.opened) == 3 and all(t.closed for t in Tracked.opened)


def test_a_file_shorter_than_announced_cuts_the_answer_short():
    Tracked.opened = []
    p = serve(server(_tracked(cut=1500)), Peer(b"GET / HTTP/1.0\r\n\r\n"))
    assert b"\r\nContent-Length: %d\r\n" % size(GZ) in p.head() and p.total == len(p.head()) + 1500 < size(GZ)
    assert Tracked.opened[0].closed


def test_the_page_module_is_dropped_after_each_answer():
    serve(server(), Peer(b"GET / HTTP/1.0\r\n\r\n"))
    serve(server(), Peer(b"GET /page/streams HTTP/1.0\r\n\r\n"))
    assert "page" not in sys.modules


def _page_request(s):
    """GET / on server `s`: (allocated, held while the page goes out, kept after) in bytes."""
    p = Peer(b"GET / HTTP/1.0\r\nAccept-Encoding: gzip\r\n\r\n", window=100, keep=False)
    gc.collect()
    base = gc.mem_alloc()
    gc.disable()
    try:
        s.lsock.queue.append(p)
        s.handle(s.lsock, http._IN)
        s.handle(p, http._IN)  # answered: the head and a first slice are out, the rest waits
        allocated = gc.mem_alloc() - base
    finally:
        gc.enable()
    gc.collect()
    held = gc.mem_alloc() - base
    assert not p.closed and s.conns[0].file is not None and "page" not in sys.modules
    serve(s, p)
    gc.collect()
    return allocated, held, gc.mem_alloc() - base


def test_heap_of_a_page_request():
    """Figures for the README: what a GET / allocates (page.py imported, the head parsed, the file
    opened), what stays held while its answer goes out (the open file), what is kept after: page.py
    is gone; a slot's first file answer gives it its two file attributes, for good."""
    s = server()
    first = _page_request(s)
    again = _page_request(s)
    print("GET /: %d B allocated, %d B held while the page goes out, %d B kept after (the first in "
          "a slot); then %d, %d, %d B" % (first + again))
    assert first[1] < 1024 and first[2] <= 128 and again[1] < 512 and again[2] <= 16
