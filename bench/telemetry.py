"""Telemetry figures: the period's jitter seen by a paho-mqtt subscriber while HTTP load runs, and
the longest HTTP stall while the broker is away: killed (connections refused), or killed and
restarted frozen with SIGSTOP (the kernel accepts the reconnection, CONNACK never comes); and while
a broker misbehaves on purpose (the fake brokers of tests/test_broker_faults.py)."""
import json
import os
import shutil
import signal
import threading
import time

import paho.mqtt.client as paho

import load
from servers import NAMES, Broker  # puts tests/ on the path: one harness for tests and bench
import test_broker_faults as faults  # noqa: E402

TOPIC = "v1/devices/me/telemetry"


def start_broker(work):
    if not (shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto")):
        return None
    d = os.path.join(work, "broker")
    os.makedirs(d, exist_ok=True)
    return Broker(d).start()


class Subscriber:
    """Arrival times of the periodic telemetry messages (those carrying "_mem_free")."""

    def __init__(self, port):
        self.arrivals = []
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self.c.on_message = self._message
        self.c.on_connect = lambda c, *a: c.subscribe(TOPIC)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _message(self, client, userdata, msg):
        try:
            periodic = "_mem_free" in json.loads(msg.payload)
        except ValueError:
            periodic = False
        if periodic:
            self.arrivals.append(time.monotonic())

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else None


def jitter(bench, kind, seconds):
    sub = Subscriber(bench.broker.port)
    try:
        with bench.server(kind) as s:
            if not s.start():
                return
            time.sleep(1.5)  # connected, first period over
            sub.arrivals.clear()
            r = load.timed(s.port, seconds, load.MIX, 4)
            gaps = [abs((b - a) * 1000 - 1000) for a, b in zip(sub.arrivals, sub.arrivals[1:])]
            f = bench.fig[kind]
            f["tele_n"] = len(sub.arrivals)
            if gaps:
                f["jit_p50"], f["jit_p99"], f["jit_max"] = (percentile(gaps, 50), percentile(gaps, 99), max(gaps))
            if r.failed:
                bench.notes.append("%s: %d requests failed during the jitter run (%s)" % (kind, r.failed, r.errors[0]))
    finally:
        sub.close()


def stall(bench, kind, seconds, how):
    """Health requests at concurrency 1; the broker goes away a third of the way in."""
    b = bench.broker
    with bench.server(kind) as s:
        if not s.start():
            return
        time.sleep(1.5)
        t_down = []

        def outage():
            time.sleep(seconds / 3)
            t_down.append(time.monotonic())
            b.stop()
            if how == "frozen":
                b.start()
                b.proc.send_signal(signal.SIGSTOP)

        t = threading.Thread(target=outage)
        t.start()
        r = load.timed(s.port, seconds, ["health"], 1)
        t.join()
        if how == "frozen":
            b.proc.send_signal(signal.SIGCONT)
        else:
            b.start()
        # Failed requests count with the time they waited (the load generator's timeout).
        during = [lat for start, lat in r.stamps if t_down and start + lat >= t_down[0]]
        bench.fig[kind]["stall_" + how] = max(during) * 1000 if during else None
        if r.failed:
            bench.fig[kind]["stall_%s_failed" % how] = r.failed
            bench.notes.append("%s, broker %s: %d health requests failed (%s)" % (kind, how, r.failed, r.errors[0]))


# Each one from boot: the server's first connect meets the fake broker.
MISBEHAVING = (faults.trickling_publish, faults.suback_never_link_alive, faults.connack_trickled,
               faults.garbage_after_suback)


def stall_fake(bench, kind, seconds, behave):
    """The longest health answer (concurrency 1) while the server's broker behaves so."""
    fake = faults.FakeBroker(behave)
    real, bench.broker = bench.broker, fake  # bench.server() points the server at bench.broker
    try:
        with bench.server(kind) as s:
            if not s.start():
                bench.notes.append("%s did not start against %s" % (kind, behave.__name__))
                return
            r = load.timed(s.port, seconds, ["health"], 1)
            key = "stall_" + behave.__name__
            lat = [lat for _, lat in r.stamps]
            bench.fig[kind][key] = max(lat) * 1000 if lat else None
            if r.failed:
                bench.fig[kind][key + "_failed"] = r.failed
    finally:
        bench.broker = real
        fake.close()


def measure(bench):
    if bench.broker is None:
        return
    seconds = 4 if bench.quick else 20
    for kind in NAMES:
        jitter(bench, kind, seconds)
        for how in ("killed", "frozen"):
            stall(bench, kind, 3 if bench.quick else 9, how)
        for behave in MISBEHAVING:
            stall_fake(bench, kind, 3 if bench.quick else 8, behave)
