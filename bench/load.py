"""The load generator: one CPython thread, non-blocking sockets on a selector, `concurrency`
requests in flight, each on its own connection (the API closes after each answer). Every answer is
checked (status 200, JSON with the expected field); the generator's own CPU time is measured so
the table can say when the client, not the server, was the limit."""
import itertools
import json
import selectors
import socket
import time

OSID = "ObjetoESP32"
REQUESTS = {
    "health": (b"GET", "/Datastreams/health", "status"),
    "SendState": (b"GET", "/Datastreams/SendState?osid=%s" % OSID, "datastreams"),
    "SendData": (b"GET", "/Datastreams/SendData?osid=%s&variableEstado=led&tipove=1" % OSID, "value"),
    "SetDatastream": (b"POST", "/Datastreams/SetDatastream?osid=%s&idDataStream=led&comando=on" % OSID, "data"),
}
# The standard mix: what a dashboard polling the device and a user toggling a switch send.
MIX = ("health", "SendState", "SendData", "SetDatastream", "SendData", "SendState")


def raw(name):
    method, target, _ = REQUESTS[name]
    return b"%s %s HTTP/1.0\r\nHost: device\r\n\r\n" % (method, target.encode())


def check(name, data):
    """True when `data` is a complete 200 answer carrying the route's JSON."""
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200 ") and not head.startswith(b"HTTP/1.1 200 "):
        return False
    try:
        return REQUESTS[name][2] in json.loads(body)
    except ValueError:
        return False


class Result:
    def __init__(self):
        self.ok = 0
        self.failed = 0
        self.errors = []  # the first few, to show
        self.latencies = []  # seconds, per answered request
        self.stamps = []  # (start, seconds until answered or failed) per request, monotonic
        self.wall = 0.0
        self.client_cpu = 0.0

    def fail(self, why):
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(why)


def run(port, names, concurrency=1, timeout=5.0, stop_on_failure=False, until=None):
    """Send the requests `names` (a sequence, cycled while `until()` holds when given) to
    127.0.0.1:port, `concurrency` at a time; return a Result."""
    res = Result()
    sel = selectors.DefaultSelector()
    addr = ("127.0.0.1", port)
    it = iter(names)
    inflight = {}

    def launch():
        if until is not None and not until():
            return
        name = next(it, None)
        if name is None:
            return
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(addr)
        st = [name, raw(name), [], time.monotonic()]
        inflight[s] = st
        sel.register(s, selectors.EVENT_WRITE, st)

    def finish(s, st, why=None):
        sel.unregister(s)
        s.close()
        del inflight[s]
        now = time.monotonic()
        data = b"".join(st[2])
        if why is None and not check(st[0], data):
            why = "%s: %r" % (st[0], data[:120])
        res.stamps.append((st[3], now - st[3]))
        if why:
            res.fail(why)
        else:
            res.ok += 1
            res.latencies.append(now - st[3])
        if not (why and stop_on_failure):
            launch()

    t0, c0 = time.monotonic(), time.process_time()
    for _ in range(concurrency):
        launch()
    while inflight:
        for key, ev in sel.select(0.1):
            s, st = key.fileobj, key.data
            try:
                if ev & selectors.EVENT_WRITE:
                    s.send(st[1])
                    sel.modify(s, selectors.EVENT_READ, st)
                else:
                    b = s.recv(65536)
                    if b:
                        st[2].append(b)
                    else:
                        finish(s, st)
            except OSError as e:
                finish(s, st, "%s: %s" % (st[0], e))
        now = time.monotonic()
        for s, st in list(inflight.items()):
            if now - st[3] > timeout:
                finish(s, st, "%s: no answer in %.0f s" % (st[0], timeout))
    res.wall = time.monotonic() - t0
    res.client_cpu = time.process_time() - c0
    return res


def timed(port, seconds, names, concurrency):
    """Requests `names`, cycled, `concurrency` at a time, for `seconds`."""
    end = time.monotonic() + seconds
    return run(port, itertools.cycle(names), concurrency, until=lambda: time.monotonic() < end)


def mixed(count):
    return [MIX[i % len(MIX)] for i in range(count)]
