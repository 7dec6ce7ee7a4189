//! CPU mappings of a buffer and scoped CPU access.
//!
//! A [`BufferMapping`] is an `mmap` of the whole buffer, unmapped on drop.
//! Its bytes are reached only through guards that bracket the access:
//!
//! | buffer | begin (guard created) | end (guard dropped) |
//! |---|---|---|
//! | dma-buf | `DMA_BUF_IOCTL_SYNC` `START` with `READ`/`WRITE`/`RW` | `SYNC` `END` with the same direction |
//! | memfd / hugetlb marked [`Coherency::NonCoherent`] | read, read-write: clean+invalidate the lines (`clflushopt` / `dc civac`) so the CPU sees what the device wrote | write, read-write: clean+invalidate so the device sees what the CPU wrote |
//! | memfd / hugetlb, coherent (the default) | nothing | nothing |
//!
//! Why: the dma-buf exporter knows how the memory is mapped for every
//! attached device and does the right maintenance inside `SYNC`; for
//! non-dma-buf memory nobody else will, so the CPU's own instructions do.
//! Caveat (seen in the field): udmabuf's `SYNC` does nothing while no device
//! is attached; on non-coherent platforms an unattached udmabuf buffer gets no
//! maintenance from the kernel.
//!
//! Guards cannot be left unbalanced: `END` runs in `Drop`, even on panic.

use super::{Buffer, BufferKind, Coherency};
use dmabroker_sys::dma_buf;
use dmabroker_sys::mmap::{Mapping, Protection};
use std::ops::{Deref, DerefMut};

/// Why a buffer could not be mapped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// Writable mapping of an fd opened read-only.
    #[error("the buffer's fd is read-only (a read-only grant?): map it with map_read()")]
    ReadOnly,
    /// Writable mapping of a memfd sealed against writes (`F_SEAL_WRITE` or
    /// `F_SEAL_FUTURE_WRITE`): the fd may be read-write, the file is not.
    #[error("the memfd is sealed against writes (F_SEAL_WRITE/F_SEAL_FUTURE_WRITE): map it with map_read()")]
    WriteSealed,
    /// The exporter does not support CPU mappings (`ENODEV`, or `EINVAL`
    /// from a dma-buf whose exporter has no `mmap`).
    #[error("the buffer cannot be mapped by the CPU (its exporter has no mmap): it is device-only")]
    NotMappable,
    /// The buffer is larger than the address space.
    #[error("the buffer ({0} bytes) is larger than this process's address space")]
    TooLarge(u64),
    /// Not enough memory or address space.
    #[error("out of memory mapping {0} bytes")]
    OutOfMemory(u64),
    /// A memfd without `F_SEAL_SHRINK` (an adopted foreign one): another
    /// holder could truncate it while it is mapped, and this process would
    /// die of `SIGBUS` on its next access, so it is not mapped.
    #[error(
        "the memfd is not size-sealed: another holder could truncate it while mapped (SIGBUS); \
         its creator must add F_SEAL_SHRINK|F_SEAL_GROW (dmabroker's own memfds have them)"
    )]
    NotSizeSealed,
    /// Another error from `mmap`.
    #[error("mmap failed: {0}")]
    Os(#[source] rustix::io::Errno),
}

/// Why CPU access could not begin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// Write access through a read-only mapping.
    #[error("write access through a read-only mapping: map with map_read_write()")]
    ReadOnlyMapping,
    /// `DMA_BUF_IOCTL_SYNC` failed.
    #[error("DMA_BUF_IOCTL_SYNC failed: {0}")]
    DmaBufSync(#[source] rustix::io::Errno),
}

/// An `mmap` of a whole buffer. Access its bytes with the guards.
#[derive(Debug)]
#[must_use = "dropping the mapping unmaps it at once"]
pub struct BufferMapping {
    buffer: Buffer,
    map: Mapping,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
    ReadWrite,
}

impl Direction {
    fn dma_buf_flags(self) -> u64 {
        match self {
            Self::Read => dma_buf::DMA_BUF_SYNC_READ,
            Self::Write => dma_buf::DMA_BUF_SYNC_WRITE,
            Self::ReadWrite => dma_buf::DMA_BUF_SYNC_RW,
        }
    }
}

impl BufferMapping {
    pub(super) fn new(buffer: Buffer, protection: Protection) -> Result<Self, MapError> {
        let len = usize::try_from(buffer.len()).map_err(|_| MapError::TooLarge(buffer.len()))?;
        let map = Mapping::map(&buffer, 0, len, protection, false).map_err(|e| map_error(&buffer, protection, e))?;
        Ok(Self { buffer, map })
    }

    /// The buffer this maps.
    pub fn buffer(&self) -> &Buffer {
        &self.buffer
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// True when the mapping allows writes.
    pub fn is_writable(&self) -> bool {
        self.map.protection() == Protection::ReadWrite
    }

    /// The underlying mapping (for physical segments); crate-private so
    /// that no caller can hold its bytes across a guard's writes.
    #[allow(dead_code)]
    pub(crate) fn raw(&self) -> &Mapping {
        &self.map
    }

    /// Begin CPU reads; reads see what devices wrote before this call.
    ///
    /// # Errors
    /// [`SyncError::DmaBufSync`] when the kernel refuses the sync.
    pub fn begin_read(&mut self) -> Result<CpuRead<'_>, SyncError> {
        self.begin(Direction::Read)?;
        Ok(CpuRead { mapping: self })
    }

    /// Begin CPU writes; devices see them after the guard drops.
    ///
    /// # Errors
    /// [`SyncError::ReadOnlyMapping`]; [`SyncError::DmaBufSync`].
    pub fn begin_write(&mut self) -> Result<CpuWrite<'_>, SyncError> {
        self.begin_writable(Direction::Write)
    }

    /// Begin CPU reads and writes.
    ///
    /// # Errors
    /// [`SyncError::ReadOnlyMapping`]; [`SyncError::DmaBufSync`].
    pub fn begin_read_write(&mut self) -> Result<CpuWrite<'_>, SyncError> {
        self.begin_writable(Direction::ReadWrite)
    }

    fn begin_writable(&mut self, direction: Direction) -> Result<CpuWrite<'_>, SyncError> {
        if !self.is_writable() {
            return Err(SyncError::ReadOnlyMapping);
        }
        self.begin(direction)?;
        Ok(CpuWrite { mapping: self, direction })
    }

    fn non_coherent_memfd(&self) -> bool {
        self.buffer.kind() != BufferKind::DmaBuf && self.buffer.properties().coherency == Coherency::NonCoherent
    }

    fn begin(&self, direction: Direction) -> Result<(), SyncError> {
        if self.buffer.kind() == BufferKind::DmaBuf {
            dma_buf::sync(&self.buffer, dma_buf::DMA_BUF_SYNC_START | direction.dma_buf_flags())
                .map_err(SyncError::DmaBufSync)?;
        } else if self.non_coherent_memfd() && direction != Direction::Write {
            dmabroker_sys::cache::clean_invalidate(&self.map, 0, self.map.len());
        }
        Ok(())
    }

    fn end(&self, direction: Direction) {
        if self.buffer.kind() == BufferKind::DmaBuf {
            if let Err(e) = dma_buf::sync(&self.buffer, dma_buf::DMA_BUF_SYNC_END | direction.dma_buf_flags()) {
                tracing::warn!("DMA_BUF_IOCTL_SYNC END failed: {e}");
            }
        } else if self.non_coherent_memfd() && direction != Direction::Read {
            dmabroker_sys::cache::clean_invalidate(&self.map, 0, self.map.len());
        }
    }
}

/// The [`MapError`] for an `mmap` errno on a whole-buffer mapping.
///
/// `EACCES` is the fd's access mode (read-only fd mapped writable; a
/// write-only fd fails any mapping and stays `Os`); `EPERM` is a write seal;
/// `EINVAL` from a dma-buf at offset 0 for its own size is an exporter
/// without `mmap` (`dma_buf_mmap_internal`).
pub(crate) fn map_error(buffer: &Buffer, protection: Protection, e: dmabroker_sys::mmap::MapError) -> MapError {
    use rustix::io::Errno;
    let dmabroker_sys::mmap::MapError::Os(e) = e else { return MapError::NotSizeSealed };
    let read_only_fd = || {
        rustix::fs::fcntl_getfl(buffer).is_ok_and(|fl| fl & rustix::fs::OFlags::ACCMODE == rustix::fs::OFlags::RDONLY)
    };
    match e {
        Errno::ACCESS if protection == Protection::ReadWrite && read_only_fd() => MapError::ReadOnly,
        Errno::PERM if protection == Protection::ReadWrite => MapError::WriteSealed,
        Errno::NODEV => MapError::NotMappable,
        Errno::INVAL if buffer.kind() == BufferKind::DmaBuf => MapError::NotMappable,
        Errno::NOMEM => MapError::OutOfMemory(buffer.len()),
        e => MapError::Os(e),
    }
}

/// What a CPU access does, for [`BufferMapping::into_access`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CpuAccessKind {
    /// Reads only ([`BufferMapping::begin_read`]).
    Read,
    /// Writes ([`BufferMapping::begin_write`]).
    Write,
    /// Reads and writes ([`BufferMapping::begin_read_write`]).
    ReadWrite,
}

impl BufferMapping {
    /// Begin a CPU access that owns the mapping, for callers that cannot
    /// hold a borrow across calls (the C API's begin/end pair): the same
    /// bracket as the scoped guards, ended by [`OwnedCpuAccess::end`] (which
    /// gives the mapping back) or on drop.
    ///
    /// # Errors
    /// The mapping back, with [`SyncError::ReadOnlyMapping`] (write access
    /// through a read-only mapping) or [`SyncError::DmaBufSync`].
    pub fn into_access(self, kind: CpuAccessKind) -> Result<OwnedCpuAccess, (Self, SyncError)> {
        let direction = match kind {
            CpuAccessKind::Read => Direction::Read,
            CpuAccessKind::Write => Direction::Write,
            CpuAccessKind::ReadWrite => Direction::ReadWrite,
        };
        if direction != Direction::Read && !self.is_writable() {
            return Err((self, SyncError::ReadOnlyMapping));
        }
        if let Err(e) = self.begin(direction) {
            return Err((self, e));
        }
        Ok(OwnedCpuAccess { mapping: Some(self), direction })
    }
}

/// A CPU access that owns its [`BufferMapping`] (from
/// [`BufferMapping::into_access`]): `END` of the bracket runs in
/// [`end`](Self::end) or on drop.
#[derive(Debug)]
#[must_use = "dropping the access ends it at once"]
pub struct OwnedCpuAccess {
    /// `Some` until `end` or drop takes it.
    mapping: Option<BufferMapping>,
    direction: Direction,
}

impl OwnedCpuAccess {
    fn map(&self) -> &Mapping {
        &self.mapping.as_ref().expect("present until end or drop").map
    }

    /// The bytes, for reading.
    pub fn as_slice(&self) -> &[u8] {
        self.map().as_slice()
    }

    /// The bytes, writable; `None` for a read access.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if self.direction == Direction::Read {
            return None;
        }
        self.mapping.as_mut().and_then(|m| m.map.as_mut_slice())
    }

    /// End the access (`SYNC END`, cache maintenance) and get the mapping back.
    pub fn end(mut self) -> BufferMapping {
        let mapping = self.mapping.take().expect("present until end or drop");
        mapping.end(self.direction);
        mapping
    }
}

impl Drop for OwnedCpuAccess {
    fn drop(&mut self) {
        if let Some(m) = self.mapping.take() {
            m.end(self.direction);
        }
    }
}

/// Scoped CPU read access; derefs to the buffer's bytes.
#[derive(Debug)]
#[must_use = "dropping the guard ends the access at once"]
pub struct CpuRead<'m> {
    mapping: &'m mut BufferMapping,
}

impl Deref for CpuRead<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.mapping.map.as_slice()
    }
}

impl Drop for CpuRead<'_> {
    fn drop(&mut self) {
        self.mapping.end(Direction::Read);
    }
}

/// Scoped CPU write (or read-write) access; derefs mutably to the bytes.
#[derive(Debug)]
#[must_use = "dropping the guard ends the access at once"]
pub struct CpuWrite<'m> {
    mapping: &'m mut BufferMapping,
    direction: Direction,
}

impl Deref for CpuWrite<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.mapping.map.as_slice()
    }
}

impl DerefMut for CpuWrite<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // A CpuWrite is only created on a writable mapping (checked in
        // begin_writable), so as_mut_slice always returns Some.
        self.mapping.map.as_mut_slice().unwrap_or_default()
    }
}

impl Drop for CpuWrite<'_> {
    fn drop(&mut self) {
        self.mapping.end(self.direction);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{MemfdFlags, SealFlags};

    #[test]
    fn write_sealed_memfd_is_told_apart_from_a_read_only_fd() {
        let fd = rustix::fs::memfd_create("dmabroker:test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE).unwrap();
        let buffer = Buffer::from_fd(fd).unwrap();
        // The fd is O_RDWR: the refusal comes from the seal, not the fd mode.
        assert!(matches!(buffer.map_read_write(), Err(MapError::WriteSealed)));
        assert!(buffer.map_read().is_ok());
    }
}
