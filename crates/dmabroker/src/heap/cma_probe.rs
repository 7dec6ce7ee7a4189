//! Is a dma-heap backed by CMA? Told by what it does, not by its name.
//!
//! CMA heap names change with the kernel and the boot options (`linux,cma`
//! from the device tree, `reserved` for the default area, `default_cma_region`
//! since 6.17, vendor names), so the heap is asked: a probe buffer of
//! [`PROBE_LEN`] is allocated and `CmaFree` in /proc/meminfo must drop by its
//! size while it lives or come back when it is freed. A heap backed by the
//! buddy allocator (`system`) never takes pages from CMA pageblocks (its pages
//! are unmovable). Other processes allocating CMA at the same moment can blur
//! one reading, so up to [`ATTEMPTS`] are taken.
//!
//! Where the heap cannot be opened (not root, no broker) or CMA is absent
//! (`CmaTotal` 0 or missing), the probe says so and the caller falls back to
//! the name, saying which it used.

use super::meminfo;
use std::os::fd::AsFd;

/// Size of the probe buffer: 1 MiB (256 pages, CMA's default alignment order).
pub const PROBE_LEN: u64 = 1 << 20;

/// Readings taken before the answer is "unknown".
pub const ATTEMPTS: usize = 3;

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmaProbe {
    /// Allocating from the heap takes pages out of the CMA area.
    Cma,
    /// It does not (or the kernel has no CMA area at all).
    NotCma,
    /// No answer; why.
    Unknown(String),
}

/// Probe the open heap device `heap`.
pub fn probe(heap: impl AsFd) -> CmaProbe {
    match meminfo("CmaTotal") {
        None => return CmaProbe::NotCma,    // kernel without CONFIG_CMA
        Some(0) => return CmaProbe::NotCma, // no CMA area reserved
        Some(_) => {}
    }
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        let Some(before) = meminfo("CmaFree") else { return CmaProbe::Unknown("no CmaFree in /proc/meminfo".into()) };
        let fd = match dmabroker_sys::dma_heap::alloc(heap.as_fd(), PROBE_LEN) {
            Ok(fd) => fd,
            Err(e) => return CmaProbe::Unknown(format!("a {PROBE_LEN}-byte probe allocation failed: {e}")),
        };
        let during = meminfo("CmaFree").unwrap_or(before);
        drop(fd);
        let after = meminfo("CmaFree").unwrap_or(during);
        let took = before.saturating_sub(during);
        let gave = after.saturating_sub(during);
        // CMA lends its free pages to movable allocations (page cache): a CMA
        // allocation migrates those away, so CmaFree may drop by less than
        // the probe; freeing it gives the whole probe back.
        if took.max(gave) >= PROBE_LEN / 2 {
            return CmaProbe::Cma;
        }
        if took.max(gave) < PROBE_LEN / 8 {
            return CmaProbe::NotCma;
        }
        last = format!("CmaFree moved by -{took}/+{gave} bytes around a {PROBE_LEN}-byte probe (other CMA users?)");
    }
    CmaProbe::Unknown(last)
}

/// `CMA: 120 MiB free of 128 MiB (CmaFree/CmaTotal in /proc/meminfo)`, for
/// kernels with a CMA area; `None` without one.
pub fn summary() -> Option<String> {
    let total = meminfo("CmaTotal").filter(|t| *t > 0)?;
    let free = meminfo("CmaFree").unwrap_or(0);
    Some(format!(
        "CMA: {} free of {} (CmaFree/CmaTotal in /proc/meminfo)",
        crate::size::format_size(free),
        crate::size::format_size(total)
    ))
}
