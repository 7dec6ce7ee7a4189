#!/usr/bin/env bash
# Install dmabroker to a temporary prefix (scripts/install.sh), build the C
# examples against it the way a user would (pkg-config), and run them.
#
# usage: examples/c/run.sh [--valgrind] [--keep]
#   --valgrind  run every example under valgrind --error-exitcode=1 --leak-check=full
#   --keep      keep the temporary prefix and binaries (the path is printed)
#
# Checks, in order:
#   1. scripts/install.sh --prefix TMP installs the library, header, .pc, command;
#   2. dmabroker.pc is sane (pkg-config --modversion/--cflags/--libs agree with
#      the install; without pkg-config, its fields are checked by hand and the
#      examples are built with explicit -I/-L flags);
#   3. the header compiles on its own as C99 -pedantic (and as C++ when c++ exists);
#   4. every example builds with -Wall -Wextra -Werror, linked
#      against libdmabroker.so (rpath), and alloc_map also against libdmabroker.a
#      (which checks the .pc's Libs.private);
#   5. each binary runs and exits 0; alloc_publish and import_check talk to a
#      broker (PREFIX/bin/dmabroker serve on a socket in the temporary dir)
#      started here and stopped at the end; pool_demo forks a producer and a
#      consumer of a frame pool; pool_keep does the same with a pool made for
#      a pixel format by constraints, whose consumer holds several frames at
#      once; vivid_capture captures from /dev/video0 into
#      dmabroker buffers (it prints SKIP and passes where there is none: the
#      real run is in the VM, examples/c/vm-build.sh + vm/run.sh).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

use_valgrind=0
keep=0
for arg in "$@"; do
    case $arg in
    --valgrind) use_valgrind=1 ;;
    --keep) keep=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument '$arg'" >&2; exit 2 ;;
    esac
done

cc=${CC:-cc}
command -v "$cc" >/dev/null || { echo "run.sh: no C compiler ($cc)" >&2; exit 2; }
if ((use_valgrind)) && ! command -v valgrind >/dev/null; then
    echo "run.sh: --valgrind given but valgrind is not installed" >&2
    exit 2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dmabroker-c-examples.XXXXXX")
if ((keep)); then
    echo "run.sh: keeping $tmp"
else
    trap 'rm -rf "$tmp"' EXIT
fi
prefix=$tmp/prefix
build=$tmp/build
mkdir -p "$build"
step() { printf '\n==> %s\n' "$*"; }

step "install to $prefix"
if ! "$root/scripts/install.sh" --prefix "$prefix" >"$tmp/install.log" 2>&1; then
    cat "$tmp/install.log" >&2
    echo "run.sh: scripts/install.sh failed" >&2
    exit 1
fi
tail -n 4 "$tmp/install.log" | sed -n '1p'
for f in lib/libdmabroker.so lib/libdmabroker.a include/dmabroker.h lib/pkgconfig/dmabroker.pc bin/dmabroker; do
    [[ -e $prefix/$f ]] || { echo "run.sh: install did not produce $f" >&2; exit 1; }
done

step "check dmabroker.pc"
pc=$prefix/lib/pkgconfig/dmabroker.pc
# Fields, read by hand (works without pkg-config).
field() { sed -n "s/^$1[:=] *//p" "$pc"; }
[[ $(field prefix) == "$prefix" ]] || { echo "run.sh: dmabroker.pc prefix is '$(field prefix)', not $prefix" >&2; exit 1; }
[[ -n $(field Version) ]] || { echo "run.sh: dmabroker.pc has no Version" >&2; exit 1; }
grep -q '^Libs: -L${libdir} -ldmabroker$' "$pc" || { echo "run.sh: dmabroker.pc Libs is wrong" >&2; exit 1; }
grep -q '^Cflags: -I${includedir}$' "$pc" || { echo "run.sh: dmabroker.pc Cflags is wrong" >&2; exit 1; }
grep -q '^Libs.private: -l' "$pc" || { echo "run.sh: dmabroker.pc Libs.private is empty" >&2; exit 1; }
libs_private=$(field Libs.private)
if command -v pkg-config >/dev/null; then
    export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
    version=$(pkg-config --modversion dmabroker)
    cflags=$(pkg-config --cflags dmabroker)
    libs=$(pkg-config --libs dmabroker)
    static_libs=$(pkg-config --static --libs-only-l dmabroker | sed 's/-ldmabroker//')
    [[ $cflags == *"-I$prefix/include"* ]] || { echo "run.sh: pkg-config --cflags gave '$cflags'" >&2; exit 1; }
    [[ $libs == *"-L$prefix/lib"*"-ldmabroker"* ]] || { echo "run.sh: pkg-config --libs gave '$libs'" >&2; exit 1; }
    echo "pkg-config: dmabroker $version, cflags '$cflags', libs '$libs'"
else
    echo "pkg-config not installed: checked the .pc by hand, building with explicit -I/-L flags"
    version=$(field Version)
    cflags="-I$prefix/include"
    libs="-L$prefix/lib -ldmabroker"
    static_libs=$libs_private
fi
[[ $version == "$("$prefix/bin/dmabroker" --version 2>/dev/null | awk '{print $NF}')" ]] ||
    echo "note: bin/dmabroker --version does not print $version"

step "header compiles on its own"
printf '#include <dmabroker.h>\nint main(void) { return dmabroker_version() == 0; }\n' >"$build/header.c"
# shellcheck disable=SC2086
"$cc" -std=c99 -Wall -Wextra -pedantic -Werror $cflags -c "$build/header.c" -o "$build/header.o"
echo "C99 -pedantic: ok"
if command -v c++ >/dev/null; then
    # shellcheck disable=SC2086
    c++ -x c++ -std=c++11 -Wall -Wextra -Werror $cflags -c "$build/header.c" -o "$build/header-cxx.o"
    echo "C++11: ok"
fi

step "build the examples"
examples=(alloc_map bad_args alloc_publish import_check pool_demo pool_keep vivid_capture)
for ex in "${examples[@]}"; do
    # shellcheck disable=SC2086
    "$cc" -std=c11 -O1 -g -Wall -Wextra -Werror "$here/$ex.c" $cflags $libs -Wl,-rpath,"$prefix/lib" -o "$build/$ex"
    echo "$ex: $(readelf -d "$build/$ex" | grep -o 'libdmabroker[^]]*' | head -1)"
done
# shellcheck disable=SC2086
"$cc" -std=c11 -O1 -g -Wall -Wextra -Werror "$here/alloc_map.c" $cflags "$prefix/lib/libdmabroker.a" $static_libs -o "$build/alloc_map_static"
echo "alloc_map_static: linked against libdmabroker.a with Libs.private '$static_libs'"
if readelf -d "$build/alloc_map_static" | grep -q libdmabroker; then
    echo "run.sh: alloc_map_static still needs libdmabroker.so" >&2
    exit 1
fi

runner=()
if ((use_valgrind)); then
    runner=(valgrind -q --error-exitcode=1 --suppressions="$here/valgrind.supp" --leak-check=full --errors-for-leak-kinds=definite,indirect,possible --show-leak-kinds=definite,indirect,possible)
fi
step "start a broker"
export DMABROKER_SOCKET=$tmp/broker.sock
"$prefix/bin/dmabroker" serve --socket "$DMABROKER_SOCKET" >"$tmp/broker.log" 2>&1 &
broker_pid=$!
stop_broker() { kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null; true; }
if ((keep)); then trap stop_broker EXIT; else trap 'stop_broker; rm -rf "$tmp"' EXIT; fi
for _ in $(seq 100); do [[ -S $DMABROKER_SOCKET ]] && break; sleep 0.05; done
[[ -S $DMABROKER_SOCKET ]] || { cat "$tmp/broker.log" >&2; echo "run.sh: the broker did not start" >&2; exit 1; }
echo "broker pid $broker_pid on $DMABROKER_SOCKET"

all=(alloc_map alloc_map_static bad_args alloc_publish import_check pool_demo pool_keep vivid_capture)
failed=0
for ex in "${all[@]}"; do
    step "run $ex${runner:+ under valgrind}"
    # RUST_BACKTRACE=0: bad_args panics on purpose; one line of it is enough.
    if (cd "$build" && RUST_BACKTRACE=0 "${runner[@]}" "./$ex"); then
        echo "$ex: passed"
    else
        echo "$ex: FAILED (exit $?)"
        failed=$((failed + 1))
    fi
done
echo
echo "C examples: $((${#all[@]} - failed)) passed, $failed failed${runner:+ (under valgrind)}"
exit $((failed > 0))
