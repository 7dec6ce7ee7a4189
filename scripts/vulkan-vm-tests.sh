#!/usr/bin/env bash
# dmabroker-vulkan's tests (crates/dmabroker-vulkan/tests/vm_vulkan.rs) and
# the CLI's `alloc --for vulkan:N` and `demo --through vulkan:0` (vivid frames
# flipped on the device, consumers waiting on sync_files; crates/dmabroker-cli/tests/vm_vulkan_cli.rs,
# feature vulkan), and the C API's dmabroker_constraints_vulkan
# (crates/dmabroker-capi/tests/vm_vulkan_capi.rs) in the QEMU VM on Mesa's lavapipe:
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
    build() { # log name, then cargo test arguments
        local log=\$1; shift
        env -u RUSTFLAGS CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_TARGET_DIR='$root/target/vulkan-trixie' \
            cargo test --release --locked \"\$@\" --no-run 2>&1 | tee '$out/'\$log.log | grep -v '^ *Compiling' || true
        sed -n 's/.*Executable .*(\\(.*\\)).*/\\1/p' '$out/'\$log.log >'$out/'\$log.exe
        test -s '$out/'\$log.exe
        cp \"\$(head -1 '$out/'\$log.exe)\" '$out/'\$log
    }
    build vm_vulkan -p dmabroker-vulkan --test vm_vulkan
    # The CLI with --for vulkan:N (feature vulkan; no bpf-ledger: no clang
    # in the userland), and its test, which runs target/vulkan-trixie/release/dmabroker.
    build vm_vulkan_cli -p dmabroker-cli --no-default-features --features vulkan --test vm_vulkan_cli
    # The C API's dmabroker_constraints_vulkan (feature vulkan).
    build vm_vulkan_capi -p dmabroker-capi --features vulkan --test vm_vulkan_capi" ||
    { echo "FAIL: building vm_vulkan / vm_vulkan_cli / vm_vulkan_capi in the userland root (vm/userland.sh chroot) failed (output above)" >&2; exit 1; }
echo "vm_vulkan, vm_vulkan_cli and vm_vulkan_capi built against the userland in $(($(date +%s) - t0)) s"
vm/run.sh --userland --timeout "${DMABROKER_VM_TIMEOUT:-600}" "$@" \
    --file "$root/target/vulkan-trixie/release/dmabroker" "$out/vm_vulkan" "$out/vm_vulkan_cli" "$out/vm_vulkan_capi" -- --nocapture
echo "vulkan VM stage: $(($(date +%s) - t0)) s"
