#!/usr/bin/env bash
# Prepare a fresh machine: system packages (when root), the venv with pinned tools, umqtt.simple.
# Idempotent and quick when everything is already there. Prints the venv's bin folder last.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"

need=()
# chromium: the control page's browser tests (tests/test_page_browser.py) drive it headless.
for pair in mosquitto:mosquitto curl:curl shellcheck:shellcheck chromium:chromium; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: apt-get install ${need[*]}" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
    else
        echo "setup: missing ${need[*]} (install them with apt-get as root); going on without" >&2
    fi
fi

# The first run takes 20-45 s here: each step says what it does (on stderr: stdout is the answer).
stamp="$venv/.requirements"
req="$root/host/requirements.txt"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$stamp"; then
    echo "setup: creating the Python venv $venv (first run, or host/requirements.txt changed; 20-45 s)" >&2
    python3 -m venv "$venv"
    echo "setup: installing $(grep -c == "$req") pinned packages (host/requirements.txt) and their dependencies:" >&2
    # pip's own lines, one per package it fetches; its errors still reach stderr as they are.
    "$venv/bin/pip" install --disable-pip-version-check --progress-bar off -r "$req" |
        sed -un -e 's/^Collecting \([^ ]*\).*/setup:   \1/p' -e "s|^Successfully installed .*|setup: installed in $venv|p" >&2
    cp "$req" "$stamp"
fi
"$venv/bin/python" "$root/host/fetch_umqtt.py" "$root" >&2
"$root/host/typecheck.sh" --install
echo "$venv/bin"
