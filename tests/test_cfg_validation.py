"""cfg.py checked at boot: each entry or setting that cannot work gets one console line naming
it and is left out (or turned off); the device boots with the rest, and health is served."""
import pytest

pytestmark = pytest.mark.quick

OSID = "ObjetoESP32"
GOOD = {"id": "led", "format": "boolean", "type": "actuator", "hw": "pin", "pin": 2}

# (stream spec, the console line that must name its problem)
BAD = [
    ({"id": "x1", "format": "bool", "type": "actuator", "hw": "pin", "pin": 3},
     "cfg: STREAMS[1] 'x1': unknown format 'bool' (boolean|integer|float|string|timestamp); left out"),
    ({"id": "x2", "format": "boolean", "type": "actor", "hw": "pin", "pin": 3},
     "cfg: STREAMS[2] 'x2': unknown type 'actor' (actuator|sensor); left out"),
    ({"id": "x3", "format": "boolean", "type": "actuator", "hw": "gpio", "pin": 3},
     "cfg: STREAMS[3] 'x3': unknown hw 'gpio'"),
    ({"id": "led", "format": "boolean", "type": "actuator", "hw": "pin", "pin": 3},
     "cfg: STREAMS[4] 'led': duplicate id; left out"),
    ({"id": "x5", "format": "boolean", "type": "actuator", "hw": "pin", "pin": 2},
     "cfg: STREAMS[5] 'x5': pin 2 is already used by 'led'; left out"),
    ({"id": "x6", "format": "boolean", "type": "actuator", "hw": "pin"},
     "cfg: STREAMS[6] 'x6': pin must be a GPIO number; left out"),
    ({"id": "x7", "format": "float", "type": "actuator", "hw": "adc", "pin": 36},
     "cfg: STREAMS[7] 'x7': hw adc is for sensors only; left out"),
    ({"format": "boolean", "type": "sensor", "hw": "pin", "pin": 5},
     "cfg: STREAMS[8] None: no id; left out"),
    ("led",
     "cfg: STREAMS[9] None: not a dict; left out"),
    ({"id": "x10", "format": "string", "type": "sensor", "hw": "custom", "read": "nomodule:read"},
     "cfg: STREAMS[10] 'x10': hw custom failed:"),
    ({"id": "x11", "format": "string", "type": "sensor", "hw": "custom", "read": "read"},
     "cfg: STREAMS[11] 'x11': custom needs read=\"module:function\"; left out"),
    ({"id": "x12", "format": "boolean", "type": "actuator", "hw": "pin", "pin": 12, "restore": "of"},
     "cfg: STREAMS[12] 'x12': unknown restore 'of' (off|on|last); left out"),
    ({"id": "temp", "format": "float", "type": "sensor", "hw": "mcu_temp"}, None),  # fine: kept
]


@pytest.mark.parametrize("esp32", [False, True], ids=["host", "esp32"])
def test_each_bad_entry_is_named_and_left_out(make_firmware, esp32):
    fw = make_firmware(esp32=esp32, STREAMS=tuple([GOOD] + [spec for spec, _ in BAD]),
                       MQTT_HOST="127.0.0.1", MQTT_TOKEN="", WDT_TIMEOUT_MS=500)
    log = fw.log()
    for _, line in BAD:
        if line:
            assert log.count(line) == 1, (line, log)
    assert log.count("cfg: ") == len([b for b in BAD if b[1]]) + 2, log
    assert "cfg: MQTT_HOST is set but MQTT_TOKEN is empty (and no PROVISION_KEY/PROVISION_SECRET): telemetry off" in log
    assert "cfg: WDT_TIMEOUT_MS 500 is below 2000" in log
    assert "Traceback" not in log
    assert fw.alive()
    state = fw.get("/Datastreams/SendState?osid=" + OSID).json()
    assert [d["datastream_id"] for d in state["datastreams"]] == ["led", "temp"]
    assert fw.get("/telemetry/status").json()["enabled"] is False


def test_a_pin_the_board_refuses_is_named_and_the_rest_works(make_firmware):
    """Only the port knows some limits (GPIO 34..39 are inputs): its refusal is caught per entry."""
    streams = (GOOD, {"id": "rele", "format": "boolean", "type": "actuator", "hw": "pin", "pin": 34},
               {"id": "flash", "format": "boolean", "type": "actuator", "hw": "pin", "pin": 7})
    fw = make_firmware(esp32=True, STREAMS=streams)
    log = fw.log()
    assert "cfg: STREAMS[1] 'rele': hw pin failed: pin can only be input; left out" in log
    assert "cfg: STREAMS[2] 'flash': hw pin failed: pin 7 is wired to the flash; left out" in log
    r = fw.post("/Datastreams/SetDatastream?osid=%s&idDataStream=led&comando=on" % OSID).json()
    assert r["data"]["value"] is True


def test_nothing_usable_still_boots_with_health(make_firmware):
    fw = make_firmware(STREAMS=({"id": "a", "format": "?", "type": "sensor", "hw": "rtc"},))
    assert "cfg: STREAMS[0] 'a': unknown format '?'" in fw.log()
    assert fw.alive()
    assert fw.get("/Datastreams/SendState?osid=" + OSID).json()["count"] == 0
