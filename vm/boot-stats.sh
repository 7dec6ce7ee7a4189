#!/usr/bin/env bash
# Boot statistics of the VM's kernels: N boots in a row of each kernel with
# the minimal init of `vm/run.sh --boot-only` (prints the init marker, powers
# off), counting guests that died before init (what a retry absorbs) and runs
# that failed even after vm/run.sh's retries.
#
#   vm/boot-stats.sh [N] [KERNEL_ID...]    default: 50 boots of 6.12 and 7
#
# Environment: DMABROKER_VM_STATS_SMP (guest CPUs, default 1: cheap on a
# shared machine), DMABROKER_VM_STATS_ATTEMPTS (default 3, vm/run.sh's own).
# One line per boot goes to vm/out/boot-stats/boots-<ID>.txt; a summary to stdout.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
n=${1:-50}
shift || true
(($#)) || set -- 6.12 7
smp=${DMABROKER_VM_STATS_SMP:-1}
att=${DMABROKER_VM_STATS_ATTEMPTS:-3}
export DMABROKER_VM_OUT="$here/out/boot-stats"
mkdir -p "$DMABROKER_VM_OUT"
for k in "$@"; do
    "$here/run.sh" --kernel "$k" --prepare >/dev/null
    rec="$DMABROKER_VM_OUT/boots-$k.txt"
    : >"$rec"
    boots=0 deaths=0 failed=0 total_s=0 setup_errors=0
    kver=""
    for ((i = 1; i <= n; i++)); do
        o=$("$here/run.sh" --kernel "$k" --boot-only --smp "$smp" --mem 1024 --attempts "$att" 2>&1) && rc=0 || rc=$?
        d=$(grep -c '^  boot attempt [0-9]*: died before init' <<<"$o" || true)
        a=$(sed -n 's/.*boot attempt \([0-9]*\)\/[0-9]*, \([0-9.]*\)s) ====.*/\1 \2/p' <<<"$o" | tail -n1)
        if [[ -z "$a" ]]; then # no verdict: a setup error, not a boot
            echo "$i setup error (rc=$rc): $(tail -n 3 <<<"$o" | tr '\n' ' ')" >>"$rec"
            setup_errors=$((setup_errors + 1))
            continue
        fi
        kver=$(sed -n 's/^==== VM results (kernel \([^:]*\):.*/\1/p' <<<"$o" | tail -n1)
        boots=$((boots + ${a%% *}))
        deaths=$((deaths + d))
        ((rc == 0)) || failed=$((failed + 1))
        total_s=$(awk -v t="$total_s" -v s="${a#* }" 'BEGIN {print t + s}')
        echo "$i rc=$rc attempts=${a%% *} last_boot_s=${a#* } pre_init_deaths=$d" >>"$rec"
        grep '^  boot attempt' <<<"$o" | sed "s/^/  run $i: /" >>"$rec" || true
    done
    printf '%s (%s, -smp %s): %d runs, %d boots; %d died before init (%d/%d boots without retry);' \
        "$k" "$kver" "$smp" "$n" "$boots" "$deaths" "$deaths" "$boots"
    printf ' %d runs failed with %d attempts; last boot %.1f s on average; %d setup errors\n' "$failed" "$att" \
        "$(awk -v t="$total_s" -v n="$((n - setup_errors))" 'BEGIN {print n ? t / n : 0}')" "$setup_errors"
done
