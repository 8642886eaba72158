#!/usr/bin/env bash
# Build MicroPython's unix port as 32-bit, the word size of an ESP32, to measure the firmware's
# memory as a board sees it (bench/run.sh --micropython PATH).
#
#   bench/build32.sh [--frozen MANIFEST | --romfs] [--ref TAG] SRC [OUT]
#
# SRC: MicroPython's source, a git repository (bare or not; TAG, v1.26.1 by default, is extracted
# into OUT) or a source tree. OUT: where everything built goes ($HOME/.cache/mp32); nothing is
# written into the repository. Submodules are not needed: SSL, btree and FFI are left out, and the
# frozen manifest is our own (the variant's requires micropython-lib). Variants:
#   (none)             build-32/micropython: asyncio frozen, as in the PyPI unix build
#   --frozen MANIFEST  build-32-frozen/micropython: MANIFEST frozen too (boards/manifest.py)
#   --romfs            build-32-romfs/micropython: the romimg module (bench/cmodules), which loads a
#                      ROMFS image outside the GC heap, so that modules are imported in place
# Installs gcc-multilib with apt when missing and run as root. Idempotent: make rebuilds only what
# changed. Prints the interpreter's path last.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
me=build32.sh
die() {
    echo "$me: $*" >&2
    exit 1
}

ref=v1.26.1
variant=32
manifest=""
src=""
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --frozen) [ $# -ge 2 ] || die "--frozen needs a manifest"; manifest=$(realpath "$2"); variant=32-frozen; shift ;;
        --romfs) variant=32-romfs ;;
        --ref) [ $# -ge 2 ] || die "--ref needs a tag"; ref=$2; shift ;;
        -h | --help) sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) if [ -z "$src" ]; then src=$1; elif [ -z "$out" ]; then out=$1; else die "too many arguments"; fi ;;
    esac
    shift
done
[ -n "$src" ] || die "usage: $me [--frozen MANIFEST | --romfs] [--ref TAG] SRC [OUT]"
out=$(mkdir -p "${out:-$HOME/.cache/mp32}" && cd "${out:-$HOME/.cache/mp32}" && pwd)

# --- compiler: gcc's 32-bit libraries ------------------------------------------------------------
if ! echo 'int main(void){return 0;}' | gcc -m32 -x c - -o "$out/.m32" 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        echo "$me: apt-get install gcc-multilib" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-multilib >&2
    else
        die "gcc cannot build 32-bit programs: install gcc-multilib (as root: apt-get install gcc-multilib)"
    fi
fi
rm -f "$out/.m32"

# --- source: a tree, or TAG out of a git repository ----------------------------------------------
if [ -f "$src/py/mpconfig.h" ]; then
    tree=$(cd "$src" && pwd)
elif git --git-dir="$src" rev-parse -q --verify "$ref^{commit}" >/dev/null 2>&1 ||
    git --git-dir="$src/.git" rev-parse -q --verify "$ref^{commit}" >/dev/null 2>&1; then
    gitdir=$src
    [ -d "$src/.git" ] && gitdir=$src/.git
    tree=$out/src-$ref
    if [ ! -f "$tree/.extracted" ]; then
        echo "$me: extracting $ref into $tree" >&2
        rm -rf "$tree"
        mkdir -p "$tree"
        git --git-dir="$gitdir" archive "$ref" | tar -x -C "$tree"
        touch "$tree/.extracted"
    fi
else
    die "$src is neither a MicroPython source tree nor a git repository with $ref"
fi
version=$(sed -n 's/^#define MICROPY_VERSION_\(MAJOR\|MINOR\|MICRO\) \([0-9]*\)$/\2/p' "$tree/py/mpconfig.h" | paste -sd.)
[ "$version" = "1.26.1" ] || echo "$me: note: the source is MicroPython $version; the boards' figures were made with 1.26.1" >&2

jobs=$(nproc 2>/dev/null || echo 2)
build() {  # make quietly, with the log kept; its tail on failure
    local log=$1
    shift
    if ! nice make -j"$jobs" "$@" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "build failed, log in $log"
    fi
}

# --- mpy-cross of the same source (the frozen modules are compiled with it) ----------------------
build "$out/mpy-cross.log" -C "$tree/mpy-cross" BUILD="$out/mpy-cross"

# --- the unix port, 32-bit ------------------------------------------------------------------------
# makemanifest insists on micropython-lib being there, though our manifests require nothing of it.
mkdir -p "$out/no-micropython-lib"
echo "Stands in for micropython-lib, which these builds do not use." >"$out/no-micropython-lib/README.md"
mkdir -p "$out/build-$variant"
{
    echo "# Written by bench/build32.sh: what the PyPI unix build freezes that the bench needs."
    # shellcheck disable=SC2016  # $(MPY_DIR) is makemanifest's variable, not the shell's
    echo 'include("$(MPY_DIR)/extmod/asyncio")'
    [ -z "$manifest" ] || echo "include(\"$manifest\", port_manifest=False)"
} >"$out/build-$variant/manifest.py.new"
# Rewritten only when it changes, so that make sees nothing new.
if cmp -s "$out/build-$variant/manifest.py.new" "$out/build-$variant/manifest.py"; then
    rm "$out/build-$variant/manifest.py.new"
else
    mv "$out/build-$variant/manifest.py.new" "$out/build-$variant/manifest.py"
fi
args=(MICROPY_FORCE_32BIT=1 MICROPY_PY_FFI=0 MICROPY_PY_BTREE=0 MICROPY_PY_SSL=0
    BUILD="$out/build-$variant" FROZEN_MANIFEST="$out/build-$variant/manifest.py"
    MPY_LIB_DIR="$out/no-micropython-lib" MICROPY_MPYCROSS="$out/mpy-cross/mpy-cross")
[ "$variant" != 32-romfs ] || args+=(USER_C_MODULES="$root/bench/cmodules")
echo "$me: building $variant from $tree (log: $out/build-$variant.log)" >&2
build "$out/build-$variant.log" -C "$tree/ports/unix" "${args[@]}"
bin=$out/build-$variant/micropython
"$bin" -c "import sys; assert sys.maxsize == 2**31 - 1, 'not 32-bit'" || die "$bin is not a working 32-bit build"
echo "$bin"
