# Test double of the ESP32 port's `machine`: Pin, PWM, ADC, RTC, WDT, reset, with the original
# ESP32's rules (which GPIOs exist, which are input-only, which have an ADC, PWM ranges), raising
# what the port raises. Outputs are reported as "double: ..." lines; inputs come from board.json:
# "inputs" {"<gpio>": 0|1}, "adc" {"<gpio>": 0..65535}, "reset_cause" (default PWRON_RESET).
import sys
import time

import _board

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_GPIO = set(range(0, 40)) - {20, 24, 28, 29, 30, 31}
_FLASH = range(6, 12)  # wired to the SPI flash: driving them hangs a real board
_ADC = set(range(32, 40)) | {0, 2, 4, 12, 13, 14, 15, 25, 26, 27}
_levels = {}  # gpio -> output level


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 2
    PULL_DOWN = 1

    def __init__(self, id, mode=-1, pull=-1, *, value=None):
        if id not in _GPIO:
            raise ValueError("invalid pin")
        if mode == Pin.OUT and id in _FLASH:
            raise ValueError("pin %d is wired to the flash" % id)
        if mode == Pin.OUT and id >= 34:
            raise ValueError("pin can only be input")
        self.id = id
        self.mode = mode
        if mode == Pin.OUT:
            _board.log("pin %d OUT" % id)
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            if self.mode == Pin.OUT:
                return _levels.get(self.id, 0)
            return int(_board.get("inputs", {}).get(str(self.id), 0))
        if self.mode != Pin.OUT:
            return  # writing an input only latches the level; nothing is driven
        _levels[self.id] = 1 if v else 0
        _board.log("pin %d = %d" % (self.id, _levels[self.id]))

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


class PWM:
    def __init__(self, dest, *, freq=5000, duty_u16=None):
        if not isinstance(dest, Pin):
            raise TypeError("PWM needs a Pin")
        self.id = dest.id
        self._duty = 0
        self.freq(freq)
        if duty_u16 is not None:
            self.duty_u16(duty_u16)

    def freq(self, f=None):
        if f is None:
            return self._freq
        if not 1 <= f <= 40000000:
            raise ValueError("frequency must be from 1Hz to 40MHz")
        self._freq = f
        _board.log("pwm %d freq %d" % (self.id, f))

    def duty_u16(self, d=None):
        if d is None:
            return self._duty
        if not 0 <= d <= 65535:
            raise ValueError("duty_u16 must be from 0 to 65535")
        self._duty = d
        _board.log("pwm %d duty_u16 %d" % (self.id, d))

    def deinit(self):
        _board.log("pwm %d deinit" % self.id)


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3

    def __init__(self, pin, *, atten=None):
        if not isinstance(pin, Pin) or pin.id not in _ADC:
            raise ValueError("invalid Pin for ADC")
        self.id = pin.id
        self.atten = atten

    def read_u16(self):
        raw = int(_board.get("adc", {}).get(str(self.id), 0))
        if not 0 <= raw <= 65535:
            raise ValueError("board.json: adc reading out of range")
        return raw


class RTC:
    """Runs from 2000-01-01 00:00:00 at boot, as the chip's RTC does, until datetime() sets it."""

    _base = [time.mktime((2000, 1, 1, 0, 0, 0, 0, 0)), time.ticks_ms()]  # seconds when last set, tick then

    def datetime(self, dt=None):
        if dt is None:
            s = RTC._base[0] + time.ticks_diff(time.ticks_ms(), RTC._base[1]) // 1000
            t = time.localtime(s)
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
        if len(dt) != 8 or not (1 <= dt[1] <= 12 and 1 <= dt[2] <= 31 and 0 <= dt[3] <= 6):
            raise ValueError("bad datetime tuple")
        RTC._base[0] = time.mktime((dt[0], dt[1], dt[2], dt[4], dt[5], dt[6], 0, 0))
        RTC._base[1] = time.ticks_ms()
        _board.log("rtc set %04d-%02d-%02d %02d:%02d:%02d" % (dt[0], dt[1], dt[2], dt[4], dt[5], dt[6]))


class WDT:
    """Resets the "board" (ends the process) when a feed comes later than the timeout; a loop
    stuck for good is caught by the tests' own timeouts instead."""

    def __init__(self, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("WDT timeout too short")
        self.timeout = timeout
        self.last = time.ticks_ms()
        self.fed = 0
        _board.log("wdt started, timeout %d ms" % timeout)

    def feed(self):
        now = time.ticks_ms()
        late = time.ticks_diff(now, self.last)
        if late > self.timeout:
            _board.log("wdt starved for %d ms: reset" % late)
            sys.exit(3)
        self.last = now
        self.fed += 1
        if self.fed == 1:
            _board.log("wdt fed")


def reset():
    _board.log("machine.reset()")
    sys.exit(2)


def reset_cause():
    return _board.get("reset_cause", PWRON_RESET)


def unique_id():
    return b"\x24\x0a\xc4\x00\x00\x01"


def freq(hz=None):
    return 160000000


def idle():
    pass
