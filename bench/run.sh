#!/usr/bin/env bash
# Benchmarks from a fresh clone: the project's set-up, the bench's pinned extras (microdot,
# matplotlib) into the same venv, then the run. Options go to bench.py: --quick (CI), --out DIR,
# --micropython PATH (every figure on that interpreter, e.g. a 32-bit build of the unix port),
# --mpy-cross PATH, --layout mpy|frozen|romfs.
# --budget [--micropython PATH] [--layout ...]: the memory figures only (bench/memory.py), recorded
# in bench/budget.json (the figures tests/test_budget.py holds changes to) and bench/results/memory.md.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$("$root/host/setup.sh")
stamp="$root/.venv/.bench-requirements"
if ! cmp -s "$root/bench/requirements.txt" "$stamp"; then
    echo "bench: installing bench/requirements.txt" >&2
    "$bin/pip" install -q -r "$root/bench/requirements.txt" >&2
    cp "$root/bench/requirements.txt" "$stamp"
fi
if [ "${1:-}" = --budget ]; then
    shift
    exec "$bin/python" "$root/bench/memory.py" --update "$@"
fi
exec "$bin/python" "$root/bench/bench.py" "$@"
