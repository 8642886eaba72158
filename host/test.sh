#!/usr/bin/env bash
# Run the whole test suite from a fresh machine: set-up, then pytest (extra arguments go to pytest).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$("$root/host/setup.sh")
cd "$root"
status=0
"$bin/pytest" -q -p no:cacheprovider tests "$@" || status=$?
if [ "$status" = 5 ]; then
    echo "test.sh: pytest collected no tests" >&2
fi
exit "$status"
