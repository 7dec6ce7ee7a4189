#!/usr/bin/env bash
# The dmabroker GStreamer plugin in the test VM, on GStreamer 1.26 (the VM's
# Debian trixie userland), with dma-buf pools:
#   1. the plugin built against GStreamer 1.26 in the userland's root used
#      as a build sysroot (vm/userland.sh chroot; cargo target dir
#      target/gst-trixie, so rebuilds are incremental), the .so stripped
#      into target/gst-vm/plugins/;
#   then, in the VM (vm/run.sh --userland, kernel 6.12 by default):
#   2. gst-inspect-1.0 dmabroker / dmabrokersink / dmabrokersrc with no
#      warning on 1.26;
#   3. videotestsrc -> dmabrokersink heap=dma-heap/system (root) and
#      dmabrokersrc verify=true as uid 65534 (granted), separate processes:
#      every frame verified against the producer's checksum, 0 copies;
#      the consumer negotiated video/x-raw(memory:DMABuf), format=DMA_DRM,
#      drm-format=NV12 by itself;
#   4. the same frames read by GStreamer itself through the dma-buf memory
#      (dmabrokersrc ! DMA_DRM caps ! filesink) equal videotestsrc's output
#      byte for byte;
#   5. the same with udmabuf frames (heap=udmabuf: memfd pages exported
#      through /dev/udmabuf): the consumer, another process and uid,
#      receives memory:DMABuf (DMA_DRM) buffers and verifies every frame;
#   6. padded dma-buf frames (stride-align=256): videotestsrc writes through
#      the pool's video meta, the consumer reads strides 768 in its own and
#      verifies every frame;
#   7. v4l2src device=/dev/video0 (vivid) io-mode=dmabuf-import: vivid
#      captures straight into the pool's dma-bufs (0 copies counted by the
#      sink), a consumer in another process verifies every frame.
#
#   gst/tests/vm.sh [vm/run.sh options, e.g. --kernel 7]
#   gst/tests/vm.sh --guest          (what runs inside the VM)
# Needs root (the chroot). On a fresh clone vm/userland.sh builds the root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD
t0=$(date +%s)
target=x86_64-unknown-linux-gnu
cli=$root/target/$target/release/dmabroker
plugins=$root/target/gst-vm/plugins
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

guest() {
    [[ ${DMABROKER_VM:-} == 1 ]] || fail "--guest runs inside the VM (gst/tests/vm.sh without --guest boots it)"
    export GST_PLUGIN_PATH=$plugins
    work=$(mktemp -d /tmp/dmabroker-gstvm.XXXXXX)
    chmod 0777 "$work"
    export GST_REGISTRY=$work/registry-root.bin
    mkdir -p "$work/nobody" && chown 65534:65534 "$work/nobody"
    pids=()
    cleanup() {
        for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
        wait 2>/dev/null || true
    }
    trap cleanup EXIT
    as_nobody() {
        setpriv --reuid 65534 --regid 65534 --clear-groups \
            env GST_REGISTRY="$work/nobody/registry.bin" GST_PLUGIN_PATH="$GST_PLUGIN_PATH" HOME="$work/nobody" "$@"
    }
    step() { printf '\n--- %s (%d s)\n' "$*" $(($(date +%s) - t0)); }
    stats() { grep -o "$1-stats[^;]*" "$2" | tail -1; }

    step "gst-inspect-1.0 on $(gst-inspect-1.0 --version | sed -n 's/^GStreamer //p' | head -1)"
    case $(gst-inspect-1.0 --version | sed -n 's/^GStreamer \([0-9]*\.[0-9]*\).*/\1/p' | head -1) in
    1.2[4-9] | 1.[3-9]*) ;;
    *) fail "the guest's GStreamer is older than 1.24: $(gst-inspect-1.0 --version)" ;;
    esac
    out=$(gst-inspect-1.0 dmabroker 2>&1) || fail "gst-inspect-1.0 dmabroker: $out"
    grep -q dmabrokersink <<<"$out" && grep -q dmabrokersrc <<<"$out" || fail "elements missing: $out"
    for e in dmabroker dmabrokersink dmabrokersrc; do
        out=$(gst-inspect-1.0 "$e" 2>&1) || fail "gst-inspect-1.0 $e: $out"
        if grep -qiE 'warning|critical|\*\* ' <<<"$out"; then fail "gst-inspect-1.0 $e warns: $out"; fi
    done
    echo "ok: dmabroker, dmabrokersink, dmabrokersrc inspect clean"

    sock=$work/broker.sock
    "$cli" serve --socket "$sock" >"$work/broker.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
    [[ -S $sock ]] || fail "broker did not start: $(cat "$work/broker.log")"

    local n=60 caps="video/x-raw,format=NV12,width=640,height=480,framerate=30/1"
    step "$n frames 640x480 NV12 in dma-heap/system frames, producer root, consumer uid 65534, every frame verified"
    gst-launch-1.0 -m videotestsrc num-buffers=$n pattern=ball ! "$caps" ! \
        dmabrokersink broker-socket="$sock" pool=cam0 heap=dma-heap/system grants=uid=65534:ro checksum=true \
        wait-for-consumers=1 consumer-timeout=60000 >"$work/producer.log" 2>&1 &
    local producer=$!
    pids+=($producer)
    as_nobody gst-launch-1.0 -m -v dmabrokersrc broker-socket="$sock" pool=cam0 verify=true reconnect=false timeout=60000 ! \
        fakesink >"$work/consumer.log" 2>&1 || fail "consumer failed: $(tail -20 "$work/consumer.log")"
    wait "$producer" || fail "producer failed: $(tail -20 "$work/producer.log")"
    stats dmabrokersrc "$work/consumer.log"
    stats dmabrokersink "$work/producer.log"
    grep -q "verified=(guint64)$n," "$work/consumer.log" || fail "not $n verified frames: $(stats dmabrokersrc "$work/consumer.log")"
    grep -q 'lost=(guint64)0' "$work/consumer.log" || fail "frames lost: $(stats dmabrokersrc "$work/consumer.log")"
    grep -q "zero-copy=(guint64)$n, copies=(guint64)0" "$work/producer.log" ||
        fail "expected $n zero-copy frames: $(stats dmabrokersink "$work/producer.log")"
    local negotiated
    negotiated=$(grep -o 'dmabrokersrc0.GstPad:src: caps = .*' "$work/consumer.log" | head -1)
    echo "consumer ${negotiated#dmabrokersrc0.GstPad:}"
    grep -q 'memory:DMABuf' <<<"$negotiated" && grep -q 'format=(string)DMA_DRM' <<<"$negotiated" &&
        grep -q 'drm-format=(string)NV12' <<<"$negotiated" ||
        fail "dmabrokersrc did not negotiate DMA_DRM NV12 caps: ${negotiated:-no caps line in $(tail -5 "$work/consumer.log")}"
    echo "ok: $n/$n dma-buf frames verified by uid 65534, 0 copies, DMA_DRM negotiated"

    n=20
    step "$n frames through GStreamer's own dma-buf mapping (DMA_DRM caps into filesink) equal videotestsrc's bytes"
    gst-launch-1.0 -q videotestsrc num-buffers=$n pattern=smpte ! "$caps" ! filesink location="$work/ref.nv12" >/dev/null ||
        fail "writing the reference frames"
    gst-launch-1.0 -m dmabrokersrc broker-socket="$sock" pool=cam1 reconnect=false timeout=60000 ! \
        'video/x-raw(memory:DMABuf),format=DMA_DRM,drm-format=NV12' ! filesink location="$work/out.nv12" \
        >"$work/drm-consumer.log" 2>&1 &
    local consumer=$!
    pids+=($consumer)
    gst-launch-1.0 -m videotestsrc num-buffers=$n pattern=smpte ! "$caps" ! \
        dmabrokersink broker-socket="$sock" pool=cam1 heap=dma-heap/system wait-for-consumers=1 consumer-timeout=60000 \
        >"$work/drm-producer.log" 2>&1 || fail "producer failed: $(tail "$work/drm-producer.log")"
    wait "$consumer" || fail "DMA_DRM consumer failed: $(tail "$work/drm-consumer.log")"
    cmp "$work/ref.nv12" "$work/out.nv12" || fail "the frames filesink read through the dma-bufs differ from videotestsrc's"
    echo "ok: $n frames, $(stat -c %s "$work/out.nv12") bytes, equal"

    n=60
    step "$n frames 640x480 NV12 in udmabuf frames, producer root, consumer uid 65534 (memory:DMABuf), every frame verified"
    [[ -c /dev/udmabuf ]] || fail "no /dev/udmabuf in the guest (CONFIG_UDMABUF)"
    as_nobody gst-launch-1.0 -m -v dmabrokersrc broker-socket="$sock" pool=udma verify=true reconnect=false timeout=60000 ! \
        fakesink >"$work/udma-consumer.log" 2>&1 &
    consumer=$!
    pids+=($consumer)
    GST_DEBUG=dmabrokersink:4 gst-launch-1.0 -m videotestsrc num-buffers=$n pattern=ball ! "$caps" ! \
        dmabrokersink broker-socket="$sock" pool=udma heap=udmabuf grants=uid=65534:ro checksum=true \
        wait-for-consumers=1 consumer-timeout=60000 >"$work/udma.log" 2>&1 ||
        fail "udmabuf producer failed: $(tail -20 "$work/udma.log")"
    wait "$consumer" || fail "udmabuf consumer failed: $(tail -20 "$work/udma-consumer.log")"
    grep -o 'pool `udma`: .* from [^ ]*' "$work/udma.log" | head -1
    stats dmabrokersink "$work/udma.log"
    stats dmabrokersrc "$work/udma-consumer.log"
    grep -q 'pool `udma`: .* from udmabuf' "$work/udma.log" ||
        fail "the pool's frames are not udmabuf: $(grep -o 'pool `udma`.*' "$work/udma.log")"
    negotiated=$(grep -o 'dmabrokersrc0.GstPad:src: caps = .*' "$work/udma-consumer.log" | head -1)
    echo "consumer ${negotiated#dmabrokersrc0.GstPad:}"
    grep -q 'memory:DMABuf' <<<"$negotiated" || fail "the udmabuf consumer did not negotiate memory:DMABuf: $negotiated"
    grep -q "zero-copy=(guint64)$n, copies=(guint64)0" "$work/udma.log" ||
        fail "expected $n zero-copy udmabuf frames: $(stats dmabrokersink "$work/udma.log")"
    grep -q "verified=(guint64)$n," "$work/udma-consumer.log" && grep -q 'lost=(guint64)0' "$work/udma-consumer.log" ||
        fail "not $n verified udmabuf frames: $(stats dmabrokersrc "$work/udma-consumer.log")"
    echo "ok: $n/$n udmabuf frames as memory:DMABuf, verified by uid 65534, 0 copies"

    n=30
    step "$n padded dma-buf frames (stride-align=256, 640x480 NV12: strides 768), consumer uid 65534 reads them through its video meta, every frame verified"
    GST_DEBUG=dmabrokersrc:4 as_nobody gst-launch-1.0 -m dmabrokersrc broker-socket="$sock" pool=padded verify=true reconnect=false \
        timeout=60000 ! fakesink >"$work/pad-consumer.log" 2>&1 &
    consumer=$!
    pids+=($consumer)
    gst-launch-1.0 -m videotestsrc num-buffers=$n pattern=ball ! "$caps" ! \
        dmabrokersink broker-socket="$sock" pool=padded heap=dma-heap/system stride-align=256 grants=uid=65534:ro \
        checksum=true wait-for-consumers=1 consumer-timeout=60000 >"$work/pad.log" 2>&1 ||
        fail "padded producer failed: $(tail -20 "$work/pad.log")"
    wait "$consumer" || fail "padded consumer failed: $(tail -20 "$work/pad-consumer.log")"
    grep -o 'strides \[[0-9, ]*\]' "$work/pad-consumer.log" | head -1 | sed 's/^/consumer: /'
    stats dmabrokersink "$work/pad.log"
    stats dmabrokersrc "$work/pad-consumer.log"
    grep -q 'strides \[768, 768\]' "$work/pad-consumer.log" || fail "the consumer did not read 768-byte strides"
    grep -q "zero-copy=(guint64)$n, copies=(guint64)0" "$work/pad.log" ||
        fail "expected $n zero-copy padded frames: $(stats dmabrokersink "$work/pad.log")"
    grep -q "verified=(guint64)$n," "$work/pad-consumer.log" && grep -q 'copies=(guint64)0' "$work/pad-consumer.log" ||
        fail "not $n verified padded frames: $(stats dmabrokersrc "$work/pad-consumer.log")"
    echo "ok: $n padded dma-buf frames (strides 768) zero-copy, verified by uid 65534"

    n=30
    local vcaps="video/x-raw,format=NV12,width=640,height=480"
    step "v4l2src (vivid /dev/video0) io-mode=dmabuf-import into the pool's dma-bufs, $n frames, consumer uid 65534"
    [[ -c /dev/video0 ]] || fail "no /dev/video0: vivid is not loaded"
    as_nobody gst-launch-1.0 -m dmabrokersrc broker-socket="$sock" pool=vivid verify=true reconnect=false timeout=60000 ! \
        fakesink >"$work/vivid-consumer.log" 2>&1 &
    consumer=$!
    pids+=($consumer)
    GST_DEBUG=v4l2bufferpool:5 gst-launch-1.0 -m v4l2src device=/dev/video0 io-mode=dmabuf-import num-buffers=$n ! "$vcaps" ! \
        dmabrokersink broker-socket="$sock" pool=vivid heap=dma-heap/system buffers=8 grants=uid=65534:ro checksum=true \
        wait-for-consumers=1 consumer-timeout=60000 >"$work/vivid.log" 2>&1 ||
        fail "v4l2src producer failed: $(tail -20 "$work/vivid.log")"
    wait "$consumer" || fail "vivid consumer failed: $(tail -20 "$work/vivid-consumer.log")"
    # v4l2src's own word that the driver got V4L2_MEMORY_DMABUF buffers.
    grep -o 'requesting [0-9]* DMABUF buffers' "$work/vivid.log" | head -1 | grep . ||
        fail "v4l2src did not request DMABUF (import) buffers: $(grep -i -m5 'v4l2bufferpool' "$work/vivid.log")"
    stats dmabrokersink "$work/vivid.log"
    stats dmabrokersrc "$work/vivid-consumer.log"
    grep -q "zero-copy=(guint64)$n, copies=(guint64)0" "$work/vivid.log" ||
        fail "expected $n frames captured into the pool: $(stats dmabrokersink "$work/vivid.log")"
    grep -q "verified=(guint64)$n," "$work/vivid-consumer.log" ||
        fail "not $n verified frames: $(stats dmabrokersrc "$work/vivid-consumer.log")"
    echo "ok: vivid wrote $n frames into dmabroker dma-bufs (0 copies), uid 65534 verified $n"
    echo "gst VM tests passed in $(($(date +%s) - t0)) s"
}

if [[ ${1:-} == --guest ]]; then
    guest
    exit 0
fi

[[ -x $cli ]] || RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --target "$target" -p dmabroker-cli
# The plugin against the VM's GStreamer 1.26: built in the userland's own
# root (its headers, libraries, pkg-config), the Rust toolchain bound in.
ts=$(date +%s)
# No debug info (it is stripped anyway: 10 % less compile time from
# nothing); strip comes from the root's binutils, which its gcc pulls in.
mkdir -p "$plugins"
vm/userland.sh chroot bash -c "set -e
    command -v cargo >/dev/null || { echo 'no cargo in the userland chroot: it binds ~/.cargo and ~/.rustup (rustup'\''s layout); install Rust with rustup' >&2; exit 2; }
    cd '$root/gst'
    env -u RUSTFLAGS CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_TARGET_DIR='$root/target/gst-trixie' \
        cargo build --release --lib --locked --quiet
    strip -o '$plugins/libgstdmabroker.so' '$root/target/gst-trixie/release/libgstdmabroker.so'" ||
    fail "building the plugin in the userland root (vm/userland.sh chroot) failed (output above)"
echo "plugin built against the userland's GStreamer in $(($(date +%s) - ts)) s" \
    "($(($(stat -c %s "$plugins/libgstdmabroker.so") / 1024)) KiB stripped)"
vm/run.sh --userland --timeout "${DMABROKER_VM_TIMEOUT:-600}" "$@" --dir "$plugins" --file "$cli" \
    --file "$root/gst/tests/vm.sh" --run "bash $root/gst/tests/vm.sh --guest"
echo "gst VM stage: $(($(date +%s) - t0)) s"
