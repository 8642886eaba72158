#!/usr/bin/env python3
"""A virtual MicroPython board for testing deploy tools without hardware.

It opens a pseudo-terminal and speaks the REPL protocol of a MicroPython board on it: the friendly
REPL (echo, continuation lines, paste mode with Ctrl-E), Ctrl-C, Ctrl-D soft reset that re-runs
boot.py and main.py, the raw REPL (Ctrl-A) and raw-paste mode (Ctrl-E A Ctrl-A) with its flow
control. The code itself runs in a real, persistent `micropython` unix-port process (the "agent")
whose `/` is a folder standing for the board's flash, so ampy, mpremote or picocom work on the pty
unmodified, and what they put on the board is what the firmware boots from. Left out: the friendly
REPL's auto-indent, history and tab completion, and input() (the agent's stdin carries commands).

    python host/vboard.py FLASH_DIR [--heap 128K] [--log FILE]

prints the pty's path (/dev/pts/N) on its first line and serves until SIGTERM or SIGINT.

Division of work: this CPython side owns the protocol and the board's state (which REPL, what is
running); the agent only executes what it is given and frames each result on its stdout with MARK,
so user output and results share one ordered stream. Ctrl-C reaches running code as SIGINT, which
the unix port turns into KeyboardInterrupt; the agent is written so that a late one (arriving after
the code finished) is absorbed and never loses a command or a result.
"""
import argparse
import codeop
import ctypes
import os
import pty
import selectors
import signal
import subprocess
import shutil
import sys
import tempfile
import time
import tty
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICROPYTHON = os.path.join(ROOT, ".venv", "bin", "micropython")

MARK = b"\x00\x1bvb:"  # agent -> board: MARK + status + b"<len>:" + text
WINDOW = 1024  # raw-paste flow-control window (an ESP32 offers 128; larger is faster here)
OUT_MAX = 1 << 18  # console bytes kept while nobody reads the port; older ones are lost, as on a UART
SIGINT_GAP = 0.1  # the unix port exits on a 2nd SIGINT while the 1st is pending: space them
BANNER = (b"MicroPython (unix port) on virtual board; vboard with flash folder\r\n"
          b"Type \"help()\" for more information.\r\n")

# Runs inside micropython. Statuses: R ready, o ok, e exception (text = traceback), x SystemExit
# (the board soft-resets), r machine.reset() (the board restarts the process).
AGENT = r'''
import io
import os
import sys
import time

MARK = %r
inp = sys.stdin.buffer
out = sys.stdout.buffer


class Flash:
    """The flash folder as the whole filesystem: every path is resolved lexically against our own
    cwd and clamped at the root, so '..' cannot leave the folder."""

    def __init__(self, root):
        self.v = os.VfsPosix(root)
        self.cwd = "/"

    def _p(self, p):
        parts = []
        for c in (p if p.startswith("/") else self.cwd + "/" + p).split("/"):
            if c == "..":
                if parts:
                    parts.pop()
            elif c and c != ".":
                parts.append(c)
        return "/" + "/".join(parts)

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def chdir(self, p):
        p = self._p(p)
        if not self.v.stat(p)[0] & 0x4000:
            raise OSError(20)
        self.cwd = p

    def getcwd(self):
        return self.cwd

    def open(self, p, mode):
        return self.v.open(self._p(p), mode)

    def ilistdir(self, p):
        p = self._p(p)
        for e in self.v.ilistdir(p):  # with sizes, as the board's filesystems give them
            yield e[0], e[1], 0, 0 if e[1] & 0x4000 else self.v.stat(p + "/" + e[0])[6]

    def stat(self, p):
        return self.v.stat(self._p(p))

    def statvfs(self, p):
        return self.v.statvfs(self._p(p))

    def mkdir(self, p):
        self.v.mkdir(self._p(p))

    def remove(self, p):
        self.v.remove(self._p(p))

    def rmdir(self, p):
        self.v.rmdir(self._p(p))

    def rename(self, a, b):
        self.v.rename(self._p(a), self._p(b))


def send(status, text=b""):
    msg = MARK + status + b"%%d:" %% len(text) + text
    sent = False
    while not sent:
        try:
            out.write(msg)
            sent = True
        except KeyboardInterrupt:  # a late Ctrl-C: the result must still go out, once
            pass


def command():
    head = None
    while True:
        try:
            if head is None:
                head = inp.readline()
                if not head:
                    sys.exit()
            kind, n = head.split()
            n = int(n)
            src = b""
            while len(src) < n:
                src += inp.read(n - len(src))
            return kind, src
        except KeyboardInterrupt:  # meant for code that has already finished
            pass


def trace(e):
    s = io.StringIO()
    sys.print_exception(e, s)
    # the agent's own frames (its loop, the Flash class) mean nothing to the user
    return "\n".join(line for line in s.getvalue().split("\n") if __file__ not in line).encode()


def run(kind, src, g):
    try:
        if kind == b"f":  # a file if it exists, as the board runs boot.py and main.py
            name = src.decode()
            try:
                if os.stat(name)[0] & 0x4000:
                    return b"o", b""
            except OSError:
                return b"o", b""
            with open(name) as f:
                code = f.read()
            code = compile(code, name, "exec")  # the source need not stay in the heap
            g["__file__"] = name
            exec(code, g)
        else:
            exec(compile(src.decode(), "<stdin>", "single" if kind == b"s" else "exec"), g)
        return b"o", b""
    except SystemExit:
        return b"x", b""
    except BaseException as e:
        return b"e", trace(e)


def reset():
    send(b"r")
    while True:  # the board kills this process and starts a fresh one
        time.sleep(1)


class Machine:
    pass


def setup():
    os.umount("/")
    os.mount(Flash(os.getenv("VBOARD_FLASH")), "/")
    os.chdir("/")
    sys.path.clear()
    sys.path.extend(["", "/lib", ".frozen"])
    import machine
    m = Machine()
    for k in dir(machine):
        if not k.startswith("__"):
            setattr(m, k, getattr(machine, k))
    m.reset = reset  # the unix port has none
    sys.modules["machine"] = m


def serve():
    g = {"__name__": "__main__"}
    send(b"R")
    while True:
        kind, src = command()
        res = None
        while res is None:
            try:
                res = run(kind, src, g)
            except KeyboardInterrupt:  # struck before run() had set up its own handler
                res = b"e", b"KeyboardInterrupt: \n"
        send(*res)


setup()
serve()
''' % MARK


def _die_with_parent():
    """In the agent before exec: be killed when the board goes, so no firmware outlives it."""
    os.setsid()
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _complete(src):
    """Whether a friendly-REPL input is complete, with CPython's rules (the same as MicroPython's
    for what people type: compound statements end with an empty line)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return codeop.compile_command(src, "<stdin>", "single") is not None
        except (SyntaxError, ValueError, OverflowError):
            return True  # let MicroPython report it


class Board:
    def __init__(self, flash, heap="128K", log=None):
        self.flash = os.path.abspath(flash)
        self.heap = heap
        # A file rather than -c: the unix port keeps a -c string in the heap for good (~5 KB).
        self.tmp = tempfile.mkdtemp(prefix="vboard-")
        self.agent = os.path.join(self.tmp, "agent.py")
        with open(self.agent, "w") as f:
            f.write(AGENT)
        self.log = open(log, "ab", buffering=0) if log else None
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)  # at once: a client opening it must not meet echo or line editing
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.master, selectors.EVENT_READ, self._on_port)
        self.out = bytearray()
        self.proc = None
        self.started = 0.0
        self.mode = "friendly"
        self.paste = None  # raw-paste: bytes left in the window; friendly paste: True
        self.line = bytearray()
        self.cont = 0  # friendly REPL: where the current continuation line starts in self.line
        self.esc = False
        self.pending = bytearray()  # typed while code runs: the REPL reads it afterwards
        self.busy = None  # what to do with the running command's result
        self.ready = False
        self.deferred_int = False
        self.last_int = 0.0
        self.abuf = bytearray()

    # --- console ------------------------------------------------------------------------------

    def console(self, data):
        if self.log:
            self.log.write(data)
        self.out += data
        if len(self.out) > OUT_MAX:
            del self.out[: len(self.out) - OUT_MAX]
        self._flush()

    def cooked(self, data):
        """Output of Python code: the board's stdout turns \\n into \\r\\n."""
        self.console(bytes(data).replace(b"\n", b"\r\n"))

    def _flush(self):
        try:
            n = os.write(self.master, self.out) if self.out else 0
        except BlockingIOError:
            n = 0
        del self.out[:n]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
        if self.sel.get_key(self.master).events != events:
            self.sel.modify(self.master, events, self._on_port)

    def _on_port(self, mask):
        if mask & selectors.EVENT_WRITE:
            self._flush()
        if mask & selectors.EVENT_READ:
            try:
                data = os.read(self.master, 4096)
            except (BlockingIOError, OSError):
                return
            for b in data:
                if b == 3 and self.busy is not None:
                    self._interrupt()  # like the UART's interrupt char: never reaches the buffer
                else:
                    self.pending.append(b)
            self._pump()

    def _pump(self):
        while self.pending and self.busy is None:
            b = self.pending[0]
            del self.pending[0]
            self._feed(b)

    # --- the micropython process ----------------------------------------------------------------

    def _start(self):
        self._stop()
        env = dict(os.environ, VBOARD_FLASH=self.flash)
        env.pop("MICROPYPATH", None)
        self.proc = subprocess.Popen(
            [MICROPYTHON, "-X", "heapsize=" + self.heap, self.agent], cwd=self.flash, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.sel.register(self.proc.stdout, selectors.EVENT_READ, self._on_agent)
        self.started = time.monotonic()
        self.ready = False
        self.deferred_int = False
        self.busy = None
        self.abuf.clear()

    def _stop(self):
        if self.proc is None:
            return
        self.sel.unregister(self.proc.stdout)
        self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.proc = None
        self.ready = False

    def _exec(self, kind, payload, then):
        self.busy = then
        self.last_int = 0.0  # the gap guards one command's interrupts; a new command starts afresh
        data = b"%s %d\n" % (kind, len(payload)) + bytes(payload)
        try:
            while data:
                data = data[os.write(self.proc.stdin.fileno(), data):]
        except OSError:
            pass  # the agent died: _on_agent sees its end

    def _interrupt(self):
        if not self.ready:
            self.deferred_int = True
            return
        now = time.monotonic()
        if now - self.last_int >= SIGINT_GAP:
            self.last_int = now
            self.proc.send_signal(signal.SIGINT)

    def _on_agent(self, mask):
        try:
            data = os.read(self.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        if not data:
            return self._crashed()
        self.abuf += data
        while True:
            i = self.abuf.find(MARK)
            if i < 0:
                keep = next((k for k in range(len(MARK) - 1, 0, -1) if self.abuf.endswith(MARK[:k])), 0)
                self.cooked(self.abuf[: len(self.abuf) - keep])
                del self.abuf[: len(self.abuf) - keep]
                return
            self.cooked(self.abuf[:i])
            del self.abuf[:i]
            head = len(MARK) + 1
            colon = self.abuf.find(b":", head)
            if colon < 0:
                return
            end = colon + 1 + int(self.abuf[head:colon])
            if len(self.abuf) < end:
                return
            status, text = bytes(self.abuf[head - 1: head]), bytes(self.abuf[colon + 1: end])
            del self.abuf[:end]
            self._result(status, text)
            if self.proc is None:
                return

    def _result(self, status, text):
        if status == b"R":
            self.ready = True
            if self.deferred_int:
                self.deferred_int = False
                self._interrupt()
            return
        if status == b"r":
            return self.hard_reset()
        then, self.busy = self.busy, None
        if then is not None:
            then(status, text)
        self._pump()

    def _crashed(self):
        code = self.proc.wait()
        self.console(b"\r\n[vboard: micropython exited with code %d]\r\n" % code)
        if time.monotonic() - self.started < 2:
            self.console(b"[vboard: halted]\r\n")
            self._stop()
            self.busy = lambda status, text: None  # nothing answers any more, like a dead board
            return
        self.hard_reset()

    # --- resets and the boot sequence -----------------------------------------------------------

    def hard_reset(self):
        self.mode = "friendly"
        self.console(b"\r\nrst:0xc (SW_CPU_RESET), virtual board %s\r\n" % self.flash.encode())
        self._boot()

    def soft_reset(self):
        self.console(b"MPY: soft reboot\r\n")
        self._boot()

    def _boot(self):
        self._start()
        self.line.clear()
        self.cont = 0
        self.paste = None
        self._exec(b"f", b"boot.py", self._after_boot)

    def _after_boot(self, status, text):
        self.cooked(text)
        if status == b"x":
            return self.soft_reset()
        if self.mode == "friendly":  # as on the ESP32: main.py only when not in the raw REPL
            self._exec(b"f", b"main.py", self._after_main)
        else:
            self._enter_raw()

    def _after_main(self, status, text):
        self.cooked(text)
        if status == b"x":
            return self.soft_reset()
        self._enter_friendly()

    def _enter_friendly(self, before=b""):
        self.mode = "friendly"
        self.line.clear()
        self.cont = 0
        self.console(before + BANNER + b">>> ")

    def _enter_raw(self):
        self.mode = "raw"
        self.line.clear()
        self.console(b"raw REPL; CTRL-B to exit\r\n>")

    # --- REPL input -----------------------------------------------------------------------------

    def _feed(self, c):
        if self.mode == "raw":
            self._feed_raw(c)
        elif self.paste:
            self._feed_paste(c)
        else:
            self._feed_friendly(c)

    def _feed_raw(self, c):
        if self.paste is not None:  # raw-paste data, with flow control
            if c in (3, 4):
                self.paste = None
                self.console(b"\x04")
                if c == 3:
                    return self.console(b"\x04KeyboardInterrupt: \r\n\x04>")
                return self._exec(b"x", self.line, self._after_raw)
            self.line.append(c)
            self.paste -= 1
            if self.paste == 0:
                self.paste = WINDOW
                self.console(b"\x01")
            return
        if c == 1:  # Ctrl-A: raw-paste request or raw REPL reset
            if len(self.line) == 2 and self.line[0] == 5:
                if self.line[1] == ord("A"):
                    self.line.clear()
                    self.paste = WINDOW
                    return self.console(b"R\x01" + WINDOW.to_bytes(2, "little") + b"\x01")
                self.console(b"R\x00")
                self.line.clear()
                return self.console(b">")
            self._enter_raw()
        elif c == 2:
            self._enter_friendly(b"\r\n")
        elif c == 3:
            self.line.clear()
        elif c == 4:
            self.console(b"OK")
            if not self.line:
                self.console(b"\r\n")
                return self.soft_reset()
            self._exec(b"x", self.line, self._after_raw)
            self.line.clear()
        else:
            self.line.append(c)

    def _after_raw(self, status, text):
        self.console(b"\x04")
        self.cooked(text)
        self.console(b"\x04")
        if status == b"x":
            return self.soft_reset()
        self.console(b">")

    def _feed_paste(self, c):
        if c == 3:
            self.console(b"\r\n>>> ")
            self.paste = None
            self.line.clear()
        elif c == 4:
            self.console(b"\r\n")
            self.paste = None
            self._exec(b"x", self.line, self._after_friendly)
            self.line.clear()
        else:
            self.line.append(c)
            self.console(b"\r\n=== " if c == 13 else bytes([c]))

    def _feed_friendly(self, c):
        if self.esc:  # skip terminal escape sequences (arrow keys): no history here
            self.esc = not (chr(c).isalpha() or c == ord("~"))
            return
        empty = len(self.line) == self.cont
        if 1 <= c <= 5 and empty and not (self.cont and c != 4):
            if c == 1:
                self.console(b"\r\n")
                self._enter_raw()
            elif c == 2:
                self._enter_friendly(b"\r\n")
            elif c == 3:
                self.console(b"\r\n>>> ")
            elif c == 4 and self.cont:
                self.console(b"\r\n")
                self._run_line()
            elif c == 4:
                self.console(b"\r\n")
                self.soft_reset()
            else:
                self.console(b"\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
                self.paste = True
                self.line.clear()
            return
        if c == 3:
            self.console(b"\r\n>>> ")
            self.line.clear()
            self.cont = 0
        elif c == 13:
            self.console(b"\r\n")
            if not self.line:
                return self.console(b">>> ")
            if _complete(self.line.decode("utf-8", "replace")):
                return self._run_line()
            self.line.append(10)
            self.cont = len(self.line)
            self.console(b"... ")
        elif c in (8, 127):
            if not empty:
                del self.line[-1]
                self.console(b"\x08 \x08")
        elif c == 27:
            self.esc = True
        elif c >= 32:
            self.line.append(c)
            self.console(bytes([c]))

    def _run_line(self):
        src = bytes(self.line)
        self.line.clear()
        self.cont = 0
        self._exec(b"s", src, self._after_friendly)

    def _after_friendly(self, status, text):
        self.cooked(text)
        if status == b"x":
            return self.soft_reset()
        self.console(b">>> ")

    # --- main loop ------------------------------------------------------------------------------

    def serve(self):
        self.hard_reset()
        while True:
            for key, mask in self.sel.select():
                key.data(mask)

    def close(self):
        self._stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description="A virtual MicroPython board on a pty.")
    ap.add_argument("flash", help="folder standing for the board's flash (created if missing)")
    ap.add_argument("--heap", default="128K", help="MicroPython heap (-X heapsize)")
    ap.add_argument("--log", help="also append everything the board prints to this file")
    args = ap.parse_args()
    os.makedirs(args.flash, exist_ok=True)
    board = Board(args.flash, args.heap, args.log)

    def stop(signum, frame):
        board.close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(board.path, flush=True)
    board.serve()


if __name__ == "__main__":
    main()
