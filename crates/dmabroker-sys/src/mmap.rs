//! `mmap`/`munmap` as RAII: a [`Mapping`] (byte views) or an
//! [`AtomicMapping`] (shared atomics only) unmaps itself on drop.
//!
//! Two types, because one region must never be both: a `&[u8]` promises
//! that its bytes do not change while it lives, which an atomic store to the
//! same bytes through a shared reference would break (undefined behaviour in
//! safe code). So byte views and atomics come from different mappings, and
//! neither type can be turned into the other.
//!
//! Mapping a file is sound only while nobody can shrink it under the
//! mapping (an access past the new end is `SIGBUS`), so the safe
//! constructors accept only fds whose size is sealed (`F_SEAL_SHRINK`) or
//! that are dma-bufs (whose size is fixed at export); anything else is
//! [`MapError::NotSizeSealed`], and [`Mapping::map_unchecked`] is the
//! `unsafe` way for a caller that knows better.

use rustix::fs::SealFlags;
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// `DMA_BUF_MAGIC` from `<linux/magic.h>`: the `f_type` of every dma-buf.
pub const DMA_BUF_MAGIC: i64 = 0x444d_4142;

/// What the CPU may do through a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protection {
    /// `PROT_READ`.
    Read,
    /// `PROT_READ | PROT_WRITE`.
    ReadWrite,
}

/// Why a safe constructor did not map an fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// The fd is neither a dma-buf nor a memfd sealed against shrinking:
    /// another holder could truncate it while it is mapped, and this
    /// process would die of `SIGBUS` on its next access.
    #[error(
        "the file is not size-sealed (no F_SEAL_SHRINK) and is not a dma-buf: another holder could \
         truncate it under the mapping (SIGBUS); seal it with F_SEAL_SHRINK|F_SEAL_GROW before sharing"
    )]
    NotSizeSealed,
    /// `mmap` (or the `fstatfs`/`F_GET_SEALS` check before it) failed.
    #[error("{0}")]
    Os(#[from] rustix::io::Errno),
}

/// True when `fd` cannot shrink while mapped: a dma-buf, or a memfd with
/// `F_SEAL_SHRINK`. (`fstatfs` + `fcntl(F_GET_SEALS)`.)
///
/// # Errors
/// `fstatfs` failing (`EBADF`).
pub fn is_size_fixed(fd: impl AsFd) -> rustix::io::Result<bool> {
    let fd = fd.as_fd();
    if rustix::fs::fstatfs(fd)?.f_type as i64 == DMA_BUF_MAGIC {
        return Ok(true);
    }
    Ok(rustix::fs::fcntl_get_seals(fd).is_ok_and(|s| s.contains(SealFlags::SHRINK)))
}

/// The region itself: unmapped on drop, never handed out as a reference.
#[derive(Debug)]
struct Region {
    ptr: NonNull<u8>,
    len: usize,
    protection: Protection,
}

impl Region {
    /// # Safety
    /// The caller guarantees the file is not shrunk below `offset + len`
    /// while the region lives.
    unsafe fn map(
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
        // cannot alias any Rust object; the fd is borrowed only for the call;
        // that the file keeps its size is this fn's own precondition.
        let addr = unsafe { mmap(std::ptr::null_mut(), len, prot, flags, fd, offset)? };
        let ptr = NonNull::new(addr.cast::<u8>()).ok_or(rustix::io::Errno::NOMEM)?;
        Ok(Self { ptr, len, protection })
    }

    /// The safe path: refuse files that could shrink under the mapping.
    fn map_checked(
        fd: impl AsFd,
        offset: u64,
        len: usize,
        protection: Protection,
        populate: bool,
    ) -> Result<Self, MapError> {
        let fd = fd.as_fd();
        if !is_size_fixed(fd)? {
            return Err(MapError::NotSizeSealed);
        }
        // SAFETY: a dma-buf's size is fixed at export and a memfd with
        // F_SEAL_SHRINK cannot shrink (seals cannot be removed), so no access
        // inside the mapping can fault for a truncation.
        Ok(unsafe { Self::map(fd, offset, len, protection, populate)? })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr/len` is exactly the region returned by mmap, and no
        // borrow of it can outlive the owning Mapping/AtomicMapping.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: a region is plain shared memory; moving its owner to another
// thread changes nothing about its validity.
unsafe impl Send for Region {}
// SAFETY: `Region` itself hands out no references; the owning types decide
// what `&self` may do (read-only bytes, or atomics), never both.
unsafe impl Sync for Region {}

/// A shared mapping of (part of) a file viewed as bytes, unmapped on drop.
///
/// The memory is shared with other processes and devices, which may change
/// it at any time; the views are sound for this process's accesses, and
/// their content may be torn unless access is bracketed (`CpuRead` /
/// `CpuWrite` in the `dmabroker` crate, or a pool's handoff protocol).
/// Nothing in this process writes the bytes behind a `&[u8]` of it: there
/// are no atomics on a `Mapping` (see [`AtomicMapping`]).
#[derive(Debug)]
#[must_use = "dropping the mapping unmaps it at once"]
pub struct Mapping {
    region: Region,
}

impl Mapping {
    /// `mmap(NULL, len, prot, MAP_SHARED [| MAP_POPULATE], fd, offset)` of a
    /// dma-buf or a size-sealed memfd.
    ///
    /// # Errors
    /// [`MapError::NotSizeSealed`] for any other file. `Os`: `EINVAL` for a
    /// zero length or misaligned offset; `EACCES` when the fd's mode does
    /// not allow `protection` (a read-only import mapped writable); `ENODEV`
    /// when the file cannot be mapped; `ENOMEM`.
    pub fn map(
        fd: impl AsFd,
        offset: u64,
        len: usize,
        protection: Protection,
        populate: bool,
    ) -> Result<Self, MapError> {
        Ok(Self { region: Region::map_checked(fd, offset, len, protection, populate)? })
    }

    /// [`map`](Self::map) without the size check, for any mappable file.
    ///
    /// # Safety
    /// Until the mapping is dropped, nobody (in any process) may shrink the
    /// file below `offset + len`: an access past its end raises `SIGBUS`.
    ///
    /// # Errors
    /// As for [`map`](Self::map), without `NotSizeSealed`.
    pub unsafe fn map_unchecked(
        fd: impl AsFd,
        offset: u64,
        len: usize,
        protection: Protection,
        populate: bool,
    ) -> rustix::io::Result<Self> {
        // SAFETY: the caller's guarantee is exactly `Region::map`'s.
        Ok(Self { region: unsafe { Region::map(fd, offset, len, protection, populate)? } })
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.region.len
    }

    /// Always false: zero-length mappings cannot be created.
    pub fn is_empty(&self) -> bool {
        self.region.len == 0
    }

    /// The protection the mapping was created with.
    pub fn protection(&self) -> Protection {
        self.region.protection
    }

    /// The start address (for cache maintenance and diagnostics).
    pub fn as_ptr(&self) -> *const u8 {
        self.region.ptr.as_ptr()
    }

    /// The mapped bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is a live readable mapping owned by `self`
        // for the lifetime of the borrow, whose file cannot shrink (checked,
        // or promised to `map_unchecked`). Nothing in this process writes
        // it while the borrow lives: writes need `&mut self`, and a Mapping
        // hands out no atomics. Other processes and devices writing shared
        // memory is the caveat in the type docs.
        unsafe { std::slice::from_raw_parts(self.region.ptr.as_ptr(), self.region.len) }
    }

    /// The mapped bytes, writable; `None` for a read-only mapping.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if self.region.protection != Protection::ReadWrite {
            return None;
        }
        // SAFETY: the mapping is writable, live for the borrow, and `&mut self`
        // guarantees no other view of this mapping exists in this process.
        Some(unsafe { std::slice::from_raw_parts_mut(self.region.ptr.as_ptr(), self.region.len) })
    }
}

/// A shared mapping reached only through atomics (futexes and rings in
/// shared memory), unmapped on drop. It has no byte views, so concurrent
/// stores by any thread or process are what the atomics are for.
#[derive(Debug)]
#[must_use = "dropping the mapping unmaps it at once"]
pub struct AtomicMapping {
    region: Region,
}

impl AtomicMapping {
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED [| MAP_POPULATE],
    /// fd, 0)` of a dma-buf or a size-sealed memfd.
    ///
    /// # Errors
    /// As for [`Mapping::map`].
    pub fn map(fd: impl AsFd, len: usize, populate: bool) -> Result<Self, MapError> {
        Ok(Self { region: Region::map_checked(fd, 0, len, Protection::ReadWrite, populate)? })
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.region.len
    }

    /// Always false: zero-length mappings cannot be created.
    pub fn is_empty(&self) -> bool {
        self.region.len == 0
    }

    /// An atomic 32-bit word at `offset`; `None` when out of range or misaligned.
    pub fn atomic_u32(&self, offset: usize) -> Option<&AtomicU32> {
        if offset & 3 != 0 || offset.checked_add(4)? > self.region.len {
            return None;
        }
        // SAFETY: in bounds and 4-byte aligned (mappings are page aligned);
        // AtomicU32 has the size and alignment of u32 and every bit pattern is
        // valid; the region is only ever reached through atomics (no byte
        // views exist), and concurrent access from other processes is what
        // atomics are for.
        Some(unsafe { &*self.region.ptr.as_ptr().add(offset).cast::<AtomicU32>() })
    }

    /// An atomic 64-bit word at `offset`; `None` when out of range or misaligned.
    pub fn atomic_u64(&self, offset: usize) -> Option<&AtomicU64> {
        if offset & 7 != 0 || offset.checked_add(8)? > self.region.len {
            return None;
        }
        // SAFETY: as for `atomic_u32`, with 8-byte alignment checked above.
        Some(unsafe { &*self.region.ptr.as_ptr().add(offset).cast::<AtomicU64>() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{memfd_create, MemfdFlags};
    use std::sync::atomic::Ordering;

    fn memfd(sealed: bool) -> std::os::fd::OwnedFd {
        let fd = memfd_create("mmap-test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        if sealed {
            rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        }
        fd
    }

    #[test]
    fn only_size_fixed_files_map_safely() {
        assert_eq!(Mapping::map(memfd(false), 0, 4096, Protection::Read, false).unwrap_err(), MapError::NotSizeSealed);
        assert!(AtomicMapping::map(memfd(false), 4096, false).is_err());
        let mut m = Mapping::map(memfd(true), 0, 4096, Protection::ReadWrite, false).unwrap();
        m.as_mut_slice().unwrap()[0] = 7;
        assert_eq!(m.as_slice()[0], 7);
        // SAFETY: nobody else holds this memfd, so nobody shrinks it.
        let u = unsafe { Mapping::map_unchecked(memfd(false), 0, 4096, Protection::Read, false) }.unwrap();
        assert_eq!(u.as_slice().len(), 4096);
    }

    #[test]
    fn atomics_are_bounded_and_aligned() {
        let a = AtomicMapping::map(memfd(true), 4096, false).unwrap();
        assert!(a.atomic_u32(2).is_none() && a.atomic_u64(4).is_none() && a.atomic_u32(4096).is_none());
        a.atomic_u64(4088).unwrap().store(u64::MAX, Ordering::Relaxed);
        assert_eq!(a.atomic_u32(4092).unwrap().load(Ordering::Relaxed), u32::MAX);
    }
}
