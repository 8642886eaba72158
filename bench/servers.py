"""The three servers under test, each booted under the same `micropython` with the same cfg.py
and hw.py (a flash folder from host/flash.py): the firmware itself, the microdot reference app and
the raw-socket floor. Each prints "@bench ..." lines from bench/mpy/meter.py on its stdout."""
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from conftest import Broker, Firmware, flash, free_port  # noqa: E402,F401  (one harness for tests and bench)

MPY_DIR = os.path.join(HERE, "mpy")
NAMES = ("firmware", "microdot", "floor")
# Heap of the runs that are not about the heap size: room for all three, even from .py.
HEAP = "256K"
ENTRY = {"firmware": "import boot\nimport fw_bench", "microdot": "import md_app", "floor": "import floor"}
# Measures the meter's own heap so that "ready" reports only the server's.
LAUNCH = "import gc\ngc.collect()\n_b=gc.mem_alloc()\nimport meter\ngc.collect()\nmeter.OWN=gc.mem_alloc()-_b\ndel _b\n"

# The standard configuration: 8 datastreams of every kind the firmware drives on the host.
STREAMS = (
    {"id": "led", "format": "boolean", "type": "actuator", "hw": "pin", "pin": 2, "restore": "off"},
    {"id": "rele", "format": "boolean", "type": "actuator", "hw": "pin", "pin": 4, "restore": "off"},
    {"id": "ventilador", "format": "integer", "type": "actuator", "hw": "pwm", "pin": 5},
    {"id": "puerta", "format": "boolean", "type": "sensor", "hw": "pin", "pin": 12},
    {"id": "luz", "format": "float", "type": "sensor", "hw": "adc", "pin": 34, "scale": 0.01},
    {"id": "reloj", "format": "timestamp", "type": "sensor", "hw": "rtc"},
    {"id": "temperatura", "format": "float", "type": "sensor", "hw": "mcu_temp"},
    {"id": "memoria", "format": "integer", "type": "sensor", "hw": "mem_free"},
)


def microdot_dir():
    """The installed microdot package (bench/requirements.txt), to be copied beside the app."""
    spec = importlib.util.find_spec("microdot")
    if spec is None:
        raise SystemExit("microdot is not installed: run bench/run.sh")
    return os.path.dirname(spec.origin)


def build_extras(dest, mpy, microdot=True):
    """The bench's own micropython modules and (unless told not to) microdot's core, as .py or
    compiled to .mpy."""
    os.makedirs(os.path.join(dest, "microdot"), exist_ok=True)
    files = [(p, os.path.basename(p)) for p in glob.glob(os.path.join(MPY_DIR, "*.py"))]
    if microdot:
        files += [(os.path.join(microdot_dir(), n), os.path.join("microdot", n))
                  for n in ("__init__.py", "microdot.py", "helpers.py")]
    # The peers' telemetry uses umqtt.simple as such apps do (the firmware no longer does).
    os.makedirs(os.path.join(dest, "umqtt"), exist_ok=True)
    files.append((os.path.join(flash.ROOT, "lib", "umqtt", "simple.py"), os.path.join("umqtt", "simple.py")))
    for src, rel in files:
        out = os.path.join(dest, rel)
        if mpy and rel not in ("fw_bench.py", "imports.py"):  # run as scripts
            subprocess.run([flash.MPY_CROSS, "-o", out[:-3] + ".mpy", src], check=True)
        else:
            shutil.copy(src, out)
    return dest


# Where the firmware's modules are when it runs "as uploaded" (mpy=True): "mpy" files on the
# filesystem (upload.sh); "frozen" into the interpreter (a build of boards/manifest.py: only cfg.py
# stays a file); "romfs", in a ROMFS image mounted at /rom and read in place (boot.py and cfg.py stay
# files; main.py too on a board, as a stub that puts /rom first: see upload.sh --romfs). The
# microdot app and the floor always load theirs from files.
LAYOUTS = ("mpy", "frozen", "romfs")
LAYOUT = "mpy"
_ROMFS = {}  # the image, built once per work folder


def romfs_image(flash_dir, work):
    """A ROMFS image of the firmware modules of a flash folder, as `mpremote romfs build` makes it
    for upload.sh --romfs; moves them out of the folder."""
    stage = flash_dir.rstrip("/") + "-romfs"
    os.makedirs(stage)
    for name in os.listdir(flash_dir):
        if name.endswith(".mpy") or name in ("main.py", "lib"):
            shutil.move(os.path.join(flash_dir, name), os.path.join(stage, name))
    if work not in _ROMFS:
        img = os.path.join(work, "firmware.romfs")
        subprocess.run([os.path.join(flash.BIN, "mpremote"), "romfs", "--output", img, "build", stage],
                       check=True, capture_output=True)
        _ROMFS[work] = img
    return _ROMFS[work]


def lay_out(flash_dir, work):
    """Rearrange a firmware flash folder (built as .mpy) for LAYOUT; the launcher's first lines."""
    if LAYOUT == "frozen":
        for name in os.listdir(flash_dir):
            if name != "cfg.py":
                path = os.path.join(flash_dir, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        return ""
    if LAYOUT == "romfs":  # mounted as the board mounts it; /rom first, as the stub main.py puts it
        return ("import sys, vfs, romimg\nvfs.mount(vfs.VfsRom(romimg.load(%r)), '/rom')\n"
                "sys.path.insert(0, '/rom')\nsys.path.append('/rom/lib')\n" % romfs_image(flash_dir, work))
    return ""


def version(name):
    from importlib.metadata import version as v
    return v(name)


class Server(Firmware):
    """One server process: `kind` in NAMES, booted from its own flash folder on a free port, its
    console in a log file (as the tests' Firmware, whose stop() and log() it keeps)."""

    def __init__(self, kind, work, mpy=False, heap=HEAP, env=None, entry=None, **overrides):
        self.kind = kind
        self.entry = entry or ENTRY[kind]
        over = {"HTTP_PORT": free_port(), "STREAMS": STREAMS}
        over.update(overrides)
        tag = "%s-%s-%d" % (kind, "mpy" if mpy else "py", over["HTTP_PORT"])
        super().__init__(os.path.join(work, tag), over, heap=heap, mpy=mpy)
        self.extras = os.path.join(work, "extras-mpy" if mpy else "extras-py")
        self.env = env or {}
        self.ready = None  # (heap in use, heap free) once serving
        self.prelude = lay_out(self.flash, work) if mpy and kind == "firmware" else ""

    def start(self, timeout=15.0):
        """Boot; True once the server reports it serves, False if it died or hung first."""
        argv, env = flash.command(self.flash, self.heap)
        env["MICROPYPATH"] = self.extras + ":" + env["MICROPYPATH"]
        env.update(self.env)
        argv[-1] = self.prelude + LAUNCH + self.entry
        self.log_fh = open(self.logfile, "ab")
        self.proc = subprocess.Popen(argv, cwd=self.flash, env=env, stdout=self.log_fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            got = self.records("ready")
            if got:
                self.ready = (int(got[0][0]), int(got[0][1]))
                return True
            time.sleep(0.02)
        self.stop()
        return False

    @property
    def lines(self):
        return self.log().splitlines()

    def cpu_ns(self):
        """CPU time the process has used so far (the kernel's own accounting)."""
        with open("/proc/%d/schedstat" % self.proc.pid) as f:
            return int(f.read().split()[0])

    def running(self):
        return self.proc.poll() is None

    def broken(self):
        """The console shows a MemoryError or a traceback (caught or not)."""
        return any("MemoryError" in x or "Traceback" in x for x in self.lines)

    def records(self, kind):
        return [x.split()[2:] for x in self.lines if x.startswith("@bench %s " % kind)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def wait_records(server, kind, count, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(server.records(kind)) < count and server.running():
        time.sleep(0.02)
    return server.records(kind)
