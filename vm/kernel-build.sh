#!/usr/bin/env bash
# Build the project's own kernel from Debian's linux-source package with the
# config fragment vm/kernel/dmabroker.config (CMA heap, vkms, vim2m, vicodec,
# sw_sync, vivid, vgem, udmabuf, system heap; everything built in).
#
#   vm/kernel-build.sh build    build unless cached; prints the cache dir last
#   vm/kernel-build.sh path     the cache dir if built (exit 1 if not)
#   vm/kernel-build.sh key      the cache key (source version + fragment hash)
#
# Cache: $DMABROKER_KERNEL_CACHE (default /var/cache/dmabroker, outside the
# checkout so every clone on the machine reuses it) /kernel-<version>-<hash>/
# with vmlinuz (the bzImage), config, BUILD-INFO, and the files vm/run.sh reads
# (KVER, PKGS, FORMAT, BUILTIN, modules/*.list, empty: nothing is a module).
# The hash covers the fragment and this script. The build runs in a temporary
# directory beside the cache and is renamed into place only when complete, so
# an interrupted build never leaves a half cache.
#
# Environment: DMABROKER_KERNEL_SOURCE (default linux-source-7.2=7.2.13-1),
# DMABROKER_KERNEL_JOBS (default: nproc).
# Host packages: gcc make bc flex bison libelf-dev libssl-dev xz-utils
# (vm/install-deps.sh installs them).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment="$here/kernel/dmabroker.config"
source_spec=${DMABROKER_KERNEL_SOURCE:-linux-source-7.2=7.2.13-1}
cache_root=${DMABROKER_KERNEL_CACHE:-/var/cache/dmabroker}
jobs=${DMABROKER_KERNEL_JOBS:-$(nproc)}

die() {
    echo "vm/kernel-build.sh: error: $*" >&2
    exit 2
}
[[ -f "$fragment" ]] || die "$fragment missing"
src_pkg=${source_spec%%=*}
src_ver=${source_spec#*=}
[[ "$src_ver" != "$source_spec" ]] || die "DMABROKER_KERNEL_SOURCE must be PACKAGE=VERSION (e.g. linux-source-7.2=7.2.13-1)"
upstream=${src_ver%-*}
hash=$(cat "$fragment" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)
key="$upstream-$hash"
dir="$cache_root/kernel-$key"

ready() { [[ -f "$1/vmlinuz" && -f "$1/config" && -f "$1/BUILD-INFO" && -f "$1/KVER" ]]; }

case "${1:-}" in
key)
    echo "$key"
    exit 0
    ;;
path)
    ready "$dir" || exit 1
    echo "$dir"
    exit 0
    ;;
build) ;;
*)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac

cached() {
    ready "$dir" || return 1
    echo "vm/kernel-build.sh: cached: $dir ($(grep -m1 '^build_seconds' "$dir/BUILD-INFO" || true))" >&2
    echo "$dir"
}
cached && exit 0

# One build per key at a time: a second caller (another clone's CI, a test
# run beside it) waits for the first and then finds its cache.
mkdir -p "$cache_root" || die "cannot create $cache_root (set DMABROKER_KERNEL_CACHE to a writable directory)"
exec 9>"$cache_root/.lock-$key"
if ! flock -n 9; then
    echo "vm/kernel-build.sh: another build of $key is running; waiting for it (lock $cache_root/.lock-$key)" >&2
    flock 9
fi
cached && exit 0

for t in gcc make bc flex bison xz perl; do
    command -v "$t" >/dev/null || die "'$t' not found: run vm/install-deps.sh (apt-get install gcc make bc flex bison libelf-dev libssl-dev xz-utils)"
done
[[ -f /usr/include/libelf.h || -f /usr/include/gelf.h ]] || die "libelf headers missing: apt-get install libelf-dev"

tmp=$(mktemp -d "$cache_root/.build-$key.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
start=$SECONDS

# ---- source: Debian's linux-source .deb (our own apt state, vm/debian-apt.sh)
echo "vm/kernel-build.sh: fetching $source_spec" >&2
if ! (cd "$tmp" && "$here/debian-apt.sh" download "$source_spec" 2>&1 | grep -v 'unsandboxed' >&2) ||
    ! ls "$tmp"/*.deb >/dev/null 2>&1; then
    "$here/debian-apt.sh" update >&2 || die "vm/debian-apt.sh update failed: is deb.debian.org reachable?"
    (cd "$tmp" && "$here/debian-apt.sh" download "$source_spec" 2>&1 | grep -v 'unsandboxed' >&2) || true
    ls "$tmp"/*.deb >/dev/null 2>&1 ||
        die "apt-get download $source_spec failed (vm/debian-apt.sh policy $src_pkg lists the versions Debian has; set DMABROKER_KERNEL_SOURCE)"
fi
deb=$(ls "$tmp"/*.deb | head -n1)
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './usr/src/linux-source-*.tar.xz' ||
    die "$deb holds no usr/src/linux-source-*.tar.xz"
tarball=$(ls "$tmp"/usr/src/linux-source-*.tar.xz | head -n1)
tar -xJf "$tarball" -C "$tmp"
rm -f "$deb" "$tarball"
src=$(ls -d "$tmp"/linux-source-*/ | head -n1)
src=${src%/}
[[ -f "$src/Makefile" ]] || die "no kernel tree in $tarball"
fetched=$SECONDS

# ---- one local change to the tree: vivid registers its video nodes first,
# so /dev/video0 and /dev/video1 are vivid's as with the stock kernels (where
# vivid.ko is loaded alone); vicodec and vim2m follow.
mk="$src/drivers/media/test-drivers/Makefile"
grep -q '^obj-$(CONFIG_VIDEO_VIVID) += vivid/$' "$mk" || die "$mk: no vivid line to move (the tree changed: update vm/kernel-build.sh)"
{
    echo 'obj-$(CONFIG_VIDEO_VIVID) += vivid/'
    grep -v '^obj-$(CONFIG_VIDEO_VIVID) += vivid/$' "$mk"
} >"$mk.new" && mv "$mk.new" "$mk"

# ---- config: allnoconfig + the fragment (comments stripped), then check
frag="$tmp/fragment.config"
sed 's/#.*//; s/[[:space:]]*$//; /^$/d' "$fragment" >"$frag"
mk_args=(-C "$src" -s ARCH=x86_64 KBUILD_BUILD_USER=dmabroker KBUILD_BUILD_HOST=vm-kernel-build)
make "${mk_args[@]}" allnoconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$frag" >"$tmp/merge.log" 2>&1 ||
    die "merge_config.sh failed (see below)$(echo; cat "$tmp/merge.log")"
"$src/scripts/config" --file "$src/.config" --set-str LOCALVERSION "-dmabroker" --disable LOCALVERSION_AUTO
make "${mk_args[@]}" olddefconfig >/dev/null
missing=()
while IFS= read -r line; do
    opt=${line%%=*}
    want=${line#*=}
    got=$(grep -m1 -E "^$opt=|^# $opt is not set" "$src/.config" || true)
    [[ "$got" == "$opt=$want" ]] || missing+=("$opt=$want (got: ${got:-absent})")
done <"$frag"
if ((${#missing[@]})); then
    printf '  %s\n' "${missing[@]}" >&2
    die "make olddefconfig dropped ${#missing[@]} option(s) of $fragment (listed above): a dependency is missing from the fragment"
fi
echo "vm/kernel-build.sh: config ok ($(grep -c '=y' "$src/.config") options =y, 0 =m); building bzImage with $jobs jobs" \
    "(load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
configured=$SECONDS

# ---- build
load_before=$(cut -d' ' -f1 /proc/loadavg)
if ! nice -n 5 make "${mk_args[@]}" -j"$jobs" bzImage >"$tmp/build.log" 2>&1; then
    tail -n 40 "$tmp/build.log" >&2
    die "the kernel build failed (last lines above)"
fi
built=$SECONDS
kver=$(make "${mk_args[@]}" kernelrelease)

out="$tmp/out"
mkdir -p "$out/modules"
cp "$src/arch/x86/boot/bzImage" "$out/vmlinuz"
cp "$src/.config" "$out/config"
echo "$kver" >"$out/KVER"
echo "$src_pkg $src_ver (built by vm/kernel-build.sh, fragment $hash)" >"$out/PKGS"
echo 2 >"$out/FORMAT" # vm/run.sh's cache format
: >"$out/BUILTIN"     # no modules: vm/run.sh loads none
: >"$out/modules/load.list"
: >"$out/modules/userland.list"
{
    echo "source $src_pkg $src_ver"
    echo "kernelrelease $kver"
    echo "fragment $fragment sha256/12 (with the script) $hash"
    echo "gcc $(gcc -dumpfullversion)"
    echo "jobs $jobs"
    echo "load_before $load_before"
    echo "load_after $(cut -d' ' -f1 /proc/loadavg)"
    echo "fetch_seconds $((fetched - start))"
    echo "config_seconds $((configured - fetched))"
    echo "build_seconds $((built - configured))"
    echo "total_seconds $((built - start))"
    echo "bzimage_bytes $(stat -c %s "$out/vmlinuz")"
    echo "built_at $(date -u +%FT%TZ)"
} >"$out/BUILD-INFO"
rm -rf "$dir.old"
[[ ! -e "$dir" ]] || mv "$dir" "$dir.old"
mv "$out" "$dir"
rm -rf "$dir.old"
echo "vm/kernel-build.sh: built $kver in $((built - start))s (fetch $((fetched - start))s, make $((built - configured))s," \
    "$jobs jobs, load $load_before before): $dir" >&2
echo "$dir"
