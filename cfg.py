# Device configuration: policy lives here, mechanism in the other modules.
# upload.sh sends this file only when the board has none (or with --config),
# so a board's own settings and secrets survive firmware updates.

OSID = "ObjetoESP32"
TITLE = "Objeto ESP32"

# WiFi (ESP32 only; ignored on the host simulation).
WIFI_SSID = ""
WIFI_PASSWORD = ""
WIFI_TIMEOUT_MS = 15000  # give up one connect attempt after this long
WIFI_BACKOFF_MAX_MS = 60000  # retries wait 1 s, 2 s, 4 s ... up to this

# Reliability (ESP32): the watchdog resets a board whose loop stops turning; after
# SAFE_MODE_BOOTS quick boots in a row (each shorter than SAFE_MODE_CLEAN_S: crashes, watchdog
# resets, or a person pressing reset; on the host only crashes count) the device starts in safe
# mode: REPL and health only, no MQTT, no actuators driven, until a run lasts that long.
WDT_TIMEOUT_MS = 8000  # 0 turns the watchdog off
SAFE_MODE_BOOTS = 3
SAFE_MODE_CLEAN_S = 60

# HTTP server.
HTTP_BIND = "0.0.0.0"
HTTP_PORT = 8003
HTTP_SLOTS = 4  # simultaneous connections; lwIP has ~10 sockets, MQTT needs one
HTTP_QUEUE = 3  # connections that wait for a slot (a burst); more get 503 at once
HTTP_BUF = 1024  # per-slot buffer: request line + headers in, response out
HTTP_TIMEOUT_MS = 3000  # a client must send its request (and take the answer) within this
API_TOKEN = ""  # non-empty: SetDatastream needs "Authorization: Bearer <token>" or &token=
API_TOKEN_READS = False  # True: the read-only routes need the token too

# ThingsBoard telemetry over MQTT (telemetry is off while MQTT_HOST is empty).
MQTT_HOST = ""
MQTT_PORT = 1883
MQTT_TOKEN = ""  # the ThingsBoard device access token
# MQTT over TLS (ThingsBoard serves it on 8883): the broker's certificate must chain to the CA in
# MQTT_CA and carry MQTT_SERVER_HOSTNAME (or MQTT_HOST); there is no way to skip the check.
MQTT_TLS = False
MQTT_CA = ""  # a file on the board's flash (PEM or DER) holding the CA that signed the broker's certificate
MQTT_SERVER_HOSTNAME = ""  # the name for SNI and the check ("": MQTT_HOST)
MQTT_CERT = ""  # X.509 device credentials (files on flash): with them MQTT_TOKEN may stay empty
MQTT_KEY = ""
MQTT_TLS_TIMEOUT_MS = 5000  # deadline of the whole TLS connect (TCP, handshake, CONNACK): an ESP32
# spends 1-3 s of CPU on a handshake, in steps during which the loop waits
# Zero-touch: with no MQTT_TOKEN, a device profile's provisioning key and secret get the device its
# token from ThingsBoard at the first connect (kept on flash in token.json, never printed).
PROVISION_KEY = ""
PROVISION_SECRET = ""
MQTT_KEEPALIVE = 60  # seconds; the device pings before the broker's 1.5x runs out
MQTT_TIMEOUT_MS = 800  # deadline of each whole broker operation (connect+CONNACK, subscribe+SUBACK,
# one incoming packet, a queued write); the loop never waits for any of them, it only gives up after this
MQTT_QOS = 0  # 1: the broker acknowledges each publish (tracked without waiting; unacknowledged at a drop: "lost")
MQTT_MAX_PACKET = 2304  # receive buffer, allocated once: a larger RPC request is skipped and answered
# {"error":"payload too large"}; room for 2 KB update chunks (lower it on a low-RAM board)
TELEMETRY_INTERVAL = 10  # seconds
TELEMETRY_BUFFER = 16  # readings kept while the broker is unreachable (oldest dropped first)
RPC_SWITCH = ""  # stream driven by the switch widgets' RPC; "" = the first boolean actuator
# The same telemetry (periodic and on change), publish-only, to the system's own broker, where the
# automation service listens ("" turns it off; no token: an anonymous connect as ds_<OSID>).
LOCAL_MQTT_HOST = ""
LOCAL_MQTT_PORT = 1883
LOCAL_MQTT_TOPIC = "datastream/telemetry"
# Software updates from ThingsBoard (a package built by ./upload.sh --package, assigned to the device
# there): fetched in chunks, checked, switched to, and rolled back if the new version does not run.
UPDATE_CHUNK = 2048  # bytes per chunk asked (held to MQTT_MAX_PACKET and the session's maxPayloadSize)
UPDATE_CHUNK_WAIT_MS = 10000  # for each chunk's answer; a chunk is asked 3 times before the update fails
UPDATE_PROBATION_S = 30  # the new version is kept after serving this long with ThingsBoard reached
UPDATE_TRIAL_MAX_S = 600  # ... and rolled back if it has not reached ThingsBoard by then
NTP_HOST = "pool.ntp.org"  # wifi.py sets the RTC from it at each link-up and every 6 h ("": never);
# the reloj stream and the timestamps of buffered readings come from that clock

# "last" actuator values are saved to flash on change, at most once per this many seconds.
STATE_SAVE_INTERVAL = 10

# Datastreams, in the order SendState lists them.
#   id, format (boolean|integer|float|string|timestamp), type (actuator|sensor), hw, and per hw:
#   hw "pin":      pin, [inverted]                      digital output (actuator) or input (sensor)
#   hw "pwm":      pin, [freq, min, max]                duty 0..1023 (actuator)
#   hw "adc":      pin, [scale, offset]                 raw 0..65535 * scale + offset (sensor)
#   hw "rtc" | "mcu_temp" | "mem_free"                  built-in sensors
#   hw "custom":   read="module:function", [write="module:function"]
#   actuators: restore = "off" | "on" | "last" (the value applied at boot; numbers: min | max | last)
STREAMS = (  # type: tuple
    {"id": "led", "format": "boolean", "type": "actuator", "hw": "pin", "pin": 2, "restore": "off"},
    {"id": "rele", "format": "boolean", "type": "actuator", "hw": "pin", "pin": 4, "restore": "off"},
    {"id": "reloj", "format": "timestamp", "type": "sensor", "hw": "rtc"},
    {"id": "temperatura", "format": "float", "type": "sensor", "hw": "mcu_temp"},
    {"id": "memoria", "format": "integer", "type": "sensor", "hw": "mem_free"},
)
