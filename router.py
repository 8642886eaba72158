# Which handler answers: method + path -> handler, and the HTTP-level answers of docs/API.md
# (404, 405 with Allow, OPTIONS, HEAD, the optional token on mutating routes).
import cfg
import streams
from http import CORS, GET, HEAD, OPTIONS, POST, TEXT

_NOT_FOUND = b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: close\r\n\r\nNot found"
_TOKEN = cfg.API_TOKEN.encode()
_LOCK_READS = getattr(cfg, "API_TOKEN_READS", False)  # a board's cfg.py older than this key works

_READ_ALLOW = b"GET, HEAD, OPTIONS"
_WRITE_ALLOW = b"POST, OPTIONS"

_routes = []


def _page(c):
    """The page's routes (public: a browser cannot send a token to load a page; page.py checks it
    for /page/streams). page.py is imported for the request and dropped after it: it is asked for
    once per visit, so between visits it costs no heap."""
    import sys

    import page

    try:
        page.handle(c)
    finally:
        del sys.modules["page"]


def add(path, handler, method=GET, slash_ok=False):
    """Route `path` (bytes) to handler(conn). A GET route also answers HEAD; POST routes need the
    API token when one is configured (GET routes too with API_TOKEN_READS)."""
    _routes.append((path, method, slash_ok, handler))


def setup(telemetry):
    """Build the route table (once, at start)."""
    add(b"/Datastreams/health", lambda c: streams.health(c, telemetry.state_json()))
    add(b"/Datastreams/SendState", streams.send_state, slash_ok=True)
    add(b"/Datastreams/SendData", streams.send_data, slash_ok=True)
    add(b"/Datastreams/SetDatastream", streams.set_datastream, POST, slash_ok=True)
    add(b"/telemetry/status", telemetry.status)
    add(b"/", _page)
    add(b"/page/streams", _page)
    add(b"/favicon.ico", _page)


def authorized(c):
    """True when no API token is set, or the request carries it (header or &token=)."""
    if not _TOKEN:
        return True
    given = c.header(b"authorization")
    if given is not None and given[:7].lower() == b"bearer ":  # the scheme is case-insensitive
        given = given[7:].strip()
    else:
        given = c.arg(b"token")
        given = given.encode() if given is not None else b""
    return _same(given, _TOKEN)


def _same(a, b):
    """Compare in time independent of where the first difference is."""
    diff = len(a) ^ len(b)
    for i in range(len(b)):
        diff |= (a[i] if i < len(a) else 0) ^ b[i]
    return diff == 0


def handle(c):
    """Answer the parsed request in connection `c`."""
    for path, method, slash_ok, handler in _routes:
        if c.is_path(path, slash_ok):
            break
    else:
        c.send_const(_NOT_FOUND)
        return
    allow = _READ_ALLOW if method == GET else _WRITE_ALLOW
    m = c.method
    if m == OPTIONS:
        c.finish(204, None, b"Allow: %s\r\n%sAccess-Control-Allow-Methods: %s\r\n"
                 b"Access-Control-Allow-Headers: Authorization, Content-Type\r\n" % (allow, CORS, allow))
    elif m == method or (m == HEAD and method == GET):
        if (method == POST or _LOCK_READS and handler is not _page) and not authorized(c):
            c.error(401, b"No autorizado", b"WWW-Authenticate: Bearer\r\n")
        else:
            handler(c)
    else:
        c.add(b"Method not allowed")
        c.finish(405, TEXT, b"Allow: %s\r\n" % allow)
