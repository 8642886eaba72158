# The firmware frozen into a MicroPython image: the modules' bytecode and constants then stay in
# flash and are read in place, and only what they create at run time takes heap (docs/deploy.md "Build your
# own image"). For an ESP32 image, from MicroPython's source (with its submodules):
#   make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/this/repo/boards/manifest.py
# What is frozen, and what stays on the filesystem:
# - every firmware module (the repository's top-level .py files) but cfg.py;
# - boot.py and main.py too: a board runs a frozen boot.py/main.py in place of the filesystem's
#   (main.py compiled at boot would cost ~4.6 KB of heap). Ctrl-C still reaches the REPL, and safe
#   mode still works; to run something else at boot, build an image without them;
# - cfg.py stays a file on the filesystem: the device's settings and secrets, sent once with
#   `./upload.sh --config` (a file beside the frozen modules wins over them on import, so a module
#   uploaded as .py/.mpy later also overrides its frozen twin);
# - the port's own manifest comes first (ESP32: ntptime, which wifi.py uses, asyncio, ...);
#   a unix-port build for measuring leaves it out (port_manifest=False).
import glob
import os

options.defaults(port_manifest=True)  # noqa: F821 (the manifest API is given by makemanifest)
if options.port_manifest:  # noqa: F821
    include("$(PORT_DIR)/boards/manifest.py")  # noqa: F821 (what the stock image freezes)
for path in sorted(glob.glob(os.path.join("..", "*.py"))):
    if os.path.basename(path) != "cfg.py":
        module(os.path.basename(path), base_path="..")  # noqa: F821
