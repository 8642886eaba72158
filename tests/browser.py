"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol on a pipe
(--remote-debugging-pipe: JSON messages ended by a NUL byte, read by the browser on fd 3 and
written on fd 4), with the standard library only: no browser download, no driver, no websocket."""
import base64
import json
import os
import shutil
import subprocess
import threading
import time

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--mute-audio", "--remote-debugging-pipe"]


def executable():
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One Chromium process with a fresh profile in `workdir`."""

    def __init__(self, workdir):
        exe = executable()
        if exe is None:
            raise RuntimeError("no chromium on PATH")
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()

        def fds():  # in the child: its ends of the pipes as fd 3 and 4
            a, b = os.dup(to_browser), os.dup(from_browser)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.log = open(os.path.join(workdir, "chromium.log"), "wb")
        self.proc = subprocess.Popen([exe] + FLAGS + ["--user-data-dir=" + os.path.join(workdir, "profile"),
                                                      "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     pass_fds=(3, 4), preexec_fn=fds)
        os.close(to_browser)
        os.close(from_browser)
        self._next = 0
        self._answers = {}
        self.events = []  # (session id, method, params), in arrival order
        self._cond = threading.Condition()
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self):
        pending = b""
        while True:
            try:
                chunk = os.read(self._in, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._answers[None] = "closed"
                    self._cond.notify_all()
                return
            pending += chunk
            *messages, pending = pending.split(b"\0")
            with self._cond:
                for raw in messages:
                    msg = json.loads(raw)
                    if "id" in msg:
                        self._answers[msg["id"]] = msg
                    else:
                        self.events.append((msg.get("sessionId"), msg["method"], msg.get("params", {})))
                self._cond.notify_all()

    def send(self, method, params=None, session=None, timeout=30.0):
        """Call a DevTools method; its result, or RuntimeError with the browser's error."""
        with self._cond:
            self._next += 1
            ident = self._next
        msg = {"id": ident, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while ident not in self._answers:
                left = deadline - time.monotonic()
                if left <= 0 or None in self._answers:
                    raise TimeoutError("%s: no answer from the browser" % method)
                self._cond.wait(left)
            answer = self._answers.pop(ident)
        if "error" in answer:
            raise RuntimeError("%s: %s" % (method, answer["error"]))
        return answer.get("result", {})

    def page(self, width=1024, height=768, mobile=False):
        return Page(self, width, height, mobile)

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._out, self._in):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()


class Page:
    """A tab, with what a person would do in it: open a URL, click, type, press keys, look."""

    def __init__(self, browser, width, height, mobile):
        self.b = browser
        self.target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.send("Target.attachToTarget", {"targetId": self.target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(domain + ".enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                          "deviceScaleFactor": 1, "mobile": mobile})
        if mobile:
            self.send("Emulation.setTouchEmulationEnabled", {"enabled": True})

    def send(self, method, params=None, timeout=30.0):
        return self.b.send(method, params, self.session, timeout)

    def events(self, method=None):
        with self.b._cond:
            return [p for s, m, p in self.b.events if s == self.session and (method is None or m == method)]

    def problems(self):
        """What a person would see in the DevTools console as errors: exceptions, console.error
        and console.assert, and the browser's own error entries (failed loads, CSP violations)."""
        out = []
        for s, m, p in list(self.b.events):
            if s != self.session:
                continue
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append("exception: %s" % d.get("exception", {}).get("description", d.get("text")))
            elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                out.append("console.%s: %s" % (p["type"], [a.get("value", a.get("description")) for a in p["args"]]))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append("log: %s %s" % (p["entry"]["text"], p["entry"].get("url", "")))
        return out

    def requests(self):
        """URLs the tab has asked for so far."""
        return [p["request"]["url"] for p in self.events("Network.requestWillBeSent")]

    def goto(self, url, timeout=15.0):
        n = len(self.events("Page.loadEventFired"))
        self.send("Page.navigate", {"url": url})
        self.wait_for(lambda: len(self.events("Page.loadEventFired")) > n, timeout, "the load of " + url)

    def eval(self, expr):
        """The value of a JS expression (promises awaited)."""
        r = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError("%s: %s" % (expr, r["exceptionDetails"]))
        return r["result"].get("value")

    def wait_for(self, check, timeout=10.0, what="condition"):
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError("waited %.0f s for %s" % (timeout, what))
            time.sleep(0.05)

    def wait_js(self, expr, timeout=10.0):
        return self.wait_for(lambda: self.eval(expr), timeout, expr)

    def center(self, selector):
        box = self.eval("(function(){var e=document.querySelector(%s); e.scrollIntoView({block:'center'});"
                        "var r=e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height];})()"
                        % json.dumps(selector))
        return box

    def click(self, selector, fx=0.5):
        """A mouse click at `fx` of the element's width, half its height, as a person's."""
        left, top, w, h = self.center(selector)
        x, y = left + w * fx, top + h / 2
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def key(self, key, code, vk):
        for kind in ("rawKeyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": code,
                                                 "windowsVirtualKeyCode": vk})

    def type(self, text):
        self.send("Input.insertText", {"text": text})

    def fill(self, selector, text):
        """Click into a field, select what it holds (as Ctrl+A would) and type over it."""
        self.click(selector)
        self.eval("document.querySelector(%s).select()" % json.dumps(selector))
        self.type(text)

    def press_enter(self):
        self.send("Input.dispatchKeyEvent", {"type": "rawKeyDown", "key": "Enter", "code": "Enter",
                                             "windowsVirtualKeyCode": 13})
        self.send("Input.dispatchKeyEvent", {"type": "char", "key": "Enter", "text": "\r"})
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": "Enter", "code": "Enter",
                                             "windowsVirtualKeyCode": 13})

    def screenshot(self, path):
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path
