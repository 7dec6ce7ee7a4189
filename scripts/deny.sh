#!/usr/bin/env bash
# cargo-deny over the three workspaces (root, gst/, python/) with deny.toml:
# licences, bans (wildcards; duplicate versions are warnings) and sources.
# Advisories need the RustSec database from GitHub: `scripts/deny.sh
# advisories` checks them where the network allows (not in CI); with a copy
# of the database in ~/.cargo/advisory-dbs/, DMABROKER_DENY_OFFLINE=1 uses it.
#
#   scripts/deny.sh [CHECK...]      default: licenses bans sources
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v cargo-deny >/dev/null || {
    echo "scripts/deny.sh: cargo-deny not found: cargo install --locked cargo-deny@0.20.2 (.ci/run installs it)" >&2
    exit 2
}
checks=("$@")
((${#checks[@]})) || checks=(licenses bans sources)
rc=0
for manifest in Cargo.toml gst/Cargo.toml python/Cargo.toml; do
    echo "cargo deny: $manifest (${checks[*]})"
    # Findings print as errors; duplicate-version warnings are summarised.
    if ! out=$(cargo deny ${DMABROKER_DENY_OFFLINE:+--offline} --manifest-path "$manifest" --config deny.toml check "${checks[@]}" 2>&1); then
        echo "$out" >&2
        rc=1
    fi
    grep -E '^warning\[duplicate\]' <<<"$out" | sed 's/^/  /' || true
    grep -E '^(licenses|bans|sources|advisories) ' <<<"$out" | sed 's/^/  /' || true
done
exit $rc
