#!/usr/bin/env bash
# Run static binaries (usually cargo test executables) inside a QEMU VM that
# boots Debian's 6.12 kernel, which has what this host lacks: the system
# dma-heap, udmabuf, vivid (a virtual V4L2 camera) and vgem (a virtual DRM
# device with PRIME).
#
#   vm/run.sh [--timeout SECS] [--mem MIB] [--file PATH]... BINARY... [-- TEST_ARGS...]
#   vm/run.sh --prepare     only fetch and cache the kernel (for CI caches)
#
# --file PATH (repeatable) copies a file into the guest at the same absolute
# path (relative paths are taken from the current directory), e.g. the
# `dmabroker` binary that CLI tests find through CARGO_BIN_EXE_dmabroker.
# Executables among them must be statically linked too.
#
# --run 'COMMAND' (repeatable) runs a busybox-sh command line in the guest
# after the binaries, as one more entry of the verdict (passes on exit 0),
# e.g. --file "$PWD/target/.../dmabroker" --run "$PWD/target/.../dmabroker bench alloc".
#
# Every BINARY must be statically linked, e.g. built with
#   RUSTFLAGS="-C target-feature=+crt-static" \
#   cargo test --release --target x86_64-unknown-linux-gnu --no-run
# A libtest binary is run as `BINARY --test-threads=1 TEST_ARGS...`; any other
# binary is run without arguments. Inside the VM the environment has
# DMABROKER_VM=1, which tells the tests to fail instead of skipping.
#
# The kernel package (linux-image-6.12.*+deb12-amd64-unsigned) is fetched with
# `apt-get download` once and cached under vm/cache/. Environment:
#   DMABROKER_VM_KERNEL_PKG  exact package name to use instead of the newest
#   DMABROKER_VM_KERNEL_DEB  a local .deb of that package (no apt needed)
#   DMABROKER_VM_REFRESH=1   look for a newer package even when one is cached
#   DMABROKER_VM_KEEP=1      keep the work dir (initramfs) for inspection
#
# Exit status: 0 when every binary exited 0 and every libtest run said ok;
# 1 on a failure, a missing result marker or a timeout; 2 on a setup error.
# The guest's serial output is streamed live and kept in vm/out/serial.log.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache="$here/cache"
out="$here/out"
timeout_s=600
mem_mib=2560
binaries=()
files=()
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

while (($#)); do
    case "$1" in
    --timeout)
        [[ $# -ge 2 && "$2" =~ ^[0-9]+$ && "$2" -gt 0 ]] || die "--timeout needs a positive number of seconds"
        timeout_s=$2
        shift 2
        ;;
    --timeout=*)
        timeout_s=${1#*=}
        [[ "$timeout_s" =~ ^[0-9]+$ && "$timeout_s" -gt 0 ]] || die "--timeout needs a positive number of seconds"
        shift
        ;;
    --mem)
        [[ $# -ge 2 && "$2" =~ ^[0-9]+$ && "$2" -ge 512 ]] || die "--mem needs a size in MiB, at least 512"
        mem_mib=$2
        shift 2
        ;;
    --file)
        [[ $# -ge 2 && -n "$2" ]] || die "--file needs a path"
        files+=("$2")
        shift 2
        ;;
    --file=*)
        files+=("${1#*=}")
        [[ -n "${1#*=}" ]] || die "--file needs a path"
        shift
        ;;
    --prepare)
        prepare_only=1
        shift
        ;;
    --run)
        [[ $# -ge 2 && -n "$2" ]] || die "--run needs a command line"
        commands+=("$2")
        shift 2
        ;;
    -h | --help)
        usage
        exit 0
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
        ;;
    esac
done
((${#binaries[@]} || ${#commands[@]} || prepare_only)) || {
    usage >&2
    exit 2
}

# ---------------------------------------------------------------- host tools
need_tool() { # tool package
    command -v "$1" >/dev/null 2>&1 || [[ -x "/sbin/$1" || -x "/usr/sbin/$1" ]] ||
        die "'$1' not found: install the Debian package '$2' (or run vm/install-deps.sh)"
}
need_tool qemu-system-x86_64 qemu-system-x86
need_tool cpio cpio
need_tool xz xz-utils
need_tool depmod kmod
need_tool modprobe kmod
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

# --file paths, made absolute: each lands at the same path in the guest.
for idx in "${!files[@]}"; do
    f=${files[$idx]}
    [[ "$f" == /* ]] || f="$PWD/$f"
    [[ -f "$f" ]] || die "--file $f: not a regular file"
    case "$f" in
    /init | /bin/* | /sbin/* | /lib/modules/* | /t/* | /extra/* | /proc/* | /sys/* | /dev/*)
        die "--file $f: that path belongs to the VM's own initramfs"
        ;;
    esac
    if [[ -x "$f" ]]; then
        is_static "$f" || die "--file $f is dynamically linked; build it with
  RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --target x86_64-unknown-linux-gnu"
    fi
    files[$idx]=$f
done

for b in "${binaries[@]}"; do
    [[ -f "$b" && -x "$b" ]] || die "not an executable file: $b"
    is_static "$b" || die "$b is dynamically linked; build it with
  RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --target x86_64-unknown-linux-gnu"
done

# ------------------------------------------------------------ kernel + modules
# A ready kernel lives in $cache/<package>/ with vmlinuz, KVER and modules/
# (the decompressed modules we load plus load-order lists).
kernel_ready() { [[ -f "$1/vmlinuz" && -f "$1/KVER" && -f "$1/modules/load.list" ]]; }

resolve_pkg() {
    if [[ -n "${DMABROKER_VM_KERNEL_PKG:-}" ]]; then
        echo "$DMABROKER_VM_KERNEL_PKG"
        return
    fi
    command -v apt-cache >/dev/null 2>&1 || return 1
    apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' 2>/dev/null |
        awk '{print $1}' | sort -V | tail -n1
}

prepare_kernel() { # dir deb
    local dir=$1 deb=$2 tmp kver root m
    tmp=$(mktemp -d "$cache/unpack.XXXXXX")
    unpack_tmp=$tmp
    root="$tmp/root"
    dpkg-deb -x "$deb" "$root" 2>/dev/null || { command -v dpkg-deb >/dev/null || die "dpkg-deb not found (package 'dpkg')"; die "cannot unpack $deb"; }
    kver=$(ls "$root/lib/modules" 2>/dev/null | head -n1 || true)
    [[ -n "$kver" && -f "$root/boot/vmlinuz-$kver" ]] || die "$deb holds no kernel image and modules"
    depmod -b "$root" "$kver" || die "depmod failed on $deb"
    mkdir -p "$tmp/out/modules"
    cp "$root/boot/vmlinuz-$kver" "$tmp/out/vmlinuz"
    cp "$root/boot/config-$kver" "$tmp/out/config" 2>/dev/null || true
    echo "$kver" >"$tmp/out/KVER"
    : >"$tmp/out/modules/load.list"
    # modprobe resolves the dependency chains in load order; each module is
    # loaded once, decompressed here because busybox insmod cannot read .xz.
    for m in vivid vgem; do
        modprobe -d "$root" -S "$kver" --show-depends "$m" >"$tmp/deps" ||
            die "the kernel in $deb has no module $m"
        while read -r verb path _; do
            [[ "$verb" == insmod ]] || continue
            local name
            name=$(basename "$path")
            name=${name%.xz}
            name=${name%.zst}
            name=${name%.gz}
            grep -qx "$name" "$tmp/out/modules/load.list" && continue
            case "$path" in
            *.xz) xz -dc "$path" >"$tmp/out/modules/$name" ;;
            *.zst) zstd -dcq "$path" >"$tmp/out/modules/$name" ;;
            *.gz) gzip -dc "$path" >"$tmp/out/modules/$name" ;;
            *) cp "$path" "$tmp/out/modules/$name" ;;
            esac
            echo "$name" >>"$tmp/out/modules/load.list"
        done <"$tmp/deps"
    done
    rm -rf "$dir"
    mv "$tmp/out" "$dir"
    rm -rf "$tmp"
    unpack_tmp=""
}

mkdir -p "$cache" "$out"
kdir=""
if [[ -n "${DMABROKER_VM_KERNEL_DEB:-}" ]]; then
    [[ -f "$DMABROKER_VM_KERNEL_DEB" ]] || die "DMABROKER_VM_KERNEL_DEB=$DMABROKER_VM_KERNEL_DEB: no such file"
    kdir="$cache/$(basename "$DMABROKER_VM_KERNEL_DEB" .deb)"
    kernel_ready "$kdir" || prepare_kernel "$kdir" "$DMABROKER_VM_KERNEL_DEB"
else
    # Prefer what is cached (no network, same kernel every run) unless asked.
    if [[ -z "${DMABROKER_VM_KERNEL_PKG:-}" && -z "${DMABROKER_VM_REFRESH:-}" ]]; then
        for d in $(ls -d "$cache"/linux-image-* 2>/dev/null | sort -V -r); do
            kernel_ready "$d" && kdir=$d && break
        done
    fi
    if [[ -z "$kdir" ]]; then
        pkg=$(resolve_pkg || true)
        [[ -n "$pkg" ]] || die "no kernel package linux-image-6.12.*+deb12-amd64-unsigned is known to apt.
  On Debian 12 run 'apt-get update' (bookworm-updates/bookworm-security carry it);
  elsewhere download it by hand and set DMABROKER_VM_KERNEL_DEB=/path/to/it.deb"
        kdir="$cache/$pkg"
        if ! kernel_ready "$kdir"; then
            echo "vm/run.sh: fetching kernel package $pkg" >&2
            dl=$(mktemp -d "$cache/dl.XXXXXX")
            (cd "$dl" && apt-get download -qq "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) || true
            deb=$(ls "$dl"/*.deb 2>/dev/null | head -n1 || true)
            [[ -n "$deb" ]] || {
                rm -rf "$dl"
                die "apt-get download $pkg failed (is the network or an apt mirror reachable? is the package name right?)"
            }
            prepare_kernel "$kdir" "$deb"
            rm -rf "$dl"
        fi
    fi
fi
kver=$(cat "$kdir/KVER")
if ((prepare_only)); then
    echo "vm/run.sh: kernel $kver ready in $kdir"
    exit 0
fi

# ------------------------------------------------------------------ initramfs
work=$(mktemp -d "${TMPDIR:-/tmp}/dmabroker-vm.XXXXXX")
qemu_pid=""
cleanup() {
    [[ -n "$qemu_pid" ]] && kill "$qemu_pid" 2>/dev/null || true
    if [[ -n "${DMABROKER_VM_KEEP:-}" ]]; then
        echo "vm/run.sh: kept $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rootfs="$work/root"
mkdir -p "$rootfs"/{bin,sbin,dev,proc,sys,tmp,run,etc,root,lib/modules,t}
cp "$busybox" "$rootfs/bin/busybox"
cp "$kdir"/modules/*.ko "$kdir/modules/load.list" "$rootfs/lib/modules/"

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
# Files live under /extra in the initramfs; /init links each one at its own
# path after mounting, so paths under /tmp or /run (tmpfs in the guest)
# work too.
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

cat >"$rootfs/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/hugepages
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t hugetlbfs hugetlbfs /dev/hugepages 2>/dev/null
while read -r f; do
    mkdir -p "$(dirname "$f")" && ln -sf "/extra$f" "$f"
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

export DMABROKER_VM=1 RUST_BACKTRACE=1
cd /tmp
set --
while read -r a; do [ -n "$a" ] && set -- "$@" "$a"; done </t/args
while read -r file libtest name; do
    echo "DMABROKER-VM: BEGIN $name"
    if [ "$libtest" = 1 ]; then
        "/t/$file" --test-threads=1 "$@" </dev/null
    else
        "/t/$file" </dev/null
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
log="$out/serial.log"
: >"$log"
echo "vm/run.sh: booting $kver under TCG (timeout ${timeout_s}s, ${#binaries[@]} binaries, ${#files[@]} files," \
    "initramfs $(($(stat -c %s "$work/initramfs.cpio") / 1048576)) MiB)" >&2
# One 1 GiB huge page for the hugetlb-1G heap: only reservable at boot, and
# only when the guest has memory to spare (TCG backs guest RAM lazily).
hugepages_1g=""
((mem_mib >= 2048)) && hugepages_1g=" hugepagesz=1G hugepages=1"
start=$(date +%s.%N)
# -nographic puts the serial port on stdio; stdin is /dev/null so nothing
# reaches the QEMU monitor. The guest powers off (or panics, and panic=-1
# with -no-reboot exits QEMU) when done.
qemu-system-x86_64 -accel tcg -cpu max -m "$mem_mib" -smp 2 \
    -nographic -no-reboot -nic none \
    -kernel "$kdir/vmlinuz" -initrd "$work/initramfs.cpio" \
    -append "console=ttyS0 panic=-1 quiet${hugepages_1g}" \
    </dev/null >"$work/fifo.out" 2>&1 &
qemu_pid=$!
# Stream the serial output live while QEMU writes it.
tail -n +1 -f --pid="$qemu_pid" "$work/fifo.out" 2>/dev/null | tee "$log" &
tail_pid=$!
timed_out=0
deadline=$((SECONDS + timeout_s))
while kill -0 "$qemu_pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
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
cp "$work/fifo.out" "$log"
elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')

# --------------------------------------------------------------------- verdict
clean=$(tr -d '\r' <"$log")
passed=0 failed=0 skipped=0 bad=0
skipped=$(grep -c '^SKIP ' <<<"$clean" || true)
echo
echo "==== VM results ($kver, ${elapsed}s) ===="
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
    echo "  the VM stopped before running every binary (QEMU status $qemu_status); see $log"
    bad=1
fi
echo "VM: $passed passed, $failed failed, $skipped skipped-lines"
((skipped == 0)) || grep '^SKIP ' <<<"$clean" | sed 's/^/  /'
exit $((bad ? 1 : 0))
