#!/usr/bin/env bash
# Run binaries (usually cargo test executables) inside a QEMU VM that boots a
# Debian kernel, which has what this host lacks: the system dma-heap, udmabuf,
# vivid (a virtual V4L2 camera) and vgem (a virtual DRM device with PRIME).
#
#   vm/run.sh [OPTIONS] BINARY... [-- TEST_ARGS...]
#   vm/run.sh [OPTIONS] --run 'COMMAND'...
#   vm/run.sh [--kernel ID] [--userland] --prepare   only fetch and cache
#   vm/run.sh [--kernel ID] --boot-only              boot, print the marker, stop
#
# Options:
#   --kernel ID      the kernel of vm/kernels.conf to boot: 6.12 (Debian
#                    trixie, the default), 7 (Debian sid's 7.x) or proj (the
#                    project's own 7.2 build, vm/kernel-build.sh: CMA heap,
#                    vkms, vim2m, vicodec, sw_sync; built on first use)
#   --kernel-newest  the newest package of that kernel's series instead of
#                    the pinned one (also DMABROKER_VM_KERNEL_NEWEST=1)
#   --userland       mount the Debian trixie root of vm/userland.sh (GStreamer,
#                    lavapipe, Python, ...) and run everything chrooted in it;
#                    then binaries and --file executables may be dynamic
#   --file PATH      (repeatable) copy a file into the guest at the same
#                    absolute path (relative paths are taken from the current
#                    directory), e.g. the `dmabroker` binary that CLI tests
#                    find through CARGO_BIN_EXE_dmabroker
#   --dir PATH       (repeatable) the same for a directory tree (a built wheel
#                    directory, a GStreamer plugin directory, ...)
#   --run 'COMMAND'  (repeatable) a shell command line run in the guest after
#                    the binaries, as one more verdict entry (passes on exit 0)
#   --timeout SECS   kill the guest after SECS (default 600)
#   --mem MIB        guest memory (default 2560)
#   --smp N          guest CPUs (default 2)
#   --attempts N     boots tried when the guest dies before its init starts
#                    (default 3; a failure after init started is never retried)
#
# Without --userland every BINARY and --file executable must be statically
# linked (the initramfs has no libc), e.g. built with
#   RUSTFLAGS="-C target-feature=+crt-static" \
#   cargo test --release --target x86_64-unknown-linux-gnu --no-run
# A libtest binary is run as `BINARY --test-threads=1 TEST_ARGS...`; any other
# binary is run without arguments. Inside the VM the environment has
# DMABROKER_VM=1 (tests fail instead of skipping), DMABROKER_VM_KERNEL (the
# running kernel's release, e.g. 7.2.13+deb14-amd64), DMABROKER_VM_KERNEL_ID
# (6.12 or 7) and DMABROKER_VM_USERLAND (1 with --userland, else 0).
#
# Kernels are fetched with vm/debian-apt.sh (our own apt configuration) once
# and cached under vm/cache/kernel-<ABI>/. Environment:
#   DMABROKER_VM_KERNEL_DEB   local .deb file(s) of a kernel (space-separated;
#                             e.g. linux-binary + linux-modules), no apt needed
#   DMABROKER_VM_BOOT_TIMEOUT seconds for the guest to reach init (default 240)
#   DMABROKER_VM_APPEND       more kernel command line (e.g. dyndbg=..., or
#                             rdinit=/none to see a pre-init death retried)
#   DMABROKER_VM_KEEP=1       keep the work dir (initramfs) for inspection
#
# Exit status: 0 when every binary exited 0 and every libtest run said ok;
# 1 on a failure, a missing result marker, a timeout or a guest that never
# reached init in --attempts boots; 2 on a setup error. The guest's serial
# output is streamed live and kept in vm/out/serial.log and in
# vm/out/serial-<ID>[-userland].log (failed boot attempts in
# vm/out/serial-<ID>-attempt-N.log); DMABROKER_VM_OUT names another folder.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache="$here/cache"
out=${DMABROKER_VM_OUT:-$here/out}
timeout_s=600
mem_mib=2560
smp=2
attempts=3
boot_timeout=${DMABROKER_VM_BOOT_TIMEOUT:-240}
kernel_id=6.12
newest=${DMABROKER_VM_KERNEL_NEWEST:-0}
userland=0
boot_only=0
binaries=()
files=()
dirs=()
commands=()
test_args=()
prepare_only=0

unpack_tmp=""
die() {
    echo "vm/run.sh: error: $*" >&2
    [[ -z "$unpack_tmp" ]] || rm -rf "$unpack_tmp"
    exit 2
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

posint() { [[ "$1" =~ ^[0-9]+$ && "$1" -gt 0 ]]; }
while (($#)); do
    case "$1" in
    --timeout | --mem | --smp | --attempts | --kernel | --file | --dir | --run)
        [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"
        opt=$1 val=$2
        shift 2
        ;;
    --timeout=* | --mem=* | --smp=* | --attempts=* | --kernel=* | --file=* | --dir=* | --run=*)
        opt=${1%%=*} val=${1#*=}
        [[ -n "$val" ]] || die "$opt needs a value (see --help)"
        shift
        ;;
    --prepare | --userland | --kernel-newest | --boot-only | -h | --help)
        opt=$1 val=""
        shift
        ;;
    --)
        shift
        test_args=("$@")
        break
        ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
        binaries+=("$1")
        shift
        continue
        ;;
    esac
    case "$opt" in
    --timeout) posint "$val" || die "--timeout needs a positive number of seconds" && timeout_s=$val ;;
    --mem) [[ "$val" =~ ^[0-9]+$ && "$val" -ge 512 ]] || die "--mem needs a size in MiB, at least 512" && mem_mib=$val ;;
    --smp) posint "$val" || die "--smp needs a positive number of CPUs" && smp=$val ;;
    --attempts) posint "$val" || die "--attempts needs a positive number" && attempts=$val ;;
    --kernel) kernel_id=$val ;;
    --file) files+=("$val") ;;
    --dir) dirs+=("$val") ;;
    --run) commands+=("$val") ;;
    --prepare) prepare_only=1 ;;
    --userland) userland=1 ;;
    --kernel-newest) newest=1 ;;
    --boot-only) boot_only=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    esac
done
((${#binaries[@]} || ${#commands[@]} || prepare_only || boot_only)) || {
    usage >&2
    exit 2
}
[[ "$newest" == 1 ]] || newest=0
posint "$boot_timeout" || die "DMABROKER_VM_BOOT_TIMEOUT must be a positive number of seconds"

# ---------------------------------------------------------------- host tools
need_tool() { # tool package
    command -v "$1" >/dev/null 2>&1 || [[ -x "/sbin/$1" || -x "/usr/sbin/$1" ]] ||
        die "'$1' not found: install the Debian package '$2' (or run vm/install-deps.sh)"
}
need_tool qemu-system-x86_64 qemu-system-x86
need_tool cpio cpio
need_tool xz xz-utils
need_tool zstd zstd
need_tool depmod kmod
need_tool modprobe kmod
need_tool dpkg-deb dpkg
PATH="$PATH:/sbin:/usr/sbin"

busybox=""
for b in /bin/busybox /usr/bin/busybox; do
    [[ -x "$b" ]] && busybox=$b && break
done
[[ -n "$busybox" ]] || die "busybox not found: install the Debian package 'busybox-static'"
is_static() { # an ELF without a PT_INTERP needs no dynamic loader
    if command -v readelf >/dev/null 2>&1; then
        ! readelf -lW "$1" 2>/dev/null | grep -q 'Requesting program interpreter'
    else
        ! grep -qa 'ld-linux-x86-64.so.2' "$1"
    fi
}
is_static "$busybox" || die "$busybox is dynamically linked: install the Debian package 'busybox-static'"
static_hint="build it with
  RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --target x86_64-unknown-linux-gnu
  or run it in the Debian userland with --userland"

# --file/--dir paths, made absolute: each lands at the same path in the guest.
own_path() { # path: refuse what belongs to the initramfs itself
    case "$1" in
    / | /init | /bin | /bin/* | /sbin | /sbin/* | /lib | /lib/* | /t | /t/* | /extra | /extra/* | /u | /u/* | /proc | /proc/* | /sys | /sys/* | /dev | /dev/*)
        die "$2 $1: that path belongs to the VM's own initramfs"
        ;;
    esac
}
for idx in "${!files[@]}"; do
    f=${files[$idx]}
    [[ "$f" == /* ]] || f="$PWD/$f"
    [[ -f "$f" ]] || die "--file $f: not a regular file"
    own_path "$f" --file
    if [[ -x "$f" ]] && ((!userland)); then
        is_static "$f" || die "--file $f is dynamically linked; $static_hint"
    fi
    files[$idx]=$f
done
for idx in "${!dirs[@]}"; do
    d=${dirs[$idx]}
    [[ "$d" == /* ]] || d="$PWD/$d"
    d=${d%/}
    [[ -d "$d" ]] || die "--dir $d: not a directory"
    own_path "$d" --dir
    dirs[$idx]=$d
done

for b in "${binaries[@]}"; do
    [[ -f "$b" && -x "$b" ]] || die "not an executable file: $b"
    ((userland)) || is_static "$b" || die "$b is dynamically linked; $static_hint"
done

# ------------------------------------------------------------ kernel + modules
# A ready kernel lives in $cache/kernel-<ABI>/ with vmlinuz, KVER, PKGS (the
# packages it came from), config and modules/ (the decompressed modules we
# load, plus load-order lists: load.list for the devices, userland.list for
# mounting the userland).
cache_format=2
kernel_ready() { [[ -f "$1/vmlinuz" && -f "$1/KVER" && -f "$1/modules/load.list" && "$(cat "$1/FORMAT" 2>/dev/null)" == "$cache_format" ]]; }

conf_line=$(awk -v id="$kernel_id" '$1 == id && $1 !~ /^#/' "$here/kernels.conf")
[[ -n "$conf_line" ]] || die "--kernel $kernel_id: no such kernel in vm/kernels.conf (have: $(awk '!/^#/ && NF {printf "%s ", $1}' "$here/kernels.conf"))"
read -r _ pin_abi pin_version abi_re pkg_templates <<<"$conf_line"

# modules: name list-file
module_sets=("vivid vgem:load.list" "virtio_blk squashfs overlay:userland.list")

prepare_kernel() { # dir deb...
    local dir=$1 tmp kver root m set names list
    shift
    tmp=$(mktemp -d "$cache/unpack.XXXXXX")
    unpack_tmp=$tmp
    root="$tmp/root"
    for deb in "$@"; do
        dpkg-deb -x "$deb" "$root" || die "cannot unpack $deb"
    done
    # Debian's newer kernels live under /usr/lib/modules (merged /usr); the
    # host's depmod and modprobe look under <base>/lib/modules.
    if [[ -d "$root/usr/lib/modules" && ! -e "$root/lib" ]]; then
        ln -s usr/lib "$root/lib"
    fi
    kver=$(ls "$root/lib/modules" 2>/dev/null | head -n1 || true)
    [[ -n "$kver" ]] || die "$* hold no kernel modules"
    local vmlinuz="" config=""
    for c in "$root/boot/vmlinuz-$kver" "$root/lib/modules/$kver/vmlinuz"; do [[ -f "$c" ]] && vmlinuz=$c && break; done
    for c in "$root/boot/config-$kver" "$root/lib/modules/$kver/config"; do [[ -f "$c" ]] && config=$c && break; done
    [[ -n "$vmlinuz" ]] || die "$* hold no kernel image for $kver (a split kernel needs its linux-binary package too)"
    [[ -f "$root/lib/modules/$kver/modules.order" ]] ||
        echo "vm/run.sh: warning: no modules.order for $kver (a split kernel's linux-base package is missing?)" >&2
    depmod -b "$root" "$kver" || die "depmod failed on $*"
    mkdir -p "$tmp/out/modules"
    cp "$vmlinuz" "$tmp/out/vmlinuz"
    [[ -z "$config" ]] || cp "$config" "$tmp/out/config"
    echo "$kver" >"$tmp/out/KVER"
    # modprobe resolves the dependency chains in load order; each module is
    # loaded once, decompressed here because busybox insmod cannot read .xz.
    for set in "${module_sets[@]}"; do
        names=${set%%:*}
        list="$tmp/out/modules/${set#*:}"
        : >"$list"
        for m in $names; do
            modprobe -d "$root" -S "$kver" --show-depends "$m" >"$tmp/deps" ||
                die "the kernel in $* has no module $m"
            while read -r verb path _; do
                [[ "$verb" == insmod ]] || continue # builtin modules need nothing
                local name
                name=$(basename "$path")
                name=${name%.xz}
                name=${name%.zst}
                name=${name%.gz}
                grep -qx "$name" "$list" && continue
                case "$path" in
                *.xz) xz -dc "$path" >"$tmp/out/modules/$name" ;;
                *.zst) zstd -dcq "$path" >"$tmp/out/modules/$name" ;;
                *.gz) gzip -dc "$path" >"$tmp/out/modules/$name" ;;
                *) cp "$path" "$tmp/out/modules/$name" ;;
                esac
                echo "$name" >>"$list"
            done <"$tmp/deps"
        done
    done
    for deb in "$@"; do
        dpkg-deb -f "$deb" Package Version | paste -sd' ' - | sed 's/^Package: //; s/ Version: / /'
    done >"$tmp/out/PKGS"
    echo "$cache_format" >"$tmp/out/FORMAT"
    rm -rf "$dir"
    mv "$tmp/out" "$dir"
    rm -rf "$tmp"
    unpack_tmp=""
}

apt_updated=0
debian_apt() { # args: vm/debian-apt.sh, lists refreshed once per run
    if ((!apt_updated)); then
        echo "vm/run.sh: refreshing Debian package lists (vm/debian-apt.sh update)" >&2
        "$here/debian-apt.sh" update >&2 || die "vm/debian-apt.sh update failed: is deb.debian.org (or DMABROKER_DEBIAN_MIRROR) reachable?"
        apt_updated=1
    fi
    "$here/debian-apt.sh" "$@"
}
pkg_names() { # abi -> the package names for it
    local t out=()
    for t in $pkg_templates; do out+=("${t//\{\}/$1}"); done
    echo "${out[*]}"
}
newest_abi() { # the newest ABI of this series that apt knows
    local first=${pkg_templates%% *} pre suf
    pre=${first%%\{\}*}
    suf=${first#*\{\}}
    debian_apt search "^${pre//./\\.}${abi_re}${suf//./\\.}\$" 2>/dev/null | awk '{print $1}' |
        sed "s/^${pre//./\\.}//; s/${suf//./\\.}\$//" | sort -V | tail -n1
}
pkg_version() { # package -> its candidate version in our lists
    debian_apt show "$1" 2>/dev/null | awk '/^Version:/ {print $2; exit}'
}
fetch_kernel() { # abi version(or "") -> kernel dir
    local abi=$1 version=$2 dl p specs=() debs
    for p in $(pkg_names "$abi"); do specs+=("$p${version:+=$version}"); done
    dl=$(mktemp -d "$cache/dl.XXXXXX")
    echo "vm/run.sh: fetching ${specs[*]}" >&2
    if ! (cd "$dl" && debian_apt download "${specs[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2); then
        :
    fi
    mapfile -t debs < <(ls "$dl"/*.deb 2>/dev/null)
    if ((${#debs[@]} != ${#specs[@]})); then
        rm -rf "$dl"
        return 1
    fi
    prepare_kernel "$cache/kernel-$abi" "${debs[@]}"
    rm -rf "$dl"
}

mkdir -p "$cache" "$out"
kdir=""
kernel_note=""
if [[ "$pkg_templates" == build ]]; then
    # The project's own kernel (vm/kernel-build.sh): built once into its cache
    # outside the checkout, everything built in (no modules to load).
    kdir=$("$here/kernel-build.sh" build) || die "vm/kernel-build.sh build failed (message above)"
    kernel_note="built by vm/kernel-build.sh from $pin_version"
elif [[ -n "${DMABROKER_VM_KERNEL_DEB:-}" ]]; then
    read -r -a local_debs <<<"$DMABROKER_VM_KERNEL_DEB"
    for d in "${local_debs[@]}"; do [[ -f "$d" ]] || die "DMABROKER_VM_KERNEL_DEB: $d: no such file"; done
    kdir="$cache/local-$(basename "${local_debs[0]}" .deb)"
    kernel_ready "$kdir" || prepare_kernel "$kdir" "${local_debs[@]}"
    kernel_note="local .deb"
elif ((newest)); then
    abi=$(newest_abi)
    [[ -n "$abi" ]] || die "no package matching $pkg_templates with ABI /$abi_re/ in Debian's lists (vm/debian-apt.sh search)"
    kdir="$cache/kernel-$abi"
    kernel_note="newest of the $kernel_id series"
    if ! kernel_ready "$kdir"; then
        fetch_kernel "$abi" "" || die "apt-get download of $(pkg_names "$abi") failed (is deb.debian.org reachable?)"
    fi
else
    kdir="$cache/kernel-$pin_abi"
    kernel_note="pinned in vm/kernels.conf"
    if ! kernel_ready "$kdir"; then
        if ! fetch_kernel "$pin_abi" "$pin_version"; then
            # Debian keeps only current versions: a pin ages out of the archive.
            abi=$(newest_abi)
            [[ -n "$abi" ]] || die "the pinned kernel $pin_abi ($pin_version) could not be downloaded and no
  other kernel of the $kernel_id series is in Debian's lists: is deb.debian.org reachable?"
            echo "vm/run.sh: WARNING: the pinned kernel $pin_abi $pin_version is no longer in Debian's archive;" \
                "booting the newest of the series, $abi, instead: update vm/kernels.conf" >&2
            kdir="$cache/kernel-$abi"
            kernel_note="NEWEST, the pin $pin_abi has left Debian's archive: update vm/kernels.conf"
            kernel_ready "$kdir" || fetch_kernel "$abi" "" ||
                die "apt-get download of $(pkg_names "$abi") failed (is deb.debian.org reachable?)"
        fi
    fi
fi
kver=$(cat "$kdir/KVER")
kpkgs=$(paste -sd, "$kdir/PKGS" 2>/dev/null | sed 's/,/, /g')

# -------------------------------------------------------------------- userland
uimg=""
if ((userland)); then
    uimg=$("$here/userland.sh" path) || die "the Debian userland could not be built (vm/userland.sh build; message above)"
    [[ -s "$uimg" ]] || die "vm/userland.sh gave no image"
    [[ -s "$kdir/modules/userland.list" || -f "$kdir/BUILTIN" ]] || die "$kdir lacks the modules to mount the userland"
fi

if ((prepare_only)); then
    echo "vm/run.sh: kernel $kver ready in $kdir ($kpkgs; $kernel_note)"
    ((userland)) && echo "vm/run.sh: userland ready: $uimg"
    exit 0
fi

# ------------------------------------------------------------------ initramfs
work=$(mktemp -d "${TMPDIR:-/tmp}/dmabroker-vm.XXXXXX")
qemu_pid=""
tail_pid=""
cleanup() {
    [[ -n "$qemu_pid" ]] && kill "$qemu_pid" 2>/dev/null || true
    [[ -n "$tail_pid" ]] && kill "$tail_pid" 2>/dev/null || true
    if [[ -n "${DMABROKER_VM_KEEP:-}" ]]; then
        echo "vm/run.sh: kept $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rootfs="$work/root"
mkdir -p "$rootfs"/{bin,sbin,dev,proc,sys,tmp,run,etc,root,lib/modules,t,u}
cp "$busybox" "$rootfs/bin/busybox"
cp "$kdir"/modules/*.ko "$kdir"/modules/*.list "$rootfs/lib/modules/" 2>/dev/null ||
    cp "$kdir"/modules/*.list "$rootfs/lib/modules/"

# One line per binary: <file-in-/t> <is-libtest 0|1> <display name>
: >"$rootfs/t/list"
i=0
for b in "${binaries[@]}"; do
    i=$((i + 1))
    name=$(basename "$b")
    [[ "$name" =~ ^(.+)-[0-9a-f]{16}$ ]] && name=${BASH_REMATCH[1]} # cargo's hash
    # Names must be unique for the BEGIN/END markers (the library's unit
    # tests and the CLI binary's are both `dmabroker-<hash>`).
    grep -q " $name\$" "$rootfs/t/list" && name="$name#$i"
    dest=$(printf '%02d-%s' "$i" "$name")
    # Debug info only bloats the initramfs; symbols stay for backtraces.
    if command -v objcopy >/dev/null 2>&1; then
        objcopy --strip-debug "$b" "$rootfs/t/$dest" 2>/dev/null || cp "$b" "$rootfs/t/$dest"
    else
        cp "$b" "$rootfs/t/$dest"
    fi
    chmod 755 "$rootfs/t/$dest"
    libtest=0
    grep -qa -- '--test-threads' "$b" && libtest=1
    echo "$dest $libtest $name" >>"$rootfs/t/list"
done
for c in "${commands[@]+"${commands[@]}"}"; do
    i=$((i + 1))
    dest=$(printf '%02d-run' "$i")
    printf '#!/bin/sh\n%s\n' "$c" >"$rootfs/t/$dest"
    chmod 755 "$rootfs/t/$dest"
    echo "$dest 0 run#$i" >>"$rootfs/t/list"
done
printf '%s\n' "${test_args[@]+"${test_args[@]}"}" >"$rootfs/t/args"
# Files and directories live under /extra in the initramfs; /init links each
# one at its own path after mounting, so paths under /tmp or /run (tmpfs in
# the guest) work too.
: >"$rootfs/t/files"
for f in "${files[@]+"${files[@]}"}"; do
    mkdir -p "$rootfs/extra$(dirname "$f")"
    if [[ -x "$f" ]] && command -v objcopy >/dev/null 2>&1; then
        objcopy --strip-debug "$f" "$rootfs/extra$f" 2>/dev/null || cp "$f" "$rootfs/extra$f"
    else
        cp "$f" "$rootfs/extra$f"
    fi
    chmod "$(stat -c %a "$f")" "$rootfs/extra$f"
    echo "$f" >>"$rootfs/t/files"
done
for d in "${dirs[@]+"${dirs[@]}"}"; do
    mkdir -p "$rootfs/extra$(dirname "$d")"
    cp -a "$d" "$rootfs/extra$d"
    echo "$d" >>"$rootfs/t/files"
done
{
    echo "KVER_ID=$kernel_id"
    echo "USERLAND=$userland"
    echo "BOOT_ONLY=$boot_only"
} >"$rootfs/t/conf"

cat >"$rootfs/init" <<'INIT'
#!/bin/busybox sh
# The host looks for this line: before it, a dead guest is booted again.
echo "DMABROKER-VM: INIT"
/bin/busybox --install -s /bin
export PATH=/bin:/sbin HOME=/root TMPDIR=/tmp
. /t/conf
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
if [ "$BOOT_ONLY" = 1 ]; then
    echo "DMABROKER-VM: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpus"
    echo "DMABROKER-VM: ALL DONE"
    poweroff -f
fi
mkdir -p /dev/pts /dev/shm /dev/hugepages
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t hugetlbfs hugetlbfs /dev/hugepages 2>/dev/null
while read -r f; do
    mkdir -p "$(dirname "$f")" && ln -sfn "/extra$f" "$f"
done </t/files
echo 4 >/proc/sys/kernel/printk

echo "DMABROKER-VM: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpus, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
# vivid: instance 0 is single-planar, instance 1 multi-planar, each with only
# a video capture node (node_types bit 0): /dev/video0 and /dev/video1.
while read -r m; do
    case "$m" in
    vivid.ko) params="n_devs=2 multiplanar=1,2 node_types=0x1,0x1" ;;
    *) params="" ;;
    esac
    insmod "/lib/modules/$m" $params || echo "DMABROKER-VM: WARNING: insmod $m failed"
done </lib/modules/load.list
echo 16 >/proc/sys/vm/nr_hugepages
echo "DMABROKER-VM: hugepages 2M: $(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages)" \
    "1G: $(cat /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages 2>/dev/null || echo 0)," \
    "dma_heap: $(ls /dev/dma_heap 2>/dev/null | tr '\n' ' ')," \
    "devices: $(cd /dev && ls -d video* dri/* udmabuf 2>/dev/null | tr '\n' ' ')"

# The Debian userland: its squashfs image (virtio disk vda, read-only) under
# a tmpfs overlay, with the guest's /dev, /proc, /sys, /tmp, /run, the test
# binaries (/t) and the --file/--dir copies (/extra) bound into it.
in_root=""
if [ "$USERLAND" = 1 ]; then
    while read -r m; do
        [ -n "$m" ] && { insmod "/lib/modules/$m" || echo "DMABROKER-VM: WARNING: insmod $m failed"; }
    done </lib/modules/userland.list
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    mkdir -p /u/lower /u/rw /u/root
    mount -t tmpfs tmpfs /u/rw && mkdir -p /u/rw/upper /u/rw/work
    if mount -t squashfs -o ro /dev/vda /u/lower &&
        mount -t overlay overlay -o lowerdir=/u/lower,upperdir=/u/rw/upper,workdir=/u/rw/work /u/root; then
        for d in dev proc sys tmp run; do mkdir -p /u/root/$d && mount -o rbind /$d /u/root/$d; done
        for d in t extra; do [ -d /$d ] && mkdir -p /u/root/$d && mount -o bind /$d /u/root/$d; done
        while read -r f; do
            case "$f" in /tmp/* | /run/*) continue ;; esac # bound above
            mkdir -p "/u/root$(dirname "$f")" && ln -sfn "/extra$f" "/u/root$f"
        done </t/files
        in_root="chroot /u/root"
        echo "DMABROKER-VM: userland: $(. /u/root/etc/os-release && echo "$PRETTY_NAME"), gstreamer $(chroot /u/root dpkg-query -W -f='${Version}' libgstreamer1.0-0 2>/dev/null)"
    else
        echo "DMABROKER-VM: USERLAND FAILED: cannot mount /dev/vda (squashfs) with an overlay"
        echo "DMABROKER-VM: ALL DONE"
        poweroff -f
    fi
fi

export DMABROKER_VM=1 RUST_BACKTRACE=1 DMABROKER_VM_KERNEL="$(uname -r)" \
    DMABROKER_VM_KERNEL_ID="$KVER_ID" DMABROKER_VM_USERLAND="$USERLAND"
if [ -n "$in_root" ]; then
    export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        XDG_RUNTIME_DIR=/run/user/0
    mkdir -p /run/user/0 && chmod 700 /run/user/0
fi
cd /tmp
set --
while read -r a; do [ -n "$a" ] && set -- "$@" "$a"; done </t/args
while read -r file libtest name; do
    echo "DMABROKER-VM: BEGIN $name"
    if [ "$libtest" = 1 ]; then
        $in_root "/t/$file" --test-threads=1 "$@" </dev/null
    else
        $in_root "/t/$file" </dev/null
    fi
    echo "DMABROKER-VM: END $name status=$?"
done </t/list
echo "DMABROKER-VM: ALL DONE"
sync
poweroff -f
INIT
chmod 755 "$rootfs/init"

(cd "$rootfs" && find . -print0 | cpio --null -o -H newc --quiet) >"$work/initramfs.cpio"

# ------------------------------------------------------------------------ boot
# One 1 GiB huge page for the hugetlb-1G heap: only reservable at boot, and
# only when the guest has memory to spare (TCG backs guest RAM lazily).
hugepages_1g=""
((mem_mib >= 2048 && !boot_only)) && hugepages_1g=" hugepagesz=1G hugepages=1"
# A kernel with everything built in takes vivid's parameters (the insmod
# line of /init) on the command line.
builtin_params=""
[[ ! -f "$kdir/BUILTIN" ]] || builtin_params=" vivid.n_devs=2 vivid.multiplanar=1,2 vivid.node_types=0x1,0x1"
drive=()
[[ -z "$uimg" ]] || drive=(-drive "file=$uimg,if=virtio,format=raw,readonly=on")
# The log is the run's own (concurrent runs cannot mix verdicts); copies of
# it go to $out after each boot.
log="$work/serial.log"
rm -f "$out/serial-$kernel_id"-attempt-*.log

# What killed a guest before init: the kernel's first words about it.
death_cause() { # log
    local c
    c=$(tr -d '\r' <"$1" | grep -m1 -E 'Kernel panic|Oops|BUG:|general protection fault|double fault|invalid opcode|soft lockup|hard LOCKUP|Unable to handle|segfault at|Call Trace' || true)
    if [[ -n "$c" ]]; then
        local rip
        rip=$(tr -d '\r' <"$1" | grep -m1 -E '^\[ *[0-9.]+\] RIP: ' | sed 's/^\[ *[0-9.]*\] //' || true)
        echo "$c${rip:+ ($rip)}" | sed 's/^\[ *[0-9.]*\] //'
    else
        echo "$2"
    fi
}

boot_once() { # -> sets qemu_status timed_out reached_init elapsed
    : >"$log"
    : >"$work/fifo.out"
    local start
    start=$(date +%s.%N)
    # -nographic puts the serial port on stdio; stdin is /dev/null so nothing
    # reaches the QEMU monitor. The guest powers off (or panics, and panic=-1
    # with -no-reboot exits QEMU) when done.
    qemu-system-x86_64 -accel tcg -cpu max -m "$mem_mib" -smp "$smp" \
        -nographic -no-reboot -nic none "${drive[@]}" \
        -kernel "$kdir/vmlinuz" -initrd "$work/initramfs.cpio" \
        -append "console=ttyS0 panic=-1 quiet${hugepages_1g}${builtin_params}${DMABROKER_VM_APPEND:+ $DMABROKER_VM_APPEND}" \
        </dev/null >"$work/fifo.out" 2>&1 &
    qemu_pid=$!
    # Stream the serial output live while QEMU writes it.
    tail -n +1 -f --pid="$qemu_pid" "$work/fifo.out" 2>/dev/null | tee "$log" &
    tail_pid=$!
    timed_out=0 reached_init=0
    local deadline=$((SECONDS + timeout_s)) boot_deadline=$((SECONDS + boot_timeout))
    while kill -0 "$qemu_pid" 2>/dev/null; do
        if ((!reached_init)) && grep -q 'DMABROKER-VM: INIT' "$work/fifo.out"; then
            reached_init=1
        fi
        if ((SECONDS >= deadline || (!reached_init && SECONDS >= boot_deadline))); then
            timed_out=1
            kill "$qemu_pid" 2>/dev/null || true
            sleep 2
            kill -9 "$qemu_pid" 2>/dev/null || true
            break
        fi
        sleep 0.5
    done
    qemu_status=0
    wait "$qemu_pid" 2>/dev/null || qemu_status=$?
    qemu_pid=""
    wait "$tail_pid" 2>/dev/null || true
    tail_pid=""
    cp "$work/fifo.out" "$log"
    # The latest run of each kernel (and userland) stays for later reading.
    cp "$log" "$out/serial.log"
    cp "$log" "$out/serial-$kernel_id$( ((userland)) && echo -userland).log"
    grep -q 'DMABROKER-VM: INIT' "$log" && reached_init=1
    elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')
}

attempt=0
boot_failures=()
while :; do
    attempt=$((attempt + 1))
    echo "vm/run.sh: booting $kver ($kpkgs; $kernel_note) under TCG, attempt $attempt/$attempts" \
        "(timeout ${timeout_s}s, ${#binaries[@]} binaries, ${#commands[@]} commands, ${#files[@]} files, ${#dirs[@]} dirs," \
        "initramfs $(($(stat -c %s "$work/initramfs.cpio") / 1048576)) MiB${uimg:+, userland $(basename "$(dirname "$uimg")")})" >&2
    boot_once
    ((reached_init)) && break
    if ((timed_out)); then
        cause=$(death_cause "$log" "no init after ${boot_timeout}s (hung during kernel boot)")
    else
        cause=$(death_cause "$log" "QEMU exited with status $qemu_status before init")
    fi
    cp "$log" "$out/serial-$kernel_id-attempt-$attempt.log"
    boot_failures+=("attempt $attempt: died before init after ${elapsed}s: $cause")
    echo "vm/run.sh: attempt $attempt/$attempts: the guest died before its init started: $cause" \
        "(log: $out/serial-$kernel_id-attempt-$attempt.log)" >&2
    ((attempt < attempts)) || break
    echo "vm/run.sh: booting again (a pre-init death is the kernel under TCG, not a test)" >&2
done

# --------------------------------------------------------------------- verdict
clean=$(tr -d '\r' <"$log")
passed=0 failed=0 skipped=0 bad=0
skipped=$(grep -c '^SKIP ' <<<"$clean" || true)
echo
echo "==== VM results (kernel $kver: $kpkgs; $kernel_note; boot attempt $attempt/$attempts, ${elapsed}s) ===="
for f in "${boot_failures[@]+"${boot_failures[@]}"}"; do
    echo "  boot $f"
done
if ((!reached_init)); then
    echo "  BOOT FAILED: the guest never reached init in $attempts attempts; see $out/serial-$kernel_id-attempt-*.log"
    echo "VM: 0 passed, 1 failed (boot), kernel $kver"
    exit 1
fi
if ((boot_only)); then
    if grep -q '^DMABROKER-VM: ALL DONE' <<<"$clean"; then
        echo "VM: booted, kernel $kver"
        exit 0
    fi
    echo "  the guest died after init started (QEMU status $qemu_status, timed out: $timed_out); see $out/serial.log"
    echo "VM: 0 passed, 1 failed (after init), kernel $kver"
    exit 1
fi
if grep -q '^DMABROKER-VM: USERLAND FAILED' <<<"$clean"; then
    echo "  USERLAND FAILED: the guest could not mount the Debian userland ($uimg); see $out/serial.log"
    bad=1
fi
while read -r file libtest name; do
    endline=$(grep -m1 "^DMABROKER-VM: END $name status=" <<<"$clean" || true)
    # libtest's summary lines between this binary's markers
    section=$(awk -v b="DMABROKER-VM: BEGIN $name" -v e="DMABROKER-VM: END $name status=" \
        '$0 == b {on = 1; next} index($0, e) == 1 {on = 0} on' <<<"$clean")
    # The binary's own summary is its last `test result:` line (a test may
    # run a child test process whose summary appears earlier).
    tp=0 tf=0
    read -r tp tf < <(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' <<<"$section" | tail -n1) || true
    tp=${tp:-0} tf=${tf:-0}
    if [[ -z "$endline" ]]; then
        verdict="NO RESULT (crashed or timed out)"
        bad=1
        failed=$((failed + (libtest ? tf + 1 : 1)))
        passed=$((passed + tp))
    else
        st=${endline##*status=}
        if [[ "$libtest" == 1 ]]; then
            passed=$((passed + tp))
            failed=$((failed + tf))
            if [[ "$st" != 0 ]] && ((tf == 0)); then
                failed=$((failed + 1)) # exited non-zero without a failed test
            fi
            verdict="exit $st, $tp passed, $tf failed"
        else
            if [[ "$st" == 0 ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
            verdict="exit $st"
        fi
        [[ "$st" == 0 ]] || bad=1
    fi
    printf '  %-50s %s\n' "$name" "$verdict"
done <"$rootfs/t/list"
if ((timed_out)); then
    echo "  TIMEOUT: the VM ran past ${timeout_s}s and was killed"
    bad=1
elif ! grep -q '^DMABROKER-VM: ALL DONE' <<<"$clean"; then
    echo "  the VM stopped before running every binary (QEMU status $qemu_status); see $out/serial.log"
    bad=1
fi
echo "VM: $passed passed, $failed failed, $skipped skipped-lines, kernel $kver"
((skipped == 0)) || grep '^SKIP ' <<<"$clean" | sed 's/^/  /'
exit $((bad ? 1 : 0))
