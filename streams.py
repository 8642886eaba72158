# What the device knows: the datastreams declared in cfg.py, and the JSON of the datastream API
# (see API.md). Handlers read all their arguments before writing the body: the body is written
# into the same buffer that holds the request.
import gc
import json
import time

import cfg
import hw
from http import CORS

VERSION = "1.0.0"
VALUE_MAX = 64  # longest value text; keeps every response within its buffer

FORMATS = ("boolean", "integer", "float", "string", "timestamp")
TYPES = ("actuator", "sensor")

OK = b'{"status":"success","code":"1001","message":'
_WRONG_OSID = b'{"status":"error","code":"1025","message":"ID incorrecto"}'
_NO_TYPE = b'{"status":"error","code":"1099","message":"Tipo no implementado"}'
_MISSING_OSID = b'{"status":"error","message":"Par\xc3\xa1metro osid faltante"}'
_MISSING = b'{"status":"error","message":"Par\xc3\xa1metros faltantes"}'

_TRUE = ("on", "true", "1")
_FALSE = ("off", "false", "0")

_INF = float("inf")
_uptime = [0, time.ticks_ms()]  # ms so far, tick of the last update


def uptime_s():
    """Seconds since boot. ticks_ms wraps (every ~12 days on the ESP32), so the main loop calls
    this often and the elapsed time is accumulated in steps far shorter than the wrap."""
    now = time.ticks_ms()
    _uptime[0] += time.ticks_diff(now, _uptime[1])
    _uptime[1] = now
    return _uptime[0] // 1000


def _jstr(s):
    return json.dumps(s).encode()


class Stream:
    """One datastream: its identity, its JSON prefix (built once) and its device."""

    def __init__(self, spec):
        self.id = spec["id"]
        self.format = spec["format"]
        self.actuator = spec["type"] == "actuator"
        self.lo = spec.get("min", 0 if spec["hw"] == "pwm" else None)
        self.hi = spec.get("max", 1023 if spec["hw"] == "pwm" else None)
        self.spec = spec
        self.dev = hw.make(spec, self.actuator)
        self.jid = _jstr(self.id)
        self.jfmt = _jstr(self.format)
        self.item = b'{"datastream_id":%s,"datastream_format":%s,"datastream_type":%s,"value":' % (
            self.jid, self.jfmt, _jstr(spec["type"]))

    def value(self):
        """The current value as bool, int, float or str; raises if the device cannot be read."""
        v = self.dev.read()
        f = self.format
        if f == "boolean":
            return bool(v)
        if f == "integer":
            return int(v)
        if f == "float":
            v = float(v)
            if v != v or v == _INF or v == -_INF:
                raise ValueError("not a number")
            return v
        return str(v)[:VALUE_MAX]

    def parse(self, text):
        """The value a SetDatastream `comando` asks for; ValueError(reason) if it is not valid."""
        if not self.actuator:
            raise ValueError("'%s' es un sensor" % self.id)
        f = self.format
        if f == "boolean":
            t = text.lower()
            if t in _TRUE:
                return True
            if t in _FALSE:
                return False
            raise ValueError("valor no valido para boolean (on/off)")
        if f == "integer" or f == "float":
            try:
                v = int(text) if f == "integer" else float(text)
            except ValueError:
                raise ValueError("valor no numerico")
            if v != v or (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
                raise ValueError("valor fuera de rango")
            if v == _INF or v == -_INF:
                raise ValueError("valor fuera de rango")
            return v
        if len(text) > VALUE_MAX:
            raise ValueError("valor demasiado largo")
        return text

    def set(self, value):
        """Drive the actuator and tell the listeners; returns the value read back."""
        self.dev.write(value)
        for listener in on_change:
            listener(self)
        return self.value()


def text(v):
    """A value as the API's string: booleans "true"/"false", numbers in decimal."""
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, float):
        return "%.6g" % v
    return str(v)


def add_json(c, v):
    """Append a value as JSON: booleans and numbers bare, everything else a string."""
    if v is True or v is False or isinstance(v, int):
        c.add(b"true" if v is True else b"false" if v is False else b"%d" % v)
    elif isinstance(v, float):
        c.add(text(v).encode())
    else:
        c.add_str(v)


STREAMS = [Stream(spec) for spec in cfg.STREAMS]
on_change = []  # called with the stream after every successful set (telemetry, state restore)
_OSID = _jstr(cfg.OSID)
_HEALTH = b'{"status":"healthy","service":"datastream","osid":%s,"title":%s,"version":%s,' % (
    _OSID, _jstr(cfg.TITLE), _jstr(VERSION))


def reason(e):
    """An exception as the short reason users read in an error message."""
    return str(e.args[0]) if e.args else type(e).__name__


def find(sid):
    for s in STREAMS:
        if s.id == sid:
            return s
    return None


def body_max():
    """The longest body SendState can produce, to size the connection buffers."""
    return 64 + len(_OSID) + sum(len(s.item) + 2 * VALUE_MAX + 4 for s in STREAMS)


def _error(c, msg):
    c.add(msg)
    c.finish(200)


def _no_stream(c, sid):
    c.add(b'{"status":"error","code":"1026","message":')
    c.add_str("Datastream '%s' no existe" % sid)
    c.add(b"}")
    c.finish(200)


def health(c, mqtt_state):
    c.add(_HEALTH)
    c.add(b'"uptime_s":%d,"mem_free":%d,"mqtt":"%s"}' % (
        uptime_s(), gc.mem_free(), mqtt_state.encode()))
    c.finish(200)


def send_state(c):
    osid = c.arg(b"osid")
    if osid is None:
        c.add(_MISSING_OSID)
        return c.finish(400)
    if osid != cfg.OSID:
        return _error(c, _WRONG_OSID)
    c.add(b'{"osid":')
    c.add(_OSID)
    c.add(b',"datastreams":[')
    for i, s in enumerate(STREAMS):
        if i:
            c.add(b",")
        c.add(s.item)
        try:
            c.add_str(text(s.value()))
        except Exception:  # one broken sensor must not take the others down
            c.add(b'"0"')
        c.add(b"}")
    c.add(b'],"count":%d}' % len(STREAMS))
    c.finish(200, extra=CORS)


def send_data(c):
    osid = c.arg(b"osid")
    sid = c.arg(b"variableEstado")
    tipove = c.arg(b"tipove")
    if osid is None or sid is None:
        c.add(_MISSING)
        return c.finish(400)
    if osid != cfg.OSID:
        return _error(c, _WRONG_OSID)
    try:
        one = tipove is None or int(tipove) == 1
    except ValueError:
        one = False
    if not one:
        return _error(c, _NO_TYPE)
    s = find(sid)
    if s is None:
        return _no_stream(c, sid)
    try:
        value = text(s.value())
    except Exception:
        value = "0"
    c.add(b'{"osid":')
    c.add(_OSID)
    c.add(b',"datastream_id":')
    c.add(s.jid)
    c.add(b',"datastream_format":')
    c.add(s.jfmt)
    c.add(b',"value":')
    c.add_str(value)
    c.add(b"}")
    c.finish(200, extra=CORS)


def set_datastream(c):
    osid = c.arg(b"osid")
    sid = c.arg(b"idDataStream")
    comando = c.arg(b"comando")
    if osid is None or sid is None or comando is None:
        c.add(_MISSING)
        return c.finish(400)
    if osid != cfg.OSID:
        return _error(c, _WRONG_OSID)
    s = find(sid)
    if s is None:
        return _no_stream(c, sid)
    try:
        value = s.set(s.parse(comando))
    except Exception as e:
        c.add(b'{"status":"error","code":"1027","message":')
        c.add_str("Error ejecutando comando: %s" % reason(e))
        c.add(b"}")
        return c.finish(200)
    c.add(OK)
    c.add_str("Datastream '%s' actualizado a '%s'" % (sid, comando))
    c.add(b',"data":{"datastream_id":')
    c.add(s.jid)
    c.add(b',"comando":')
    c.add_str(comando)
    c.add(b',"applied":true,"value":')
    add_json(c, value)
    c.add(b"}}")
    c.finish(200, extra=CORS)
