"""MQTT over TLS (issue #14) against a real mosquitto with a TLS listener, with certificates made
here by openssl: telemetry, attributes and RPC over TLS; certificates that must be refused (another
CA, another name, expired, a plain broker); X.509 device credentials; the HTTP stall a handshake
causes; the token never on the wire in clear (a relay records every byte the WiFi would carry)."""
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from conftest import Broker, flash, free_port
from test_broker_faults import (BOUND_S, RPC, FakeBroker, handshake, longest_answer, publish_packet, read_packet,
                                run_scenario, silent, status)
from test_telemetry import OSID, TOKEN, Platform, mqtt_cfg

DEVICE_CN = "device-01"

_CA_CNF = """[ca]
default_ca = test
[test]
dir = .
database = index.txt
new_certs_dir = issued
serial = serial
default_md = sha256
policy = anything
unique_subject = no
[anything]
commonName = supplied
"""


class Pki:
    """A CA with the certificates the tests need, all made by openssl in `d`."""

    def __init__(self, d):
        self.d = str(d)
        os.makedirs(os.path.join(self.d, "issued"))
        open(os.path.join(self.d, "index.txt"), "w").close()
        self._write("serial", "1000\n")
        self._write("ca.cnf", _CA_CNF)
        for ca, cn in (("ca", "Test CA"), ("other-ca", "Someone Else's CA")):
            self._ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca + ".key", "-out", ca + ".pem",
                      "-days", "30", "-subj", "/CN=" + cn)
        here = "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        self.leaf("server", "localhost", here)
        self.leaf("elsewhere", "broker.example", "subjectAltName=DNS:broker.example\n")
        self.leaf("expired", "localhost", here, dates=("20200101000000Z", "20210101000000Z"))
        # the device's key as ThingsBoard's X.509 guide makes it (an EC key after its parameters)
        self._ssl("ecparam", "-name", "prime256v1", "-genkey", "-out", "device.key")
        self.leaf("device", DEVICE_CN, "extendedKeyUsage=clientAuth\n", key="device.key")

    def _write(self, name, text):
        with open(os.path.join(self.d, name), "w") as f:
            f.write(text)

    def _ssl(self, *args):
        subprocess.run(("openssl",) + args, cwd=self.d, check=True, capture_output=True)

    def leaf(self, name, cn, ext, dates=None, key=None):
        """name.pem (and name.key), signed by the CA."""
        if key is None:
            self._ssl("genrsa", "-out", name + ".key", "2048")
        self._ssl("req", "-new", "-key", key or name + ".key", "-subj", "/CN=" + cn, "-out", name + ".csr")
        self._write(name + ".ext", ext)
        when = ("-startdate", dates[0], "-enddate", dates[1]) if dates else ("-days", "30")
        self._ssl("ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-notext",
                  "-in", name + ".csr", "-out", name + ".pem", "-extfile", name + ".ext", *when)

    def path(self, name):
        return os.path.join(self.d, name)

    def text(self, name):
        with open(self.path(name)) as f:
            return f.read()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


class TlsBroker(Broker):
    """mosquitto with a plain listener (the test's ThingsBoard peer) and a TLS one (the device's)."""

    def __init__(self, workdir, pki, cert="server", require_cert=False):
        super().__init__(workdir)
        self.tls_port = free_port()
        with open(self.conf, "a") as f:
            f.write("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\n" % (
                self.tls_port, pki.path("ca.pem"), pki.path(cert + ".pem"), pki.path(cert + ".key")))
            if require_cert:  # X.509 device credentials: the certificate's CN is the user name
                f.write("require_certificate true\nuse_identity_as_username true\n")


@pytest.fixture
def tls_broker(tmp_path, pki):
    made = []

    def make(**kw):
        d = tmp_path / ("broker%d" % len(made))
        d.mkdir()
        b = TlsBroker(str(d), pki, **kw)
        made.append(b.start())
        return b

    yield make
    for b in made:
        b.stop()


def tls_cfg(port, pki, **kw):
    """The device on the broker's TLS listener, its CA on flash as ca.pem."""
    base = mqtt_cfg(port, MQTT_TLS=True, MQTT_CA="ca.pem")
    base.update(kw)
    return base


def connected_as(broker):
    """The user names the broker saw the device connect with (None: anonymous)."""
    names = []
    for line in broker.log().splitlines():
        if "as tb_%s" % OSID in line:
            names.append(line.split("u'")[1].split("'")[0] if "u'" in line else None)
    return names


def test_telemetry_attributes_and_rpc_over_tls(make_firmware, tls_broker, pki):
    broker = tls_broker()
    platform = Platform(broker.port)
    try:
        fw = make_firmware(extra_files={"ca.pem": pki.text("ca.pem")}, **tls_cfg(broker.tls_port, pki))
        _, payload, _ = platform.next("v1/devices/me/attributes")
        assert b'"osid":"%s"' % OSID.encode() in payload
        j, _ = platform.telemetry(where=lambda j: "_mem_free" in j)
        assert list(j) == ["led", "rele", "reloj", "temperatura", "memoria", "_mem_free"]
        assert platform.rpc(1, "setValue", True) is True
        led = "/Datastreams/SendData?osid=%s&variableEstado=led&tipove=1" % OSID
        assert fw.get(led).json()["value"] == "true"
        assert platform.rpc(2, "getDatastream", {"id": "rele"}) == {"id": "rele", "value": False}
        fw.post("/Datastreams/SetDatastream?osid=%s&idDataStream=rele&comando=on" % OSID)
        assert platform.telemetry(where=lambda j: j == {"rele": True})[0] == {"rele": True}
        s = status(fw)
        assert s["connected"] and s["connects"] == 1 and s["last_error"] is None, s
        assert s["tls"]["handshake_ms"] >= 0 and 0 <= s["tls"]["longest_step_ms"] <= s["tls"]["handshake_ms"]
        assert connected_as(broker) == [TOKEN], "the token, as ThingsBoard wants it, through the TLS listener"
        log = fw.log()
        assert "TLS handshake done in" in log and TOKEN not in log and "Traceback" not in log
        print("\nTLS link: handshake %d ms, its longest step %d ms" % (
            s["tls"]["handshake_ms"], s["tls"]["longest_step_ms"]))
    finally:
        platform.close()


def test_readings_kept_offline_leave_over_tls_in_batches_larger_than_the_gathering_buffer(make_firmware, tmp_path, pki):
    """Readings kept while the broker was away go as ts batches of ~600 B: over TLS every write
    comes from the 512 B gathering buffer (a write mbedtls holds is retried with the same bytes),
    so a batch leaves in two records."""
    d = tmp_path / "late"
    d.mkdir()
    broker = TlsBroker(str(d), pki)
    fw = make_firmware(extra_files={"ca.pem": pki.text("ca.pem")}, **tls_cfg(broker.tls_port, pki))
    time.sleep(4.5)  # refused at 0, ~1 and ~3 s; the next attempt comes 3-5 s later
    s = status(fw)
    assert s["queued"] >= 4 and s["last_error"] == "socket error ECONNREFUSED", s
    broker.start()
    platform = Platform(broker.port)
    try:
        _, payload, _ = platform.next("v1/devices/me/telemetry", timeout=10, where=lambda p: p[:1] == b"[")
        batch = json.loads(payload)
        assert len(payload) > 512 and len(batch) == 4, payload
        assert all("_mem_free" in r["values"] for r in batch)
        deadline = time.monotonic() + 5
        while status(fw)["queued"] and time.monotonic() < deadline:
            time.sleep(0.1)
        s = status(fw)
        assert s["connected"] and s["queued"] == 0 and s["connects"] == 1, s
    finally:
        platform.close()
        broker.stop()


def _burst_in_one_record(conn, broker):
    """A TLS broker that, as Netty-based ones (ThingsBoard) may, sends 10 RPC requests in one record:
    mbedtls decrypts them at once, and the socket's poll no longer shows the ones left."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(broker.pki.path("server.pem"), broker.pki.path("server.key"))
    t = ctx.wrap_socket(conn, server_side=True)
    handshake(t)
    t.sendall(b"".join(publish_packet(RPC + b"%d" % i, b'{"method":"getValue"}') for i in range(10)))
    while True:
        first, body = read_packet(t)
        if first >> 4 == 3 and body[2:2 + body[1]].startswith(b"v1/devices/me/rpc/response/"):
            broker.answers.append((body[2:2 + body[1]], time.monotonic()))


def test_requests_decrypted_together_are_all_answered(make_firmware, pki):
    broker = FakeBroker(_burst_in_one_record)
    broker.pki, broker.answers = pki, []
    try:
        make_firmware(extra_files={"ca.pem": pki.text("ca.pem")}, **tls_cfg(broker.port, pki, TELEMETRY_INTERVAL=3600))
        deadline = time.monotonic() + 5
        while len(broker.answers) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(broker.accepted) == 1
        assert sorted(t for t, _ in broker.answers) == sorted(b"v1/devices/me/rpc/response/%d" % i for i in range(10))
    finally:
        broker.close()


@pytest.mark.parametrize("case", ["another CA", "another name", "expired", "plain MQTT"])
def test_a_certificate_that_does_not_check_out_is_refused(make_firmware, tls_broker, pki, case):
    cert = {"another name": "elsewhere", "expired": "expired"}.get(case, "server")
    broker = tls_broker(cert=cert)
    ca = "other-ca.pem" if case == "another CA" else "ca.pem"
    port = broker.port if case == "plain MQTT" else broker.tls_port
    fw = make_firmware(extra_files={"ca.pem": pki.text(ca)}, **tls_cfg(port, pki))
    worst, n = longest_answer(fw, 3.5)
    s = status(fw)
    log = fw.log()
    lines = [x for x in log.splitlines() if x.startswith("mqtt: ")]
    print("\n%s: longest HTTP answer %.1f ms over %d requests; %s" % (case, worst * 1000, n, lines[-1]))
    assert worst < BOUND_S
    assert not s["connected"] and s["connects"] == 0 and s["last_error"].startswith("TLS handshake: ")
    why = {"another CA": "not correctly signed by the trusted CA", "another name": "Common Name (CN) does not match",
           "expired": "validity has expired", "plain MQTT": "the broker closed the link"}[case]
    assert why in s["last_error"] and len(lines) >= 2 and all(why in x for x in lines), lines
    assert connected_as(broker) == [], "no MQTT session: the token never went out"
    assert "Traceback" not in log and TOKEN not in log


def test_telemetry_flows_once_the_right_ca_is_in_place(make_firmware, tls_broker, pki):
    broker = tls_broker()
    platform = Platform(broker.port)
    try:
        fw = make_firmware(extra_files={"ca.pem": pki.text("other-ca.pem")}, **tls_cfg(broker.tls_port, pki))
        time.sleep(1.5)
        assert "not correctly signed by the trusted CA" in status(fw)["last_error"]
        with open(os.path.join(fw.flash, "ca.pem"), "w") as f:  # what upload.sh --certs does on a board
            f.write(pki.text("ca.pem"))
        platform.telemetry(timeout=10, where=lambda j: "_mem_free" in j)
        assert status(fw)["connected"] and connected_as(broker) == [TOKEN]
    finally:
        platform.close()


def test_a_silent_peer_is_given_up_at_the_tls_deadline(make_firmware, pki):
    fw, broker, worst, n, s = run_scenario(make_firmware, silent, MQTT_TLS=True, MQTT_CA="ca.pem",
                                           MQTT_TLS_TIMEOUT_MS=1500, extra_files={"ca.pem": pki.text("ca.pem")})
    print("\nsilent peer: longest HTTP answer %.1f ms over %d; %s" % (worst * 1000, n, s["last_error"]))
    assert worst < BOUND_S and "no TLS handshake within 1500 ms" in fw.log()
    assert len(broker.accepted) >= 2


def x509_files(pki):
    return {"ca.pem": pki.text("ca.pem"), "device.pem": pki.text("device.pem"), "device.key": pki.text("device.key")}


def x509_cfg(port, pki, **kw):
    return tls_cfg(port, pki, MQTT_TOKEN="", MQTT_CERT="device.pem", MQTT_KEY="device.key", **kw)


def test_x509_device_credentials(make_firmware, tls_broker, pki):
    """A broker that requires a client certificate (ThingsBoard's X.509 device credentials): refused
    without one, a clear line; with device.pem/device.key the certificate is the identity, no token."""
    broker = tls_broker(require_cert=True)
    platform = Platform(broker.port)
    try:
        without = make_firmware(extra_files={"ca.pem": pki.text("ca.pem")}, **tls_cfg(broker.tls_port, pki))
        worst, n = longest_answer(without, 2.5)
        s = status(without)
        print("\nno client certificate: longest HTTP answer %.1f ms; %s" % (worst * 1000, s["last_error"]))
        assert worst < BOUND_S and not s["connected"]
        assert s["last_error"].startswith("TLS handshake: the broker closed the link (socket error ")
        without.stop()
        fw = make_firmware(extra_files=x509_files(pki), **x509_cfg(broker.tls_port, pki))
        platform.telemetry(where=lambda j: "_mem_free" in j)
        assert platform.rpc(1, "setValue", True) is True
        assert connected_as(broker) == [DEVICE_CN], "the certificate's CN, as mosquitto takes it; no token"
        assert status(fw)["connected"]
        key = pki.text("device.key")
        body = key.split("-----BEGIN EC PRIVATE KEY-----")[1].split("-----")[0].strip().splitlines()[0]
        assert body[:20] not in fw.log() and "Traceback" not in fw.log()
    finally:
        platform.close()


def relay_to(port):
    """A FakeBroker behaviour: a TCP relay to `port` that records every byte, each way (what anyone
    on the WiFi can read), in the relay's `up` (device to broker) and `down`."""
    def behave(conn, relay):
        peer = socket.create_connection(("127.0.0.1", port))
        threading.Thread(target=_pipe, args=(peer, conn, relay.down), daemon=True).start()
        _pipe(conn, peer, relay.up)
    return behave


def _pipe(src, dst, seen):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            seen += data
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        s.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_the_token_crosses_the_wire_only_inside_tls(make_firmware, tls_broker, pki, tls):
    """The same capture sees the token in clear on 1883 (so it would see it), never over TLS."""
    broker = tls_broker()
    relay = FakeBroker(relay_to(broker.tls_port if tls else broker.port))
    relay.up, relay.down = bytearray(), bytearray()
    platform = Platform(broker.port)
    try:
        cfg = tls_cfg(relay.port, pki) if tls else mqtt_cfg(relay.port)
        make_firmware(extra_files={"ca.pem": pki.text("ca.pem")}, **cfg)
        platform.telemetry(where=lambda j: "_mem_free" in j)
        assert platform.rpc(1, "getValue") is False
        up, down = bytes(relay.up), bytes(relay.down)
        print("\n%s: %d bytes up, %d down" % ("TLS" if tls else "plain", len(up), len(down)))
        assert len(up) > 300 and len(down) > 30
        if tls:
            assert up[:3] in (b"\x16\x03\x01", b"\x16\x03\x03"), "a TLS handshake record opens the link"
            for secret in (TOKEN.encode(), b"v1/devices/me", b"_mem_free", b"MQTT"):
                assert secret not in up + down, secret
        else:
            assert TOKEN.encode() in up and b"v1/devices/me/telemetry" in up
    finally:
        platform.close()
        relay.close()


class Hammer:
    """Asks for health back to back from a thread: the longest answer is the longest the loop held."""

    def __init__(self, fw):
        self.fw, self.stop, self.worst, self.n = fw, threading.Event(), 0.0, 0
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop.is_set():
            t0 = time.monotonic()
            assert self.fw.get("/Datastreams/health", timeout=10).status == 200
            self.worst = max(self.worst, time.monotonic() - t0)
            self.n += 1

    def close(self):
        self.stop.set()
        self.t.join()


def test_handshake_stall_measured(make_firmware, tls_broker, pki):
    """Three handshakes with X.509 (the most CPU: the device also signs), HTTP asked for back to
    back throughout: the longest answer is the loop's longest gap, one mbedtls step."""
    broker = tls_broker(require_cert=True)
    fw = make_firmware(extra_files=x509_files(pki), **x509_cfg(broker.tls_port, pki, TELEMETRY_INTERVAL=3600))
    hammer = Hammer(fw)
    steps = []
    try:
        for i in range(3):
            deadline = time.monotonic() + 10
            while status(fw)["connects"] < i + 1:
                assert time.monotonic() < deadline, status(fw)
                time.sleep(0.05)
            tls = status(fw)["tls"]
            steps.append((tls["handshake_ms"], tls["longest_step_ms"]))
            broker.stop()  # the link drops; the device reconnects after its backoff
            broker.start()
    finally:
        hammer.close()
    print("\nTLS handshakes (whole, longest step) ms: %s; longest HTTP answer %.1f ms over %d requests"
          % (steps, hammer.worst * 1000, hammer.n))
    assert hammer.worst < BOUND_S and hammer.n > 100
    assert all(0 <= step <= whole < 5000 for whole, step in steps)
    assert "Traceback" not in fw.log()


@pytest.mark.parametrize("over,why", [
    ({"MQTT_CA": ""}, "MQTT_CA (the CA that signed the broker's certificate) is empty"),
    ({"MQTT_CA": "nowhere.pem"}, "MQTT_CA 'nowhere.pem' is not on the flash (upload.sh sends it)"),
    ({"MQTT_CERT": "device.pem"}, "MQTT_CERT and MQTT_KEY go together"),
    ({"MQTT_TOKEN": "", "MQTT_CERT": "device.pem", "MQTT_KEY": "gone.key"}, "MQTT_KEY 'gone.key' is not on the flash"),
], ids=["no CA", "CA missing", "cert without key", "key missing"])
def test_tls_settings_that_cannot_work_are_named_at_boot(make_firmware, pki, over, why):
    fw = make_firmware(extra_files=x509_files(pki), **tls_cfg(free_port(), pki, **over))
    assert "cfg: MQTT_TLS: %s" % why in fw.log() and "telemetry off" in fw.log()
    assert fw.get("/Datastreams/health").json()["mqtt"] == "off" and not status(fw)["enabled"]


def test_a_file_that_holds_no_certificate_is_named(make_firmware, pki):
    fw = make_firmware(extra_files={"ca.pem": "not a certificate\n"}, **tls_cfg(free_port(), pki))
    time.sleep(0.3)
    assert status(fw)["last_error"] == "MQTT_CA 'ca.pem': no certificate or key in it (PEM or DER)"
    assert fw.alive()


def test_upload_sends_the_files_cfg_names_and_the_board_connects_with_them(tmp_path, tls_broker, pki):
    """upload.sh onto a virtual board (tests/test_deploy.py): the CA, certificate and key named in
    cfg.py go with it (never a key's bytes on the console), the board boots into an X.509 TLS link;
    later uploads keep the board's own files unless --certs."""
    from test_deploy import VBoard, make_checkout, upload

    broker = tls_broker(require_cert=True)
    conf = tmp_path / "conf"
    conf.mkdir()
    cfg = conf / "cfg.py"
    cfg.write_text(flash.cfg_text(dict(HTTP_BIND="127.0.0.1", HTTP_PORT=free_port(), **x509_cfg(broker.tls_port, pki))))
    for name, text in x509_files(pki).items():
        (conf / name).write_text(text)
    checkout = str(make_checkout(tmp_path / "checkout"))
    board = VBoard(tmp_path / "flash")
    try:
        code, out = upload("--config=%s" % cfg, board.path, root=checkout)
        assert code == 0, out
        for name, text in x509_files(pki).items():
            assert (tmp_path / "flash" / name).read_text() == text, name
        assert "  put    /device.key (" in out
        secret = [x for x in pki.text("device.key").splitlines() if x and not x.startswith("-----")]
        assert secret and not any(x in out for x in secret)
        board.wait_log("TLS handshake done in", timeout=30)
        board.wait_log("mqtt: connected to")
        assert connected_as(broker) == [DEVICE_CN]

        (conf / "ca.pem").write_text(pki.text("ca.pem") + "# renewed\n")
        code, out = upload("--config=%s" % cfg, board.path, root=checkout)
        assert code == 0 and "  keep   /ca.pem (the board's own; --certs replaces it)" in out, out
        assert (tmp_path / "flash" / "ca.pem").read_text() == pki.text("ca.pem")
        code, out = upload("--config=%s" % cfg, "--certs", board.path, root=checkout)
        assert code == 0 and "  put    /ca.pem (" in out, out
        assert (tmp_path / "flash" / "ca.pem").read_text().endswith("# renewed\n")

        with open(cfg, "a") as f:
            f.write('MQTT_CA = "nowhere.pem"\n')
        code, out = upload("--config=%s" % cfg, board.path, root=checkout)
        assert code != 0 and "cfg.py names /nowhere.pem: the board has none, and there is no " in out, out
    finally:
        board.stop()
