//! Shared by the `vm_*` integration tests: skip visibly on a host that lacks
//! a kernel feature, fail instead inside the test VM (`DMABROKER_VM=1`, set by
//! `vm/run.sh`), where every feature must be present.
#![allow(dead_code)]

use dmabroker::device::v4l2::{video_nodes, BufType, V4l2Device};
use dmabroker::heap::{AllocRequest, Heaps};
use dmabroker::Buffer;
use std::io::Write;

/// Whether this run is inside the test VM, where skipping is a failure.
pub fn in_vm() -> bool {
    std::env::var("DMABROKER_VM").as_deref() == Ok("1")
}

/// Report a missing feature: `SKIP <test>: <reason>` on the host (written to
/// stderr directly, past libtest's output capture, so it shows for passing
/// tests), a panic inside the VM.
pub fn skip(test: &str, reason: &str) {
    assert!(!in_vm(), "{test}: needed in the VM but unavailable: {reason}");
    let _ = writeln!(std::io::stderr().lock(), "SKIP {test}: {reason}");
}

/// `require!(test, expr, "why {}", x)`: evaluate an `Option`/`Result`; on
/// `None`/`Err` call [`skip`] and return from the test.
#[macro_export]
macro_rules! require {
    ($test:expr, $e:expr, $($why:tt)+) => {
        match $crate::vm_common::Requirable::into_result($e) {
            Ok(v) => v,
            Err(err) => {
                $crate::vm_common::skip($test, &format!("{}: {}", format!($($why)+), err));
                return;
            }
        }
    };
}

/// `Option` and `Result` as one thing for [`require!`].
pub trait Requirable<T> {
    /// The value, or a printable reason.
    fn into_result(self) -> Result<T, String>;
}
impl<T> Requirable<T> for Option<T> {
    fn into_result(self) -> Result<T, String> {
        self.ok_or_else(|| "absent".to_owned())
    }
}
impl<T, E: std::fmt::Display> Requirable<T> for Result<T, E> {
    fn into_result(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Allocate `len` bytes from a heap, or say why it cannot be had: `Err` when
/// the heap is absent or unusable here (a skip on the host), panic when it is
/// usable but the allocation fails (a bug either way).
pub fn allocate(heaps: &Heaps, heap: &str, len: u64) -> Result<Buffer, String> {
    let Some(h) = heaps.get(heap) else {
        return Err(format!("no heap {heap} (have: {})", heaps.names().join(", ")));
    };
    let info = h.info();
    if !info.usable {
        return Err(format!("heap {heap} unusable: {}", info.note.unwrap_or_default()));
    }
    match h.allocate(&AllocRequest::new(len).name("vmtest")) {
        Ok(b) => Ok(b),
        Err(e) => panic!("{heap}: allocating {len} bytes failed although the heap is usable: {e}"),
    }
}

/// `count` dma-bufs of `len` bytes from dma-heap/system, else udmabuf, with
/// the heap's name; `Err` says why neither could give them.
pub fn dma_bufs(count: usize, len: u64) -> Result<(String, Vec<Buffer>), String> {
    let heaps = Heaps::discover();
    let mut why = Vec::new();
    for heap in ["dma-heap/system", "udmabuf"] {
        match (0..count).map(|_| allocate(&heaps, heap, len)).collect::<Result<Vec<_>, _>>() {
            Ok(buffers) => {
                assert!(buffers.iter().all(|b| b.kind() == dmabroker::BufferKind::DmaBuf), "{heap} gave a non-dma-buf");
                return Ok((heap.to_owned(), buffers));
            }
            Err(e) => why.push(e),
        }
    }
    Err(why.join("; "))
}

/// The vivid node whose capture queue is (multi-planar) or is not.
pub fn vivid(multiplanar: bool) -> Result<(V4l2Device, BufType), String> {
    let want = if multiplanar { BufType::VideoCaptureMplane } else { BufType::VideoCapture };
    let nodes = video_nodes();
    for p in &nodes {
        if let Ok(d) = V4l2Device::open(p) {
            if d.capabilities().driver == "vivid" && d.capture_type() == Some(want) {
                return Ok((d, want));
            }
        }
    }
    Err(format!("no vivid {want:?} node among {nodes:?} (modprobe vivid n_devs=2 multiplanar=1,2)"))
}

/// A deterministic byte pattern for `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The running kernel's `(major, minor)`, read from
/// `/proc/sys/kernel/osrelease` (the VM also exports it whole as
/// `DMABROKER_VM_KERNEL`, e.g. `7.2.13+deb14-amd64`).
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Gate a test on a kernel feature that first appeared in Linux
/// `major.minor` (the VM's kernel matrix boots 6.12 and 7.x, see
/// vm/README.md). On an older kernel this prints
/// `SKIP <test>: <feature> needs Linux >= major.minor ...` and returns false,
/// in the VM too: the older kernel of the matrix lacks the feature by
/// design. On a kernel new enough it returns true, and the test must then find
/// the feature (a [`skip`] there fails in the VM).
pub fn kernel_at_least(test: &str, major: u32, minor: u32, feature: &str) -> bool {
    match kernel_version() {
        Some(v) if v >= (major, minor) => true,
        found => {
            let have = found.map_or_else(|| "unknown".to_owned(), |(a, b)| format!("{a}.{b}"));
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIP {test}: {feature} needs Linux >= {major}.{minor}, this kernel is {have}"
            );
            false
        }
    }
}

/// Whether this is the project's own kernel (`vm/run.sh --kernel proj`
/// exports `DMABROKER_VM_KERNEL_ID=proj`; vm/kernel/dmabroker.config), which
/// builds what Debian's kernels lack: sw_sync, the CMA heap, vkms, vim2m,
/// vicodec.
pub fn is_proj_kernel() -> bool {
    std::env::var("DMABROKER_VM_KERNEL_ID").as_deref() == Ok("proj")
}

/// Report a missing feature that only the project's kernel builds: on any
/// other kernel (Debian's 6.12 and 7 in the VM too, which lack it by
/// design) print `SKIP <test>: <reason>`; on the project's kernel, fail.
pub fn skip_unless_proj(test: &str, reason: &str) {
    assert!(!is_proj_kernel(), "{test}: the project's kernel must have it: {reason}");
    // On a line of its own (libtest's `test <name> ... ` has no newline
    // yet), so vm/run.sh's verdict counts and lists it.
    let _ = writeln!(std::io::stderr().lock(), "\nSKIP {test}: {reason} (only vm/run.sh --kernel proj builds it)");
}

/// Gate a test on a device only the project's kernel builds. `found` is the
/// test's own lookup: `Some` when it is there; otherwise
/// [`skip_unless_proj`] (a failure on the project's kernel) and `None`.
pub fn proj_only<T>(test: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(reason) => {
            skip_unless_proj(test, &reason);
            None
        }
    }
}
