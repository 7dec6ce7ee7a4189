#!/usr/bin/env bash
# Two-process benchmark: dmabrokersink/dmabrokersrc vs shmsink/shmsrc (vs
# unixfdsink/unixfdsrc where GStreamer has them), NV12 at 1080p and 4K.
# Each pair runs producer and consumer as two processes
# (gst/examples/bench.rs, which prints frames/s, CPU time per frame from
# the first frame to EOS, and the
# consumer's latency from the producer's sink pad to the consumer's first
# element, measured by the same probes on both paths). shmsink gets 20
# frames of shared memory: with 6, GStreamer 1.22's shmsink stalls after ~20
# frames (its allocator, which upstream writes into, runs out of room).
# unixfdsink/unixfdsrc run where GStreamer has them (>= 1.24; the VM's
# userland: gst/bench/vm.sh): unixfdsink wait-for-connection=true (1.26)
# holds the first frame until unixfdsrc connected, as wait-for-consumers=1
# and shmsink wait-for-connection=true do for the other two, so every pair
# streams all its frames to a consumer that is already there. Each
# resolution ends with the ratios of dmabroker's frames/s to the others',
# from the same run.
#
#   gst/bench/run.sh [FRAMES_1080P] [FRAMES_4K]      (default 600 300)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD
n1080=${1:-600}
n4k=${2:-300}
cli=${DMABROKER_BIN:-$root/target/x86_64-unknown-linux-gnu/release/dmabroker}
[[ -x $cli ]] || { echo "build the CLI first: cargo build --release --target x86_64-unknown-linux-gnu -p dmabroker-cli" >&2; exit 1; }
# DMABROKER_GST_BENCH_BUILT=DIR: the plugin and the bench program are
# already in DIR (gst/bench/vm.sh builds them against the VM's GStreamer).
if [[ -n ${DMABROKER_GST_BENCH_BUILT:-} ]]; then
    export GST_PLUGIN_PATH=$DMABROKER_GST_BENCH_BUILT
    bench=$DMABROKER_GST_BENCH_BUILT/bench
else
    (cd gst && env -u RUSTFLAGS cargo build --release --quiet --lib --example bench)
    export GST_PLUGIN_PATH=$root/gst/target/release
    bench=$root/gst/target/release/examples/bench
fi
work=$(mktemp -d /tmp/dmabroker-gstbench.XXXXXX)
export GST_REGISTRY=$work/registry.bin
broker_pid=
trap '[[ -n $broker_pid ]] && kill $broker_pid 2>/dev/null; rm -rf "$work"' EXIT
sock=$work/broker.sock
"$cli" serve --socket "$sock" >"$work/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done

pair() { # name producer-pipeline consumer-pipeline [socket-to-wait-for]
    local name=$1 prod=$2 cons=$3 wait_for=${4:-}
    timeout 120 "$bench" producer "$prod" >"$work/p.json" 2>"$work/p.err" &
    local p=$!
    if [[ -n $wait_for ]]; then
        for _ in $(seq 200); do [[ -S $wait_for ]] && break; sleep 0.02; done
        # shmsink binds before it listens: a connect in between is refused.
        sleep 0.3
    fi
    timeout 120 "$bench" consumer "$cons" >"$work/c.json" 2>"$work/c.err" || { echo "$name consumer: $(cat "$work/c.err")" >&2; }
    wait $p || { echo "$name producer: $(cat "$work/p.err")" >&2; }
    python3 - "$name" "$work/p.json" "$work/c.json" "$work/fps.txt" <<'PY'
import json, sys
name, p, c = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
print(f"| {name} | {c['frames']} | {c['fps']:.0f} | {c['latency_p50_us']:.0f} | {c['latency_p99_us']:.0f} | {p['cpu_us_per_frame']:.0f} | {c['cpu_us_per_frame']:.0f} |")
open(sys.argv[4], "a").write(f"{name.split()[0]} {c['fps']}\n")
PY
}
# The ratio of dmabroker's frames/s to each other pair's at one resolution.
ratios() {
    python3 - "$1" "$work/fps.txt" <<'PY'
import sys
fps = dict(l.split() for l in open(sys.argv[2]))
d = float(fps.get("dmabroker", 0))
others = [f"{k}: {d / float(v):.2f}x" for k, v in fps.items() if k != "dmabroker" and float(v) > 0]
print(f"| {sys.argv[1]}: dmabroker frames/s over | {', '.join(others)} | | | | | |")
PY
    rm -f "$work/fps.txt"
}
unixfd=
if gst-inspect-1.0 unixfdsink >/dev/null 2>&1 && gst-inspect-1.0 unixfdsink | grep -q wait-for-connection; then
    unixfd=1
else
    echo "(no unixfdsink with wait-for-connection in GStreamer $(gst-inspect-1.0 --version | sed -n 's/^GStreamer //p'): its pair is skipped)" >&2
fi

echo "| path | frames | frames/s | latency p50 (us) | latency p99 (us) | producer CPU/frame (us) | consumer CPU/frame (us) |"
echo "|---|---|---|---|---|---|---|"
for res in 1080p 4k; do
    if [[ $res == 1080p ]]; then w=1920 h=1080 n=$n1080; else w=3840 h=2160 n=$n4k; fi
    caps="video/x-raw,format=NV12,width=$w,height=$h,framerate=30/1"
    frame=$((w * h * 3 / 2))
    src="videotestsrc num-buffers=$n pattern=black ! $caps ! identity name=stamp"
    pair "dmabroker $res" \
        "$src ! dmabrokersink broker-socket=$sock pool=bench-$res buffers=4 wait-for-consumers=1" \
        "dmabrokersrc broker-socket=$sock pool=bench-$res reconnect=false timeout=20000 ! identity name=stamp ! fakesink"
    shm=$work/shm-$res.sock
    pair "shmsink/shmsrc $res" \
        "$src ! shmsink socket-path=$shm shm-size=$((frame * 20)) wait-for-connection=true sync=false" \
        "shmsrc socket-path=$shm is-live=true num-buffers=$n ! $caps ! identity name=stamp ! fakesink" "$shm"
    if [[ -n $unixfd ]]; then
        ufd=$work/unixfd-$res.sock
        pair "unixfdsink/unixfdsrc $res" \
            "$src ! unixfdsink socket-path=$ufd wait-for-connection=true sync=false" \
            "unixfdsrc socket-path=$ufd num-buffers=$n ! identity name=stamp ! fakesink" "$ufd"
    fi
    ratios "$res"
done
