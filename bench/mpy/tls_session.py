# What an MQTT link costs the MicroPython heap, plain or over TLS: run by bench/tls.py with the
# firmware's .mpy on the path. argv: plain|tls port [ca server_hostname [cert key]]. Prints one
# "@bench" line: bytes kept by importing mqtt, by a Channel at rest (its buffers; over TLS with
# mqtt_tls imported), by the link once up (socket, and over TLS the context and mbedtls' socket
# object), and the bytes allocated from the first attempt until the link is up with the collector
# off (the free heap a connect needs at worst).
import gc
import select
import sys
import time

argv = [x for x in sys.argv if x != "--hold"]
mode, port = argv[1], int(argv[2])
gc.collect()
base = gc.mem_alloc()
import mqtt  # noqa: E402

gc.collect()
imported = gc.mem_alloc()
up = []
user, tls = "bench-token", None
if mode == "tls":
    ca, name, cert, key = (argv[3:] + ["", "", "", ""])[:4]
    tls = (ca, cert, key, name, 5000)
    if cert:
        user = None  # X.509: the certificate is the identity
args = ("127.0.0.1", port, "tb_bench", user, 60, 800, 2304, (b"v1/devices/me/rpc/request/+",),
        lambda: up.append(1), lambda *x: None)
if tls is None:
    ch = mqtt.Channel(*args)
else:
    import mqtt_tls

    ch = mqtt_tls.Channel(tls, *args)
poller = select.poll()
ch.attach(poller)
gc.collect()
rest = gc.mem_alloc()
gc.disable()  # what the connect allocates, none of it collected: the free heap it needs at worst
deadline = time.ticks_add(time.ticks_ms(), 10000)
while not up and time.ticks_diff(deadline, time.ticks_ms()) > 0:
    wait = ch.service(time.ticks_ms())
    for obj, ev in poller.ipoll(min(wait, 50)):
        ch.handle(obj, ev)
gross = gc.mem_alloc() - rest
gc.enable()
gc.collect()
print("@bench %s up %d import %d channel %d link %d connect %d" % (
    mode, len(up), imported - base, rest - imported, gc.mem_alloc() - rest, gross))
if "--hold" in sys.argv:
    time.sleep(1)  # exit with the link up: heaptrack counts what mbedtls still holds as leaked
