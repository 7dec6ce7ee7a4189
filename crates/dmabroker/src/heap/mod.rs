//! Allocators behind one trait, found at run time.
//!
//! | heap name | file | what it gives |
//! |---|---|---|
//! | `dma-heap/<name>` | [`dma_heap`] | dma-bufs from `/dev/dma_heap/<name>` (`system`, CMA heaps such as `linux,cma`/`reserved` as contiguous, `system-uncached` as uncached) |
//! | `udmabuf` | [`udmabuf`] | a sealed memfd turned into a dma-buf by `/dev/udmabuf` (no privilege needed) |
//! | `memfd` | [`memfd`] | a sealed shmem memfd: the portable CPU/IPC fallback, present everywhere |
//! | `hugetlb`, `hugetlb-1G` | [`hugetlb`] | `MFD_HUGETLB` memfds on 2 MiB / 1 GiB pages, contiguous per page |
//!
//! [`Heaps::discover`] never fails because one allocator is missing: it lists
//! what this machine has and remembers why the others are absent.

pub mod charge_target;
pub mod cma_area;
pub mod cma_probe;
pub mod dma_heap;
pub mod hugetlb;
pub mod mem_accounting;
pub mod memfd;
pub mod udmabuf;

use crate::buffer::{Buffer, CacheMode, Coherency};
use crate::size::format_size;
use serde::Serialize;
use std::fmt;

/// What an allocation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocRequest {
    /// Size in bytes; rounded up to the heap's page size.
    pub len: u64,
    /// Required alignment of the start, in bytes (a power of two; 1 = none).
    pub align: u64,
    /// The whole buffer must be physically contiguous.
    pub contiguous: bool,
    /// A name shown in `/proc/*/fdinfo` (dma-bufs) or `/proc/*/fd` (memfds).
    pub name: Option<String>,
    /// Whether the devices that will touch it snoop CPU caches.
    pub coherency: Coherency,
}

impl AllocRequest {
    /// A request for `len` bytes with no other requirement.
    pub fn new(len: u64) -> Self {
        Self { len, align: 1, contiguous: false, name: None, coherency: Coherency::Coherent }
    }

    /// Require physical contiguity.
    pub fn contiguous(mut self, yes: bool) -> Self {
        self.contiguous = yes;
        self
    }

    /// Require a start alignment.
    pub fn align(mut self, align: u64) -> Self {
        self.align = align;
        self
    }

    /// Name the buffer.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Say whether devices snoop CPU caches.
    pub fn coherency(mut self, coherency: Coherency) -> Self {
        self.coherency = coherency;
        self
    }
}

/// The family an allocator belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeapKind {
    /// `/dev/dma_heap/*`.
    DmaHeap,
    /// `/dev/udmabuf`.
    Udmabuf,
    /// Sealed shmem memfd.
    Memfd,
    /// hugetlbfs memfd.
    Hugetlb,
}

impl fmt::Display for HeapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::DmaHeap => "dma-heap",
            Self::Udmabuf => "udmabuf",
            Self::Memfd => "memfd",
            Self::Hugetlb => "hugetlb",
        })
    }
}

/// What a heap can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeapInfo {
    /// Name used to select it (`memfd`, `dma-heap/system`, ...).
    pub name: String,
    /// Its family.
    pub kind: HeapKind,
    /// Largest physically contiguous run it guarantees; `None`: the whole
    /// buffer, however large (CMA).
    pub contiguous_up_to: Option<u64>,
    /// Page size of its memory.
    pub page_size: u64,
    /// Cache modes it offers.
    pub cache_modes: Vec<CacheMode>,
    /// Whether its buffers are dma-bufs a device can import.
    pub device_importable: bool,
    /// Bytes it can still hand out, where knowable.
    pub free_bytes: Option<u64>,
    /// Largest single buffer, where limited (udmabuf's `size_limit_mb`).
    pub max_buffer_size: Option<u64>,
    /// Whether this process may allocate from it right now.
    pub usable: bool,
    /// Why not, or anything else worth knowing.
    pub note: Option<String>,
    /// Pages in the pool it takes from, where it has one (hugetlb:
    /// `nr_hugepages`): with `free_bytes`, how many pages to reserve for a
    /// buffer.
    pub pool_pages: Option<u64>,
    /// The end of physical RAM (the highest memory block in
    /// `/sys/devices/system/memory`), where the kernel lists memory blocks:
    /// no page of any heap lies above it, so a device address limit at or
    /// above it is no limit.
    pub ram_end: Option<u64>,
    /// A CMA heap's area: free/total, largest free run, largest allocation
    /// seen ([`cma_area`]); `None` for other heaps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cma: Option<cma_area::CmaState>,
}

/// Why an allocation failed. Each variant says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AllocError {
    /// Size 0.
    #[error("size 0: a buffer needs at least one byte")]
    ZeroSize,
    /// Rounding the size up to whole pages overflows.
    #[error("size {requested} bytes overflows when rounded up to {granularity}-byte pages")]
    SizeOverflow {
        /// The requested size.
        requested: u64,
        /// The page size it was rounded to.
        granularity: u64,
    },
    /// Alignment is not a power of two.
    #[error("alignment {0} is not a power of two")]
    BadAlignment(u64),
    /// The heap cannot align buffers that much.
    #[error("heap {heap} aligns buffers to at most {}, {} asked: {hint}", format_size(*max), format_size(*align))]
    AlignmentUnsatisfiable {
        /// The heap.
        heap: String,
        /// Requested alignment.
        align: u64,
        /// What it can do.
        max: u64,
        /// Which other heaps could, or what else to do.
        hint: String,
    },
    /// No heap of that name on this machine.
    #[error("no heap named `{name}` on this machine; available: {} (see `dmabroker heaps`)", available.join(", "))]
    NoSuchHeap {
        /// The requested name.
        name: String,
        /// The heaps that exist.
        available: Vec<String>,
    },
    /// The heap cannot give a contiguous buffer that large.
    #[error("heap {heap} is physically contiguous only up to {}, {} asked: {hint}", format_size(*max), format_size(*len))]
    NotContiguous {
        /// The heap.
        heap: String,
        /// Requested length.
        len: u64,
        /// Its contiguity.
        max: u64,
        /// Which other heaps could, or what else to do.
        hint: String,
    },
    /// Larger than the heap's per-buffer limit.
    #[error("heap {heap} allows at most {} per buffer, {} asked: {hint}", format_size(*max), format_size(*len))]
    TooLarge {
        /// The heap.
        heap: String,
        /// Requested length.
        len: u64,
        /// The limit.
        max: u64,
        /// How to raise it.
        hint: String,
    },
    /// Not enough free huge pages.
    #[error("{}", huge_page_shortage(*page_size, *needed, *free, Some(*reserved)))]
    NoHugePages {
        /// Huge page size.
        page_size: u64,
        /// Pages this buffer needs.
        needed: u64,
        /// Pages free now.
        free: u64,
        /// Size of the huge page pool now (`nr_hugepages`).
        reserved: u64,
    },
    /// The device node is not accessible to this process.
    #[error("permission denied opening {path}: {hint}")]
    PermissionDenied {
        /// The node.
        path: String,
        /// What to do.
        hint: String,
    },
    /// Larger than this machine's RAM and swap together: it could never be
    /// filled, however much memory were freed.
    #[error(
        "heap {heap} cannot hold {}: this machine has {} of RAM and {} of swap, {} in all, \
         so such a buffer could never be filled; allocate less (or add swap)",
        format_size(*len), format_size(*ram), format_size(*swap), format_size(ram.saturating_add(*swap))
    )]
    LargerThanMemory {
        /// The heap.
        heap: String,
        /// Requested length (page-rounded).
        len: u64,
        /// Total RAM in bytes.
        ram: u64,
        /// Total swap in bytes.
        swap: u64,
    },
    /// The heap is out of memory.
    #[error("heap {heap} has no {} left{}", format_size(*len), available_now(*available))]
    OutOfMemory {
        /// The heap.
        heap: String,
        /// Requested length.
        len: u64,
        /// Memory available now (`MemAvailable`) when it was looked at: the
        /// request was refused before the kernel was asked, since pages a
        /// dma-buf pins cannot be reclaimed and the OOM killer would settle it.
        available: Option<u64>,
    },
    /// A CMA heap could not find a contiguous run that large: the CMA area
    /// is too small or too fragmented.
    #[error("{}", cma_shortage(heap, *len, *free, *total, area.as_deref()))]
    CmaShort {
        /// The heap.
        heap: String,
        /// Requested length.
        len: u64,
        /// `CmaFree` when it failed.
        free: Option<u64>,
        /// `CmaTotal`.
        total: Option<u64>,
        /// The area's largest free run and the largest allocation this
        /// process saw succeed, where known ([`cma_area::CmaState`]).
        area: Option<Box<cma_area::CmaState>>,
    },
    /// Another kernel error.
    #[error("{op} failed: {source}")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// The errno.
        #[source]
        source: rustix::io::Errno,
    },
}

/// The file that sets the size of the pool of `page_size` huge pages.
pub(crate) fn sysctl_path(page_size: u64) -> String {
    if page_size == 2 << 20 {
        "/proc/sys/vm/nr_hugepages".to_owned()
    } else {
        format!("/sys/kernel/mm/hugepages/hugepages-{}kB/nr_hugepages", page_size / 1024)
    }
}

/// A huge page size as the hugetlb cgroup controller names it (`2MB`, `1GB`).
fn cgroup_page_name(page_size: u64) -> String {
    if page_size >= 1 << 30 {
        format!("{}GB", page_size >> 30)
    } else if page_size >= 1 << 20 {
        format!("{}MB", page_size >> 20)
    } else {
        format!("{}KB", page_size >> 10)
    }
}

/// Why `needed` huge pages of `page_size` cannot be had with `free` free in
/// a pool of `pool` pages, and the exact command that fixes it.
pub(crate) fn huge_page_shortage(page_size: u64, needed: u64, free: u64, pool: Option<u64>) -> String {
    let size = format_size(page_size);
    if free >= needed {
        return format!(
            "the kernel refused {needed} {size} huge page(s) although {free} are free: a hugetlb cgroup limit \
             (hugetlb.{}.max) or the memory policy of this process forbids them",
            cgroup_page_name(page_size)
        );
    }
    format!(
        "the buffer needs {needed} free {size} huge page(s) and {free} are free: {}",
        reserve_huge_pages(page_size, needed - free, pool)
    )
}

/// How to add `missing` pages to a pool of `pool` huge pages of `page_size`:
/// the exact `echo N > nr_hugepages` where the pool size is known.
pub(crate) fn reserve_huge_pages(page_size: u64, missing: u64, pool: Option<u64>) -> String {
    let sysctl = sysctl_path(page_size);
    match pool {
        Some(pool) => format!("reserve {missing} more as root with `echo {} > {sysctl}`", pool.saturating_add(missing)),
        None => format!("raise {sysctl} by {missing} as root"),
    }
}

/// An allocator.
pub trait Heap: Send + Sync + fmt::Debug {
    /// Its name (`memfd`, `dma-heap/system`, ...).
    fn name(&self) -> &str;
    /// What it can do, read now (free capacity changes).
    fn info(&self) -> HeapInfo;
    /// Allocate a buffer.
    ///
    /// # Errors
    /// [`AllocError`], naming the cause and the fix.
    fn allocate(&self, request: &AllocRequest) -> Result<Buffer, AllocError>;
    /// Allocate charged by the kernel to `target` (a pidfd or a cgroup
    /// directory fd: the charge target of [`charge_target`], which no
    /// released kernel has); `None` for heaps that cannot (all but dma-heaps).
    fn allocate_charged(
        &self,
        _request: &AllocRequest,
        _target: std::os::fd::BorrowedFd<'_>,
    ) -> Option<Result<Buffer, AllocError>> {
        None
    }
}

/// The fixed capabilities a request is checked against: no I/O, so the
/// allocation path reads no /proc or /sys file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits<'a> {
    pub name: &'a str,
    pub kind: HeapKind,
    pub page_size: u64,
    pub contiguous_up_to: Option<u64>,
    pub max_buffer_size: Option<u64>,
}

/// `CONFIG_CMA_ALIGNMENT`'s default: CMA aligns an allocation to its own
/// power-of-two order, capped at this order (2^8 pages = 1 MiB with 4 KiB pages).
pub const CMA_ALIGNMENT_ORDER: u32 = 8;

/// The start alignment a heap guarantees for a buffer of `len` bytes: a page,
/// or for a heap contiguous over the whole buffer (CMA) the buffer's
/// power-of-two size, capped at [`CMA_ALIGNMENT_ORDER`] pages.
pub fn max_start_alignment(contiguous_whole_buffer: bool, len: u64, page: u64) -> u64 {
    if contiguous_whole_buffer {
        len.checked_next_power_of_two().unwrap_or(u64::MAX).clamp(page, page.saturating_mul(1 << CMA_ALIGNMENT_ORDER))
    } else {
        page
    }
}

/// Check a request against a heap's capabilities; returns the length rounded
/// up to the heap's page size.
pub(crate) fn check_request(info: &Limits<'_>, request: &AllocRequest) -> Result<u64, AllocError> {
    if request.len == 0 {
        return Err(AllocError::ZeroSize);
    }
    if !request.align.is_power_of_two() {
        return Err(AllocError::BadAlignment(request.align));
    }
    let page = info.page_size;
    let len = request
        .len
        .checked_next_multiple_of(page)
        .filter(|l| isize::try_from(*l).is_ok())
        .ok_or(AllocError::SizeOverflow { requested: request.len, granularity: page })?;
    let contiguous = info.contiguous_up_to.unwrap_or(u64::MAX);
    if request.contiguous && len > contiguous {
        return Err(AllocError::NotContiguous {
            heap: info.name.to_owned(),
            len,
            max: contiguous,
            hint: contiguity_hint(info.name, len),
        });
    }
    let max_align = max_start_alignment(info.contiguous_up_to.is_none(), len, page);
    if request.align > max_align {
        return Err(AllocError::AlignmentUnsatisfiable {
            heap: info.name.to_owned(),
            align: request.align,
            max: max_align,
            hint: alignment_hint(info.name, request.align, request.len),
        });
    }
    if let Some(max) = info.max_buffer_size.filter(|m| len > *m) {
        let hint = if info.kind == HeapKind::Udmabuf {
            "raise /sys/module/udmabuf/parameters/size_limit_mb or use a dma-heap".to_owned()
        } else {
            "allocate several smaller buffers".to_owned()
        };
        return Err(AllocError::TooLarge { heap: info.name.to_owned(), len, max, hint });
    }
    Ok(len)
}

/// The hugetlb heaps by name and page size, for hints.
const HUGETLB_HEAPS: [(&str, u64); 2] = [("hugetlb", 2 << 20), ("hugetlb-1G", 1 << 30)];

/// `cma=` on the kernel command line for at least `len` bytes (whole MiB,
/// at least the customary 256M).
pub(crate) fn cma_cmdline(len: u64) -> String {
    format!("cma={}M", len.div_ceil(1 << 20).max(256))
}

/// The other heaps that could give `len` contiguous bytes, for a refusal by
/// `heap`: the hugetlb heaps whose page holds the whole buffer, and a CMA
/// dma-heap (which `heap` is not: CMA is contiguous over any length).
fn contiguity_hint(heap: &str, len: u64) -> String {
    let mut options: Vec<String> = HUGETLB_HEAPS
        .iter()
        .filter(|(name, page)| *name != heap && len <= *page)
        .map(|(name, page)| format!("{name} ({} pages)", format_size(*page)))
        .collect();
    options.push(format!("a CMA dma-heap (boot with {} if there is none)", cma_cmdline(len)));
    format!("use {}", or_list(&options))
}

/// The other heaps that could start a `len`-byte buffer on an `align`
/// boundary, for a refusal by `heap`: hugetlb heaps whose page is at least
/// `align`, and CMA while the buffer's own order covers it (see
/// [`max_start_alignment`]).
fn alignment_hint(heap: &str, align: u64, len: u64) -> String {
    let mut options: Vec<String> = HUGETLB_HEAPS
        .iter()
        .filter(|(name, page)| *name != heap && align <= *page)
        .map(|(name, page)| format!("{name} ({} pages)", format_size(*page)))
        .collect();
    let base_page = rustix::param::page_size() as u64;
    if align <= max_start_alignment(true, len, base_page) {
        options.push("a CMA dma-heap".to_owned());
    }
    if options.is_empty() {
        return format!(
            "no heap aligns a {} buffer to {}: lower the alignment, or allocate {} more and use an aligned part",
            format_size(len),
            format_size(align),
            format_size(align)
        );
    }
    format!("use {}", or_list(&options))
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// This machine's total RAM and total swap in bytes, from `sysinfo(2)`: one
/// cheap system call, fit for the allocation path (no /proc read).
#[allow(clippy::useless_conversion)] // c_ulong is u32 on 32-bit targets
pub(crate) fn ram_and_swap() -> (u64, u64) {
    let info = rustix::system::sysinfo();
    let unit = u64::from(info.mem_unit).max(1);
    (u64::from(info.totalram).saturating_mul(unit), u64::from(info.totalswap).saturating_mul(unit))
}

/// The end address of the highest memory block, from
/// `<sysfs_root>/devices/system/memory/{block_size_bytes,memoryN}`; `None`
/// where the kernel does not list memory blocks.
pub(crate) fn highest_ram_address(sysfs_root: &std::path::Path) -> Option<u64> {
    let dir = sysfs_root.join("devices/system/memory");
    let block = std::fs::read_to_string(dir.join("block_size_bytes")).ok()?;
    let block = u64::from_str_radix(block.trim().trim_start_matches("0x"), 16).ok()?;
    let top = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("memory")?.parse::<u64>().ok())
        .max()?;
    top.checked_add(1)?.checked_mul(block)
}

/// [`highest_ram_address`] of the running machine, for [`HeapInfo::ram_end`].
pub(crate) fn ram_end() -> Option<u64> {
    // Read once per process: /sys/devices/system/memory can list thousands
    // of blocks, and every `HeapInfo` (so every allocation by constraints)
    // asks. Memory hot-plugged later is not seen until a restart.
    static RAM_END: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *RAM_END.get_or_init(|| highest_ram_address(std::path::Path::new("/sys")))
}

/// The heaps of this machine.
#[derive(Debug)]
pub struct Heaps {
    heaps: Vec<Box<dyn Heap>>,
}

impl Heaps {
    /// Find every allocator this machine has. Never fails: a missing or
    /// inaccessible allocator is listed as unusable with a note, or left out
    /// when its kernel interface is absent.
    pub fn discover() -> Self {
        let mut heaps: Vec<Box<dyn Heap>> = Vec::new();
        heaps.extend(dma_heap::DmaHeap::discover().into_iter().map(|h| Box::new(h) as Box<dyn Heap>));
        if let Some(u) = udmabuf::Udmabuf::discover() {
            heaps.push(Box::new(u));
        }
        heaps.push(Box::new(memfd::MemfdHeap::new()));
        heaps.extend(hugetlb::HugetlbHeap::discover().into_iter().map(|h| Box::new(h) as Box<dyn Heap>));
        Self { heaps }
    }

    /// The heap with this name (`dma-heap/<name>` may also be written `<name>`
    /// when no other heap has that name).
    pub fn get(&self, name: &str) -> Option<&dyn Heap> {
        self.heaps
            .iter()
            .find(|h| h.name() == name)
            .or_else(|| self.heaps.iter().find(|h| h.name() == format!("dma-heap/{name}")))
            .map(std::convert::AsRef::as_ref)
    }

    /// The heap with this name, or an error listing the heaps there are.
    ///
    /// # Errors
    /// [`AllocError::NoSuchHeap`].
    pub fn require(&self, name: &str) -> Result<&dyn Heap, AllocError> {
        self.get(name).ok_or_else(|| AllocError::NoSuchHeap { name: name.to_owned(), available: self.names() })
    }

    /// Allocate from the named heap.
    ///
    /// # Errors
    /// [`AllocError::NoSuchHeap`] or the heap's own error.
    pub fn allocate(&self, heap: &str, request: &AllocRequest) -> Result<Buffer, AllocError> {
        self.require(heap)?.allocate(request)
    }

    /// Every heap, in discovery order (dma-heaps, udmabuf, memfd, hugetlb).
    pub fn iter(&self) -> impl Iterator<Item = &dyn Heap> {
        self.heaps.iter().map(std::convert::AsRef::as_ref)
    }

    /// The heaps' names.
    pub fn names(&self) -> Vec<String> {
        self.heaps.iter().map(|h| h.name().to_owned()).collect()
    }

    /// Every heap's capabilities.
    pub fn infos(&self) -> Vec<HeapInfo> {
        self.heaps.iter().map(|h| h.info()).collect()
    }
}

/// [`AllocError::CmaShort`]'s message: CMA free/total and the fix.
fn cma_shortage(
    heap: &str,
    len: u64,
    free: Option<u64>,
    total: Option<u64>,
    area: Option<&cma_area::CmaState>,
) -> String {
    let fmt = |v: Option<u64>| v.map_or("?".to_owned(), format_size);
    let why = match free {
        Some(f) if f >= len => "enough is free but not in one contiguous run (fragmented by other allocations)",
        _ => "too little is free",
    };
    let known = area.map_or(String::new(), |a| format!(" ({})", a.describe()));
    format!(
        "heap {heap} has no physically contiguous {}: CMA has {} free of {} (CmaFree/CmaTotal in /proc/meminfo), {why}{known}; \
         boot with a larger CMA area ({} on the kernel command line, or a larger reserved region in the device tree), \
         or free CMA buffers",
        format_size(len),
        fmt(free),
        fmt(total),
        cma_cmdline(total.unwrap_or(0).max(len).saturating_mul(2)),
    )
}

/// The tail of [`AllocError::OutOfMemory`]'s message.
fn available_now(available: Option<u64>) -> String {
    match available {
        Some(a) => format!(
            ": only {} of memory is available now (MemAvailable in /proc/meminfo); \
             free memory or allocate less",
            format_size(a)
        ),
        None => String::new(),
    }
}

/// From this size on, a dma-buf allocation (whose pages are pinned, not
/// reclaimable) is checked against `MemAvailable` first. Below it the
/// allocation path reads nothing from /proc: one /proc/meminfo read costs
/// more than a small allocation (+21% at 1 MiB, docs/BENCHMARKS.md).
pub(crate) const MEMORY_CHECK_FROM: u64 = 16 << 20;

/// Refuse a pinned allocation of `len` bytes from `heap` that exceeds the
/// memory available now, instead of letting the OOM killer end this process
/// (or another one) while the kernel fills it. Does no I/O below
/// [`MEMORY_CHECK_FROM`].
pub(crate) fn check_available(heap: &str, len: u64) -> Result<(), AllocError> {
    check_available_with(heap, len, || meminfo("MemAvailable"))
}

/// [`check_available`] with the `MemAvailable` source given (for tests).
pub(crate) fn check_available_with(
    heap: &str,
    len: u64,
    available: impl FnOnce() -> Option<u64>,
) -> Result<(), AllocError> {
    if len < MEMORY_CHECK_FROM {
        return Ok(());
    }
    match available() {
        Some(avail) if len > avail => {
            Err(AllocError::OutOfMemory { heap: heap.to_owned(), len, available: Some(avail) })
        }
        _ => Ok(()),
    }
}

/// `MemAvailable` from /proc/meminfo, or another field, in bytes.
pub(crate) fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        kb.checked_mul(1024)
    })
}

/// Map an open() errno on a device node to an AllocError.
pub(crate) fn open_error(path: &str, e: rustix::io::Errno, hint: &str) -> AllocError {
    match e {
        rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => {
            AllocError::PermissionDenied { path: path.to_owned(), hint: hint.to_owned() }
        }
        source => AllocError::Os { op: "open", source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_requests_never_look_at_memory() {
        let looked = std::cell::Cell::new(false);
        let r = check_available_with("udmabuf", MEMORY_CHECK_FROM - 4096, || {
            looked.set(true);
            Some(0)
        });
        assert!(r.is_ok());
        assert!(!looked.get(), "a small allocation must not read /proc/meminfo");
    }

    #[test]
    fn large_request_above_available_is_refused_naming_it() {
        let err = check_available_with("dma-heap/system", 1500 << 20, || Some(1300 << 20)).unwrap_err();
        assert!(
            matches!(err, AllocError::OutOfMemory { available: Some(a), len, .. } if a == 1300 << 20 && len == 1500 << 20),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("dma-heap/system") && text.contains("1.3 GiB") && text.contains("available"), "{text}");
    }

    #[test]
    fn large_request_within_available_or_unknown_passes() {
        assert!(check_available_with("udmabuf", 64 << 20, || Some(1 << 30)).is_ok());
        assert!(check_available_with("udmabuf", 64 << 20, || None).is_ok());
    }
}
