"""./host/run.sh as a newcomer meets it (issue #13): a port already taken, --bind, Ctrl-C, two runs
in one checkout; and the simulated values it shows. The real script, its real output and exit code."""
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import ROOT, Firmware, free_port, wait_port

RUN = os.path.join(ROOT, "host", "run.sh")
OSID = "ObjetoESP32"


class Run:
    """./host/run.sh ARGS in its own session (as a terminal runs it), its console in a file."""

    def __init__(self, tmp_path, *args):
        self.logfile = str(tmp_path / ("run-%d.log" % time.monotonic_ns()))
        with open(self.logfile, "wb") as out:
            self.proc = subprocess.Popen([RUN, "--mqtt", "", *args], stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait(self, timeout=30):
        return self.proc.wait(timeout)

    def ctrl_c(self):
        """What Ctrl-C in the terminal does: SIGINT to the foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def log(self):
        with open(self.logfile, "rb") as f:
            return f.read().decode("utf-8", "replace")


@pytest.fixture
def runs(tmp_path):
    started = []

    def start(*args):
        r = Run(tmp_path, *args)
        started.append(r)
        return r

    start.started = started
    yield start
    for r in started:
        r.stop()


def health(port, host="127.0.0.1"):
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET /Datastreams/health HTTP/1.0\r\n\r\n")
        return s.recv(4096)


def listening_on(port):
    """The local addresses of the IPv4 sockets listening on `port`, from the kernel's own table."""
    found = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, _, p = local.partition(":")
            if state == "0A" and int(p, 16) == port:  # 0A: LISTEN
                found.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


@pytest.mark.quick
def test_port_taken_is_one_clear_line_and_a_nonzero_exit(runs, tmp_path):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        r = runs("--port", str(port), "--flash", str(tmp_path / "flash"))
        code = r.wait()
    assert code != 0
    assert r.log() == ("run.sh: port %d is in use (the firmware running already?): stop that, or pick another port"
                       " with --port N\n" % port), "one line, no traceback, no 'guard: fatal error, rebooting'"
    assert not os.path.exists(tmp_path / "flash"), "found before the flash folder is built"


@pytest.mark.quick
def test_ctrl_c_ends_the_run_without_a_traceback(runs, tmp_path):
    port = free_port()
    r = runs("--port", str(port), "--flash", str(tmp_path / "flash"))
    wait_port(port, r.proc, timeout=30)
    assert b"200 OK" in health(port)
    r.ctrl_c()
    assert r.wait(10) == 0, r.log()
    log = r.log()
    assert log.rstrip().endswith("datastream: stopped (Ctrl-C)") and "(Ctrl-C stops it)" in log, log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log


def test_bind_chooses_who_can_reach_the_simulation(runs, tmp_path):
    local, everywhere = free_port(), free_port()
    r1 = runs("--port", str(local), "--flash", str(tmp_path / "a"))
    r2 = runs("--port", str(everywhere), "--bind", "0.0.0.0", "--flash", str(tmp_path / "b"))
    wait_port(local, r1.proc, timeout=30)
    wait_port(everywhere, r2.proc, timeout=30)
    assert listening_on(local) == ["127.0.0.1"], "by default only this machine reaches it"
    assert listening_on(everywhere) == ["0.0.0.0"], "--bind 0.0.0.0: every interface (a container's, the LAN's)"
    assert b"200 OK" in health(local) and b"200 OK" in health(everywhere)
    assert "firmware on http://127.0.0.1:%d/ and every other address of this machine" % everywhere in r2.log()
    for bad, why in (("192.0.2.1", "Cannot assign requested address"), ("my-host", "not an IPv4 address")):
        r = runs("--port", str(free_port()), "--bind", bad, "--flash", str(tmp_path / "c"))
        assert r.wait() != 0
        assert r.log().strip() == ("run.sh: cannot listen on %s (%s): --bind takes an IPv4 address of this machine,"
                                   " such as 127.0.0.1 or 0.0.0.0" % (bad, why)), r.log()
        assert not os.path.exists(tmp_path / "c"), "refused before anything is built"


def test_two_runs_in_one_checkout_keep_their_flash_folders(runs):
    p1, p2 = free_port(), free_port()
    folders = [os.path.join(ROOT, ".flash", str(p)) for p in (p1, p2)]
    try:
        first = runs("--port", str(p1))
        wait_port(p1, first.proc, timeout=30)
        second = runs("--port", str(p2))  # the default folder is per port: .flash/<port>
        wait_port(p2, second.proc, timeout=30)
        assert "flash folder %s," % folders[0] in first.log() and "flash folder %s," % folders[1] in second.log()
        cfg = os.path.join(folders[0], "cfg.py")
        before = os.stat(cfg).st_mtime_ns
        again = runs("--port", str(p1))  # the same port, so the same folder: refused, the folder left alone
        assert again.wait() != 0
        assert again.log().strip() == ("run.sh: %s is in use by another run (pid %d): stop it, or start this one with"
                                       " another --port (or --flash DIR)" % (folders[0], first.proc.pid)), again.log()
        assert os.stat(cfg).st_mtime_ns == before
        assert b"200 OK" in health(p1) and b"200 OK" in health(p2)
        first.ctrl_c()
        assert first.wait(10) == 0
        third = runs("--port", str(p1))  # the first run is over: its folder may be used again
        wait_port(p1, third.proc, timeout=30)
        assert b"200 OK" in health(p1)
    finally:
        for r in runs.started:
            r.stop()
        for d in folders:
            shutil.rmtree(d, ignore_errors=True)
            if os.path.exists(d + ".lock"):
                os.remove(d + ".lock")


def test_simulated_temperature_drifts_and_never_repeats_with_the_telemetry_period(make_firmware):
    # It used to repeat every 10 s, the default TELEMETRY_INTERVAL: ThingsBoard showed one number.
    fw = make_firmware()
    target = "/Datastreams/SendData?osid=%s&variableEstado=temperatura&tipove=1" % OSID
    samples = []
    t0 = time.monotonic()
    for i in range(22):  # every 0.5 s, over one telemetry period and a bit
        time.sleep(max(0.0, t0 + i * 0.5 - time.monotonic()))
        samples.append(fw.get(target).json()["value"])
    values = [float(v) for v in samples]
    assert all(35 < v < 45 for v in values), samples
    assert all(abs(a - b) < 0.5 for a, b in zip(values, values[1:])), ("smooth", samples)
    assert len(set(samples)) >= 5, ("alive", samples)
    assert samples[0] != samples[20] or samples[1] != samples[21], ("one period apart", samples)


# main.py of a firmware that resets itself at its first boot and crashes at its second, then serves
_RESETS_THEN_CRASHES = """with open("boots", "a") as f:
    f.write("x")
n = len(open("boots").read())
if n <= 2:
    import sys
    sys.exit((3, 1)[n - 1])
import firmware_main
"""


def gone(pid):
    """Whether no process `pid` is left (a zombie still counts as there: nobody waited for it)."""
    return not os.path.exists("/proc/%d" % pid)


def test_a_reset_or_a_crash_boots_the_firmware_again_from_its_flash_as_a_board_does(tmp_path):
    fw = Firmware(str(tmp_path / "flash"), {}, supervised=True)
    os.rename(os.path.join(fw.flash, "main.py"), os.path.join(fw.flash, "firmware_main.py"))
    with open(os.path.join(fw.flash, "main.py"), "w") as f:
        f.write(_RESETS_THEN_CRASHES)
    try:
        fw.start()  # waits until it serves: the third boot
        fw.alive()
        with open(os.path.join(fw.flash, "boots")) as f:
            assert f.read() == "xxx"
        log = fw.log()
        assert log.count("datastream firmware: boot") == 3, log
        reset = "run.sh: the firmware reset itself: starting it again from %s, as a board resets\n" % fw.flash
        crash = "run.sh: the firmware exited with code 1: starting it again from %s, as a board resets\n" % fw.flash
        assert 0 < log.index(reset) < log.index(crash), log
        child = fw.pid()
        assert child != fw.proc.pid
        fw.proc.terminate()  # as the tests stop it: the supervisor stops its firmware, quietly
        assert fw.proc.wait(10) == 0
        assert gone(child), "no firmware left behind"
        assert fw.log() == log, "nothing more on the console"
        assert not os.path.exists(fw.flash + ".pid")

        fw.start()  # a fourth boot, serving at once
        child = fw.pid()
        os.kill(child, signal.SIGKILL)  # killed by someone: a stop, not a reset
        assert fw.proc.wait(10) == 128 + signal.SIGKILL

        fw.start()
        child = fw.pid()
        fw.kill()  # a power cut: the supervisor and the firmware at once
        deadline = time.monotonic() + 5
        while not gone(child):  # init reaps the orphan
            assert time.monotonic() < deadline, "the firmware outlived its supervisor"
            time.sleep(0.05)
        with open(os.path.join(fw.flash, "boots")) as f:
            assert f.read() == "xxxxx", "a power cut boots nothing"
    finally:
        fw.stop()
