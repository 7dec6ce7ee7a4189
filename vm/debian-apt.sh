#!/usr/bin/env bash
# apt-get with the project's own configuration: Debian trixie (stable),
# trixie-security and sid (unstable) from deb.debian.org, with a sources list,
# state and cache directories of its own under vm/cache/apt/. The host's apt
# sources, lists and cache are never read or written.
#
#   vm/debian-apt.sh update                 refresh our package lists
#   vm/debian-apt.sh download PKG[=VER]...  .debs into the current directory
#   vm/debian-apt.sh policy PKG...          apt-cache policy against our lists
#   vm/debian-apt.sh search REGEX           apt-cache search --names-only
#
# Environment: DMABROKER_DEBIAN_MIRROR (default http://deb.debian.org/debian),
# DMABROKER_DEBIAN_SECURITY (default http://deb.debian.org/debian-security).
# Signatures are checked with the host's debian-archive-keyring (bookworm's
# carries the trixie keys, which also sign sid).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root="$here/cache/apt"
mirror=${DMABROKER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DMABROKER_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -f "$keyring" ]] || {
    echo "vm/debian-apt.sh: $keyring missing: apt-get install debian-archive-keyring" >&2
    exit 2
}
mkdir -p "$root"/{etc/apt.conf.d,etc/preferences.d,etc/sources.list.d,state/lists/partial,cache/archives/partial,log}
cat >"$root/etc/sources.list" <<SRC
deb [signed-by=$keyring] $mirror trixie main
deb [signed-by=$keyring] $mirror trixie-updates main
deb [signed-by=$keyring] $security trixie-security main
deb [signed-by=$keyring] $mirror sid main
SRC
[[ -f "$root/state/status" ]] || : >"$root/state/status"
opts=(
    -o "Dir::Etc=$root/etc"
    -o "Dir::Etc::sourcelist=$root/etc/sources.list"
    -o "Dir::Etc::sourceparts=$root/etc/sources.list.d"
    -o "Dir::Etc::parts=$root/etc/apt.conf.d"
    -o "Dir::Etc::preferencesparts=$root/etc/preferences.d"
    -o "Dir::State=$root/state"
    -o "Dir::State::status=$root/state/status"
    -o "Dir::Cache=$root/cache"
    -o "Dir::Log=$root/log"
    -o "APT::Architecture=amd64"
    -o "APT::Architectures::=amd64"
    -o "Acquire::Languages=none"
    -o "Acquire::Retries=3"
    -o "Acquire::http::Timeout=60"
    -o "APT::Sandbox::User=root"
    -o "Debug::NoLocking=1"
)
cmd=${1:-}
shift || true
case "$cmd" in
update) exec apt-get "${opts[@]}" -qq update ;;
download) exec apt-get "${opts[@]}" -qq download "$@" ;;
policy) exec apt-cache "${opts[@]}" policy "$@" ;;
show) exec apt-cache "${opts[@]}" show "$@" ;;
search) exec apt-cache "${opts[@]}" search --names-only "$@" ;;
depends) exec apt-cache "${opts[@]}" depends "$@" ;;
*)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
