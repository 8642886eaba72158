# The rarer exchanges with ThingsBoard, imported when one begins and dropped when it ends
# (Telemetry.platform), so that at rest they cost no heap: what the device asks at every connect
# (the session's limits, the shared attributes) and the answers, the client attributes, and what
# goes in parts because it is over the session's maxPayloadSize.
# What the platform wants of the device comes as shared attributes: `telemetry_interval` and a value per actuator (a key named after its stream) are applied at once
# and kept on flash (in state.json, which the loop writes the wear-aware way: streams.save_due), so
# that they apply again at the next boot before the broker answers; the sw_* keys name the software
# the device should run. Unknown keys are ignored, a bad value is logged and ignored.
import json
import time

import cfg
import hw
import streams
import thingsboard as tb

INTERVAL = "telemetry_interval"
SW_KEYS = ("sw_title", "sw_version", "sw_size", "sw_checksum", "sw_checksum_algorithm")
_LIMITS_WAIT_MS = 1500  # client attributes and kept readings wait this long for the limits
_NEST_MAX = 32  # brackets in one message (a JSON attribute may nest a little; each level costs heap)
_ABSENT = object()


def connected(t):
    """Ask for the session's limits and the shared attributes; what could be too large for the
    limits (client attributes, kept readings) waits for them, a bounded time."""
    t.limits_id = _ask(t, tb.RPC_REQUEST, tb.LIMITS)
    keys = [INTERVAL] + [s.id for s in streams.STREAMS if s.actuator] + list(SW_KEYS)
    t.attr_id = _ask(t, tb.ATTR_REQUEST, tb.to_json({"sharedKeys": ",".join(keys)}))
    t.limits_until = time.ticks_add(time.ticks_ms(), _LIMITS_WAIT_MS)


def _ask(t, prefix, payload):
    """Publish a request under a fresh id; the id (bytes), which its answer's topic ends with."""
    t.req = t.req % 1000000 + 1  # ThingsBoard takes only integer ids
    rid = b"%d" % t.req
    t.publish(prefix + rid, payload)
    return rid


def limits(t, payload):
    obj = _decode(payload)
    m = obj.get("maxPayloadSize") if isinstance(obj, dict) else None
    if not isinstance(m, int) or m is True or m < 64:
        return  # not the answer (a plain broker hands the device its own replies too)
    t.limits_id = None
    if m != t.max_payload:
        print("mqtt: session limits: maxPayloadSize %d B" % m)
    t.max_payload = m
    if t.limits_until is not None:
        ready(t)


def ready(t):
    """The limits are known (or were not answered in time): send what waited for them. The
    connect's exchange ends here."""
    t.limits_until = None
    t.limits_id = None  # an answer later than its deadline is not waited for
    attrs = {
        "firmware_version": streams.VERSION, "osid": cfg.OSID, "title": cfg.TITLE, "ip": t.ip(),
        "platform": "esp32" if hw.BOARD else "host",
        "datastreams": [{"id": s.id, "format": s.format, "type": "actuator" if s.actuator else "sensor"}
                        for s in streams.STREAMS],
    }  # they begin with "firmware_version": Telemetry._message knows its own by that and the size
    data = tb.to_json(attrs)
    t.own = len(data)
    if t.fits(tb.ATTRIBUTES, data):
        t.publish(tb.ATTRIBUTES, data)
    else:
        publish_dict(t, tb.ATTRIBUTES, attrs)
    t.sw_due = True  # the software report, in a turn of its own (software.py): one module imported at a time
    t.flush()


def shared(t, payload, push):
    """Apply shared attributes: a push (only the keys that changed) in full, the answer to the
    request made at each connect ({"shared": {...}}) only where it differs from what was applied
    last, so that a value set locally since is not overwritten by a platform that did not change it."""
    attrs = _decode(payload)
    if not push and isinstance(attrs, dict):
        attrs = attrs.get("shared")
    if not isinstance(attrs, dict):
        print("shared: attributes not understood (too large, too deep or not a JSON object); ignored")
        return
    for k, v in attrs.items():
        if k in SW_KEYS:
            t.sw[k] = v
            continue
        if not push and streams.platform.get(k, _ABSENT) == v:
            continue
        if k == INTERVAL:
            n = _interval(v)
            if n is None:
                _bad(k, v, "whole seconds, 1..%d" % tb.INTERVAL_MAX)
                continue
            cfg.TELEMETRY_INTERVAL = n
            t.next_publish = time.ticks_add(time.ticks_ms(), n * 1000)  # at once, not after the old period
        else:
            s = streams.find(k)
            if s is None or not s.actuator:
                continue  # not a key of this device
            try:
                s.set(s.parse(streams.command(v)))  # listeners publish the change and keep "last" values
            except (ValueError, TypeError, OSError) as e:
                _bad(k, v, streams.reason(e))
                continue
        streams.platform[k] = v
        streams.keep()  # written by the loop, not here
        print("shared: %s = %s" % (k, json.dumps(v)))
    if any(k in SW_KEYS for k in attrs):
        t.sw_due = True  # the platform may name another package (software.py, on the next turn)


def _decode(payload):
    """JSON, or None: larger than the receive buffer, nested deeper than _NEST_MAX brackets
    (counted in C, before any parsing), or not JSON."""
    if payload is None:
        return None
    msg = bytes(payload)
    if msg.count(b"[") + msg.count(b"{") > _NEST_MAX:
        return None
    try:
        return json.loads(msg)
    except ValueError:
        return None


def _interval(v):
    """telemetry_interval as whole seconds within bounds, or None."""
    if v is True or v is False or not isinstance(v, (int, float, str)):
        return None
    try:
        n = int(v)
    except ValueError:
        return None
    if isinstance(v, float) and v != n:
        return None
    return n if 1 <= n <= tb.INTERVAL_MAX else None


def _bad(k, v, why):
    print("shared: %s: %s is not valid (%s); ignored" % (k, json.dumps(v)[:80], why))


def split(t, which, with_mem):
    """Telemetry over the session's limit, in halves (each under it, or split again)."""
    half = len(which) // 2
    for part, mem in ((which[:half], False), (which[half:], with_mem)):
        payload = t.payload(part, mem)
        if payload is None:
            continue
        if not t.fits(tb.TELEMETRY, payload) and len(part) > 1:
            split(t, part, mem)
        else:
            t.send_tb(part, mem, payload)


def publish_dict(t, topic, d):
    """A dict over the session's limit, in halves by key (each under it, or split again)."""
    items = list(d.items())
    half = len(items) // 2
    for part in (dict(items[:half]), dict(items[half:])):
        data = tb.to_json(part)
        if t.fits(topic, data) or len(part) < 2:
            t.publish(topic, data)
        else:
            publish_dict(t, topic, part)
