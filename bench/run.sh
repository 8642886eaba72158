#!/usr/bin/env bash
# Benchmarks from a fresh clone: the project's set-up, the bench's pinned extras (microdot,
# matplotlib) into the same venv, then the run. Options go to bench.py: --quick (CI), --out DIR.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$("$root/host/setup.sh")
stamp="$root/.venv/.bench-requirements"
if ! cmp -s "$root/bench/requirements.txt" "$stamp"; then
    echo "bench: installing bench/requirements.txt" >&2
    "$bin/pip" install -q -r "$root/bench/requirements.txt" >&2
    cp "$root/bench/requirements.txt" "$stamp"
fi
exec "$bin/python" "$root/bench/bench.py" "$@"
