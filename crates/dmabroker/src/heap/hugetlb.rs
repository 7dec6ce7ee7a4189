//! The `hugetlb` heaps: memfds on hugetlbfs (`MFD_HUGETLB`), 2 MiB pages
//! (`hugetlb`) and 1 GiB pages (`hugetlb-1G`) where the kernel has them.
//!
//! Each huge page is physically contiguous, so a buffer is contiguous up to
//! the page size, and first touch costs one fault per huge page instead of
//! 512 or 262144. Pages come only from the pool reserved by root
//! (`/proc/sys/vm/nr_hugepages`); allocation takes them at once with
//! `fallocate`, so a buffer never faults with SIGBUS later for want of pages.

use super::memfd::create_sealed;
use super::{check_request, ram_end, AllocError, AllocRequest, Heap, HeapInfo, HeapKind, Limits};
use crate::buffer::{Buffer, BufferKind, CacheMode, PhysicalProperties};
use rustix::fs::{FallocateFlags, MemfdFlags};

/// A hugetlb heap for one huge page size.
#[derive(Debug)]
pub struct HugetlbHeap {
    name: String,
    page_size: u64,
    flags: MemfdFlags,
}

/// Counters of one huge page size from sysfs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HugePageCounts {
    /// `nr_hugepages`: the pool size.
    pub total: u64,
    /// `free_hugepages`.
    pub free: u64,
    /// `resv_hugepages`: free but promised to existing mappings.
    pub reserved: u64,
}

impl HugePageCounts {
    /// Pages really available to a new buffer.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }
}

fn sysfs_dir(page_size: u64) -> String {
    format!("/sys/kernel/mm/hugepages/hugepages-{}kB", page_size / 1024)
}

/// Read the counters of a huge page size.
pub fn counts(page_size: u64) -> Option<HugePageCounts> {
    let dir = sysfs_dir(page_size);
    let read = |f: &str| -> Option<u64> { std::fs::read_to_string(format!("{dir}/{f}")).ok()?.trim().parse().ok() };
    Some(HugePageCounts {
        total: read("nr_hugepages")?,
        free: read("free_hugepages")?,
        reserved: read("resv_hugepages")?,
    })
}

impl HugetlbHeap {
    /// The hugetlb heaps this kernel supports (a page size is listed when its
    /// sysfs directory exists, even with no pages reserved, so that
    /// allocation can say how to reserve them).
    pub fn discover() -> Vec<Self> {
        let mut heaps = Vec::new();
        if counts(2 << 20).is_some() {
            heaps.push(Self { name: "hugetlb".into(), page_size: 2 << 20, flags: MemfdFlags::HUGE_2MB });
        }
        if counts(1 << 30).is_some() {
            heaps.push(Self { name: "hugetlb-1G".into(), page_size: 1 << 30, flags: MemfdFlags::HUGE_1GB });
        }
        heaps
    }

    /// The huge page size.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }
}

impl HugetlbHeap {
    fn limits(&self) -> Limits<'_> {
        Limits {
            name: &self.name,
            kind: HeapKind::Hugetlb,
            page_size: self.page_size,
            contiguous_up_to: Some(self.page_size),
            max_buffer_size: None,
        }
    }
}

impl Heap for HugetlbHeap {
    fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> HeapInfo {
        let c = counts(self.page_size).unwrap_or_default();
        HeapInfo {
            name: self.name.clone(),
            kind: HeapKind::Hugetlb,
            contiguous_up_to: Some(self.page_size),
            page_size: self.page_size,
            cache_modes: vec![CacheMode::Cached],
            device_importable: false,
            free_bytes: Some(c.available().saturating_mul(self.page_size)),
            max_buffer_size: None,
            usable: c.available() > 0,
            note: Some(format!(
                "{} of {} pages free{}",
                c.available(),
                c.total,
                if c.total == 0 {
                    format!("; reserve with echo N > {}/nr_hugepages", sysfs_dir(self.page_size))
                } else {
                    String::new()
                }
            )),
            pool_pages: Some(c.total),
            ram_end: ram_end(),
            cma: None,
        }
    }

    fn allocate(&self, request: &AllocRequest) -> Result<Buffer, AllocError> {
        let len = check_request(&self.limits(), request)?;
        let needed = len / self.page_size;
        let fd = create_sealed(&self.name, request.name.as_deref(), len, MemfdFlags::HUGETLB | self.flags)?;
        // Take the pages now: a later fault without pages would be SIGBUS.
        if let Err(e) = rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, len) {
            // A failed fallocate keeps the pages it took before running out:
            // close the memfd first so that they are back in the pool, then
            // read the counters (only on refusal, so the fast path does no
            // sysfs I/O; fallocate is the authority).
            drop(fd);
            return Err(match e {
                rustix::io::Errno::NOSPC | rustix::io::Errno::NOMEM => {
                    let c = counts(self.page_size).unwrap_or_default();
                    AllocError::NoHugePages {
                        page_size: self.page_size,
                        needed,
                        free: c.available(),
                        reserved: c.total,
                    }
                }
                source => AllocError::Os { op: "fallocate", source },
            });
        }
        let properties = PhysicalProperties {
            contiguous_up_to: self.page_size,
            page_size: self.page_size,
            cache: CacheMode::Cached,
            coherency: request.coherency,
            device_importable: false,
        };
        Ok(Buffer::new(fd, len, BufferKind::HugetlbMemfd, self.name.clone(), request.name.clone(), properties))
    }
}
