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

stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$root/host/requirements.txt" "$stamp"; then
    echo "setup: creating $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r "$root/host/requirements.txt" >&2
    cp "$root/host/requirements.txt" "$stamp"
fi
"$venv/bin/python" "$root/host/fetch_umqtt.py" "$root" >&2
"$root/host/typecheck.sh" --install
echo "$venv/bin"
