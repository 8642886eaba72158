# The second half of an update (ota.py), imported once the package is downloaded and its checksum
# verified: its manifest checked against what the platform named, its files unpacked a few KB per
# loop turn into fwswitch.NEW (each file's own SHA-256 checked), the files they replace copied into
# fwswitch.OLD one per turn, then fwswitch.commit and the reset into the new version. Each step is a
# function of the update (ota.Update), called by its service().
import binascii
import hashlib
import json
import os

import fwswitch
from micropython import const

_STEP = const(1024)  # bytes per read while unpacking; _READS of them per loop turn
_READS = const(4)
_HEADER_MAX = const(4096)
_FORMAT = "dspkg/1"


def opening(u, now):
    """The package's manifest: checked against what the platform named."""
    f = u.f = open(fwswitch.PACKAGE, "rb")
    buf = u.buf = bytearray(_STEP)
    end = -1
    while end < 0 and f.tell() < _HEADER_MAX:  # where the manifest's line ends: read in the buffer
        n = f.readinto(buf)
        if not n:
            break
        end = buf.find(b"\n", 0, n)
        if end >= 0:
            end += f.tell() - n
    m = None
    if end > 0:
        f.seek(0)
        try:
            m = json.loads(f.read(end))  # the one allocation of its size, freed once parsed
        except ValueError:
            pass
    why = manifest_problem(m, end + 1, u.size, u.target)
    if why or not isinstance(m, dict):
        return u.fail("not a package of this firmware: %s" % why)
    u.files = m["files"]
    u.k = 0
    f.seek(end + 1)
    os.mkdir(fwswitch.NEW)
    u.state("UPDATING")
    u.step, u.phase = unpacking, "unpack"
    return 0


def unpacking(u, now):
    """A few KB of the package into its files; each file's hash checked when it is whole."""
    name, size, sha = u.files[u.k]
    if u.out is None:
        u.out = open(fwswitch.NEW + "/" + name, "wb")
        u.fh = hashlib.sha256()
        u.left = size
    for _ in range(_READS):
        if not u.left:
            break
        n = u.f.readinto(memoryview(u.buf)[:min(_STEP, u.left)])
        if not n:
            return u.fail("the package is cut short in %s" % name)
        part = memoryview(u.buf)[:n]
        u.out.write(part)
        u.fh.update(part)
        u.left -= n
    if u.left:
        return 0
    u.out.close()
    u.out = None
    if binascii.hexlify(u.fh.digest()).decode() != sha:
        return u.fail("%s does not match its SHA-256 in the manifest" % name)
    u.k += 1
    if u.k < len(u.files):
        return 0
    u.f.close()
    u.f = None
    u.names = [f[0] for f in u.files]
    with open(fwswitch.NEW + "/" + fwswitch.MANIFEST, "w") as f:
        json.dump({"title": u.target["title"], "version": u.target["version"], "files": u.names}, f)
    u.names.append(fwswitch.MANIFEST)
    fwswitch.clear(fwswitch.OLD)
    os.mkdir(fwswitch.OLD)
    u.added = []
    u.k = 0
    u.step, u.phase = backing_up, "backup"
    return 0


def backing_up(u, now):
    """One file a turn: the copy, in fwswitch.OLD, of a file the update replaces."""
    name = u.names[u.k]
    if not fwswitch.backup(name, u.buf):
        u.added.append(name)
    u.k += 1
    if u.k < len(u.names):
        return 0
    os.remove(fwswitch.PACKAGE)
    fwswitch.outcome(u.target, "UPDATING")
    fwswitch.commit(u.names, u.added, u.target)
    u.t.link.drop("resetting into %s" % u.target["version"])
    fwswitch.reset("update installed")
    return 0


def manifest_problem(m, head, size, target):
    """What is wrong with a package's manifest (`head`: its length with the newline), or None."""
    if not isinstance(m, dict) or m.get("format") != _FORMAT:
        return "no %s manifest" % _FORMAT
    if (m.get("title"), m.get("version")) != (target["title"], target["version"]):
        return "the package is %s %s" % (m.get("title"), m.get("version"))
    files = m.get("files")
    if not isinstance(files, list) or not files:
        return "no files"
    total = head
    for f in files:
        if not isinstance(f, list) or len(f) != 3 or not isinstance(f[1], int) or f[1] < 0:
            return "a file entry is not [name, size, sha256]"
        name = f[0]
        if not isinstance(name, str) or name == "cfg.py" or "/" in name or not (
                name.endswith(".py") or name.endswith(".mpy")):
            return "%r is not a module of the firmware" % (name,)
        total += f[1]
    if total != size:
        return "its files take %d B, the package has %d" % (total, size)
    return None
