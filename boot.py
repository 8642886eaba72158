# Runs first at every boot, also when ampy soft-resets the board into the raw REPL: a short banner
# and nothing that could block the REPL (the server starts in main.py, which the raw REPL skips).
import gc
import os
import sys

try:
    os.stat("sw_switch.json")
    _switching = True
except OSError:
    _switching = False
if _switching:  # a switch to an update's files, cut by a power loss: finished before any module loads
    import fwswitch

    fwswitch.replay()
    for _m in ("fwswitch", "persist"):
        sys.modules.pop(_m, None)  # main.py imports the files now in place
import hw

gc.collect()
cause = ""
if hw.BOARD:
    import machine

    cause = {machine.PWRON_RESET: "power on", machine.HARD_RESET: "hard reset", machine.WDT_RESET: "watchdog",
             machine.DEEPSLEEP_RESET: "deep sleep", machine.SOFT_RESET: "soft reset"}.get(machine.reset_cause(), "other")
    cause = ", reset by " + cause
print("datastream firmware: boot%s, mem_free %d" % (cause, gc.mem_free()))
