#!/usr/bin/env bash
# dmabroker-vulkan's tests (crates/dmabroker-vulkan/tests/vm_vulkan.rs) in
# the QEMU VM on Mesa's lavapipe:
#   1. the test binary built dynamically (it dlopens libvulkan.so.1, which a
#      +crt-static binary cannot) in the Debian trixie userland root used as
#      a build sysroot (vm/userland.sh chroot; cargo target dir
#      target/vulkan-trixie, so rebuilds are incremental);
#   2. run in the VM with that userland (vm/run.sh --userland: lavapipe,
#      vivid, dma-heap), where a skip is a failure.
#
#   scripts/vulkan-vm-tests.sh [vm/run.sh options, e.g. --kernel 7]
# Needs root (the chroot). On a fresh clone vm/userland.sh builds the root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
t0=$(date +%s)
out=$root/target/vulkan-vm
mkdir -p "$out"
vm/userland.sh root >/dev/null
vm/userland.sh chroot bash -c "set -e
    command -v cargo >/dev/null || { echo 'no cargo in the userland chroot: it binds ~/.cargo and ~/.rustup (rustup'\''s layout); install Rust with rustup' >&2; exit 2; }
    cd '$root'
    env -u RUSTFLAGS CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_TARGET_DIR='$root/target/vulkan-trixie' \
        cargo test --release --locked -p dmabroker-vulkan --test vm_vulkan --no-run 2>&1 | tee '$out/build.log' | grep -v '^ *Compiling' || true
    sed -n 's/.*Executable .*(\(.*\)).*/\1/p' '$out/build.log' >'$out/exe'
    test -s '$out/exe'
    cp \"\$(head -1 '$out/exe')\" '$out/vm_vulkan'" ||
    { echo "FAIL: building vm_vulkan in the userland root (vm/userland.sh chroot) failed (output above)" >&2; exit 1; }
echo "vm_vulkan built against the userland in $(($(date +%s) - t0)) s"
vm/run.sh --userland --timeout "${DMABROKER_VM_TIMEOUT:-600}" "$@" "$out/vm_vulkan" -- --nocapture
echo "vulkan VM stage: $(($(date +%s) - t0)) s"
