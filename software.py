# What the device tells ThingsBoard of its software, and when an update starts: imported for one
# loop turn after each connect and after the platform names a package (Telemetry.sw_due), then
# dropped. The update itself is ota.py; the switch and the trial, fwswitch.py.
import gc
import sys

import guard
import persist
import streams
import thingsboard as tb


def check(t):
    """At the first turn after a connect, the report; then the package the platform names."""
    if not t.sw_reported:
        t.sw_reported = True
        report(t)
    wanted(t)


def report(t):
    """The running software and the last update's outcome (fwswitch.STATE), as ThingsBoard's OTA
    widgets read them (current_sw_*, sw_state, sw_error)."""
    d = {"current_sw_title": streams.SW_TITLE, "current_sw_version": streams.VERSION}  # type: dict
    st = _state()
    if isinstance(st, dict):
        d["sw_state"] = st.get("state")
        if st.get("error"):
            d["sw_error"] = st["error"]
    t.publish(tb.TELEMETRY, tb.to_json(d))


def wanted(t):
    """The package the sw_* attributes name, if it is not the one running: an update starts
    (ota.py), unless it failed before (not tried again until the platform names another)."""
    sw = t.sw
    title, version = sw.get("sw_title"), sw.get("sw_version")
    if not isinstance(title, str) or not isinstance(version, str) or not title or not version:
        return
    if (title, version) == (streams.SW_TITLE, streams.VERSION) or guard.TRIAL:
        return  # (a version on trial is kept or rolled back first: its old files are the way back)
    if t.update is not None:
        if t.update.wants(sw):
            return  # under way: a reconnect asked the attributes again
        t.update.fail("the platform named %s %s instead" % (title, version))
    import fwswitch

    named = fwswitch.target(sw)
    st = _state()
    if isinstance(st, dict) and st.get("state") == "FAILED" and st.get("target") == named:
        print("update: %s %s failed before: not tried again until the platform names another package" % (
            title, version))
        return
    gc.collect()  # ota.py's code needs blocks of a few hundred bytes: the holes the loop leaves are smaller
    try:
        __import__("ota").start(t, sw)  # stays imported while the update runs
    except MemoryError:  # not kept as the outcome: tried again at the next connect or attribute change
        for m in ("ota", "fwswitch"):
            sys.modules.pop(m, None)
        t.update = None
        gc.collect()
        why = "not enough memory to start the update (%d B free)" % gc.mem_free()
        print("update: %s" % why)
        t.publish(tb.TELEMETRY, tb.to_json({"sw_state": "FAILED", "sw_error": why}))


def _state():
    import fwswitch

    try:
        return persist.load(fwswitch.STATE)
    finally:
        if "ota" not in sys.modules and not guard.TRIAL:
            sys.modules.pop("fwswitch", None)
