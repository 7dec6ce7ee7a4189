//! The `memfd` heap: sealed shmem memfds, present on every Linux.
//!
//! Every buffer carries `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`: no holder
//! can truncate it (which would kill every other process that maps it with
//! SIGBUS) or grow it, and nobody can add `F_SEAL_WRITE` behind the writers'
//! backs. Pages are allocated on first touch.

use super::{
    check_request, meminfo, ram_and_swap, ram_end, AllocError, AllocRequest, Heap, HeapInfo, HeapKind, Limits,
};
use crate::buffer::{Buffer, BufferKind, CacheMode, PhysicalProperties};
use rustix::fs::{MemfdFlags, SealFlags};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

/// The seals every dmabroker memfd carries.
pub const SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW).union(SealFlags::SEAL);

/// `memfd_create` + `ftruncate` + `F_ADD_SEALS`: a sealed memfd of `len` bytes.
/// `extra` adds `MFD_HUGETLB` and a page-size flag; `heap` is the heap named
/// in errors (`memfd`, `udmabuf`, `hugetlb`, ...).
pub(crate) fn create_sealed(
    heap: &str,
    name: Option<&str>,
    len: u64,
    extra: MemfdFlags,
) -> Result<OwnedFd, AllocError> {
    let name = format!("dmabroker:{}", name.unwrap_or("buffer"));
    // memfd names are limited to 249 bytes; keep it on a char boundary.
    let mut cut = name.len().min(240);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | extra;
    let fd = rustix::fs::memfd_create(&name[..cut], flags)
        .map_err(|source| AllocError::Os { op: "memfd_create", source })?;
    rustix::fs::ftruncate(&fd, len).map_err(|source| match source {
        rustix::io::Errno::FBIG | rustix::io::Errno::INVAL => {
            AllocError::SizeOverflow { requested: len, granularity: 1 }
        }
        rustix::io::Errno::NOMEM | rustix::io::Errno::NOSPC => {
            AllocError::OutOfMemory { heap: heap.into(), len, available: None }
        }
        source => AllocError::Os { op: "ftruncate", source },
    })?;
    rustix::fs::fcntl_add_seals(&fd, SEALS).map_err(|source| AllocError::Os { op: "F_ADD_SEALS", source })?;
    Ok(fd)
}

/// The memfd heap.
#[derive(Debug, Default)]
pub struct MemfdHeap {
    page_size: u64,
    /// RAM plus swap in bytes at the last look (sysinfo); looked at again
    /// before a size above it is refused, since swap may have been added.
    machine_bytes: AtomicU64,
}

impl MemfdHeap {
    /// The memfd heap (always available).
    pub fn new() -> Self {
        let (ram, swap) = ram_and_swap();
        Self { page_size: rustix::param::page_size() as u64, machine_bytes: AtomicU64::new(ram.saturating_add(swap)) }
    }
}

impl MemfdHeap {
    fn limits(&self) -> Limits<'_> {
        Limits {
            name: "memfd",
            kind: HeapKind::Memfd,
            page_size: self.page_size,
            contiguous_up_to: Some(self.page_size),
            max_buffer_size: None,
        }
    }
}

impl Heap for MemfdHeap {
    fn name(&self) -> &'static str {
        "memfd"
    }

    fn info(&self) -> HeapInfo {
        HeapInfo {
            name: "memfd".into(),
            kind: HeapKind::Memfd,
            contiguous_up_to: Some(self.page_size),
            page_size: self.page_size,
            cache_modes: vec![CacheMode::Cached],
            device_importable: false,
            free_bytes: meminfo("MemAvailable"),
            max_buffer_size: None,
            usable: true,
            note: Some("CPU/IPC memory; devices import it through udmabuf".into()),
            pool_pages: None,
            ram_end: ram_end(),
            cma: None,
        }
    }

    fn allocate(&self, request: &AllocRequest) -> Result<Buffer, AllocError> {
        let len = check_request(&self.limits(), request)?;
        // Pages come on first touch, so the kernel accepts any size here and
        // the OOM killer settles it later. A buffer larger than RAM and swap
        // together can never be filled: refuse it now. No /proc read on this
        // path: a size within the last known total costs a compare, and one
        // above it a sysinfo(2) call for the current total.
        if len > self.machine_bytes.load(Ordering::Relaxed) {
            let (ram, swap) = ram_and_swap();
            self.machine_bytes.store(ram.saturating_add(swap), Ordering::Relaxed);
            if len > ram.saturating_add(swap) {
                return Err(AllocError::LargerThanMemory { heap: "memfd".into(), len, ram, swap });
            }
        }
        let fd = create_sealed("memfd", request.name.as_deref(), len, MemfdFlags::empty())?;
        let properties = PhysicalProperties {
            contiguous_up_to: self.page_size,
            page_size: self.page_size,
            cache: CacheMode::Cached,
            coherency: request.coherency,
            device_importable: false,
        };
        Ok(Buffer::new(fd, len, BufferKind::Memfd, "memfd", request.name.clone(), properties))
    }
}
