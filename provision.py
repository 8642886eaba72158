# Zero-touch provisioning: a device with no access token (no MQTT_TOKEN, no token.json) connects as
# "provision" (client id and user name: ThingsBoard then takes the session as provision-only),
# subscribes /provision/response and asks on /provision/request (the only topic the server takes,
# whatever its docs say) with the device profile's key and secret; the answer's token is stored on
# flash and the link connects again as the device itself. A refusal or no answer drops the link and
# the channel's backoff sets the next attempt. Imported for each step and dropped after: once the
# device has its token, this costs nothing. Neither the token nor the secret is ever printed.
import json
import time

import cfg
import persist
import thingsboard as tb


def ask(t):
    """The provisioning session is up: ask for credentials; the answer is awaited until t.until."""
    print("provision: asking %s:%d for this device's credentials, as %s" % (cfg.MQTT_HOST, cfg.MQTT_PORT, cfg.OSID))
    t.link.publish(b"/provision/request", tb.to_json({
        "deviceName": cfg.OSID, "provisionDeviceKey": cfg.PROVISION_KEY,
        "provisionDeviceSecret": cfg.PROVISION_SECRET}), 0)
    t.until = time.ticks_add(time.ticks_ms(), tb.PROVISION_WAIT_MS)


def answer(t, payload):
    """ThingsBoard's answer (JsonConverter): SUCCESS with credentialsType and credentialsValue, or
    FAILURE / NOT_FOUND with errorMsg."""
    t.until = None
    try:
        a = json.loads(bytes(payload)) if payload is not None else None
    except ValueError:
        a = None
    if not isinstance(a, dict):
        return _refused(t, "an answer that is not a JSON object")
    if a.get("status") != "SUCCESS":
        return _refused(t, "%s: %s" % (a.get("status"), str(a.get("errorMsg"))[:80]))
    token = a.get("credentialsValue")
    if a.get("credentialsType") != "ACCESS_TOKEN" or not isinstance(token, str) or not token:
        return _refused(t, "credentials of type %s (only ACCESS_TOKEN is taken)" % str(a.get("credentialsType"))[:40])
    t.token = token  # stored by the loop (store), not here


def _refused(t, why):
    print("provision: refused: %s" % why)
    t.link.drop("provisioning refused: %s" % why)  # the backoff sets the next attempt


def store(t):
    """Keep the token on flash, then connect as the device itself."""
    token, t.token = t.token, None
    try:
        persist.write(tb.TOKEN_FILE, json.dumps(token))
        print("provision: done; the access token is kept on flash (%s)" % tb.TOKEN_FILE)
    except OSError as e:
        print("provision: done, but the token cannot be kept on flash (%r): provisioning again at the next boot" % e)
    link = t.link
    link.client_id = ("tb_" + cfg.OSID).encode()
    link.user = token.encode()
    link.topics = tb.TOPICS
    t.provisioning = False
    link.backoff = 1000  # the provisioning link worked: the device's own follows at once
    link.drop("provisioned, connecting with the token")
