#!/usr/bin/env bash
# A/B in one run: build a baseline commit (A) and the current tree (B), run
# one bench of both interleaved (A B, B A, A B, ...), and print per row B/A
# with its spread over the pairs (`dmabroker bench compare`).
#
#   scripts/ab.sh [-n PAIRS] BASE -- bench VERB [ARGS...]
#   scripts/ab.sh -n 6 HEAD~1 -- bench broker --sizes 4K,1M --live 0 --clients 1 --seconds 0.2
#
# A is built from a `git worktree` of BASE under target/ab/ with its own
# target dir (target/ab/target, seeded from this tree's release build so
# that only the workspace crates are rebuilt); B is this tree's working copy
# (uncommitted changes included). Both binaries must know `--json` (any
# commit since the floors and `bench compare` were added). Reports stay in
# target/ab/run-*/ ; `git worktree remove target/ab/src-*` cleans up.
set -euo pipefail

pairs=5
while getopts "n:" opt; do
    case $opt in
        n) pairs=$OPTARG ;;
        *) echo "usage: $0 [-n PAIRS] BASE -- bench VERB [ARGS...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 3 ] && [ "$2" = "--" ] || { echo "usage: $0 [-n PAIRS] BASE -- bench VERB [ARGS...]" >&2; exit 2; }
base=$1
shift 2

root=$(git rev-parse --show-toplevel)
cd "$root"
sha=$(git rev-parse --verify "$base^{commit}")
triple=x86_64-unknown-linux-gnu
export RUSTFLAGS="-C target-feature=+crt-static"
ab=$root/target/ab
src=$ab/src-${sha:0:12}
tgt=$ab/target
mkdir -p "$ab"

if [ ! -d "$src" ]; then
    git worktree add --detach "$src" "$sha" >&2
fi
if [ ! -d "$tgt/$triple/release/deps" ] && [ -d "$root/target/$triple/release/deps" ]; then
    echo "ab.sh: seeding $tgt from this tree's release build" >&2
    mkdir -p "$tgt/$triple/release"
    cp -a --reflink=auto "$root/target/$triple/release/deps" "$root/target/$triple/release/build" \
        "$root/target/$triple/release/.fingerprint" "$tgt/$triple/release/"
fi
echo "ab.sh: building A = ${sha:0:12} ($(git log -1 --format=%s "$sha" | cut -c1-60))" >&2
(cd "$src" && CARGO_TARGET_DIR="$tgt" cargo build --release --target $triple -p dmabroker-cli >&2)
cp "$tgt/$triple/release/dmabroker" "$ab/dmabroker-A"
echo "ab.sh: building B = working tree of $(git rev-parse --short HEAD)$(git diff --quiet || echo ' + changes')" >&2
cargo build --release --target $triple -p dmabroker-cli >&2
cp "$root/target/$triple/release/dmabroker" "$ab/dmabroker-B"

out=$ab/run-$(date -u +%Y%m%dT%H%M%S)
mkdir -p "$out"
echo "ab.sh: $pairs pair(s) of: dmabroker $* --json; load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
a_list=() b_list=()
for i in $(seq 1 "$pairs"); do
    if (( i % 2 )); then order="A B"; else order="B A"; fi
    for x in $order; do
        "$ab/dmabroker-$x" "$@" --json >"$out/$x-$i.json" 2>"$out/$x-$i.err"
    done
    a_list+=("$out/A-$i.json") b_list+=("$out/B-$i.json")
    echo "ab.sh: pair $i/$pairs done" >&2
done
join() { local IFS=,; echo "$*"; }
echo "A = ${sha:0:12}, B = working tree; $pairs pairs interleaved; load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "Reports: $out"
echo
"$ab/dmabroker-B" bench compare --a "$(join "${a_list[@]}")" --b "$(join "${b_list[@]}")"
