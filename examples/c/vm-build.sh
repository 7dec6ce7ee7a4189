#!/usr/bin/env bash
# Build examples/c/vivid_capture.c as a static executable for the test VM,
# whose initramfs has no libc: install dmabroker to a temporary prefix
# (scripts/install.sh), then link the program against PREFIX/lib/libdmabroker.a
# and glibc's libc.a (Debian: libc6-dev).
#
# usage: examples/c/vm-build.sh OUTDIR
#   writes OUTDIR/vivid_capture; run it with: vm/run.sh OUTDIR/vivid_capture
#
# The .pc's Libs.private lists -lgcc_s, the shared unwinder, which a static
# link cannot use: libgcc_eh (the static one) takes its place.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

if [[ $# -ne 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    [[ $# -eq 1 ]] && exit 0 || exit 2
fi
outdir=$1
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
cc=${CC:-cc}
command -v "$cc" >/dev/null || { echo "vm-build.sh: no C compiler ($cc)" >&2; exit 2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dmabroker-vm-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix

echo "==> install to $prefix"
if ! "$root/scripts/install.sh" --prefix "$prefix" >"$tmp/install.log" 2>&1; then
    cat "$tmp/install.log" >&2
    echo "vm-build.sh: scripts/install.sh failed" >&2
    exit 1
fi

pc=$prefix/lib/pkgconfig/dmabroker.pc
libs_private=$(sed -n 's/^Libs.private: *//p' "$pc")
[[ -n $libs_private ]] || { echo "vm-build.sh: $pc has no Libs.private" >&2; exit 1; }
static_libs=
for l in $libs_private; do
    case $l in
    -lgcc_s) static_libs+=" -lgcc_eh" ;;
    *) static_libs+=" $l" ;;
    esac
done

echo "==> link $outdir/vivid_capture statically (libdmabroker.a$static_libs)"
# shellcheck disable=SC2086
"$cc" -static -std=c11 -O2 -g -Wall -Wextra -Werror "$here/vivid_capture.c" -I "$prefix/include" \
    "$prefix/lib/libdmabroker.a" $static_libs -o "$outdir/vivid_capture" 2>"$tmp/link.log" || {
    cat "$tmp/link.log" >&2
    echo "vm-build.sh: linking failed (is glibc's libc.a installed? Debian: libc6-dev)" >&2
    exit 1
}
# glibc warns about NSS/dlopen in static programs; the program uses neither.
grep -v -e 'statically linked applications requires at runtime' -e 'in function' "$tmp/link.log" >&2 || true
if readelf -l "$outdir/vivid_capture" | grep -q 'Requesting program interpreter'; then
    echo "vm-build.sh: $outdir/vivid_capture is not static" >&2
    exit 1
fi
echo "built $outdir/vivid_capture ($(stat -c %s "$outdir/vivid_capture") bytes, static)"
