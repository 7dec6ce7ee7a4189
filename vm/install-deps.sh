#!/usr/bin/env bash
# Install what vm/run.sh needs on a Debian/Ubuntu host: QEMU (TCG is enough),
# a static busybox for the initramfs, kmod (depmod/modinfo), xz, zstd and cpio
# for the kernels; debootstrap, squashfs-tools and Debian's archive keyring
# for the userland (vm/userland.sh). All from the host's own apt sources.
# Idempotent and quiet: does nothing when every tool is already present.
set -euo pipefail

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
# Only busybox-static works inside the initramfs (no libc there).
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
    need+=(busybox-static)
fi
# vm/kernel-build.sh (the project's own kernel, --kernel proj).
for t in make:make gcc:gcc bc:bc flex:flex bison:bison perl:perl; do
    command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
[[ -f /usr/include/libelf.h ]] || need+=(libelf-dev)
[[ -f /usr/include/openssl/ssl.h ]] || need+=(libssl-dev)
command -v depmod >/dev/null || [[ -x /sbin/depmod || -x /usr/sbin/depmod ]] || need+=(kmod)
command -v xz >/dev/null || need+=(xz-utils)
command -v cpio >/dev/null || need+=(cpio)
command -v zstd >/dev/null || need+=(zstd)
command -v debootstrap >/dev/null || [[ -x /usr/sbin/debootstrap ]] || need+=(debootstrap)
command -v mksquashfs >/dev/null || [[ -x /usr/sbin/mksquashfs ]] || need+=(squashfs-tools)
[[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] || need+=(debian-archive-keyring)

if ((${#need[@]} == 0)); then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "vm/install-deps.sh: no apt-get; install by hand: ${need[*]}" >&2
    exit 1
fi
sudo=()
((EUID == 0)) || sudo=(sudo)
echo "vm/install-deps.sh: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >/dev/null
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
