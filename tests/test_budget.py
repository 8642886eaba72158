"""The memory budget (bench/budget.json): the firmware as uploaded (.mpy), with the bench's cfg.py
and telemetry to a real mosquitto, must not keep more heap once serving, nor any module more heap
once imported (its qstrs apart), nor any module loaded on demand (an update's, the page...), than
recorded there plus a small margin. A change that grows the firmware fails here; if the growth is
meant, record it: `bench/run.sh --budget` (and say why in the commit). Measured on the interpreter the tests use (MICROPYTHON picks another, e.g. a 32-bit
build of the unix port, checked against its own section when the budget has one)."""
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import memory  # noqa: E402


def test_heap_once_serving_and_import_costs_stay_within_the_budget():
    budget = memory.load_budget()
    label, fig = memory.measure(per_request=False)
    if label not in budget["sections"]:
        pytest.skip("bench/budget.json has no %r section: bench/run.sh --budget records one" % label)
    want = budget["sections"][label]
    checks = [("heap in use once serving", fig["ready"], want["ready"]),
              ("qstr pools of the imports", fig["qstr"], want["qstr"])]
    checks += [("import %s" % m, fig["imports"].get(m, 0), want["imports"].get(m, 0))
               for m in sorted(set(fig["imports"]) | set(want["imports"]))]
    checks += [("on demand %s" % m, fig["on_demand"].get(m, 0), want["on_demand"].get(m, 0))
               for m in memory.ON_DEMAND if "on_demand" in want]
    over, lines = [], []
    for name, got, recorded in checks:
        cap = memory.limit(recorded)
        lines.append("%-28s %7d B, recorded %7d B, limit %7d B%s" % (
            name, got, recorded, cap, "  OVER" if got > cap else ""))
        if got > cap:
            over.append(name)
        elif got < recorded - (cap - recorded):
            lines[-1] += "  (smaller: bench/run.sh --budget records it)"
    print("%s, %s\n%s" % (label, fig["interpreter"], "\n".join(lines)))
    assert not over, "over the memory budget: %s (figures above)" % ", ".join(over)
