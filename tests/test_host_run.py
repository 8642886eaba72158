"""The firmware as ./host/run.sh shows it to a newcomer (issue #13): the simulated values."""
import time

OSID = "ObjetoESP32"


def test_simulated_temperature_drifts_and_never_repeats_with_the_telemetry_period(make_firmware):
    # It used to repeat every 10 s, the default TELEMETRY_INTERVAL: ThingsBoard showed one number.
    fw = make_firmware()
    target = "/Datastreams/SendData?osid=%s&variableEstado=temperatura&tipove=1" % OSID
    samples = []
    t0 = time.monotonic()
    for i in range(22):  # every 0.5 s, over one telemetry period and a bit
        time.sleep(max(0.0, t0 + i * 0.5 - time.monotonic()))
        samples.append(fw.get(target).json()["value"])
    values = [float(v) for v in samples]
    assert all(35 < v < 45 for v in values), samples
    assert all(abs(a - b) < 0.5 for a, b in zip(values, values[1:])), ("smooth", samples)
    assert len(set(samples)) >= 5, ("alive", samples)
    assert samples[0] != samples[20] or samples[1] != samples[21], ("one period apart", samples)
