#!/usr/bin/env bash
# Frames that leave the machine, through GStreamer's own network elements:
# two network namespaces made here ("host A" and "host B", joined by a veth
# pair, no route anywhere else), each with its own broker.
#
#   A: videotestsrc ! dmabrokersink pool=camA
#      dmabrokersrc pool=camA ! rtpvrawpay ! udpsink host=B      (RTP/UDP over the veth)
#   B: udpsrc ! rtpvrawdepay ! dmabrokersink pool=camB
#      dmabrokersrc pool=camB ! filesink                          (the verifying consumer)
#
# The consumer's frames must equal, byte for byte, what videotestsrc makes
# for the same frames (animation-mode=frames is deterministic).
#
#   gst/tests/netns.sh [PATH-TO-dmabroker-CLI]      (root; GST_PLUGIN_PATH as for host.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD
cli=${1:-$root/target/x86_64-unknown-linux-gnu/release/dmabroker}
t0=$(date +%s)
fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP gst-netns: $*"; exit 0; }
command -v gst-launch-1.0 >/dev/null || skip "gst-launch-1.0 missing"
command -v ip >/dev/null || skip "ip (iproute2) missing"
[[ $(id -u) == 0 ]] || skip "needs root for network namespaces"
gst-inspect-1.0 rtpvrawpay >/dev/null 2>&1 || skip "rtpvrawpay missing (gstreamer1.0-plugins-good)"
if [[ -z ${GST_PLUGIN_PATH:-} ]]; then
    (cd gst && env -u RUSTFLAGS cargo build --release --quiet)
    export GST_PLUGIN_PATH=$root/gst/target/release
fi
work=$(mktemp -d /tmp/dmabroker-netns.XXXXXX)
export GST_REGISTRY=$work/registry.bin
a=dmabroker-a-$$
b=dmabroker-b-$$
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    # `ip netns exec` may fork: end whatever still runs in the namespaces
    # (the brokers), or it outlives the test.
    for ns in "$a" "$b"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    done
    wait 2>/dev/null || true
    ip netns del "$a" 2>/dev/null || true
    ip netns del "$b" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$a" || skip "cannot create network namespaces here"
ip netns add "$b"
ip link add "va$$" netns "$a" type veth peer name "vb$$" netns "$b"
ip -n "$a" addr add 10.77.0.1/30 dev "va$$"
ip -n "$b" addr add 10.77.0.2/30 dev "vb$$"
for ns in "$a" "$b"; do ip -n "$ns" link set lo up; done
ip -n "$a" link set "va$$" up
ip -n "$b" link set "vb$$" up
in_a() { ip netns exec "$a" "$@"; }
in_b() { ip netns exec "$b" "$@"; }
in_a ping -c1 -W2 10.77.0.2 >/dev/null 2>&1 || echo "(no ping; trying RTP anyway)"

n=90
w=320 h=240
caps="video/x-raw,format=I420,width=$w,height=$h,framerate=30/1"
# The reference frames.
gst-launch-1.0 -q videotestsrc num-buffers=$n pattern=ball animation-mode=frames ! "$caps" ! filesink location="$work/ref.i420"

in_a "$cli" serve --socket "$work/a.sock" >"$work/broker-a.log" 2>&1 &
pids+=($!)
in_b "$cli" serve --socket "$work/b.sock" >"$work/broker-b.log" 2>&1 &
pids+=($!)
for s in a b; do
    for _ in $(seq 100); do [[ -S $work/$s.sock ]] && break; sleep 0.05; done
    [[ -S $work/$s.sock ]] || fail "broker $s did not start"
done

rtp="application/x-rtp,media=video,clock-rate=90000,encoding-name=RAW,sampling=YCbCr-4:2:0,depth=(string)8,width=(string)$w,height=(string)$h,colorimetry=(string)BT601-5,payload=96"
# B: the verifying consumer first (it waits for camB), then the receiver.
in_b gst-launch-1.0 -m dmabrokersrc broker-socket="$work/b.sock" pool=camB num-buffers=$n timeout=30000 reconnect=false ! \
    filesink location="$work/out.i420" >"$work/consumer-b.log" 2>&1 &
consumer=$!
pids+=($consumer)
in_b gst-launch-1.0 -m udpsrc address=10.77.0.2 port=5004 caps="$rtp" buffer-size=4194304 ! \
    queue max-size-buffers=0 max-size-bytes=0 max-size-time=0 ! rtpvrawdepay ! \
    dmabrokersink broker-socket="$work/b.sock" pool=camB wait-for-consumers=1 >"$work/receiver-b.log" 2>&1 &
receiver=$!
pids+=($receiver)
sleep 0.5
# A: the sender attaches to camA (waiting for it), then the camera.
in_a gst-launch-1.0 -m dmabrokersrc broker-socket="$work/a.sock" pool=camA timeout=30000 reconnect=false ! \
    rtpvrawpay ! udpsink host=10.77.0.2 port=5004 sync=false >"$work/sender-a.log" 2>&1 &
sender=$!
pids+=($sender)
in_a gst-launch-1.0 -m videotestsrc num-buffers=$n is-live=true pattern=ball animation-mode=frames ! "$caps" ! \
    dmabrokersink broker-socket="$work/a.sock" pool=camA wait-for-consumers=1 >"$work/camera-a.log" 2>&1 ||
    fail "camera A: $(tail "$work/camera-a.log")"
wait "$sender" || fail "sender A: $(tail "$work/sender-a.log")"
wait "$consumer" || fail "consumer B: $(tail "$work/consumer-b.log")"
kill "$receiver" 2>/dev/null || true
grep -o 'dmabrokersink-stats[^;]*' "$work/camera-a.log" | tail -1 | sed 's/^/A camera: /'
grep -o 'dmabrokersrc-stats[^;]*' "$work/sender-a.log" | tail -1 | sed 's/^/A sender: /'
grep -o 'dmabrokersrc-stats[^;]*' "$work/consumer-b.log" | tail -1 | sed 's/^/B consumer: /'
cmp "$work/ref.i420" "$work/out.i420" || fail "B's frames differ from A's ($(stat -c %s "$work/out.i420") of $(stat -c %s "$work/ref.i420") bytes)"
echo "ok: $n frames A -> RTP/UDP -> B, byte-exact"
echo "gst netns test passed in $(($(date +%s) - t0)) s"
