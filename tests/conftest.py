"""Test harness: the firmware runs under the real `micropython` unix port from a flash folder laid
out as upload.sh lays out a board, on a free loopback port; a real mosquitto plays the broker."""
import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The firmware's http.py must not shadow CPython's http package (paho imports it).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != ROOT]
sys.path.insert(0, os.path.join(ROOT, "host"))
import flash  # noqa: E402

collect_ignore = ["mpy"]  # those run inside MicroPython, through test_units_mpy.py


def pytest_configure(config):
    config.addinivalue_line("markers", "quick: ./host/test.sh --quick, a first check in under a minute: each "
                            "feature once, end to end")

HEAP = os.environ.get("TEST_HEAP", "128K")
# On the ESP32 path the port's own modules (machine, network, ntptime, esp32) are the Python doubles
# of tests/doubles: about 13 KB of heap (64-bit) that a board keeps in ROM. A firmware on that path
# gets this much more than HEAP, so that it serves in the room a board's would.
DOUBLES_HEAP_K = 16
# Modules run precompiled to .mpy, as upload.sh puts them on a board; TEST_MPY=0 runs the sources.
MPY = os.environ.get("TEST_MPY", "1") == "1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc=None, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("nothing listens on port %d" % port)


class Response:
    def __init__(self, raw):
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.status = int(lines[0].split()[1]) if len(lines[0].split()) > 1 else 0
        self.headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    @property
    def text(self):
        return self.body.decode("utf-8")


class Firmware:
    """One firmware process booted from its own flash folder."""

    def __init__(self, flash_dir, overrides, heap=None, mpy=MPY, extra_files=None, esp32=False, supervised=False):
        if heap is None:
            heap = "%dK" % (int(HEAP.rstrip("K")) + DOUBLES_HEAP_K) if esp32 else HEAP
        self.flash = flash_dir
        self.esp32 = esp32  # boot on the ESP32 code path, through tests/doubles
        # supervised: run under host/flash.py --supervise, as run.sh does, so a reset on purpose or a
        # crash boots the firmware again from the same flash folder, as on a board
        self.supervised = supervised
        self.port = overrides.setdefault("HTTP_PORT", free_port())
        overrides.setdefault("HTTP_BIND", "127.0.0.1")
        self.overrides = overrides
        self.heap = heap
        self.mpy = mpy
        flash.build(flash_dir, overrides, mpy=mpy)
        for name, text in (extra_files or {}).items():
            with open(os.path.join(flash_dir, name), "w") as f:
                f.write(text)
        self.proc = None
        self.logfile = os.path.join(os.path.dirname(flash_dir), "console-%d.log" % self.port)

    def start(self):
        self.log_fh = open(self.logfile, "ab")
        if self.supervised:  # in a session of its own, so that kill() takes the firmware with it
            argv = [sys.executable, os.path.join(ROOT, "host", "flash.py"), "--supervise", self.flash,
                    "--heap", self.heap]
            self.proc = subprocess.Popen(argv + ["--esp32"] * self.esp32, stdout=self.log_fh, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        else:
            argv, env = flash.command(self.flash, self.heap, self.esp32)
            self.proc = subprocess.Popen(argv, cwd=self.flash, env=env, stdout=self.log_fh, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc)
        return self

    def stop(self):
        """Stop the firmware (a supervisor stops its firmware first: it has 5 s to end)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10 if self.supervised else 5)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc:
            self.proc.wait()
            self.log_fh.close()

    def kill(self):
        """A power cut: SIGKILL to the firmware and, supervised, to its supervisor, at once (one
        signal to the supervisor's process group), so nothing boots it again."""
        if self.supervised:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # both gone already
        else:
            self.proc.kill()
        self.proc.wait()
        self.log_fh.close()

    def pid(self):
        """The pid of the running firmware: the supervisor's child, or the process itself."""
        if not self.supervised:
            return self.proc.pid
        with open(self.flash.rstrip("/") + ".pid") as f:
            return int(f.read())

    def log(self):
        with open(self.logfile, "rb") as f:
            return f.read().decode("utf-8", "replace")

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def raw(self, data, timeout=5.0, shut=False):
        """Send bytes as they are; return everything the device answers until it closes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                try:
                    b = s.recv(4096)
                except ConnectionResetError:
                    break
                if not b:
                    break
                chunks.append(b)
        return b"".join(chunks)

    def request(self, method, target, headers=b"", timeout=5.0):
        data = b"%s %s HTTP/1.0\r\nHost: device\r\n%s\r\n" % (method.encode(), target.encode(), headers)
        return Response(self.raw(data, timeout))

    def get(self, target, **kw):
        return self.request("GET", target, **kw)

    def post(self, target, **kw):
        return self.request("POST", target, **kw)

    def alive(self):
        """The device still answers health correctly."""
        r = self.get("/Datastreams/health")
        assert r.status == 200 and r.json()["status"] == "healthy", r.raw
        return True


@pytest.fixture
def make_firmware(tmp_path):
    """Factory: make_firmware(**cfg_overrides) boots a firmware; all are stopped at teardown.
    supervised=True: a reset or a crash boots it again (Firmware)."""
    started = []

    def make(heap=None, mpy=MPY, extra_files=None, esp32=False, supervised=False, **overrides):
        d = tmp_path / ("flash%d" % len(started))
        fw = Firmware(str(d), overrides, heap=heap, mpy=mpy, extra_files=extra_files, esp32=esp32,
                      supervised=supervised)
        started.append(fw)
        return fw.start()

    yield make
    for fw in started:
        fw.stop()
        log = fw.log()
        if "Traceback" in log:
            print("---- console of firmware on port %d ----\n%s" % (fw.port, log))


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """A firmware with the default cfg (no broker), shared by a module's read-mostly tests."""
    d = tmp_path_factory.mktemp("device")
    fw = Firmware(str(d / "flash"), {}).start()
    yield fw
    fw.stop()


class Broker:
    """A real mosquitto on a free loopback port, with its own config; stop/start keep the port."""

    def __init__(self, workdir, port=None, persistent=False):
        """persistent: sessions and queued QoS 0 messages survive a restart, so a subscriber with a
        persistent session misses nothing published while it reconnects."""
        self.port = port or free_port()
        self.conf = os.path.join(workdir, "mosquitto.conf")
        self.logfile = os.path.join(workdir, "mosquitto.log")
        with open(self.conf, "w") as f:
            # Started as root, mosquitto would drop to its own user and could not write here.
            f.write("listener %d 127.0.0.1\nallow_anonymous true\nuser %s\n"
                    "log_dest file %s\nlog_type all\nconnection_messages true\n" % (
                        self.port, getpass.getuser(), self.logfile))
            if persistent:
                f.write("persistence true\npersistence_location %s/\nqueue_qos0_messages true\n" % workdir)
            else:
                f.write("persistence false\n")
        self.proc = None

    def start(self):
        exe = "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else "mosquitto"
        self.proc = subprocess.Popen([exe, "-c", self.conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)

    def log(self):
        try:
            with open(self.logfile) as f:
                return f.read()
        except FileNotFoundError:
            return ""


@pytest.fixture
def broker(tmp_path):
    b = Broker(str(tmp_path)).start()
    yield b
    b.stop()


def curl(*args, timeout=10):
    """Run the real curl; return (exit code, stdout as str)."""
    p = subprocess.run(["curl", "-sS", "--max-time", str(timeout)] + list(args), capture_output=True, timeout=timeout + 5)
    return p.returncode, p.stdout.decode("utf-8", "replace")
