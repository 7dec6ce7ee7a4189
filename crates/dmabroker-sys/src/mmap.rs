//! `mmap`/`munmap` as RAII: a [`Mapping`] unmaps itself on drop.

use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// What the CPU may do through a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protection {
    /// `PROT_READ`.
    Read,
    /// `PROT_READ | PROT_WRITE`.
    ReadWrite,
}

/// A shared mapping of (part of) a file, unmapped on drop.
///
/// The memory is shared with other processes and devices, which may change it
/// at any time; the slice views are sound for this process's accesses but the
/// content may be torn unless access is bracketed (`CpuAccess` in the
/// `dmabroker` crate, or a pool's handoff protocol).
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    protection: Protection,
}

// SAFETY: a Mapping is a plain region of shared memory; moving the owner to
// another thread changes nothing about its validity.
unsafe impl Send for Mapping {}
// SAFETY: shared references only read (or hand out atomics), and `&mut` is
// required for writes through a slice.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `mmap(NULL, len, prot, MAP_SHARED [| MAP_POPULATE], fd, offset)`.
    ///
    /// # Errors
    /// `EINVAL` for a zero length or misaligned offset; `EACCES` when the fd's
    /// mode does not allow `protection` (a read-only import mapped writable);
    /// `ENODEV` when the file cannot be mapped; `ENOMEM`.
    pub fn map(
        fd: impl AsFd,
        offset: u64,
        len: usize,
        protection: Protection,
        populate: bool,
    ) -> rustix::io::Result<Self> {
        if len == 0 {
            return Err(rustix::io::Errno::INVAL);
        }
        let prot = match protection {
            Protection::Read => ProtFlags::READ,
            Protection::ReadWrite => ProtFlags::READ | ProtFlags::WRITE,
        };
        let mut flags = MapFlags::SHARED;
        if populate {
            flags |= MapFlags::POPULATE;
        }
        // SAFETY: a fresh shared mapping at an address the kernel chooses
        // cannot alias any Rust object; the fd is borrowed only for the call.
        let addr = unsafe { mmap(std::ptr::null_mut(), len, prot, flags, fd, offset)? };
        let ptr = NonNull::new(addr.cast::<u8>()).ok_or(rustix::io::Errno::NOMEM)?;
        Ok(Self { ptr, len, protection })
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: zero-length mappings cannot be created.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The protection the mapping was created with.
    pub fn protection(&self) -> Protection {
        self.protection
    }

    /// The start address (for cache maintenance and diagnostics).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The mapped bytes.
    ///
    /// Do not hold this slice while the same bytes are written through
    /// [`atomic_u32`](Self::atomic_u32)/[`atomic_u64`](Self::atomic_u64) of
    /// this mapping: a `&[u8]` promises its bytes do not change. Take atomics
    /// only on mappings that are never viewed as slices (as dmabroker's pool
    /// control block does).
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is a live readable mapping owned by `self`
        // for the lifetime of the borrow. Concurrent writes by other
        // processes or devices are the shared-memory caveat in the type docs;
        // in-process writes through this mapping's atomics are excluded only
        // by the rule in this fn's docs (the API cannot enforce it).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapped bytes, writable; `None` for a read-only mapping.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if self.protection != Protection::ReadWrite {
            return None;
        }
        // SAFETY: the mapping is writable, live for the borrow, and `&mut self`
        // guarantees no other slice of this mapping exists in this process.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) })
    }

    /// An atomic 32-bit word at `offset` (for futexes and rings in shared
    /// memory); `None` when out of range or misaligned.
    pub fn atomic_u32(&self, offset: usize) -> Option<&AtomicU32> {
        if offset & 3 != 0 || offset.checked_add(4)? > self.len {
            return None;
        }
        // SAFETY: in bounds and 4-byte aligned (mappings are page aligned);
        // AtomicU32 has the size and alignment of u32 and every bit pattern is
        // valid; concurrent access from other processes is what atomics are for.
        Some(unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU32>() })
    }

    /// An atomic 64-bit word at `offset`; `None` when out of range or misaligned.
    pub fn atomic_u64(&self, offset: usize) -> Option<&AtomicU64> {
        if offset & 7 != 0 || offset.checked_add(8)? > self.len {
            return None;
        }
        // SAFETY: as for `atomic_u32`, with 8-byte alignment checked above.
        Some(unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU64>() })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr/len` is exactly the region returned by mmap, and no
        // borrow of it can outlive `self`.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
