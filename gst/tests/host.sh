#!/usr/bin/env bash
# Host tests of the dmabroker GStreamer plugin (memfd pools, GStreamer 1.22+):
#   1. gst-inspect-1.0 dmabroker loads both elements with no warning;
#   2. videotestsrc -> dmabrokersink pool=cam0 (root) and dmabrokersrc
#      pool=cam0 verify=true in another process as uid 65534 (granted):
#      all 300 1080p NV12 frames arrive, each matching the producer's
#      checksum, and the producer counted 0 copies (upstream wrote into the
#      pool's frames);
#   3. a process of a uid without a grant is refused with the broker's message;
#   4. upstream that does not take the proposed pool (filesrc): frames are
#      copied once, the copies counted, and the consumer's output equals the
#      input byte for byte;
#   5. padded strides (stride-align=256) at 1918x1080: videotestsrc writes
#      through the pool's GstVideoMeta, zero copies, the consumer reads the
#      same strides in its video meta; the visible pixels of every frame
#      (converted to BGRx, which has no padding) equal videotestsrc's own;
#      to a consumer that reads no video meta, frames are copied into the
#      default layout, counted, and equal byte for byte;
#   6. drop-oldest with a slow consumer: lost frames counted;
#   7. the consumer survives a producer restart (reconnect).
#
#   gst/tests/host.sh [PATH-TO-dmabroker-CLI]
# Needs root (setpriv to another uid). Builds the plugin first unless
# GST_PLUGIN_PATH already names a build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD
cli=${1:-$root/target/x86_64-unknown-linux-gnu/release/dmabroker}
t0=$(date +%s)
fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP gst-host: $*"; exit 0; }

command -v gst-launch-1.0 >/dev/null || skip "gst-launch-1.0 missing (apt-get install gstreamer1.0-tools gstreamer1.0-plugins-base)"
[[ $(id -u) == 0 ]] || skip "needs root to run the consumer as another uid (setpriv)"
[[ -x $cli ]] || fail "no dmabroker CLI at $cli: cargo build --release --target x86_64-unknown-linux-gnu -p dmabroker-cli"

if [[ -z ${GST_PLUGIN_PATH:-} ]]; then
    (cd gst && env -u RUSTFLAGS cargo build --release --quiet)
    export GST_PLUGIN_PATH=$root/gst/target/release
fi
work=$(mktemp -d /tmp/dmabroker-gst.XXXXXX)
chmod 0755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
# A registry per uid, in a directory each can write.
export GST_REGISTRY=$work/registry-root.bin
mkdir -p "$work/nobody" && chown 65534:65534 "$work/nobody"
as_nobody() {
    setpriv --reuid 65534 --regid 65534 --clear-groups \
        env GST_REGISTRY="$work/nobody/registry.bin" GST_PLUGIN_PATH="$GST_PLUGIN_PATH" HOME="$work/nobody" "$@"
}
as_other() {
    setpriv --reuid 65533 --regid 65533 --clear-groups \
        env GST_REGISTRY="$work/nobody/registry-other.bin" GST_PLUGIN_PATH="$GST_PLUGIN_PATH" HOME="$work/nobody" "$@"
}
chmod 0777 "$work/nobody"

step() { printf '\n--- %s\n' "$*"; }

step "gst-inspect-1.0 dmabroker"
inspect=$(gst-inspect-1.0 dmabroker 2>&1) || fail "gst-inspect-1.0 dmabroker: $inspect"
grep -q dmabrokersink <<<"$inspect" || fail "no dmabrokersink in: $inspect"
grep -q dmabrokersrc <<<"$inspect" || fail "no dmabrokersrc in: $inspect"
for e in dmabrokersink dmabrokersrc; do
    out=$(gst-inspect-1.0 "$e" 2>&1) || fail "gst-inspect-1.0 $e: $out"
    if grep -qiE 'warning|critical' <<<"$out"; then fail "gst-inspect-1.0 $e warns: $out"; fi
done
echo "ok: both elements, no warnings"

sock=$work/broker.sock
"$cli" serve --socket "$sock" >"$work/broker.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
[[ -S $sock ]] || fail "broker did not start: $(cat "$work/broker.log")"
chmod 0777 "$work"

caps="video/x-raw,format=NV12,width=1920,height=1080,framerate=30/1"
step "300 frames 1080p NV12, producer root, consumer uid 65534 (granted), every frame verified"
gst-launch-1.0 -m videotestsrc num-buffers=300 pattern=ball ! "$caps" ! \
    dmabrokersink broker-socket="$sock" pool=cam0 grants=uid=65534:ro checksum=true wait-for-consumers=1 \
    >"$work/producer.log" 2>&1 &
producer=$!
pids+=($producer)
as_nobody gst-launch-1.0 -m dmabrokersrc broker-socket="$sock" pool=cam0 verify=true reconnect=false timeout=20000 ! fakesink \
    >"$work/consumer.log" 2>&1 || fail "consumer failed: $(tail -20 "$work/consumer.log")"
wait "$producer" || fail "producer failed: $(tail -20 "$work/producer.log")"
grep -o 'dmabrokersrc-stats[^;]*' "$work/consumer.log" | tail -1
grep -o 'dmabrokersink-stats[^;]*' "$work/producer.log" | tail -1
grep -q 'verified=(guint64)300' "$work/consumer.log" || fail "not 300 verified frames: $(grep -o 'dmabrokersrc-stats.*' "$work/consumer.log")"
grep -q 'lost=(guint64)0' "$work/consumer.log" || fail "frames lost: $(grep -o 'dmabrokersrc-stats.*' "$work/consumer.log")"
grep -q 'zero-copy=(guint64)300, copies=(guint64)0' "$work/producer.log" ||
    fail "expected 300 zero-copy frames: $(grep -o 'dmabrokersink-stats.*' "$work/producer.log")"
echo "ok: 300/300 frames verified by uid 65534, 0 copies"

step "a uid without a grant is refused with the broker's message"
gst-launch-1.0 videotestsrc is-live=true ! "$caps" ! \
    dmabrokersink broker-socket="$sock" pool=cam1 grants=uid=65534:ro >"$work/producer2.log" 2>&1 &
producer=$!
pids+=($producer)
for _ in $(seq 100); do
    if as_nobody gst-launch-1.0 dmabrokersrc broker-socket="$sock" pool=cam1 num-buffers=1 ! fakesink >/dev/null 2>&1; then break; fi
    sleep 0.1
done
if as_other gst-launch-1.0 dmabrokersrc broker-socket="$sock" pool=cam1 num-buffers=1 ! fakesink >"$work/refused.log" 2>&1; then
    fail "uid 65533 attached without a grant"
fi
grep -q 'grants nothing to uid 65533' "$work/refused.log" || fail "refusal without the broker's message: $(cat "$work/refused.log")"
grep -o 'pool `cam1`[^)]*' "$work/refused.log" | head -1
echo "ok: refused"
kill "$producer"; wait "$producer" 2>/dev/null || true

step "upstream that does not take the proposed pool (filesrc): each frame copied once, copies counted, frames intact"
gst-launch-1.0 videotestsrc num-buffers=30 pattern=smpte ! video/x-raw,format=NV12,width=320,height=240 ! \
    filesink location="$work/raw.nv12" >/dev/null 2>&1 || fail "writing raw frames"
as_nobody gst-launch-1.0 -m dmabrokersrc broker-socket="$sock" pool=cam2 verify=true reconnect=false timeout=20000 ! \
    filesink location="$work/nobody/out.nv12" >"$work/copy-consumer.log" 2>&1 &
consumer=$!
pids+=($consumer)
gst-launch-1.0 -m filesrc location="$work/raw.nv12" blocksize=115200 ! \
    rawvideoparse format=nv12 width=320 height=240 framerate=30/1 ! \
    dmabrokersink broker-socket="$sock" pool=cam2 grants=uid=65534 checksum=true wait-for-consumers=1 \
    >"$work/copy.log" 2>&1 || fail "copy producer failed: $(tail "$work/copy.log")"
wait "$consumer" || fail "copy consumer failed: $(tail "$work/copy-consumer.log")"
grep -o 'dmabrokersink-stats[^;]*' "$work/copy.log" | tail -1
grep -q 'frames=(guint64)30, zero-copy=(guint64)0, copies=(guint64)30' "$work/copy.log" ||
    fail "expected 30 copies: $(grep -o 'dmabrokersink-stats.*' "$work/copy.log")"
cmp "$work/raw.nv12" "$work/nobody/out.nv12" || fail "the consumer's frames differ from the producer's input"
echo "ok: 30 copies counted, the consumer's 30 frames equal the input byte for byte"

n=30
pcaps="video/x-raw,format=NV12,width=1918,height=1080,framerate=30/1"
step "padded strides (stride-align=256, 1918x1080 NV12): upstream writes through the pool's video meta, the consumer (uid 65534) reads the same strides; $n frames' visible pixels equal videotestsrc's"
gst-launch-1.0 -q videotestsrc num-buffers=$n pattern=ball ! "$pcaps" ! videoconvert ! video/x-raw,format=BGRx ! \
    filesink location="$work/ref.bgrx" >/dev/null 2>&1 || fail "writing the reference frames"
GST_DEBUG=dmabrokersrc:4 as_nobody gst-launch-1.0 -m dmabrokersrc broker-socket="$sock" pool=pad0 verify=true reconnect=false timeout=20000 ! \
    videoconvert ! video/x-raw,format=BGRx ! filesink location="$work/nobody/pad.bgrx" >"$work/pad-consumer.log" 2>&1 &
consumer=$!
pids+=($consumer)
GST_DEBUG=dmabrokersink:5 gst-launch-1.0 -m videotestsrc num-buffers=$n pattern=ball ! "$pcaps" ! \
    dmabrokersink broker-socket="$sock" pool=pad0 stride-align=256 grants=uid=65534:ro checksum=true wait-for-consumers=1 \
    >"$work/pad.log" 2>&1 || fail "padded producer failed: $(tail "$work/pad.log")"
wait "$consumer" || fail "padded consumer failed: $(tail "$work/pad-consumer.log")"
grep -o 'proposed the dmabroker pool.*' "$work/pad.log" | head -1
grep -o 'strides \[[0-9, ]*\]' "$work/pad-consumer.log" | head -1 | sed 's/^/consumer: /'
grep -o 'dmabrokersink-stats[^;]*' "$work/pad.log" | tail -1
grep -o 'dmabrokersrc-stats[^;]*' "$work/pad-consumer.log" | tail -1
grep -q 'proposed the dmabroker pool.*strides \[2048, 2048\], in a video meta' "$work/pad.log" ||
    fail "the sink did not propose 2048-byte strides in a video meta: $(grep -o 'proposed.*' "$work/pad.log")"
grep -q 'strides \[2048, 2048\]' "$work/pad-consumer.log" || fail "the consumer did not read 2048-byte strides"
grep -q "zero-copy=(guint64)$n, copies=(guint64)0" "$work/pad.log" ||
    fail "expected $n zero-copy padded frames: $(grep -o 'dmabrokersink-stats.*' "$work/pad.log")"
grep -q "verified=(guint64)$n," "$work/pad-consumer.log" && grep -q 'copies=(guint64)0' "$work/pad-consumer.log" ||
    fail "not $n verified frames without copies: $(grep -o 'dmabrokersrc-stats.*' "$work/pad-consumer.log")"
cmp "$work/ref.bgrx" "$work/nobody/pad.bgrx" || fail "the padded frames' visible pixels differ from videotestsrc's"
echo "ok: $n padded frames zero-copy (strides 2048), verified, visible pixels equal ($(stat -c %s "$work/ref.bgrx") bytes of BGRx)"

step "padded strides to a consumer that reads no video meta (filesink): copied into the default layout, counted, bytes equal"
gst-launch-1.0 -q videotestsrc num-buffers=$n pattern=smpte ! video/x-raw,format=NV12,width=1920,height=1080,framerate=30/1 ! \
    filesink location="$work/ref1920.nv12" >/dev/null 2>&1 || fail "writing the reference frames"
as_nobody gst-launch-1.0 -m dmabrokersrc broker-socket="$sock" pool=pad1 reconnect=false timeout=20000 ! \
    filesink location="$work/nobody/pad1920.nv12" >"$work/pad1-consumer.log" 2>&1 &
consumer=$!
pids+=($consumer)
gst-launch-1.0 -m videotestsrc num-buffers=$n pattern=smpte ! video/x-raw,format=NV12,width=1920,height=1080,framerate=30/1 ! \
    dmabrokersink broker-socket="$sock" pool=pad1 stride-align=256 grants=uid=65534:ro wait-for-consumers=1 \
    >"$work/pad1.log" 2>&1 || fail "padded producer failed: $(tail "$work/pad1.log")"
wait "$consumer" || fail "padded consumer failed: $(tail "$work/pad1-consumer.log")"
grep -o 'dmabrokersrc-stats[^;]*' "$work/pad1-consumer.log" | tail -1
grep -q "zero-copy=(guint64)$n, copies=(guint64)0" "$work/pad1.log" ||
    fail "expected $n zero-copy frames: $(grep -o 'dmabrokersink-stats.*' "$work/pad1.log")"
grep -q "copies=(guint64)$n" "$work/pad1-consumer.log" ||
    fail "expected $n copies on the consumer: $(grep -o 'dmabrokersrc-stats.*' "$work/pad1-consumer.log")"
cmp "$work/ref1920.nv12" "$work/nobody/pad1920.nv12" || fail "the default-layout copies differ from videotestsrc's frames"
echo "ok: $n frames copied into the default layout by the consumer, counted, equal byte for byte"

step "drop-oldest backpressure and a slow consumer: lost frames counted, the producer never waits"
as_nobody gst-launch-1.0 -m dmabrokersrc broker-socket="$sock" pool=cam4 reconnect=false timeout=20000 ! \
    identity sleep-time=20000 ! fakesink >"$work/slow.log" 2>&1 &
consumer=$!
pids+=($consumer)
gst-launch-1.0 -m videotestsrc num-buffers=200 ! video/x-raw,format=NV12,width=320,height=240 ! \
    dmabrokersink broker-socket="$sock" pool=cam4 grants=uid=65534 buffers=3 backpressure=drop-oldest wait-for-consumers=1 \
    >"$work/fast.log" 2>&1 || fail "fast producer failed: $(tail "$work/fast.log")"
wait "$consumer" || fail "slow consumer failed: $(tail "$work/slow.log")"
grep -o 'dmabrokersrc-stats[^;]*' "$work/slow.log" | tail -1
grep -qE 'lost=\(guint64\)[1-9]' "$work/slow.log" || fail "no lost frames counted: $(grep -o 'dmabrokersrc-stats.*' "$work/slow.log")"
echo "ok: lost frames counted"

step "the consumer reattaches when the producer restarts"
as_nobody gst-launch-1.0 -m dmabrokersrc broker-socket="$sock" pool=cam3 num-buffers=60 reconnect=true verify=true timeout=20000 ! fakesink \
    >"$work/reconnect.log" 2>&1 &
consumer=$!
pids+=($consumer)
sleep 0.3
for round in 1 2; do
    for _ in $(seq 50); do
        gst-launch-1.0 videotestsrc num-buffers=40 ! video/x-raw,format=NV12,width=320,height=240,framerate=200/1 ! \
            dmabrokersink broker-socket="$sock" pool=cam3 grants=uid=65534 checksum=true wait-for-consumers=1 \
            >"$work/restart$round.log" 2>&1 && break
        sleep 0.1
    done
done
wait "$consumer" || fail "reconnecting consumer failed: $(tail "$work/reconnect.log")"
grep -o 'dmabrokersrc-stats[^;]*' "$work/reconnect.log" | tail -1
grep -qE 'reconnects=\(guint64\)[1-9]' "$work/reconnect.log" || fail "no reconnect: $(tail "$work/reconnect.log")"
echo "ok: reattached"

echo "gst host tests passed in $(($(date +%s) - t0)) s"
