#!/usr/bin/env bash
# Build dmabroker in release mode and install the C library, its header,
# its pkg-config file, the `dmabroker` command and (if the source tree has
# them) the systemd units:
#
#   PREFIX/lib/libdmabroker.so.X.Y.Z (+ libdmabroker.so.X, libdmabroker.so links),
#                                    stripped, with a .gnu_debuglink to
#   PREFIX/lib/.debug/libdmabroker.so.X.Y.Z.debug   (its debug info; gdb finds it)
#   PREFIX/lib/libdmabroker.a       (one relocatable object: only dmabroker_* global,
#                                    no debug info, no embedded LLVM bitcode)
#   PREFIX/lib/pkgconfig/dmabroker.pc
#   PREFIX/include/dmabroker.h
#   PREFIX/bin/dmabroker
#   PREFIX/lib/systemd/system/*     (from systemd/, when it exists)
#
# usage: scripts/install.sh --prefix DIR [--destdir DIR]
#   --prefix DIR    where it is installed (no whitespace: systemd and pkg-config
#                   split at it).
#   --destdir DIR   stage under DIR (for packaging): files land in DIR/PREFIX,
#                   while dmabroker.pc still says PREFIX.
#
# rustix is built with its libc backend here (see below).
#
# The build goes to target/capi (DMABROKER_CAPI_TARGET_DIR overrides), not
# target/: CI builds the workspace with RUSTFLAGS="-C target-feature=+crt-static",
# which makes rustc drop the cdylib on gnu targets, so this build removes
# that flag, and a separate target dir keeps the two builds from
# invalidating each other.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

# A string as the replacement of sed's s|...|...|: \, & and the | delimiter
# escaped (a prefix like /opt/a&b would otherwise put the matched text in
# place of the &), and a backslash before each embedded newline.
sed_escape() { printf '%s\n' "$1" | sed -e 's/[\\&|]/\\&/g' -e '$!s/$/\\/'; }

prefix=
destdir=
while (($#)); do
    case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
    --destdir=*) destdir=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
if [[ -z $prefix ]]; then
    echo "install.sh: --prefix DIR is required" >&2
    usage >&2
    exit 2
fi
prefix=$(realpath -m -- "$prefix")
# The prefix ends up unquoted in the systemd units (ExecStart= splits its
# command line at whitespace) and in dmabroker.pc (pkg-config splits flags at
# whitespace): refuse what they cannot carry rather than install broken files.
if [[ $prefix =~ [[:space:][:cntrl:]] ]]; then
    printf 'install.sh: the prefix "%s" contains whitespace or control characters, which the
' "$prefix" >&2
    echo "installed systemd units (ExecStart=) and dmabroker.pc cannot carry: choose another prefix" >&2
    exit 2
fi
stage=${destdir:+$(realpath -m -- "$destdir")}$prefix

# Drop +crt-static (it removes cdylib support) and build for the host.
flags=" ${RUSTFLAGS:-} "
flags=${flags//-C target-feature=+crt-static/}
flags=${flags//-Ctarget-feature=+crt-static/}
# rustix's libc backend: a library loaded into C programs makes its system
# calls through the program's libc, where valgrind, sanitizers and LD_PRELOAD
# shims see them. (rustix's raw-syscall backend also reads the vDSO through
# PR_GET_AUXV, which crashes under valgrind: rustix issue #1559.)
flags+=" --cfg=rustix_use_libc"
read -r -a flag_words <<<"$flags"
export RUSTFLAGS="${flag_words[*]}"
unset CARGO_BUILD_TARGET CARGO_ENCODED_RUSTFLAGS
target_dir=${DMABROKER_CAPI_TARGET_DIR:-$root/target/capi}

echo "==> building libdmabroker and dmabroker (release) in $target_dir"
cargo build --manifest-path "$root/Cargo.toml" --release --target-dir "$target_dir" \
    -p dmabroker-capi -p dmabroker-cli
out=$target_dir/release
for f in libdmabroker_capi.so libdmabroker_capi.a dmabroker; do
    [[ -f $out/$f ]] || { echo "install.sh: the build did not produce $out/$f" >&2; exit 1; }
done

version=$(cargo pkgid --manifest-path "$root/Cargo.toml" -p dmabroker-capi | sed 's/.*[#@]//')
major=${version%%.*}
# What a program linking libdmabroker.a also needs on glibc (the output of
# rustc's --print native-static-libs for this crate; examples/c/run.sh
# checks it by linking an example statically).
libs_private=${DMABROKER_LIBS_PRIVATE:-"-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"}

echo "==> installing $version to $stage"
install -d "$stage/lib/pkgconfig" "$stage/lib/.debug" "$stage/include" "$stage/bin"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The shared library: its debug info (about 90% of the 14 MB cargo makes,
# profile.release has debug = 1) goes to a separate file that the stripped
# library names by .gnu_debuglink (gdb looks in lib/.debug/ next to it).
so=libdmabroker.so.$version
objcopy --only-keep-debug "$out/libdmabroker_capi.so" "$work/$so.debug"
objcopy --strip-debug --strip-unneeded --add-gnu-debuglink="$work/$so.debug" \
    "$out/libdmabroker_capi.so" "$work/$so"
install -m 0755 "$work/$so" "$stage/lib/$so"
install -m 0644 "$work/$so.debug" "$stage/lib/.debug/$so.debug"
ln -sfn "libdmabroker.so.$version" "$stage/lib/libdmabroker.so.$major"
ln -sfn "libdmabroker.so.$major" "$stage/lib/libdmabroker.so"
# The static library: cargo's archive exports every Rust symbol it holds
# (about 6900: std, core, alloc, rustix, serde, rust_eh_personality), which
# collide with another Rust static library in the same program. Link its
# members into one relocatable object, keep only the C API global, drop
# the debug info and the embedded LLVM bitcode (.llvmbc). The cost: a
# program gets the whole object (as with the .so) instead of the members it
# references; -Wl,--gc-sections removes what it does not use.
readelf -sW "$out/libdmabroker_capi.a" | awk '$5 == "GLOBAL" && $7 != "UND" && $8 ~ /^dmabroker_/ {print $8}' |
    sort -u >"$work/keep.txt"
[[ -s $work/keep.txt ]] || { echo "install.sh: no dmabroker_* symbol in $out/libdmabroker_capi.a" >&2; exit 1; }
ld -r --whole-archive "$out/libdmabroker_capi.a" -o "$work/dmabroker.o"
objcopy --strip-debug --strip-unneeded --remove-section=.llvmbc --remove-section=.llvmcmd \
    --keep-global-symbols="$work/keep.txt" "$work/dmabroker.o"
rm -f "$work/libdmabroker.a"
ar rcsD "$work/libdmabroker.a" "$work/dmabroker.o"
install -m 0644 "$work/libdmabroker.a" "$stage/lib/libdmabroker.a"
install -m 0644 "$root/crates/dmabroker-capi/include/dmabroker.h" "$stage/include/dmabroker.h"
install -m 0755 "$out/dmabroker" "$stage/bin/dmabroker"
sed -e "s|@PREFIX@|$(sed_escape "$prefix")|g" -e "s|@VERSION@|$(sed_escape "$version")|g" \
    -e "s|@LIBS_PRIVATE@|$(sed_escape "$libs_private")|g" \
    "$root/crates/dmabroker-capi/dmabroker.pc.in" >"$stage/lib/pkgconfig/dmabroker.pc"
chmod 0644 "$stage/lib/pkgconfig/dmabroker.pc"

if [[ -d $root/systemd ]]; then
    install -d "$stage/lib/systemd/system"
    shopt -s nullglob
    for unit in "$root"/systemd/*.service "$root"/systemd/*.socket; do
        # Point the units at the command as installed (they say /usr/bin/dmabroker,
        # or @bindir@).
        sed -e "s|@bindir@|$(sed_escape "$prefix/bin")|g" \
            -e "s|/usr/bin/dmabroker|$(sed_escape "$prefix/bin/dmabroker")|g" \
            "$unit" >"$stage/lib/systemd/system/$(basename "$unit")"
        chmod 0644 "$stage/lib/systemd/system/$(basename "$unit")"
    done
    shopt -u nullglob
fi

echo "==> installed:"
(cd "$stage" && find . \( -type f -o -type l \) | sort | sed 's|^\./|    |')
cat <<MSG
Build C programs with:
    PKG_CONFIG_PATH=$prefix/lib/pkgconfig cc prog.c \$(pkg-config --cflags --libs dmabroker)
and run them with LD_LIBRARY_PATH=$prefix/lib (or link with -Wl,-rpath,$prefix/lib).
MSG
