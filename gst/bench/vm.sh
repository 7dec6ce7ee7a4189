#!/usr/bin/env bash
# gst/bench/run.sh inside the test VM, against GStreamer 1.26 (the Debian
# trixie userland): the plugin and the
# bench program are built in the userland's root (as gst/tests/vm.sh does),
# then run.sh runs every pair in the guest. Under TCG every figure is far
# slower than on the host; compare the rows of one run with each other.
#
#   gst/bench/vm.sh [FRAMES_1080P] [FRAMES_4K]      (default 120 40)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD
cli=$root/target/x86_64-unknown-linux-gnu/release/dmabroker
built=$root/target/gst-vm/bench
[[ -x $cli ]] || { echo "build the CLI first: cargo build --release --target x86_64-unknown-linux-gnu -p dmabroker-cli" >&2; exit 1; }
mkdir -p "$built"
vm/userland.sh chroot bash -c "set -e
    cd '$root/gst'
    env -u RUSTFLAGS CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_TARGET_DIR='$root/target/gst-trixie' \
        cargo build --release --lib --example bench --locked --quiet
    strip -o '$built/libgstdmabroker.so' '$root/target/gst-trixie/release/libgstdmabroker.so'
    cp '$root/target/gst-trixie/release/examples/bench' '$built/bench'"
vm/run.sh --userland --mem 4096 --timeout 1200 --dir "$built" --dir "$root/gst/bench" --file "$cli" \
    --run "cd $root && DMABROKER_GST_BENCH_BUILT=$built DMABROKER_BIN=$cli bash gst/bench/run.sh ${1:-120} ${2:-40}"
