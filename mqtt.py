# ThingsBoard telemetry over MQTT (placeholder until the telemetry issue lands).
import gc

import cfg


class Telemetry:
    def attach(self, poller):
        pass

    def service(self, now):
        return -1

    def handle(self, obj, ev):
        return False

    def state(self):
        return "off"

    def status(self, c):
        c.add(b'{"enabled":false,"connected":false,"host":null,"port":%d,"topic":"v1/devices/me/telemetry",'
              b'"interval_s":%d,"published":0,"failed":0,"last_publish_ms_ago":null,"last_error":null,'
              b'"queued":0,"mem_free":%d}' % (cfg.MQTT_PORT, cfg.TELEMETRY_INTERVAL, gc.mem_free()))
        c.finish(200)
