# Test double of the ESP32 port's `esp32` module. Its presence makes hw.py take the board path.
# board.json: "chip" ("esp32" default, or "esp32s2"/"esp32s3"/"esp32c3"), "temp_c" (chip temperature).
import _board


def raw_temperature():
    """The original ESP32's sensor, in °F."""
    return int(_board.get("temp_c", 45) * 1.8 + 32)


def mcu_temperature():
    """S2, S3 and C3 only, in °C."""
    return int(_board.get("temp_c", 45))


if _board.get("chip", "esp32") == "esp32":
    del mcu_temperature  # as on the real port: only the newer chips have it
