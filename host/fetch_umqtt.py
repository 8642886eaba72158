"""Fetch umqtt.simple (micropython-lib) from the package index by pinned version and sha256 and
place umqtt/simple.py at lib/umqtt/simple.py, where it also goes on the board.

The sdist on the index has neither setup.py nor pyproject.toml, so pip cannot install it; this
reads the index pip itself uses by default (its "simple" API), checks the hash, and extracts one
file. Nothing of it is committed.
"""
import hashlib
import io
import os
import re
import sys
import tarfile
import urllib.request

from pip._internal.models.index import PyPI

NAME = "micropython-umqtt.simple"
VERSION = "1.3.4"
SHA256 = "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f"
MEMBER = "%s-%s/umqtt/simple.py" % (NAME, VERSION)


def main(root):
    dest = os.path.join(root, "lib", "umqtt", "simple.py")
    if os.path.exists(dest):
        with open(dest + ".sha256") as f:
            if f.read().strip() == SHA256:
                return dest
    index = os.environ.get("PIP_INDEX_URL", PyPI.simple_url).rstrip("/")
    page = urllib.request.urlopen(index + "/micropython-umqtt-simple/", timeout=60).read().decode()
    links = re.findall(r'href="([^"#]+/%s-%s\.tar\.gz)#sha256=([0-9a-f]+)"' % (re.escape(NAME), VERSION), page)
    if not links:
        sys.exit("fetch_umqtt: %s %s is not on %s" % (NAME, VERSION, index))
    url = links[0][0]
    data = urllib.request.urlopen(url, timeout=60).read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        sys.exit("fetch_umqtt: sha256 mismatch for %s: %s, expected %s" % (url, digest, SHA256))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        code = tar.extractfile(MEMBER).read()
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, "wb") as f:
        f.write(code)
    with open(os.path.join(os.path.dirname(dest), "__init__.py"), "wb"):
        pass
    with open(dest + ".sha256", "w") as f:
        f.write(SHA256 + "\n")
    print("fetch_umqtt: %s %s -> %s" % (NAME, VERSION, dest))
    return dest


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
