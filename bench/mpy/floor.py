# The floor: the least a MicroPython server can do to give the same answers. One blocking socket,
# one request at a time, one read (after one poll) into a buffer allocated once, the body formatted into a second
# preallocated buffer. No validation, no percent-decoding, no timeouts, no concurrency: it is the
# yardstick the firmware is measured against, not a server anyone should deploy.
import gc
import json
import select
import socket
import time

import cfg
import hw
import meter
import tb

_OK = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n"
_CORS = b"Access-Control-Allow-Origin: *\r\n"
_NOT_FOUND = b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: close\r\n\r\nNot found"
_WRONG_OSID = b'{"status":"error","code":"1025","message":"ID incorrecto"}'
_OSID = json.dumps(cfg.OSID).encode()
_OSID_RAW = cfg.OSID.encode()
_TITLE = json.dumps(cfg.TITLE).encode()
_T0 = time.ticks_ms()


def _j(s):
    return json.dumps(s).encode()


class Stream:
    def __init__(self, spec):
        self.id = spec["id"].encode()
        self.format = spec["format"]
        self.dev = hw.make(spec, spec["type"] == "actuator")
        self.jfmt = _j(spec["format"])
        self.item = b'{"datastream_id":%s,"datastream_format":%s,"datastream_type":%s,"value":"' % (
            _j(spec["id"]), self.jfmt, _j(spec["type"]))

    def text(self):
        v = self.dev.read()
        f = self.format
        if f == "boolean":
            return b"true" if v else b"false"
        if f == "float":
            return b"%.6g" % v
        if f == "integer":
            return b"%d" % v
        return str(v).encode()

    def json(self):
        t = self.text()
        return t if self.format in ("boolean", "integer", "float") else b'"%s"' % t


STREAMS = [Stream(s) for s in cfg.STREAMS]
_req = bytearray(1024)
_body = bytearray(2048)
_pos = 0


def put(data):
    global _pos
    _body[_pos:_pos + len(data)] = data
    _pos += len(data)


def arg(name, end):
    """(start, stop) of query parameter `name` (bytes with its "="), or None."""
    i = _req.find(name, 0, end)
    if i < 0:
        return None
    i += len(name)
    j = i
    while j < end and _req[j] != 38:  # "&"
        j += 1
    return i, j


def same(span, data):
    return span is not None and span[1] - span[0] == len(data) and _req.find(data, span[0], span[1]) == span[0]


def find(span):
    for s in STREAMS:
        if same(span, s.id):
            return s
    return None


def health():
    put(b'{"status":"healthy","service":"datastream","osid":%s,"title":%s,"version":"1.0.0","uptime_s":%d,'
        b'"mem_free":%d,"mqtt":"off"}' % (_OSID, _TITLE, time.ticks_diff(time.ticks_ms(), _T0) // 1000,
                                         gc.mem_free()))


def send_state():
    put(b'{"osid":%s,"datastreams":[' % _OSID)
    for i, s in enumerate(STREAMS):
        if i:
            put(b",")
        put(s.item)
        put(s.text())
        put(b'"}')
    put(b'],"count":%d}' % len(STREAMS))


def send_data(end):
    s = find(arg(b"variableEstado=", end))
    put(b'{"osid":%s,"datastream_id":"%s","datastream_format":%s,"value":"%s"}' % (_OSID, s.id, s.jfmt, s.text()))


def set_datastream(end):
    s = find(arg(b"idDataStream=", end))
    a, b = arg(b"comando=", end)
    cmd = bytes(_req[a:b])
    s.dev.write(cmd in (b"on", b"true", b"1"))
    put(b'{"status":"success","code":"1001","message":"Datastream \'%s\' actualizado a \'%s\'","data":'
        b'{"datastream_id":"%s","comando":"%s","applied":true,"value":%s}}' % (s.id, cmd, s.id, cmd, s.text()))


def telemetry():
    put(b"{")
    for s in STREAMS:
        put(b'"%s":%s,' % (s.id, s.json()))
    put(b'"_mem_free":%d}' % gc.mem_free())
    _pub.publish(memoryview(_body)[:_pos])


_pub = tb.Publisher()


def serve():
    global _pos
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(socket.getaddrinfo(cfg.HTTP_BIND, cfg.HTTP_PORT)[0][-1])
    ls.listen(8)
    poller = select.poll()
    listener = select.poll()
    listener.register(ls, select.POLLIN)
    meter.ready()
    while True:
        if _pub.enabled:  # wait for a client only until the next publish is due
            now = time.ticks_ms()
            if _pub.due(now):
                _pos = 0
                telemetry()
                continue
            waiting = True
            for _ in listener.ipoll(_pub.wait(now)):
                waiting = False
            if waiting:
                continue
        cl, _ = ls.accept()
        # A blocking readinto waits for a full buffer: wait for the request, take what came.
        cl.setblocking(False)
        poller.register(cl, select.POLLIN)
        for _ in poller.ipoll(5000):
            pass
        poller.unregister(cl)
        n = cl.readinto(_req) or 0
        cl.setblocking(True)
        end = _req.find(b" ", 5, n)
        _pos = 0
        ok = same(arg(b"osid=", end), _OSID_RAW) if _req.find(b"?", 0, end) > 0 else True
        cors = _CORS
        if not ok:
            put(_WRONG_OSID)
        elif _req.find(b"/Datastreams/health", 0, end) > 0:
            health()
            cors = b""
        elif _req.find(b"/Datastreams/SendState", 0, end) > 0:
            send_state()
        elif _req.find(b"/Datastreams/SendData", 0, end) > 0:
            send_data(end)
        elif _req.find(b"/Datastreams/SetDatastream", 0, end) > 0:
            set_datastream(end)
        else:
            cl.write(_NOT_FOUND)
            cl.close()
            continue
        cl.write(_OK % (cors, _pos))
        cl.write(memoryview(_body)[:_pos])
        cl.close()
        meter.tick()


serve()
