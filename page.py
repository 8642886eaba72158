# The local control page: GET / sends web/index.html from flash, gzipped by the upload step
# (web/pack.py), through the slot buffer in slices (send_file); GET /page/streams tells
# the page what SendState does not: each stream's range and unit; GET /favicon.ico is an empty
# 204. The router imports this module for one of these requests and drops it after, so at rest
# the page costs no heap.
import http
import router
import streams

GZ = "index.html.gz"
PLAIN = "index.html"  # the same page for a client that does not take gzip

_HEAD = (b"HTTP/1.0 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
         # revalidated at every load: an upload changes the page, and a 304 costs nothing
         b"Cache-Control: no-cache\r\nVary: Accept-Encoding\r\nX-Content-Type-Options: nosniff\r\n"
         # the page fetches nothing but this device's API, and nothing from elsewhere can run in it
         b"Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "
         b"style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'\r\n")
_GZIP = b"Content-Encoding: gzip\r\n"
_UNITS = {"mcu_temp": "\u00b0C", "mem_free": "B"}  # a stream's cfg "unit" comes first


def _gzip_ok(v):
    """Whether an Accept-Encoding value (bytes or None) takes gzip: named, or "*", without q=0."""
    if v is None:
        return False
    v = v.lower()  # content codings are case-insensitive
    i = v.find(b"gzip")
    if i < 0:
        i = v.find(b"*")
        if i < 0:
            return False
    end = v.find(b",", i)
    if end < 0:
        end = len(v)
    q = v.find(b"q=", i, end)
    if q < 0:
        return True
    try:
        return float(str(v[q + 2:end], "ascii")) > 0
    except (ValueError, UnicodeError):
        return False


def send_file(c, f, size, head):
    """Answer on connection `c` with the `size` bytes of the open file `f` after the header lines in
    `head` (a tuple of bytes: status line and headers; Content-Length and the end of the head are
    added). The server sends the file through the slot's buffer in slices as the socket takes
    them (http.Conn.next_slice), so the heap an answer takes does not depend on the file's size;
    `f` is closed at the end, or with the slot. Here, not in http.py: only the page needs it."""
    c.pos = 0
    c.overflow = False
    for h in head:
        c.add(h)
    c.add(b"Content-Length: ")
    c.add_int(size)
    c.add(b"\r\nConnection: close\r\n\r\n")
    c.out = c.mv
    c.out_end = c.pos
    c.pos = 0
    if c.overflow or c.head_only:
        f.close()
        if c.overflow:
            raise ValueError("head over the buffer")  # a bug here: a 500
        return
    c.file = f
    c.left = size
    c.next_slice(c.out_end)  # the first slice rides with the head, in the same segment


def handle(c):
    if c.is_path(b"/", False):
        serve(c)
    elif c.is_path(b"/favicon.ico", False):
        c.finish(204, None, b"Cache-Control: max-age=86400\r\n")  # the page names no icon to fetch
    elif router._LOCK_READS and not router.authorized(c):  # like SendState, which it complements
        raise http.Refused(401, b"No autorizado", b"WWW-Authenticate: Bearer\r\n")
    else:
        meta(c)


def serve(c):
    try:
        f = open(GZ, "rb")
    except OSError:
        raise http.Refused(404, b"No page on this device's flash (upload.sh puts it there)")
    try:
        size = f.seek(-8, 2) + 8
        crc = f.read(4)  # the gzip trailer's CRC-32 of the page: its ETag, for both encodings
    except OSError:
        f.close()
        raise
    tag = b'"%02x%02x%02x%02x"' % (crc[3], crc[2], crc[1], crc[0])
    etag = (b"ETag: W/", tag, b"\r\n")
    match = c.header(b"if-none-match")
    if match is not None and (match.find(tag) >= 0 or match.strip() == b"*"):
        f.close()  # the browser's copy is this page: nothing to send
        c.send_const(b"HTTP/1.0 304 Not Modified\r\n%s%s%sConnection: close\r\n\r\n" % etag)
        return
    if _gzip_ok(c.header(b"accept-encoding")):
        f.seek(0)
        send_file(c, f, size, (_HEAD, _GZIP) + etag)
        return
    f.close()
    try:
        f = open(PLAIN, "rb")
    except OSError:
        raise http.Refused(404, b"No page on this device's flash (upload.sh puts it there)")
    size = f.seek(0, 2)
    f.seek(0)
    send_file(c, f, size, (_HEAD,) + etag)


def meta(c):
    """{"streams":[{"id":…,"min":…,"max":…,"unit":…}, …]}: what the page's controls need and
    SendState does not say (min and max are null when the stream has none)."""
    c.add(b'{"streams":[')
    sep = b""
    for s in streams.STREAMS:
        c.add(sep)
        sep = b","
        c.add(b'{"id":')
        c.add(s.jid)
        for key, v in ((b',"min":', s.lo), (b',"max":', s.hi)):
            c.add(key)
            if v is None:
                c.add(b"null")
            else:
                streams.add_value(c, v, False)
        c.add(b',"unit":')
        c.add_str(s.spec.get("unit") or _UNITS.get(s.spec["hw"], ""))
        c.add(b"}")
    c.add(b"]}")
    c.finish(200)
