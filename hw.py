# Pins and sensors. Every binding is written against the ESP32 `machine` API; on a host without
# that hardware the few machine classes it uses are simulated below, so the binding code itself
# is the same on the board and in the host tests.
import gc
import time

try:
    import esp32  # only the ESP32 port has it (or its test double)
    from machine import ADC, PWM, RTC, Pin

    BOARD = True
except ImportError:
    import random  # the simulated chip temperature

    BOARD = False

# The type check treats BOARD as always true (host/mypy.ini), so it checks the board's calls
# against the ESP32 stubs and never mistakes these stand-ins for the real classes.
if not BOARD:

    class Pin:
        OUT = 1
        IN = 0
        levels = {}  # pin number -> level, shared like the real GPIO matrix

        def __init__(self, n, mode=-1):
            self.n = n

        def value(self, v=None):
            if v is None:
                return Pin.levels.get(self.n, 0)
            Pin.levels[self.n] = 1 if v else 0

    class PWM:
        def __init__(self, pin, freq=1000, duty_u16=0):
            self.d = duty_u16

        def duty_u16(self, d=None):
            if d is None:
                return self.d
            self.d = d

    class ADC:
        ATTN_11DB = 3

        def __init__(self, pin, atten=None):
            self.n = pin.n

        def read_u16(self):
            # A slow triangle wave, different per pin: plausible and visibly alive.
            t = (time.ticks_ms() // 100 + self.n * 997) % 2000
            return (t if t < 1000 else 2000 - t) * 65

    class RTC:
        def datetime(self):
            t = time.localtime()
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)


class Digital:
    """A GPIO: output for an actuator, input for a sensor."""

    def __init__(self, spec, output):
        self.inverted = bool(spec.get("inverted", False))
        self.pin = Pin(spec["pin"], Pin.OUT if output else Pin.IN)

    def read(self):
        return bool(self.pin.value()) != self.inverted

    def write(self, on):
        self.pin.value(1 if bool(on) != self.inverted else 0)


class Pwm:
    """PWM duty 0..1023 (the scale ESP32 users know), written as duty_u16."""

    def __init__(self, spec, output):
        self.pwm = PWM(Pin(spec["pin"]), freq=spec.get("freq", 1000), duty_u16=0)

    def read(self):
        return (self.pwm.duty_u16() * 1023 + 32767) // 65535

    def write(self, duty):
        self.pwm.duty_u16(duty * 65535 // 1023)


class Analog:
    """ADC reading scaled to units: raw 0..65535 * scale + offset."""

    def __init__(self, spec, output):
        self.adc = ADC(Pin(spec["pin"]), atten=ADC.ATTN_11DB)
        self.scale = spec.get("scale", 1)
        self.offset = spec.get("offset", 0)

    def read(self):
        return self.adc.read_u16() * self.scale + self.offset


class Clock:
    """The RTC as "YYYY-MM-DD HH:MM:SS"."""

    def __init__(self, spec, output):
        self.rtc = RTC()

    def read(self):
        d = self.rtc.datetime()
        return "%04d-%02d-%02d %02d:%02d:%02d" % (d[0], d[1], d[2], d[4], d[5], d[6])


class McuTemp:
    """The chip's own temperature in °C."""

    def __init__(self, spec, output):
        self.sim = [4000000, time.ticks_ms()]  # host: the temperature in 1e-5 °C, tick of its last step

    def read(self):
        if not BOARD:
            # A random walk of one step a second (up to ±0.16 °C), pulled back towards 40 °C: it wanders
            # like a chip's temperature, about ±0.5 °C, never repeating with the telemetry period.
            sim = self.sim
            steps = time.ticks_diff(time.ticks_ms(), sim[1]) // 1000
            if steps > 0:
                sim[1] = time.ticks_add(sim[1], steps * 1000)
                for _ in range(min(steps, 60)):
                    sim[0] += random.getrandbits(15) - 16384 + (4000000 - sim[0]) // 64
            return sim[0] / 100000
        read = getattr(esp32, "mcu_temperature", None)  # S2, S3, C3 (not in the ESP32's stubs)
        if read is not None:
            return float(read())
        return (esp32.raw_temperature() - 32) / 1.8  # the original ESP32 reports °F


class MemFree:
    def __init__(self, spec, output):
        pass

    def read(self):
        return gc.mem_free()


def _function(ref):
    """The function a "module:function" reference names."""
    mod, _, name = ref.partition(":")
    return getattr(__import__(mod), name)


class Custom:
    """The user's own read/write functions, named in cfg as "module:function"."""

    def __init__(self, spec, output):
        self.read = _function(spec["read"])
        if "write" in spec:
            self.write = _function(spec["write"])


KINDS = {
    "pin": Digital,
    "pwm": Pwm,
    "adc": Analog,
    "rtc": Clock,
    "mcu_temp": McuTemp,
    "mem_free": MemFree,
    "custom": Custom,
}


def make(spec, output):
    """The device object for a stream spec: read() and, for actuators, write(value)."""
    return KINDS[spec["hw"]](spec, output)
