# What brings a device back without a person at it: the watchdog, the boot-loop counter that
# starts safe mode, and the trial of a version an update installed (rolled back when it does not
# run cleanly: fwswitch.py). Imported early by main.py: counting this boot is the first thing it does.
import sys
import time

import cfg
import hw

_FILE = "bootcount"  # quick boots (host: crashes) in a row; written twice per boot at most
START = time.ticks_ms()  # this boot (fwswitch.probation counts the trial from it)


try:  # fwswitch.TRIAL: the version an update installed is on trial (open: no os module to import)
    open("sw_trial.json").close()
    TRIAL = True
except OSError:
    TRIAL = False
if TRIAL:  # its boots are counted; when its tries are used up, the old version comes back
    import fwswitch

    fwswitch.trial_boot()  # stays imported for the trial (fwswitch.probation)


def _count():
    try:
        with open(_FILE) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def _store(n):
    try:
        with open(_FILE, "w") as f:
            f.write("%d" % n)
    except OSError as e:  # a full or read-only flash must not stop the device
        print("guard: cannot write %s: %s" % (_FILE, e))


_boots = _count()
SAFE = cfg.SAFE_MODE_BOOTS > 0 and _boots >= cfg.SAFE_MODE_BOOTS
if hw.BOARD:  # every boot counts on a board: whatever crashes resets it (and a person can, too)
    _store(_boots + 1)
if SAFE:
    cfg.MQTT_HOST = ""  # telemetry stays off
    print("guard: SAFE MODE after %d quick boots: health only, no MQTT, no actuators;"
          " fix cfg.py from the REPL, then reset (a %d s run clears it)" % (_boots, cfg.SAFE_MODE_CLEAN_S))
_wdt = None
_fed = [START, False]  # tick of the last feed, whether this run already counts as clean


def watchdog():
    """Arm the watchdog (never in safe mode: the REPL must stay usable). On the host, log instead."""
    global _wdt
    ms = cfg.WDT_TIMEOUT_MS
    if SAFE or ms <= 0:
        return
    if hw.BOARD:
        from machine import WDT

        _wdt = WDT(timeout=ms)
    else:
        print("guard: host build: loop stalls over %d ms are logged, not reset" % ms)
    _fed[0] = time.ticks_ms()


def feed(now):
    """Called by the main loop on every turn: feeds the watchdog; after a clean run, clears the count."""
    if _wdt is not None:
        _wdt.feed()
    elif cfg.WDT_TIMEOUT_MS > 0:
        late = time.ticks_diff(now, _fed[0])
        if late > cfg.WDT_TIMEOUT_MS:
            print("guard: loop stalled %d ms: a board's watchdog would have reset it" % late)
    _fed[0] = now
    if not _fed[1] and time.ticks_diff(now, START) >= cfg.SAFE_MODE_CLEAN_S * 1000:
        _fed[1] = True
        _store(0)


def park():
    """A person or a tool (ampy, mpremote) took the REPL with Ctrl-C. The loop no longer feeds the
    watchdog, and an armed one cannot be stopped: stretch it to an hour (creating it again sets
    the new timeout on the ESP32), or an upload would be cut short by a reset."""
    if _wdt is not None:
        from machine import WDT

        WDT(timeout=3600000)
        print("guard: watchdog stretched to 1 h while the REPL is in use")


def reboot(e):
    """The end of a run that failed: log why, then reset the board (the host process exits)."""
    sys.print_exception(e)
    print("guard: fatal error, rebooting")
    if hw.BOARD:
        import machine

        time.sleep_ms(1000)  # let the console drain
        machine.reset()
    _store(_boots + 1)  # a host process is restarted at will: only its crashes count
    sys.exit(1)
