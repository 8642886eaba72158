# mqtt_tls.py inside MicroPython: the clock guard and the PEM reading that the unix port's mbedtls
# (built without PEM) needs; the handshakes themselves are tested end to end (tests/test_tls.py).
import binascii

import mqtt_tls


class _Clock:
    """An RTC that reads `year`, as an ESP32's does (2000) until NTP has set it."""

    def __init__(self, year):
        self.year = year

    def gmtime(self):
        return (self.year, 1, 1, 0, 0, 0, 5, 1)


def _error(*args):
    try:
        mqtt_tls.context(*args)
    except ValueError as e:
        return e.args[0]
    raise AssertionError("no error")


def test_an_unset_clock_stops_the_connect_before_any_file_is_read():
    real = mqtt_tls.time
    mqtt_tls.time = _Clock(2000)
    try:
        why = _error("nowhere.pem", "", "")
    finally:
        mqtt_tls.time = real
    assert why == "the clock is not set yet (NTP): certificate dates cannot be checked", why
    assert _error("nowhere.pem", "", "") == "MQTT_CA 'nowhere.pem' cannot be read (ENOENT)"


def _pem(label, der):
    return b"-----BEGIN %s-----\n%s-----END %s-----\n" % (label, binascii.b2a_base64(der), label)


def test_pem_blocks_are_read_as_der_and_parameters_left_out():
    key, params = b"\x30\x03\x02\x01\x07", b"\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07"
    text = b"comment\n" + _pem(b"EC PARAMETERS", params) + _pem(b"EC PRIVATE KEY", key)
    assert mqtt_tls._ders("MQTT_KEY", "device.key", text) == [key]
    two = _pem(b"CERTIFICATE", b"\x30\x01\x01") + _pem(b"CERTIFICATE", b"\x30\x01\x02")
    assert mqtt_tls._ders("MQTT_CA", "ca.pem", two) == [b"\x30\x01\x01", b"\x30\x01\x02"]
    for bad in (b"", b"no PEM here", b"-----BEGIN CERTIFICATE-----\nAAAA\n"):
        try:
            mqtt_tls._ders("MQTT_CA", "ca.pem", bad)
        except ValueError as e:
            assert e.args[0] == "MQTT_CA 'ca.pem': no certificate or key in it (PEM or DER)"
        else:
            raise AssertionError(bad)
