# The reference app: the same datastream endpoints on microdot 2.x, written the way the microdot
# seed did it (dicts in, json.dumps out, request.args), over the same cfg.py and hw.py as the
# firmware so only the web layer differs. meter.tick() at the top of each route counts requests.
import asyncio
import gc
import json
import time

import cfg
import hw
import meter
import tb
from microdot import Microdot, Response

app = Microdot()
START = time.ticks_ms()
CORS = {"Content-Type": "application/json", "Access-Control-Allow-Origin": "*"}
PLAIN = {"Content-Type": "application/json"}
STREAMS = [(spec, hw.make(spec, spec["type"] == "actuator")) for spec in cfg.STREAMS]


def reply(obj, status=200, headers=PLAIN):
    return Response(json.dumps(obj, separators=(",", ":")), status, headers)


def find(sid):
    for spec, dev in STREAMS:
        if spec["id"] == sid:
            return spec, dev
    return None, None


def text(spec, dev):
    v = dev.read()
    f = spec["format"]
    if f == "boolean":
        return "true" if v else "false"
    if f == "float":
        return "%.6g" % v
    return str(v)


@app.route("/Datastreams/health")
async def health(request):
    meter.tick()
    return reply({"status": "healthy", "service": "datastream", "osid": cfg.OSID, "title": cfg.TITLE,
                  "version": "1.0.0", "uptime_s": time.ticks_diff(time.ticks_ms(), START) // 1000,
                  "mem_free": gc.mem_free(), "mqtt": "off"})


@app.route("/Datastreams/SendState")
@app.route("/Datastreams/SendState/")
async def send_state(request):
    meter.tick()
    osid = request.args.get("osid")
    if not osid:
        return reply({"status": "error", "message": "Parámetro osid faltante"}, 400)
    if osid != cfg.OSID:
        return reply({"status": "error", "code": "1025", "message": "ID incorrecto"})
    items = []
    for spec, dev in STREAMS:
        items.append({"datastream_id": spec["id"], "datastream_format": spec["format"],
                      "datastream_type": spec["type"], "value": text(spec, dev)})
    return reply({"osid": cfg.OSID, "datastreams": items, "count": len(items)}, headers=CORS)


@app.route("/Datastreams/SendData")
@app.route("/Datastreams/SendData/")
async def send_data(request):
    meter.tick()
    osid = request.args.get("osid")
    sid = request.args.get("variableEstado")
    if not osid or not sid:
        return reply({"status": "error", "message": "Parámetros faltantes"}, 400)
    if osid != cfg.OSID:
        return reply({"status": "error", "code": "1025", "message": "ID incorrecto"})
    if request.args.get("tipove", "1") != "1":
        return reply({"status": "error", "code": "1099", "message": "Tipo no implementado"})
    spec, dev = find(sid)
    if spec is None:
        return reply({"status": "error", "code": "1026", "message": "Datastream '%s' no existe" % sid})
    return reply({"osid": cfg.OSID, "datastream_id": sid, "datastream_format": spec["format"],
                  "value": text(spec, dev)}, headers=CORS)


@app.route("/Datastreams/SetDatastream", methods=["POST"])
@app.route("/Datastreams/SetDatastream/", methods=["POST"])
async def set_datastream(request):
    meter.tick()
    osid = request.args.get("osid")
    sid = request.args.get("idDataStream")
    comando = request.args.get("comando")
    if not osid or not sid or not comando:
        return reply({"status": "error", "message": "Parámetros faltantes"}, 400)
    if osid != cfg.OSID:
        return reply({"status": "error", "code": "1025", "message": "ID incorrecto"})
    spec, dev = find(sid)
    if spec is None:
        return reply({"status": "error", "code": "1026", "message": "Datastream '%s' no existe" % sid})
    try:
        dev.write(comando.lower() in ("on", "true", "1"))
        value = dev.read()
    except Exception as e:
        return reply({"status": "error", "code": "1027", "message": "Error ejecutando comando: %s" % e})
    return reply({"status": "success", "code": "1001",
                  "message": "Datastream '%s' actualizado a '%s'" % (sid, comando),
                  "data": {"datastream_id": sid, "comando": comando, "applied": True, "value": value}},
                 headers=CORS)


async def telemetry():
    pub = tb.Publisher()
    while pub.enabled:
        await asyncio.sleep_ms(pub.wait(time.ticks_ms()))
        if pub.due(time.ticks_ms()):
            values = {}
            for spec, dev in STREAMS:
                values[spec["id"]] = dev.read()
            values["_mem_free"] = gc.mem_free()
            pub.publish(json.dumps(values, separators=(",", ":")))


async def main():
    server = asyncio.create_task(app.start_server(host=cfg.HTTP_BIND, port=cfg.HTTP_PORT))
    asyncio.create_task(telemetry())
    await asyncio.sleep_ms(100)  # the listening socket is up
    meter.ready()
    await server


asyncio.run(main())
