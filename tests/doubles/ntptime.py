# Test double of micropython-lib's ntptime: no packet leaves the machine. board.json "ntp" holds
# the time the server would tell, [Y, M, D, h, m, s] in UTC; without it the server does not answer.
import time

import _board
import machine

host = "pool.ntp.org"
timeout = 1


def settime():
    t = _board.get("ntp")
    _board.log("ntp query %s, timeout %d s" % (host, timeout))
    if not t:
        raise OSError(110)  # ETIMEDOUT, as the real one after `timeout` seconds
    # As the real settime: the weekday (Monday 0) with the date, into RTC.datetime.
    wd = time.localtime(time.mktime((t[0], t[1], t[2], 12, 0, 0, 0, 0)))[6]
    machine.RTC().datetime((t[0], t[1], t[2], wd, t[3], t[4], t[5], 0))
