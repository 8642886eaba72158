"""Zero-touch provisioning against a real mosquitto, with a peer that answers /provision/request as
ThingsBoard does (tests/tbpeer.py): the device gets its token, keeps it, and connects with it; a
refusal or silence is retried with the channel's backoff while HTTP is served."""
import json
import os
import time

import pytest

from tbpeer import ThingsBoard
from test_broker_faults import longest_answer
from test_telemetry import OSID

KEY, SECRET, TOKEN = "prov-key-3x9", "prov-s3cret-77", "tok-provisioned-4242"


def provisioning_cfg(port, **kw):
    base = dict(MQTT_HOST="127.0.0.1", MQTT_PORT=port, MQTT_TOKEN="", PROVISION_KEY=KEY, PROVISION_SECRET=SECRET,
                TELEMETRY_INTERVAL=1)
    base.update(kw)
    return base


def requests_of(tb):
    return [json.loads(p) for t, p in list(tb.sent) if t == "/provision/request"]


def status(fw):
    return fw.get("/telemetry/status").json()


def test_device_gets_its_token_keeps_it_and_connects_with_it(make_firmware, broker):
    tb = ThingsBoard(broker.port, provision=(KEY, SECRET, TOKEN))
    try:
        fw = make_firmware(**provisioning_cfg(broker.port))
        j, _ = tb.telemetry(timeout=10, where=lambda j: isinstance(j, dict) and "_mem_free" in j)
        assert requests_of(tb) == [{"deviceName": OSID, "provisionDeviceKey": KEY, "provisionDeviceSecret": SECRET}]
        log = broker.log()
        assert "as provision (p2, c1, k60, u'provision')" in log, "client id and user name: provision"
        assert "as tb_%s (p2, c1, k60, u'%s')" % (OSID, TOKEN) in log, "then itself, with the token"
        with open(os.path.join(fw.flash, "token.json")) as f:
            assert json.load(f) == TOKEN
        s = status(fw)
        assert s["connected"] and not s["provisioning"]
        for r in (fw.get("/Datastreams/health"), fw.get("/telemetry/status")):
            assert TOKEN not in r.text and SECRET not in r.text
        # the next boot connects with the kept token at once: no provisioning
        fw.stop()
        n = len(requests_of(tb))
        fw.start()
        tb.telemetry(timeout=10, where=lambda j: isinstance(j, dict) and "_mem_free" in j)
        assert len(requests_of(tb)) == n
        log = fw.log()
        assert "provision: done; the access token is kept on flash" in log
        assert TOKEN not in log and SECRET not in log, "secrets never reach the console"
        assert "Traceback" not in log
    finally:
        tb.close()


@pytest.mark.parametrize("answer", ["refused", "silent"])
def test_refusal_or_silence_is_retried_with_backoff_while_http_is_served(make_firmware, broker, answer):
    tb = ThingsBoard(broker.port, provision=(KEY, "another-secret", TOKEN) if answer == "refused" else "silent")
    try:
        fw = make_firmware(**provisioning_cfg(broker.port, TELEMETRY_BUFFER=4))
        worst, n = longest_answer(fw, 9 if answer == "refused" else 13)
        asked = requests_of(tb)
        s = status(fw)
        print("\nprovisioning %s: %d requests, longest HTTP answer %.1f ms over %d; last_error %r"
              % (answer, len(asked), worst * 1000, n, s["last_error"]))
        assert 2 <= len(asked) <= 4, "backoff 1 s, 2 s, 4 s (+ the 5 s wait when silent): not a request a second"
        assert worst < 1.0
        assert s["provisioning"] and not s["connected"] and s["queued"] == 4, "readings kept meanwhile"
        log = fw.log()
        why = "provisioning refused: FAILURE: Failed to provision device!" if answer == "refused" else \
            "no provisioning answer within 5000 ms"
        assert why in log, log[-1500:]
        assert not os.path.exists(os.path.join(fw.flash, "token.json"))
        assert not [t for t, p in tb.sent if t.startswith("v1/")], "nothing else on a provisioning session"
        # the profile's key and secret are right at last: the device gets its token
        tb.provision = (KEY, SECRET, TOKEN)
        tb.telemetry(timeout=70, where=lambda j: isinstance(j, (dict, list)))
        deadline = time.monotonic() + 10
        while status(fw)["queued"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status(fw)["connected"] and status(fw)["queued"] == 0, "the readings kept are sent"
        assert SECRET not in fw.log() and TOKEN not in fw.log()
    finally:
        tb.close()


def test_no_token_and_no_provisioning_keys_turns_telemetry_off(make_firmware):
    fw = make_firmware(MQTT_HOST="127.0.0.1", MQTT_PORT=1, MQTT_TOKEN="")
    s = status(fw)
    assert s["enabled"] is False and s["provisioning"] is False
    assert "MQTT_TOKEN is empty (and no PROVISION_KEY/PROVISION_SECRET): telemetry off" in fw.log()


def test_a_kept_token_is_enough_without_keys(make_firmware, broker):
    """A device provisioned once keeps working when the profile's key is later removed from cfg.py."""
    tb = ThingsBoard(broker.port)
    try:
        fw = make_firmware(**provisioning_cfg(broker.port, PROVISION_KEY="", PROVISION_SECRET=""),
                           extra_files={"token.json": json.dumps(TOKEN)})
        tb.telemetry(timeout=10, where=lambda j: isinstance(j, dict) and "_mem_free" in j)
        assert "u'%s'" % TOKEN in broker.log() and not requests_of(tb)
        assert status(fw)["connected"]
    finally:
        tb.close()
