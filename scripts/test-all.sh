#!/usr/bin/env bash
# Every test of dmabroker, the way CI runs them:
#   1. one release build, statically linked (so the same test binaries also
#      run inside the VM's initramfs, which has no libc);
#   2. the whole suite on this host (`cargo test`);
#   3. the kernel suite inside a QEMU VM booting Debian's 6.12 kernel, which
#      has dma-heaps, udmabuf, vivid (V4L2) and vgem (DRM); there a test that
#      would skip for want of a kernel feature fails instead.
#
#   scripts/test-all.sh            host + VM
#   scripts/test-all.sh --host     host only
#   scripts/test-all.sh --vm       VM only (after a build)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=all
case "${1:-}" in
--host) mode=host ;;
--vm) mode=vm ;;
"") ;;
*) echo "usage: $0 [--host|--vm]" >&2; exit 2 ;;
esac

target=x86_64-unknown-linux-gnu
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
step() { printf '\n==> %s\n' "$*"; }

t0=$(date +%s)
step "build (release, static, target $target)"
cargo build --release --target "$target" --workspace --bins
# Test executables, listed by cargo itself (no guessing at hashed names).
mapfile -t tests < <(cargo test --release --target "$target" --workspace --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["target"]["name"] + " " + m["executable"])
')
echo "built in $(($(date +%s) - t0)) s: ${#tests[@]} test executables"

if [[ $mode != vm ]]; then
    step "host tests"
    # CI installs every user-space tool a test needs (cc, valgrind, ...):
    # a test that would skip for want of one fails instead.
    DMABROKER_REQUIRE_TOOLS=1 cargo test --release --target "$target" --workspace
    # The same suite with debug assertions and overflow checks on: input
    # that would panic only there (an `as` cast a debug_assert guards, an
    # overflowing add) is a bug too.
    step "host tests, debug profile"
    t1=$(date +%s)
    DMABROKER_REQUIRE_TOOLS=1 cargo test --target "$target" --workspace
    echo "debug-profile host tests in $(($(date +%s) - t1)) s"
    step "Python bindings (python/: wheel, fresh venv, pytest)"
    scripts/python-tests.sh
fi

if [[ $mode != vm ]]; then
    # The GStreamer plugin (gst/, its own workspace): a cdylib, so built
    # without the static RUSTFLAGS; then its pipelines as users run them.
    step "GStreamer plugin (gst/): unit tests, host pipelines (cross-uid, zero copy), RTP across network namespaces"
    tg=$(date +%s)
    (cd gst && env -u RUSTFLAGS cargo test --release --quiet && env -u RUSTFLAGS cargo build --release --quiet --lib)
    GST_PLUGIN_PATH="$PWD/gst/target/release" gst/tests/host.sh "$PWD/target/$target/release/dmabroker"
    GST_PLUGIN_PATH="$PWD/gst/target/release" gst/tests/netns.sh "$PWD/target/$target/release/dmabroker"
    echo "GStreamer stage: $(($(date +%s) - tg)) s"
fi

if [[ $mode != host ]]; then
    step "VM tests (QEMU, Debian 6.12 kernel: dma-heap, udmabuf, vivid, vgem)"
    # The suites that touch kernel interfaces the host lacks, plus the
    # library's own suites so every heap is exercised on the real kernel.
    vm_bins=()
    for t in "${tests[@]}"; do
        name=${t%% *}
        exe=${t#* }
        case "$name" in
        vm_* | heap_conformance | cpu_access | seals | hugetlb | bad_input | dmabroker | dmabroker_sys) vm_bins+=("$exe") ;;
        esac
    done
    # The C API in the guest: a static C program that queues dmabroker
    # buffers into vivid (examples/c/vivid_capture.c).
    c_out="$PWD/target/vm-c"
    examples/c/vm-build.sh "$c_out"
    vm_bins+=("$c_out/vivid_capture")
    # vm_cli (the CLI's VM tests) runs the `dmabroker` binary from the path
    # cargo compiled into it: --file puts it at that same path in the guest.
    vm/run.sh --timeout "${DMABROKER_VM_TIMEOUT:-900}" \
        --file "$PWD/target/$target/release/dmabroker" "${vm_bins[@]}"
fi
if [[ $mode != host ]]; then
    step "Python bindings in the VM (dma-heap, udmabuf; the VM's Debian userland)"
    scripts/python-vm-tests.sh
fi
echo "all tests passed in $(($(date +%s) - t0)) s"
