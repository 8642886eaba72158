# Small files on flash that a power cut must never leave half-written: each is written to a
# temporary file, then renamed over the old one, so a cut leaves the old content or the new. Used by
# the modules that keep state across boots (actuator and platform values, the provisioned token,
# an update's outcome), and by the switch to an update's files (fwswitch.py). Functions: a class
# would cost about 0.9 KB of heap more.
import json
import os


def write(path, data):
    """Replace the file `path` with `data` (str or bytes); OSError if the flash refuses."""
    tmp = path + ".tmp"
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    replace(tmp, path)


def replace(src, dst):
    """Rename `src` over `dst`: on LittleFS one step, so a power cut leaves the old file or the new."""
    try:
        os.rename(src, dst)
    except OSError:  # FAT does not rename over a file
        os.remove(dst)
        os.rename(src, dst)


def load(path):
    """A JSON file's content, or None when it is missing or not JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
