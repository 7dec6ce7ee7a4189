#!/usr/bin/env bash
# Every test of dmabroker, the way CI runs them:
#   1. one release build, statically linked (so the same test binaries also
#      run inside the VM's initramfs, which has no libc);
#   2. the whole suite on this host (`cargo test`, release and debug), the
#      Python bindings (wheel + pytest) and the GStreamer plugin's pipelines;
#   3. the kernel suite inside a QEMU VM, once per kernel of the matrix
#      (Debian trixie's 6.12 and sid's 7.x, vm/kernels.conf), which have
#      dma-heaps, udmabuf, vivid (V4L2) and vgem (DRM); there a test that
#      would skip for want of a kernel feature fails instead (a feature newer
#      than the running kernel skips visibly: vm/README.md);
#   4. the Python suite and a smoke test of real programs in the VM's Debian
#      userland (GStreamer, lavapipe, numpy).
#
# DMABROKER_VM_KERNELS (default "6.12 7") chooses the kernels of stage 3.
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
    # Licences, bans and sources of every dependency of the three
    # workspaces (deny.toml); advisories need the network (scripts/deny.sh).
    step "cargo deny (deny.toml: licenses, bans, sources)"
    td=$(date +%s)
    scripts/deny.sh
    echo "cargo deny: $(($(date +%s) - td)) s"
fi

if [[ $mode != host ]]; then
    # The suites that touch kernel interfaces the host lacks, plus the
    # library's own suites so every heap is exercised on the real kernel.
    vm_bins=()
    for t in "${tests[@]}"; do
        name=${t%% *}
        exe=${t#* }
        case "$name" in
        # Need libvulkan (dlopen): a dynamic build, their own stage below.
        vm_vulkan | vm_vulkan_cli | vm_vulkan_capi) ;;
        vm_* | heap_conformance | cpu_access | seals | hugetlb | bad_input | dmabroker | dmabroker_sys) vm_bins+=("$exe") ;;
        esac
    done
    # The C API in the guest: a static C program that queues dmabroker
    # buffers into vivid (examples/c/vivid_capture.c).
    c_out="$PWD/target/vm-c"
    examples/c/vm-build.sh "$c_out"
    vm_bins+=("$c_out/vivid_capture")
    # Each kernel of the matrix runs the whole VM suite; every verdict is
    # printed at the end, and any failure fails the run.
    verdicts=()
    vm_failed=0
    # Kernels from Debian's registry and the Debian userland, fetched/built
    # once into vm/cache/ (seconds when cached). A failure here (Debian's
    # mirror unreachable, a package gone) is a failure: the VM never skips.
    for k in ${DMABROKER_VM_KERNELS:-6.12 7}; do
        ts=$SECONDS
        step "VM kernel $k (vm/cache/)"
        vm/run.sh --kernel "$k" --prepare
        echo "VM kernel $k: $((SECONDS - ts)) s"
    done
    ts=$SECONDS
    step "VM userland: Debian trixie root (vm/userland.packages, vm/cache/)"
    vm/userland.sh build
    echo "VM userland: $((SECONDS - ts)) s"
    vm_stage() { # label, then the command (vm/run.sh or a script around it)
        local label=$1 ts=$SECONDS rc=0 v
        shift
        step "$label"
        "$@" 2>&1 | tee target/vm-stage.log || rc=$?
        v=$(grep -E '^VM: ' target/vm-stage.log | tail -n1)
        v=${v:-VM: no verdict (setup error, exit $rc)}
        verdicts+=("$(printf '%-34s %s (%d s)' "$label:" "${v#VM: }" $((SECONDS - ts)))")
        ((rc == 0)) || vm_failed=1
        echo "$label: $((SECONDS - ts)) s"
    }
    for k in ${DMABROKER_VM_KERNELS:-6.12 7}; do
        # vm_cli (the CLI's VM tests) runs the `dmabroker` binary from the
        # path cargo compiled into it: --file puts it at that same path.
        # Kernel 7 boots with dma-heap memcg accounting on (vm_charge: charged
        # to the client's cgroup); 6.12 has no such switch.
        append=""
        [[ $k == 6.* ]] || append="dma_heap.mem_accounting=1"
        vm_stage "VM tests, kernel $k" env DMABROKER_VM_APPEND="$append" \
            vm/run.sh --kernel "$k" --timeout "${DMABROKER_VM_TIMEOUT:-900}" \
            --file "$PWD/target/$target/release/dmabroker" "${vm_bins[@]}"
    done
    # The project's own kernel (vm/kernel-build.sh, vm/kernel/dmabroker.config:
    # CMA heap, vkms, vim2m, vicodec, sw_sync; built once into
    # /var/cache/dmabroker/, ~15 min on 2 cores): the kernel suites that need
    # what Debian's kernels lack, booted with cma= so the area has a known
    # size. DMABROKER_VM_PROJ=0 leaves it out.
    if [[ ${DMABROKER_VM_PROJ:-1} == 1 ]]; then
        ts=$SECONDS
        step "VM kernel proj (vm/kernel-build.sh build)"
        vm/kernel-build.sh build
        echo "VM kernel proj: $((SECONDS - ts)) s (build: $(grep -h '^total_seconds' "$(vm/kernel-build.sh path)/BUILD-INFO" | cut -d' ' -f2) s when first built)"
        proj_bins=()
        for t in "${tests[@]}"; do
            case "${t%% *}" in
            vm_cma | vm_sw_sync | vm_pool_fences | vm_m2m | vm_cli | vm_heaps | vm_kms | vm_kms_cli) proj_bins+=("${t#* }") ;;
            esac
        done
        vm_stage "VM tests, kernel proj" env DMABROKER_VM_APPEND="cma=192M" \
            vm/run.sh --kernel proj --timeout "${DMABROKER_VM_TIMEOUT:-900}" \
            --file "$PWD/target/$target/release/dmabroker" "${proj_bins[@]}"
    fi
    # Real programs from the Debian trixie userland (vm/userland.packages),
    # chrooted in the guest: GStreamer, Vulkan on lavapipe, numpy.
    vm_stage "VM userland smoke, kernel 6.12" vm/run.sh --kernel 6.12 --userland --timeout 600 \
        --run 'gst-inspect-1.0 --version && gst-launch-1.0 videotestsrc num-buffers=10 ! fakesink' \
        --run 'vulkaninfo --summary >/tmp/vk.txt 2>&1; s=$?; cat /tmp/vk.txt; [ $s = 0 ] && grep -E "deviceName|driverName" /tmp/vk.txt | grep -qi -e llvmpipe -e lavapipe' \
        --run 'python3 -c "import numpy; print(\"numpy\", numpy.__version__)" && python3 -m pytest --version'
    # The Python suite in the guest's trixie userland (dma-heap, udmabuf).
    vm_stage "Python in the VM, kernel 6.12" scripts/python-vm-tests.sh --kernel 6.12
    # The GStreamer plugin built against the userland's GStreamer 1.26 (its
    # root as a sysroot), then in the guest: dma-heap pools across processes,
    # v4l2src (vivid) io-mode=dmabuf-import with zero copy, DMA_DRM caps.
    vm_stage "GStreamer in the VM, kernel 6.12" gst/tests/vm.sh --kernel 6.12
    # dmabroker-vulkan's tests built dynamically in the userland root, run
    # on lavapipe in the guest: vivid -> VkImage import -> flipped copy.
    vm_stage "Vulkan (lavapipe) in the VM, kernel 6.12" scripts/vulkan-vm-tests.sh --kernel 6.12
    step "VM verdicts"
    printf '  %s\n' "${verdicts[@]}"
    ((vm_failed == 0)) || {
        echo "VM stage FAILED (see the verdicts above; serial logs in vm/out/)"
        exit 1
    }
fi
echo "all tests passed in $(($(date +%s) - t0)) s"
