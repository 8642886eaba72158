"""Runs the unit tests of tests/mpy inside MicroPython itself, against the firmware modules of a
flash folder (so they import exactly what is uploaded)."""
import glob
import os
import subprocess

import pytest

from conftest import HEAP, MPY, ROOT, flash

pytestmark = pytest.mark.quick

HERE = os.path.join(ROOT, "tests", "mpy")
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(HERE, "test_*.py")))


@pytest.fixture(scope="module")
def flash_dir(tmp_path_factory):
    return flash.build(str(tmp_path_factory.mktemp("unit") / "flash"), {"HTTP_BIND": "127.0.0.1"}, mpy=MPY)


@pytest.mark.parametrize("module", MODULES)
def test_in_micropython(flash_dir, module):
    env = dict(os.environ, MICROPYPATH="%s:%s:%s/lib:.frozen" % (HERE, flash_dir, flash_dir))
    p = subprocess.run([os.path.join(flash.BIN, "micropython"), "-X", "heapsize=" + HEAP,
                        os.path.join(HERE, "runner.py"), module],
                       cwd=flash_dir, env=env, capture_output=True, text=True, timeout=120)
    print(p.stdout, p.stderr)
    last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    assert p.returncode == 0 and last.endswith(" 0 failed") and not last.startswith("0 passed"), p.stdout + p.stderr
