# Telemetry for the two comparison servers, as a MicroPython app would usually do it: umqtt.simple
# with its blocking socket, a publish when due, a new connection on the next period after a failure.
import time

import cfg
from umqtt.simple import MQTTClient

TOPIC = b"v1/devices/me/telemetry"


class Publisher:
    def __init__(self):
        self.enabled = bool(cfg.MQTT_HOST)
        self.client = None
        self.next = time.ticks_add(time.ticks_ms(), cfg.TELEMETRY_INTERVAL * 1000)

    def wait(self, now):
        """ms until the next publish is due (-1: telemetry off)."""
        if not self.enabled:
            return -1
        return max(0, time.ticks_diff(self.next, now))

    def due(self, now):
        if not self.enabled or time.ticks_diff(now, self.next) < 0:
            return False
        self.next = time.ticks_add(self.next, cfg.TELEMETRY_INTERVAL * 1000)
        if time.ticks_diff(now, self.next) >= 0:  # fell behind: restart the schedule from now
            self.next = time.ticks_add(now, cfg.TELEMETRY_INTERVAL * 1000)
        return True

    def publish(self, payload):
        try:
            if self.client is None:
                c = MQTTClient("tb_" + cfg.OSID, cfg.MQTT_HOST, cfg.MQTT_PORT, user=cfg.MQTT_TOKEN, password="",
                               keepalive=60)
                c.connect()
                self.client = c
            self.client.publish(TOPIC, payload)
        except Exception as e:
            print("telemetry: %s" % e)
            if self.client is not None:
                try:
                    self.client.sock.close()
                except OSError:
                    pass
            self.client = None
