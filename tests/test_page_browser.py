"""The control page in a real browser: Debian's headless Chromium (tests/browser.py, DevTools
protocol) against the firmware under MicroPython. A person's actions: open the page, read it, flip
the switch, drag the slider, type a value, give the token. Screenshots go under the test's output
folder for a person to look at."""
import json
import os
import threading
import time

import pytest

import browser
from conftest import Firmware
from test_page import FILES, OSID, STREAMS, TOKEN
from test_telemetry import mqtt_cfg

IDS = [s["id"] for s in STREAMS]
CARDS = "#streams > li"


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    if browser.executable() is None:
        if os.geteuid() == 0:  # host/setup.sh installs it when root, as CI runs
            pytest.fail("chromium is missing: ./host/setup.sh installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed and cannot be as this user (apt-get install chromium)")
    b = browser.Browser(str(tmp_path_factory.mktemp("chromium")))
    yield b
    b.close()


@pytest.fixture
def device(make_firmware):
    return make_firmware(STREAMS=STREAMS, extra_files=FILES)


def value(fw, sid):
    return fw.get("/Datastreams/SendData?osid=%s&variableEstado=%s" % (OSID, sid)).json()["value"]


def opened(chromium, fw, width=1024, height=800, mobile=False):
    """A new tab on the device's page, once it shows its streams and says it is connected."""
    page = chromium.page(width, height, mobile)
    page.goto(fw.url + "/")
    page.wait_js("document.querySelectorAll(%s).length > 0 && "
                 "document.getElementById('status').textContent.indexOf('Connected') == 0" % json.dumps(CARDS))
    return page


def card(page, sid):
    """Text of a stream's card, as a person reads it."""
    return page.eval("(function(){var c=[].find.call(document.querySelectorAll(%s), function(li){"
                     "return li.querySelector('h2').textContent == %s}); return c ? c.innerText : null;})()"
                     % (json.dumps(CARDS), json.dumps(sid)))


def sel(sid, what):
    """CSS selector of an element in a stream's card (cards are in cfg order)."""
    return "%s:nth-child(%d) %s" % (CARDS, IDS.index(sid) + 1, what)


def wait_value(fw, sid, want, timeout=5.0):
    end = time.monotonic() + timeout
    while value(fw, sid) != want:
        assert time.monotonic() < end, "%s stayed %r, not %r" % (sid, value(fw, sid), want)
        time.sleep(0.05)


def not_authorized(problems):
    """The browser logs each 401 answer as a failed load: expected where the token is tested."""
    return [p for p in problems if "status of 401" not in p]


def test_page_shows_every_stream_without_console_errors(chromium, device, tmp_path):
    page = opened(chromium, device)
    assert page.eval("[].map.call(document.querySelectorAll('%s h2'), function(e){return e.textContent})"
                     % CARDS) == IDS
    assert page.eval("document.title") == "Objeto ESP32"
    for s in STREAMS:
        assert "%s · %s" % (s["type"], s["format"]) in card(page, s["id"])
    assert "off" in card(page, "led") and page.eval("document.querySelector(%s).checked" % json.dumps(
        sel("led", "input[role=switch]"))) is False
    slider = page.eval("(function(e){return [e.type, e.min, e.max, e.value]})(document.querySelector(%s))"
                       % json.dumps(sel("brillo", "input")))
    assert slider == ["range", "0", "1023", "0"]
    field = page.eval("(function(e){return [e.type, e.min, e.max]})(document.querySelector(%s))"
                      % json.dumps(sel("consigna", "input")))
    assert field == ["number", "-50", "150"]
    assert "-50 °C" in card(page, "consigna") and "hola" in card(page, "nota")  # restored to its min
    assert page.eval("document.querySelector(%s).type" % json.dumps(sel("nota", "input"))) == "text"
    assert "°C" in card(page, "temperatura") and " KB" in card(page, "memoria")
    assert "Uptime" in page.eval("document.querySelector('footer').innerText")
    shot = page.screenshot(str(tmp_path / "page-desktop.png"))
    # on a phone: one column, nothing wider than the screen, controls big enough for a finger
    phone = opened(chromium, device, 390, 844, mobile=True)
    assert phone.eval("document.documentElement.scrollWidth <= window.innerWidth")
    smallest = phone.eval("Math.min.apply(null, [].map.call(document.querySelectorAll("
                          "'#streams .switch, #streams button, #streams input:not([role=switch])'), function(e){return e.getBoundingClientRect().height}))")
    assert smallest >= 40, smallest
    phone_shot = phone.screenshot(str(tmp_path / "page-phone.png"))
    print("\nscreenshots: %s %s" % (shot, phone_shot))
    for p in (page, phone):
        assert p.problems() == []
        assert all(u.startswith(device.url + "/") for u in p.requests()), p.requests()
    # readable without colour: each state is in words, not only in a colour
    assert page.eval("document.querySelector(%s).innerText" % json.dumps(sel("led", ".switch"))) == "off"


def test_the_led_switch_changes_sendstate_and_follows_the_device(chromium, device):
    page = opened(chromium, device)
    switch = sel("led", "input[role=switch]")
    page.click(switch)
    wait_value(device, "led", "true")
    page.wait_js("document.querySelector(%s).innerText == 'on'" % json.dumps(sel("led", ".switch")))
    page.click(switch)
    wait_value(device, "led", "false")
    # three quick flips, each before the last is answered: the device ends as the switch shows
    for _ in range(3):
        page.click(switch)
    wait_value(device, "led", "true")
    page.wait_js("document.querySelector(%s).innerText == 'on'" % json.dumps(sel("led", ".switch")))
    time.sleep(0.5)
    assert value(device, "led") == "true" and page.eval("document.querySelector(%s).checked" % json.dumps(switch))
    page.click(switch)
    wait_value(device, "led", "false")
    # changed by another client: the page shows it at its next poll
    device.post("/Datastreams/SetDatastream?osid=%s&idDataStream=led&comando=on" % OSID)
    page.wait_js("document.querySelector(%s).checked" % json.dumps(switch), timeout=8)
    assert page.problems() == []


def test_a_slider_sets_the_pwm_value(chromium, device):
    page = opened(chromium, device)
    slider = sel("brillo", "input[type=range]")
    page.click(slider, fx=0.25)  # a person taps a quarter of the way along
    chosen = int(page.wait_js("document.querySelector(%s).value != '0' && document.querySelector(%s).value"
                              % (json.dumps(slider), json.dumps(slider))))
    assert 150 < chosen < 350, chosen
    wait_value(device, "brillo", str(chosen))
    page.key("End", "End", 35)  # the keyboard way, to the end of the range
    wait_value(device, "brillo", "1023")
    page.wait_js("document.querySelector(%s).innerText.indexOf('1,023 (100 %%)') >= 0"
                 % json.dumps(sel("brillo", ".value")))
    assert page.problems() == []


def test_text_and_number_fields_and_the_errors_in_words(chromium, device, make_firmware):
    page = opened(chromium, device)
    page.fill(sel("nota", "input"), "hello, world & more")
    page.press_enter()
    wait_value(device, "nota", "hello, world & more")
    page.fill(sel("consigna", "input"), "999")
    page.click(sel("consigna", "button"))
    err = page.wait_js("document.querySelector(%s).textContent" % json.dumps(sel("consigna", ".err")))
    assert "refused the value for 'consigna' (1027): out of range" in err, err
    assert value(device, "consigna") == "-50.0"  # a whole float keeps its decimal point (docs/API.md)
    page.fill(sel("consigna", "input"), "21.5")
    page.press_enter()
    wait_value(device, "consigna", "21.5")
    page.wait_js("document.querySelector(%s).textContent == ''" % json.dumps(sel("consigna", ".err")))
    # The device restarts with `nota` gone from its cfg: the page says so, and a set names it.
    device.stop()
    fw = Firmware(os.path.join(os.path.dirname(device.flash), "flash-after"),
                  {"HTTP_PORT": device.port, "STREAMS": tuple(s for s in STREAMS if s["id"] != "nota")},
                  extra_files=FILES).start()
    try:
        page.wait_js("document.querySelector(%s).innerText.indexOf('not reported') >= 0"
                     % json.dumps(sel("nota", ".value")), timeout=10)
        page.click(sel("nota", "button"))
        err = page.wait_js("document.querySelector(%s).textContent" % json.dumps(sel("nota", ".err")))
        assert "no stream 'nota' (1026)" in err, err
        # the page's only console entries: the loads that failed while the device restarted
        assert all("ERR_CONNECTION_REFUSED" in p for p in page.problems()), page.problems()
    finally:
        fw.stop()


def test_the_token_is_asked_once_kept_in_the_tab_and_a_wrong_one_is_told(chromium, make_firmware, tmp_path):
    fw = make_firmware(STREAMS=STREAMS, extra_files=FILES, API_TOKEN=TOKEN)
    page = opened(chromium, fw)
    assert page.eval("document.getElementById('auth').hidden")
    page.click(sel("led", "input[role=switch]"))
    why = page.wait_js("!document.getElementById('auth').hidden && document.getElementById('why').textContent")
    assert "Not authorized (401): the device needs its API token" in why
    assert page.eval("document.activeElement.id") == "token"
    page.type("wrong-token")
    page.press_enter()
    why = page.wait_js("!document.getElementById('auth').hidden && document.getElementById('why').textContent")
    assert "refused this API token" in why
    print("\nscreenshot: %s" % page.screenshot(str(tmp_path / "page-token-refused.png")))
    assert "Not authorized (401)" in card(page, "led")
    assert value(fw, "led") == "false" and page.eval(
        "document.querySelector(%s).checked" % json.dumps(sel("led", "input[role=switch]"))) is False
    page.type(TOKEN)
    page.press_enter()  # the set that was refused goes again, with the token
    wait_value(fw, "led", "true")
    page.wait_js("document.getElementById('auth').hidden")
    assert page.eval("sessionStorage.getItem('datastream-token')") == TOKEN
    assert page.eval("localStorage.length") == 0 and page.eval("document.cookie") == ""
    # a reload in the same tab keeps it: no question this time
    page.goto(fw.url + "/")
    page.wait_js("document.getElementById('status').textContent.indexOf('Connected') == 0")
    page.click(sel("led", "input[role=switch]"))
    wait_value(fw, "led", "false")
    assert page.eval("document.getElementById('auth').hidden")
    assert not_authorized(page.problems()) == []
    # session storage is the tab's own: another tab on the device has no token
    other = opened(chromium, fw)
    assert other.eval("sessionStorage.getItem('datastream-token')") is None


def test_reads_locked_by_token_ask_for_it_at_load(chromium, make_firmware):
    fw = make_firmware(STREAMS=STREAMS, extra_files=FILES, API_TOKEN=TOKEN, API_TOKEN_READS=True)
    page = chromium.page()
    page.goto(fw.url + "/")
    page.wait_js("!document.getElementById('auth').hidden")
    page.eval("sessionStorage.clear()")
    page.click("#token")
    page.type(TOKEN)
    page.press_enter()
    page.wait_js("document.querySelectorAll(%s).length == %d" % (json.dumps(CARDS), len(STREAMS)))
    assert not_authorized(page.problems()) == []


def test_polling_pauses_while_the_tab_is_hidden(chromium, device):
    page = opened(chromium, device)
    health = device.url + "/Datastreams/health"
    time.sleep(3.5)
    assert page.requests().count(health) >= 2
    other = chromium.page()
    chromium.send("Target.activateTarget", {"targetId": other.target})
    page.wait_js("document.hidden")
    asked = page.requests().count(health)
    time.sleep(7)  # more than two poll periods
    assert page.requests().count(health) == asked, "no request while hidden"
    chromium.send("Target.activateTarget", {"targetId": page.target})
    page.wait_for(lambda: page.requests().count(health) > asked, 2.0, "a poll as soon as it is visible")


def test_the_page_keeps_working_under_api_load_and_telemetry(chromium, make_firmware, broker):
    fw = make_firmware(STREAMS=STREAMS, extra_files=FILES, **mqtt_cfg(broker.port))
    stop, answered, refused, worst = threading.Event(), [0], [0], [0.0]

    def hammer(target, method):
        while not stop.is_set():
            t0 = time.monotonic()
            r = fw.request(method, target, timeout=10)
            worst[0] = max(worst[0], time.monotonic() - t0)
            if r.status == 503:
                refused[0] += 1  # more clients at once than slots and queue: told to come back
            else:
                assert r.status == 200, r.raw
                answered[0] += 1

    targets = [("/Datastreams/SendState?osid=" + OSID, "GET"), ("/Datastreams/health", "GET"),
               ("/Datastreams/SetDatastream?osid=%s&idDataStream=brillo&comando=512" % OSID, "POST")]
    threads = [threading.Thread(target=hammer, args=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    try:
        t0 = time.monotonic()
        page = opened(chromium, fw)
        load_s = time.monotonic() - t0
        switch = sel("led", "input[role=switch]")
        for want in ("true", "false", "true", "false"):
            page.click(switch)
            try:
                wait_value(fw, "led", want)
            except AssertionError:
                print(card(page, "led"), page.problems(), page.eval("document.getElementById('msg').textContent"))
                raise
        first = page.eval("document.getElementById('status').textContent")
        page.wait_js("document.getElementById('status').textContent != %s" % json.dumps(first), timeout=8)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    status = fw.get("/telemetry/status").json()
    print("\nunder load: page shown in %.2f s; %d API answers (%d told 503), longest %.1f ms; "
          "telemetry published %d" % (load_s, answered[0], refused[0], worst[0] * 1000, status["published"]))
    assert status["connected"] and status["published"] >= 2 and status["failed"] == 0
    assert answered[0] > 200 and worst[0] < 1.0
    assert page.problems() == [] and page.eval("document.getElementById('msg').hidden")
    assert "Traceback" not in fw.log()
