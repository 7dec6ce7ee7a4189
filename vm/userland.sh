#!/usr/bin/env bash
# The VM's userland: a Debian trixie root file system built with debootstrap
# from Debian's registry, holding the packages of vm/userland.packages
# (GStreamer 1.26, Mesa's lavapipe, vulkan-tools, Python 3 with numpy and
# pytest, strace, ...) and vm/sysroot.packages (gcc, pkg-config, GStreamer's
# -dev packages). vm/run.sh --userland mounts its squashfs image in the
# guest; on the host the same root serves as a build sysroot.
#
#   vm/userland.sh build            build the root and its image unless cached;
#                                   prints the image's path
#   vm/userland.sh path             the image's path (builds it when missing)
#   vm/userland.sh root             the root directory's path (builds it too)
#   vm/userland.sh chroot [CMD...]  a shell (or CMD) in the root on the host,
#                                   with /proc, /sys, /dev, /tmp, this checkout
#                                   and the Rust toolchain (~/.cargo, ~/.rustup)
#                                   bind-mounted at the same paths; needs root
#
# Cache: vm/cache/userland-<key>/{root/,root.squashfs,packages.txt,KEY}, where
# <key> hashes the package lists (comments and order ignored) and this recipe's
# version: editing vm/userland.packages rebuilds it, older roots are removed.
# Environment: DMABROKER_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache="$here/cache"
list="$here/userland.packages"
build_list="$here/sysroot.packages"
mirror=${DMABROKER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=trixie
# Bump when the recipe below changes what ends up in the image.
recipe=1

die() {
    echo "vm/userland.sh: error: $*" >&2
    exit 2
}
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

packages() { sed 's/#.*//' "$list" "$build_list" | tr -s ' \t' '\n' | sed '/^$/d' | sort -u; }
key=$( (
    echo "recipe=$recipe suite=$suite"
    packages
) | sha256sum | cut -c1-12)
dir="$cache/userland-$key"

ready() { [[ -f "$dir/KEY" && -f "$dir/root.squashfs" && -d "$dir/root/usr" ]]; }

build() {
    ready && return 0
    ((EUID == 0)) || die "building the userland needs root (debootstrap); run as root or with sudo"
    command -v debootstrap >/dev/null || [[ -x /usr/sbin/debootstrap ]] ||
        die "debootstrap not found: apt-get install debootstrap (or run vm/install-deps.sh)"
    command -v mksquashfs >/dev/null || die "mksquashfs not found: apt-get install squashfs-tools"
    [[ -f /usr/share/debootstrap/scripts/$suite ]] ||
        die "this debootstrap does not know '$suite': install debootstrap >= 1.0.128+nmu2+deb12u1"
    local pkgs tmp t0 log
    pkgs=$(packages | paste -sd, -)
    [[ -n "$pkgs" ]] || die "$list names no package"
    mkdir -p "$cache"
    tmp="$cache/userland-$key.tmp"
    log="$cache/userland-$key.log"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    t0=$SECONDS
    echo "vm/userland.sh: debootstrap $suite (minbase) from $mirror, then apt-get install of" \
        "$(packages | wc -l) packages (key $key; log in $log)" >&2
    # debootstrap lays down a minimal base only (its --include resolver is
    # fragile with GStreamer's dependency graph); apt inside the new root
    # installs the list, with trixie-updates and trixie-security as a trixie
    # user has them.
    if ! PATH="$PATH:/usr/sbin:/sbin" nice -n 5 debootstrap --variant=minbase --components=main \
        --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
        "$suite" "$tmp/root" "$mirror" >"$log" 2>&1; then
        tail -n 25 "$log" >&2
        [[ -f "$tmp/root/debootstrap/debootstrap.log" ]] && tail -n 25 "$tmp/root/debootstrap/debootstrap.log" >&2
        die "debootstrap of Debian $suite failed (log above, full log in $log; the root is kept in $tmp).
  A download error means $mirror was unreachable or mid-sync: retry, or set
  DMABROKER_DEBIAN_MIRROR to another Debian mirror."
    fi
    echo "vm/userland.sh: debootstrap done in $((SECONDS - t0)) s" >&2
    local sec=${mirror%/debian}/debian-security
    [[ -n "${DMABROKER_DEBIAN_SECURITY:-}" ]] && sec=$DMABROKER_DEBIAN_SECURITY
    cat >"$tmp/root/etc/apt/sources.list" <<SRC
deb $mirror $suite main
deb $mirror $suite-updates main
deb $sec $suite-security main
SRC
    # No daemons start inside the build root.
    printf '#!/bin/sh\nexit 101\n' >"$tmp/root/usr/sbin/policy-rc.d"
    chmod 755 "$tmp/root/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$tmp/root/etc/resolv.conf" 2>/dev/null || true
    # shellcheck disable=SC2046
    if ! nice -n 5 unshare --mount --propagation private -- bash -c '
        set -e
        r=$1; shift
        mount -t proc proc "$r/proc"
        mount --rbind /dev "$r/dev"
        mount -t tmpfs tmpfs "$r/tmp"
        chroot "$r" env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 apt-get -q update
        chroot "$r" env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 apt-get -q -y \
            -o Dpkg::Use-Pty=0 -o Acquire::Retries=3 --no-install-recommends install "$@"
        chroot "$r" apt-get clean
    ' apt "$tmp/root" $(packages) >>"$log" 2>&1; then
        grep -E '^(E:|W:|dpkg: error)' "$log" | tail -n 15 >&2 || true
        tail -n 15 "$log" >&2
        die "apt-get install in the new $suite root failed (log above, full log in $log; the root is kept in $tmp).
  'Unable to locate package' means a name in $list is not a $suite package: fix the list.
  A download error means $mirror was unreachable or mid-sync: retry, or set DMABROKER_DEBIAN_MIRROR."
    fi
    rm -f "$tmp/root/usr/sbin/policy-rc.d" "$tmp/root/etc/resolv.conf"
    echo "vm/userland.sh: packages installed, $((SECONDS - t0)) s in all" >&2
    local r="$tmp/root"
    # What the image does not need: downloaded .debs, apt lists, docs.
    rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r"/usr/share/doc/* \
        "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/debootstrap
    echo dmabroker-vm >"$r/etc/hostname"
    chroot "$r" dpkg-query -W -f='${Package} ${Version}\n' >"$tmp/packages.txt"
    # Each mksquashfs thread is a compressor; stay on the 2 cores CI has.
    nice -n 5 mksquashfs "$r" "$tmp/root.squashfs" -comp zstd -Xcompression-level 6 \
        -processors 2 -noappend -quiet -no-progress >>"$log" 2>&1 ||
        die "mksquashfs failed (see $log)"
    echo "$key" >"$tmp/KEY"
    rm -rf "$cache"/userland-*[!p]/ 2>/dev/null || true # older keys (not .tmp)
    rm -rf "$dir"
    mv "$tmp" "$dir"
    echo "vm/userland.sh: userland $key built in $((SECONDS - t0)) s:" \
        "$(du -sm "$dir/root" | cut -f1) MiB root, $(($(stat -c %s "$dir/root.squashfs") / 1048576)) MiB image" >&2
}

sysroot_chroot() {
    ((EUID == 0)) || die "chroot needs root"
    command -v unshare >/dev/null || die "unshare not found (package util-linux)"
    local binds=("$repo") h
    h=${HOME:-/root}
    [[ -d "$h/.cargo" ]] && binds+=("$h/.cargo")
    [[ -d "$h/.rustup" ]] && binds+=("$h/.rustup")
    # A toolchain installed elsewhere (CARGO_HOME/RUSTUP_HOME set) too.
    local d
    for d in "${CARGO_HOME:-}" "${RUSTUP_HOME:-}"; do
        [[ -n "$d" && -d "$d" && "$d" != "$h/.cargo" && "$d" != "$h/.rustup" ]] && binds+=("$d")
    done
    # A private mount namespace: the binds vanish with the shell, even on a crash.
    # The toolchain keeps the host's PATH entries for cargo and rustc.
    exec unshare --mount --propagation private -- bash -c '
        set -e
        r=$1; shift
        nb=$1; shift
        mount -t proc proc "$r/proc"
        mount --rbind /sys "$r/sys"
        mount --rbind /dev "$r/dev"
        # /tmp before the binds: a checkout under /tmp (a CI clone) stays
        # visible instead of vanishing under the fresh tmpfs.
        mount -t tmpfs tmpfs "$r/tmp"
        for ((i = 0; i < nb; i++)); do
            mkdir -p "$r$1"; mount --rbind "$1" "$r$1"; shift
        done
        # A new file, never a write into the old one: a worktree'"'"'s vm/cache
        # may be a hard-linked copy of another'"'"'s.
        rm -f "$r/etc/resolv.conf"
        cp /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
        cd "$r"
        (($#)) || set -- bash -l
        exec chroot "$r" env HOME="${HOME:-/root}" \
            PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
            RUSTUP_HOME="${RUSTUP_HOME:-${HOME:-/root}/.rustup}" \
            CARGO_HOME="${CARGO_HOME:-${HOME:-/root}/.cargo}" \
            "$@"
    ' chroot "$dir/root" "${#binds[@]}" "${binds[@]}" "$@"
}

cmd=${1:-}
shift || true
case "$cmd" in
build)
    build
    echo "$dir/root.squashfs"
    ;;
path)
    build
    echo "$dir/root.squashfs"
    ;;
root)
    build
    echo "$dir/root"
    ;;
key) echo "$key" ;;
chroot)
    build
    sysroot_chroot "$@"
    ;;
-h | --help | "")
    usage
    [[ -n "$cmd" ]]
    ;;
*) die "unknown command '$cmd' (see --help)" ;;
esac
