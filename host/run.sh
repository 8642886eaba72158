#!/usr/bin/env bash
# Run the firmware on this machine: simulated hardware, HTTP on 127.0.0.1:8003, telemetry to a
# broker on 127.0.0.1:1883 if one is up; Ctrl-C stops it. Options: --port 8003 --bind 127.0.0.1
# --flash .flash/<port> --heap 128K --mqtt host:port --source --esp32 (host/flash.py --help)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$("$root/host/setup.sh")
exec "$bin/python" "$root/host/flash.py" "$@"
