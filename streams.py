# What the device knows: the datastreams declared in cfg.py, and the JSON of the datastream API
# (see docs/API.md). Handlers read all their arguments before writing the body: the body is
# written into the same buffer that holds the request.
import gc
import json
import sys
import time

import cfg
import guard
import hw
import persist

# The package an update installed (fwswitch.MANIFEST); a board that upload.sh filled runs this release.
SW_TITLE, VERSION = "datastream", "1.0.0"
_m = persist.load("fw.json")
if isinstance(_m, dict) and isinstance(_m.get("title"), str) and isinstance(_m.get("version"), str):
    SW_TITLE, VERSION = _m["title"], _m["version"]
del _m
VALUE_MAX = 64  # longest value text; keeps every response within its buffer


OK = b'{"status":"success","code":"1001","message":'
_WRONG_OSID = b'{"status":"error","code":"1025","message":"ID incorrecto"}'
_NO_TYPE = b'{"status":"error","code":"1099","message":"Tipo no implementado"}'
_MISSING_OSID = b'{"status":"error","message":"Par\xc3\xa1metro osid faltante"}'
_MISSING = b'{"status":"error","message":"Par\xc3\xa1metros faltantes"}'

_TRUE = ("on", "true", "1")
_FALSE = ("off", "false", "0")

_INF = float("inf")
_uptime = [0, time.ticks_ms()]  # type: list  # ms so far, tick of the last update


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
        self.bid = self.id.encode()
        self.jid = _jstr(self.id)
        self.updated = b'"Datastream \'%s\' actualizado a \'' % self.jid[1:-1]  # SetDatastream's message
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
        v = str(v)
        return v if len(v) <= VALUE_MAX else v[:VALUE_MAX]  # sliced only when needed: a slice is a copy

    def parse(self, text):
        """The value a SetDatastream `comando` asks for; ValueError(reason) if it is not valid."""
        if not self.actuator:
            raise ValueError("'%s' es un sensor" % self.id)
        if len(text) > VALUE_MAX:  # checked first: the answer echoes it, and must fit its buffer
            raise ValueError("valor demasiado largo")
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
        return text

    def set(self, value):
        """Drive the actuator and tell the listeners; returns the value read back."""
        self.dev.write(value)
        for listener in on_change:
            listener(self)
        return self.value()


def add_value(w, v, quoted):
    """Append a value to writer `w`. The API gives every value as a string ("true", "41.5");
    telemetry and RPC give booleans and numbers bare. Written in place: no str is made for them.
    A float is written the same way everywhere: 6 significant digits, and always with its point
    ("40.0", not "40"), so a float stream never looks like an integer one."""
    if isinstance(v, str):
        w.add_str(v)
        return
    if quoted:
        w.add(b'"')
    if v is True or v is False:
        w.add(b"true" if v else b"false")
    elif isinstance(v, int):
        w.add_int(v)
    else:
        text = b"%.6g" % v
        w.add(text)
        if b"." not in text and b"e" not in text:
            w.add(b".0")
    if quoted:
        w.add(b'"')


def _add_read(c, s):
    """A stream's value into an API answer, as a string: "0" when its device cannot be read
    (docs/API.md)."""
    try:
        add_value(c, s.value(), True)
    except Exception:  # one broken sensor must not take the others down
        c.add(b'"0"')


on_change = []  # called with the stream after every successful set (telemetry, state restore)
_OSID = _jstr(cfg.OSID)
_OSID_B = cfg.OSID.encode()
_HEALTH = b'{"status":"healthy","service":"datastream","osid":%s,"title":%s,"version":%s,%s' % (
    _OSID, _jstr(cfg.TITLE), _jstr(VERSION), b'"safe_mode":true,' if guard.SAFE else b"")


def reason(e):
    """An exception as the short reason users read in an error message."""
    return str(e.args[0]) if e.args else type(e).__name__


# --- state restore: each actuator's cfg "restore" ("off", "on", "last") is applied at boot; the
# values of the "last" ones, and the values the platform set (shared attributes, `platform`), are
# kept in a small file on flash, written on change but at most once per STATE_SAVE_INTERVAL to spare
# the flash (a change inside the interval is written when it ends).
STATE_FILE = "state.json"
platform = {}  # shared attribute -> the value last applied (shared.py); kept under "_platform"
_saved = {}  # what STATE_FILE holds: id -> value for the "last" actuators, and "_platform"
_dirty = False
_wrote = None  # tick of the last write
_INTERVAL_MS = getattr(cfg, "STATE_SAVE_INTERVAL", 10) * 1000  # a board's cfg.py older than this key works


def _parsed(s, v):
    """A kept value checked as a command would be (the stream's format or range may have changed
    since it was kept); None if it no longer fits."""
    if v is True or v is False:
        v = "on" if v else "off"
    try:
        return s.parse(str(v))
    except ValueError:
        return None


def _boot_value(s, mode, saved):
    v = _parsed(s, saved[s.id]) if mode == "last" and s.id in saved else None
    if v is None and s.id in platform:  # the platform's value wins over a fixed "off"/"on"
        v = _parsed(s, platform[s.id])
    if v is not None:
        return v
    if s.format == "boolean":
        return mode == "on"
    if s.format in ("integer", "float"):
        edge = s.hi if mode == "on" else s.lo
        return edge if edge is not None else int(mode == "on")
    return None  # a text actuator is only restored from a kept value


def restore():
    """Drive every actuator to its boot value: its last value when its cfg "restore" is "last"
    (whoever set it), else the platform's value if one was set, else "off"/"on"; start saving."""
    saved = persist.load(STATE_FILE)
    if not isinstance(saved, dict):
        saved = {}
    if isinstance(saved.get("_platform"), dict):
        platform.update(saved["_platform"])
        _saved["_platform"] = saved["_platform"]
    for s in STREAMS:
        if not s.actuator:
            continue
        mode = s.spec.get("restore", "off")
        v = _boot_value(s, mode, saved)
        try:
            if v is not None:
                s.dev.write(v)
            if mode == "last":
                _saved[s.id] = s.value()
        except Exception as e:  # one broken actuator must not stop the boot
            print("restore: %s: %r" % (s.id, e))
    on_change.append(_changed)


def _changed(s):
    # Only marked here: the main loop writes it right after the answer, so no flash write sits
    # in a request's (or an RPC callback's) path.
    if s.id in _saved:
        keep()


def keep():
    """Have the state written by the loop (a "last" value or `platform` changed)."""
    global _dirty
    _dirty = True


def save_due(now):
    """Write the kept values if one changed and the interval allows; ms until a write is due, or -1.
    The main loop calls this, so a change inside the interval is written when it ends."""
    global _dirty, _wrote
    if _wrote is not None and time.ticks_diff(now, _wrote) >= _INTERVAL_MS:
        _wrote = None  # forgotten long before ticks_ms wraps and the difference turns negative
    if not _dirty:
        return -1
    if _wrote is not None:
        return _INTERVAL_MS - time.ticks_diff(now, _wrote)
    _dirty = False
    values = {}
    for sid in _saved:
        try:
            values[sid] = find(sid).value()
        except Exception:
            values[sid] = _saved[sid]
    if platform:
        values["_platform"] = dict(platform)
    if values == _saved:
        return -1  # back to what the flash holds: nothing to write
    _wrote = now
    try:
        persist.write(STATE_FILE, json.dumps(values))
        _saved.update(values)
    except OSError as e:
        _dirty = True  # retried after the interval
        print("restore: cannot save: %r" % e)
    return -1


def find(sid):
    for s in STREAMS:
        if s.id == sid:
            return s
    return None


STREAMS = []
if not guard.SAFE:  # safe mode drives no actuator: no stream is even set up
    import check  # cfg's checks: their code is needed once, so it is dropped after use

    check.load(Stream, STREAMS)
    del check, sys.modules["check"]


def body_max():
    """The longest body SendState can produce, to size the connection buffers."""
    return 64 + len(_OSID) + sum(len(s.item) + 2 * VALUE_MAX + 4 for s in STREAMS)


def _error(c, msg):
    c.add(msg)
    c.finish(200)


def _no_stream(c, sid):
    c.add(b'{"status":"error","code":"1026","message":"Datastream \'')
    c.add_str(sid, False)
    c.add(b'\' no existe"}')
    c.finish(200)


def health(c, mqtt_state):
    c.add(_HEALTH)
    c.add(b'"uptime_s":')
    c.add_int(uptime_s())
    c.add(b',"mem_free":')
    c.add_int(gc.mem_free())
    c.add(b',"mqtt":')
    c.add(mqtt_state)
    c.add(b"}")
    c.finish(200)


def _arg_stream(c, name):
    """The stream parameter `name` names: a Stream, False if it names none, None if absent."""
    for s in STREAMS:
        if c.arg_is(name, s.bid):
            return s
    return False if c.has(name) else None


def _tipove_ok(c):
    """tipove is 1 (or left out, as old clients do); anything else is not implemented."""
    if c.arg_is(b"tipove", b"1") is not False:
        return True
    try:
        return int(c.arg(b"tipove")) == 1
    except ValueError:
        return False


def send_state(c):
    osid = c.arg_is(b"osid", _OSID_B)
    if osid is None:
        c.add(_MISSING_OSID)
        return c.finish(400)
    if not osid:
        return _error(c, _WRONG_OSID)
    c.add(b'{"osid":')
    c.add(_OSID)
    c.add(b',"datastreams":[')
    sep = b""
    for s in STREAMS:
        c.add(sep)
        sep = b","
        c.add(s.item)
        _add_read(c, s)
        c.add(b"}")
    c.add(b'],"count":')
    c.add_int(len(STREAMS))
    c.add(b"}")
    c.finish(200)


def send_data(c):
    osid = c.arg_is(b"osid", _OSID_B)
    s = _arg_stream(c, b"variableEstado")
    if osid is None or s is None:
        c.add(_MISSING)
        return c.finish(400)
    if not osid:
        return _error(c, _WRONG_OSID)
    if not _tipove_ok(c):
        return _error(c, _NO_TYPE)
    if not s:
        return _no_stream(c, c.arg(b"variableEstado"))
    c.add(b'{"osid":')
    c.add(_OSID)
    c.add(b',"datastream_id":')
    c.add(s.jid)
    c.add(b',"datastream_format":')
    c.add(s.jfmt)
    c.add(b',"value":')
    _add_read(c, s)
    c.add(b"}")
    c.finish(200)


def command(v):
    """A JSON value (a body's, an RPC's, a shared attribute's) as the text a SetDatastream
    `comando` would carry; ValueError if it cannot be one."""
    if v is True or v is False:
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return v
    raise ValueError("falta value")


def _body_value(body):
    """The command a body {"value": ...} gives."""
    try:
        v = json.loads(body)
    except ValueError:
        raise ValueError("JSON no valido")
    return command(v.get("value") if isinstance(v, dict) else None)


def set_datastream(c):
    osid = c.arg_is(b"osid", _OSID_B)
    s = _arg_stream(c, b"idDataStream")
    comando = c.arg(b"comando")
    if osid is None or s is None or comando is None:
        c.add(_MISSING)
        return c.finish(400)
    if not osid:
        return _error(c, _WRONG_OSID)
    if not s:
        return _no_stream(c, c.arg(b"idDataStream"))
    # comando=set takes the value from a JSON body, as the automation service sends it. c.body()
    # answers 411 (no Content-Length) or 413 (larger than the buffer) by itself.
    body = c.body() if len(comando) == 3 and comando.lower() == "set" else None
    try:
        value = s.set(s.parse(comando if body is None else _body_value(body)))
    except MemoryError:
        raise  # the server answers 503: not the stream's fault
    except Exception as e:
        c.add(b'{"status":"error","code":"1027","message":')
        c.add_str("Error ejecutando comando: %s" % reason(e))
        c.add(b"}")
        return c.finish(200)
    comando = comando.encode()
    c.add(OK)
    c.add(s.updated)
    c.add_str(comando, False)
    c.add(b"'\"")
    c.add(b',"data":{"datastream_id":')
    c.add(s.jid)
    c.add(b',"comando":')
    c.add_str(comando)
    c.add(b',"applied":true,"value":')
    add_value(c, value, False)
    c.add(b"}}")
    c.finish(200)
