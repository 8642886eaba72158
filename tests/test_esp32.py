"""The firmware on its ESP32 code path: booted under micropython with tests/doubles (machine,
network, esp32, ntptime) first on the module path, steered through board.json, and observed through
the API and the doubles' "double: ..." console lines."""
import json
import os
import re
import socket
import subprocess
import signal
import time

import pytest

from conftest import flash, free_port

OSID = "ObjetoESP32"
CLOCK = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
AP = {"ssid": "lab", "password": "pw-lab-1234", "delay_ms": 200}


def board_json(**state):
    return {"board.json": json.dumps(state)}


def set_board(fw, **state):
    with open(os.path.join(fw.flash, "board.json"), "w") as f:
        json.dump(state, f)


def wait_log(fw, text, count=1, timeout=10.0):
    """The console once `text` has appeared `count` times."""
    deadline = time.monotonic() + timeout
    while True:
        log = fw.log()
        if log.count(text) >= count:
            return log
        assert time.monotonic() < deadline, "console never showed %r %d times:\n%s" % (text, count, log)
        time.sleep(0.05)


def value(fw, sid):
    r = fw.get("/Datastreams/SendData?osid=%s&variableEstado=%s" % (OSID, sid))
    assert r.status == 200, r.raw
    return r.json()["value"]


def command(fw, sid, comando):
    return fw.post("/Datastreams/SetDatastream?osid=%s&idDataStream=%s&comando=%s" % (OSID, sid, comando)).json()


def last_line(log, prefix):
    lines = [ln for ln in log.splitlines() if ln.startswith(prefix)]
    assert lines, "no %r line in:\n%s" % (prefix, log)
    return lines[-1]


HARDWARE = (
    {"id": "led", "format": "boolean", "type": "actuator", "hw": "pin", "pin": 2},
    {"id": "rele", "format": "boolean", "type": "actuator", "hw": "pin", "pin": 4, "inverted": True},
    {"id": "motor", "format": "integer", "type": "actuator", "hw": "pwm", "pin": 5, "freq": 2000},
    {"id": "nivel", "format": "float", "type": "sensor", "hw": "adc", "pin": 34, "scale": 0.001, "offset": -5},
    {"id": "puerta", "format": "boolean", "type": "sensor", "hw": "pin", "pin": 35},
    {"id": "reloj", "format": "timestamp", "type": "sensor", "hw": "rtc"},
    {"id": "temperatura", "format": "float", "type": "sensor", "hw": "mcu_temp"},
)


@pytest.mark.quick
def test_pins_pwm_and_adc_on_the_board_path(make_firmware):
    fw = make_firmware(esp32=True, STREAMS=HARDWARE, extra_files=board_json(adc={"34": 40000}, inputs={"35": 1}))
    log = fw.log()
    assert "datastream firmware: boot, reset by power on" in log
    assert "double: pin 2 OUT" in log and "double: pin 4 OUT" in log
    assert "double: pin 35 OUT" not in log  # a sensor pin is an input
    assert "double: pwm 5 freq 2000" in log

    assert command(fw, "led", "on")["data"]["value"] is True
    assert last_line(fw.log(), "double: pin 2 =") == "double: pin 2 = 1"
    assert command(fw, "led", "off")["data"]["value"] is False
    assert last_line(fw.log(), "double: pin 2 =") == "double: pin 2 = 0"
    # inverted: "on" drives the pin low, and reads back as on
    assert command(fw, "rele", "on")["data"]["value"] is True
    assert last_line(fw.log(), "double: pin 4 =") == "double: pin 4 = 0"
    assert value(fw, "rele") == "true"

    for duty, u16 in ((0, 0), (512, 512 * 65535 // 1023), (1023, 65535)):
        r = command(fw, "motor", str(duty))
        assert r["data"]["value"] == duty, r
        assert last_line(fw.log(), "double: pwm 5 duty_u16") == "double: pwm 5 duty_u16 %d" % u16
    r = command(fw, "motor", "1024")
    assert r["code"] == "1027" and "rango" in r["message"]
    assert last_line(fw.log(), "double: pwm 5 duty_u16") == "double: pwm 5 duty_u16 65535"

    assert float(value(fw, "nivel")) == pytest.approx(40000 * 0.001 - 5)
    set_board(fw, adc={"34": 65535}, inputs={"35": 0})
    assert float(value(fw, "nivel")) == pytest.approx(65535 * 0.001 - 5)
    assert value(fw, "puerta") == "false"
    assert "Traceback" not in fw.log()


@pytest.mark.parametrize("chip", ["esp32", "esp32s3"])
def test_chip_temperature_in_celsius_on_each_chip(make_firmware, chip):
    """The original ESP32 reports °F through raw_temperature; S2/S3/C3 have mcu_temperature in °C."""
    fw = make_firmware(esp32=True, STREAMS=HARDWARE, extra_files=board_json(chip=chip, temp_c=60))
    assert float(value(fw, "temperatura")) == pytest.approx(60.0)


def test_rtc_format_before_and_after_ntp(make_firmware):
    slow_ap = dict(AP, delay_ms=3000)  # time to read the clock before WiFi is up
    fw = make_firmware(esp32=True, STREAMS=HARDWARE, WIFI_SSID="lab", WIFI_PASSWORD=AP["password"],
                       NTP_HOST="ntp.example", extra_files=board_json(wifi=slow_ap, ntp=[2026, 3, 4, 5, 6, 7]))
    early = value(fw, "reloj")
    assert CLOCK.match(early) and early.startswith("2000-01-01 00:00:")  # the RTC after power-on
    assert "wifi: up" not in fw.log()
    log = wait_log(fw, "wifi: clock set from ntp.example")
    assert "double: ntp query ntp.example, timeout 1 s" in log
    synced = value(fw, "reloj")
    assert CLOCK.match(synced) and synced.startswith("2026-03-04 05:06:"), synced


def test_wifi_connects_recovers_from_loss_and_logs_each_change_once(make_firmware):
    fw = make_firmware(esp32=True, WIFI_SSID="lab", WIFI_PASSWORD=AP["password"], WIFI_BACKOFF_MAX_MS=2000,
                       NTP_HOST="", extra_files=board_json(wifi=AP))
    log = wait_log(fw, "wifi: up, ip 127.0.0.1")
    assert log.count("wifi: connecting to lab") == 1

    set_board(fw, wifi=dict(AP, up=False))  # the access point goes away
    wait_log(fw, "wifi: link lost, reconnecting")
    log = wait_log(fw, "double: wlan connect lab", count=4, timeout=15)  # boot, reconnect, 2 retries
    for _ in range(5):  # HTTP is served all along
        assert fw.alive()
    assert log.count("wifi: no access point lab") == 1  # repeated failures are logged once

    set_board(fw, wifi=AP)
    log = wait_log(fw, "wifi: up, ip 127.0.0.1", count=2, timeout=15)
    assert log.count("wifi: link lost") == 1
    assert fw.alive()


def test_wrong_password_backs_off_and_secrets_never_reach_the_console(make_firmware, broker):
    secret_pw, secret_token = "Wpa-S3cret-7781", "TbTok-9d2f1c"
    fw = make_firmware(esp32=True, WIFI_SSID="lab", WIFI_PASSWORD=secret_pw, WIFI_BACKOFF_MAX_MS=2000,
                       MQTT_HOST="127.0.0.1", MQTT_PORT=broker.port, MQTT_TOKEN=secret_token,
                       extra_files=board_json(wifi=AP))
    log = wait_log(fw, "double: wlan connect lab", count=3, timeout=15)
    assert log.count("wifi: wrong password") == 1
    assert "wifi: up" not in log
    assert fw.alive()
    # Backing off: tries start 0, ~2 and ~5 s after boot, the next one ~3 s later (1 s, 2 s, then
    # the 2 s cap, each after the failure shows at a loop tick); retrying at every tick would
    # have made two more by now.
    time.sleep(2.5)
    assert fw.log().count("double: wlan connect lab") <= 4
    set_board(fw, wifi=dict(AP, password=secret_pw))  # the AP now takes that password
    log = wait_log(fw, "wifi: up, ip 127.0.0.1", timeout=15)
    for r in (fw.get("/Datastreams/health"), fw.get("/telemetry/status")):
        assert secret_pw not in r.text and secret_token not in r.text
    fw.stop()
    log = fw.log()
    assert secret_pw not in log and secret_token not in log


def test_boot_py_returns_at_once_for_the_raw_repl(tmp_path):
    """ampy soft-resets the board into the raw REPL, which runs boot.py only: it must return."""
    d = flash.build(str(tmp_path / "flash"), {"HTTP_BIND": "127.0.0.1"})
    argv, env = flash.command(d, esp32=True)
    p = subprocess.run(argv[:-1] + ["import boot"], cwd=d, env=env, capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("datastream firmware: boot, reset by power on, mem_free ")
    assert "serving" not in p.stdout and not os.path.exists(os.path.join(d, "bootcount"))


SLOW = HARDWARE[:1] + ({"id": "lento", "format": "integer", "type": "sensor", "hw": "custom", "read": "slow:read"},)
SLOW_SENSOR = {"slow.py": "import time\n\ndef read():\n    time.sleep_ms(2600)\n    return 1\n"}


def test_watchdog_is_fed_by_the_loop_and_resets_a_stalled_one(make_firmware):
    fw = make_firmware(esp32=True, STREAMS=SLOW, WDT_TIMEOUT_MS=2000, extra_files=SLOW_SENSOR)
    wait_log(fw, "double: wdt started, timeout 2000 ms")
    wait_log(fw, "double: wdt fed")
    time.sleep(3)  # idle for longer than the timeout: the loop's own tick keeps feeding it
    assert fw.alive() and fw.proc.poll() is None
    try:
        fw.get("/Datastreams/SendData?osid=%s&variableEstado=lento" % OSID, timeout=10)
    except OSError:
        pass  # the board resets while it answers
    assert fw.proc.wait(10) == 3  # the double's WDT reset
    assert "double: wdt starved for" in fw.log()


def test_ctrl_c_stretches_the_watchdog_so_an_upload_is_not_cut_short(make_firmware):
    fw = make_firmware(esp32=True, WDT_TIMEOUT_MS=2000)
    wait_log(fw, "double: wdt fed")
    fw.proc.send_signal(signal.SIGINT)  # what ampy's Ctrl-C is on the unix port
    fw.proc.wait(10)
    log = fw.log()
    assert "double: wdt started, timeout 3600000 ms" in log and "KeyboardInterrupt" in log
    assert "wdt starved" not in log


def test_host_build_logs_a_stalled_loop_instead_of_resetting(make_firmware):
    fw = make_firmware(STREAMS=SLOW, WDT_TIMEOUT_MS=2000, extra_files=SLOW_SENSOR)
    assert "guard: host build: loop stalls over 2000 ms are logged, not reset" in fw.log()
    fw.get("/Datastreams/SendData?osid=%s&variableEstado=lento" % OSID, timeout=10)
    wait_log(fw, "guard: loop stalled ")
    assert fw.alive()


def boot_until_exit(fw):
    """Boot the firmware and wait until it stops by itself (a reset); its exit code."""
    argv, env = flash.command(fw.flash, fw.heap, fw.esp32)
    with open(fw.logfile, "ab") as out:
        return subprocess.run(argv, cwd=fw.flash, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=30).returncode


def assert_count_cleared(fw):
    """After a run of SAFE_MODE_CLEAN_S (1 s here), the boot count goes back to 0."""
    path = os.path.join(fw.flash, "bootcount")
    deadline = time.monotonic() + 10
    while True:
        if os.path.exists(path):
            with open(path) as f:
                if f.read() == "0":
                    break
        assert time.monotonic() < deadline, "the boot count was never cleared"
        time.sleep(0.1)
    assert fw.alive()


@pytest.mark.parametrize("esp32", [True, False], ids=["esp32", "host"])
def test_boot_loop_starts_safe_mode_until_a_clean_run(make_firmware, esp32):
    fw = make_firmware(esp32=esp32, STREAMS=HARDWARE, SAFE_MODE_CLEAN_S=1, WDT_TIMEOUT_MS=3000,
                       MQTT_HOST="127.0.0.1", MQTT_PORT=free_port(), MQTT_TOKEN="t")  # no broker: it retries
    assert fw.get("/telemetry/status").json()["enabled"] is True
    assert_count_cleared(fw)
    fw.stop()
    with socket.socket() as taken:  # the port is taken: main crashes at every boot
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", fw.port))
        taken.listen(1)
        for _ in range(3):
            assert boot_until_exit(fw) == (2 if esp32 else 1)
    log = fw.log()
    assert log.count("guard: fatal error, rebooting") == 3
    if esp32:
        assert log.count("double: machine.reset()") == 3

    mark = len(fw.log())
    fw.start()
    safe = fw.log()[mark:]
    assert "guard: SAFE MODE after 3 quick boots" in safe
    health = fw.get("/Datastreams/health").json()
    assert health["status"] == "healthy" and health["safe_mode"] is True
    for r in (fw.get("/Datastreams/SendState?osid=" + OSID),
              fw.post("/Datastreams/SetDatastream?osid=%s&idDataStream=led&comando=on" % OSID)):
        assert r.status == 503 and r.json() == {"status": "error", "message": "Modo seguro"}
    safe = fw.log()[mark:]
    assert "double: pin" not in safe and "double: pwm" not in safe  # no actuator touched
    assert "wdt started" not in safe  # the REPL stays usable: no watchdog to starve
    assert fw.get("/telemetry/status").json()["enabled"] is False

    assert_count_cleared(fw)
    fw.stop()
    mark = len(fw.log())
    fw.start()
    assert fw.get("/Datastreams/SendState?osid=" + OSID).status == 200
    assert "SAFE MODE" not in fw.log()[mark:]
