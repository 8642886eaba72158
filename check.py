# cfg.py checked at boot, before anything reads it: each stream entry that cannot work is left out
# and each setting that cannot work is turned off, with one console line naming the problem, so a
# typo costs that entry, never the device (health is always served). streams.py imports this once
# and drops it: on a low-RAM board the checks cost nothing after boot.
import os

import cfg
import hw

TOKEN_FILE = "token.json"  # the token provisioning got (thingsboard.py)

FORMATS = ("boolean", "integer", "float", "string", "timestamp")
TYPES = ("actuator", "sensor")
_ONLY = {"pwm": "actuator", "adc": "sensor", "rtc": "sensor", "mcu_temp": "sensor", "mem_free": "sensor"}


def _problem(spec, ids, pins):
    """What makes a stream spec unusable, or None. `pins` maps the GPIOs taken so far to ids."""
    if not isinstance(spec, dict):
        return "not a dict"
    for key in ("id", "format", "type", "hw"):
        if key not in spec:
            return "no %s" % key
    kind, pin = spec["hw"], spec.get("pin")
    if not isinstance(spec["id"], str) or not spec["id"]:
        return "id must be a non-empty string"
    if spec["id"] in ids:
        return "duplicate id"
    if spec["format"] not in FORMATS:
        return "unknown format %r (%s)" % (spec["format"], "|".join(FORMATS))
    if spec["type"] not in TYPES:
        return "unknown type %r (actuator|sensor)" % (spec["type"],)
    if kind not in hw.KINDS:
        return "unknown hw %r (%s)" % (kind, "|".join(hw.KINDS))
    if _ONLY.get(kind, spec["type"]) != spec["type"]:
        return "hw %s is for %ss only" % (kind, _ONLY[kind])
    if kind in ("pin", "pwm", "adc"):
        if not isinstance(pin, int) or pin < 0:
            return "pin must be a GPIO number"
        if pin in pins:
            return "pin %d is already used by '%s'" % (pin, pins[pin])
    if spec.get("restore", "off") not in ("off", "on", "last"):
        return "unknown restore %r (off|on|last)" % (spec["restore"],)
    if kind == "custom" and ":" not in str(spec.get("read")):
        return 'custom needs read="module:function"'
    return None


# Settings added after boards were deployed: a board's own older cfg.py lacks them.
_LATER = (("MQTT_TLS", False), ("MQTT_CA", ""), ("MQTT_SERVER_HOSTNAME", ""), ("MQTT_CERT", ""), ("MQTT_KEY", ""),
          ("MQTT_TLS_TIMEOUT_MS", 5000))


def _settings():
    for name, default in _LATER:
        if not hasattr(cfg, name):
            setattr(cfg, name, default)
    provision = getattr(cfg, "PROVISION_KEY", "") and getattr(cfg, "PROVISION_SECRET", "")
    if (cfg.MQTT_HOST and not cfg.MQTT_TOKEN and not (cfg.MQTT_TLS and cfg.MQTT_CERT) and not provision
            and not _exists(TOKEN_FILE)):
        print("cfg: MQTT_HOST is set but MQTT_TOKEN is empty (and no PROVISION_KEY/PROVISION_SECRET): telemetry off")
        cfg.MQTT_HOST = ""
    why = _tls_problem() if cfg.MQTT_HOST and cfg.MQTT_TLS else None
    if why:
        print("cfg: MQTT_TLS: %s: telemetry off" % why)
        cfg.MQTT_HOST = ""
    if 0 < cfg.WDT_TIMEOUT_MS < 2000:
        print("cfg: WDT_TIMEOUT_MS %d is below 2000 (the loop turns every 1000 ms): using 2000" % cfg.WDT_TIMEOUT_MS)
        cfg.WDT_TIMEOUT_MS = 2000


def _tls_problem():
    """What keeps MQTT over TLS from ever connecting, or None: the CA is never optional."""
    ca, cert, key = cfg.MQTT_CA, cfg.MQTT_CERT, cfg.MQTT_KEY
    if not ca:
        return "MQTT_CA (the CA that signed the broker's certificate) is empty"
    if bool(cert) != bool(key):
        return "MQTT_CERT and MQTT_KEY go together"
    for name, path in (("MQTT_CA", ca), ("MQTT_CERT", cert), ("MQTT_KEY", key)):
        if path and not _exists(path):
            return "%s %r is not on the flash (upload.sh sends it)" % (name, path)
    return None


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def load(make, out):
    """Check the settings, then append make(spec) to `out` for each usable entry of cfg.STREAMS."""
    _settings()
    ids, pins = set(), {}
    for i, spec in enumerate(cfg.STREAMS):
        why = _problem(spec, ids, pins)
        if why is None:
            try:
                out.append(make(spec))
            except Exception as e:  # the port refused the binding, e.g. an output on an input-only pin
                why = "hw %s failed: %s" % (spec["hw"], e.args[0] if e.args else type(e).__name__)
        if why is not None:
            name = spec.get("id") if isinstance(spec, dict) else None
            print("cfg: STREAMS[%d] %r: %s; left out" % (i, name, why))
            continue
        ids.add(spec["id"])
        if spec["hw"] in ("pin", "pwm", "adc"):
            pins[spec["pin"]] = spec["id"]
