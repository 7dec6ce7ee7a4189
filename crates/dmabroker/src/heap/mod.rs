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

pub mod dma_heap;
pub mod hugetlb;
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
}

/// Why an allocation failed. Each variant says what to do about it.
#[derive(Debug, thiserror::Error)]
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
    #[error("heap {heap} aligns buffers to at most {max} bytes, {align} asked: use a heap with larger pages (hugetlb) or a contiguous heap")]
    AlignmentUnsatisfiable {
        /// The heap.
        heap: String,
        /// Requested alignment.
        align: u64,
        /// What it can do.
        max: u64,
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
    #[error("heap {heap} is physically contiguous only up to {}, {} asked: use a CMA dma-heap (boot with cma=256M) or hugetlb-1G", format_size(*max), format_size(*len))]
    NotContiguous {
        /// The heap.
        heap: String,
        /// Requested length.
        len: u64,
        /// Its contiguity.
        max: u64,
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
    #[error("the buffer needs {needed} free {} huge page(s) and {free} are free: reserve more as root with `echo {} > {sysctl}`", format_size(*page_size), reserved + needed.saturating_sub(*free), sysctl = sysctl_path(*page_size))]
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
    /// The heap is out of memory.
    #[error("heap {heap} has no {} left", format_size(*len))]
    OutOfMemory {
        /// The heap.
        heap: String,
        /// Requested length.
        len: u64,
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

fn sysctl_path(page_size: u64) -> String {
    if page_size == 2 << 20 {
        "/proc/sys/vm/nr_hugepages".to_owned()
    } else {
        format!("/sys/kernel/mm/hugepages/hugepages-{}kB/nr_hugepages", page_size / 1024)
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
        len.checked_next_power_of_two().unwrap_or(u64::MAX).clamp(page, page << CMA_ALIGNMENT_ORDER)
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
        .filter(|l| *l <= isize::MAX as u64)
        .ok_or(AllocError::SizeOverflow { requested: request.len, granularity: page })?;
    let contiguous = info.contiguous_up_to.unwrap_or(u64::MAX);
    if request.contiguous && len > contiguous {
        return Err(AllocError::NotContiguous { heap: info.name.to_owned(), len, max: contiguous });
    }
    let max_align = max_start_alignment(info.contiguous_up_to.is_none(), len, page);
    if request.align > max_align {
        return Err(AllocError::AlignmentUnsatisfiable {
            heap: info.name.to_owned(),
            align: request.align,
            max: max_align,
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
            .map(|h| h.as_ref())
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
        self.heaps.iter().map(|h| h.as_ref())
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
