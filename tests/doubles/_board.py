# Shared by the test doubles: the test steers the simulated board through board.json in the
# working directory (the flash folder), read afresh at every call so a running test can change
# it, and the doubles report what the firmware did to the hardware as "double: ..." console lines.
import json


def get(key, default=None):
    try:
        with open("board.json") as f:
            return json.load(f).get(key, default)
    except OSError:
        return default


def log(msg):
    print("double: " + msg)
