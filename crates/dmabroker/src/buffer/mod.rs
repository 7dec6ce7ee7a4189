//! [`Buffer`]: an owned file descriptor for memory, its length and its
//! physical properties. No pixel formats here (see [`crate::format`]).
//!
//! A buffer is a cheap cloneable handle (an `Arc` around one fd): clones share
//! the same open file. To hand a buffer to another process or to a device,
//! pass [`Buffer::as_fd`] (for `SCM_RIGHTS`, `V4L2_MEMORY_DMABUF`, PRIME) or
//! duplicate it with [`Buffer::try_clone_fd`].
//!
//! CPU access goes through a [`BufferMapping`] and scoped guards
//! ([`CpuRead`], [`CpuWrite`]) that bracket the access with the cache
//! maintenance the buffer needs; see [`mapping`] for which applies when.

pub(crate) mod adopt;
pub mod mapping;

pub use adopt::FromFdError;
pub use mapping::{BufferMapping, CpuAccessKind, CpuRead, CpuWrite, MapError, OwnedCpuAccess, SyncError};

use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// What kind of file backs a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BufferKind {
    /// A dma-buf: importable by devices (V4L2, DRM, ...).
    DmaBuf,
    /// A shmem memfd: CPU and IPC memory; a device can import it only after
    /// conversion through `/dev/udmabuf`.
    Memfd,
    /// A memfd on hugetlbfs (`MFD_HUGETLB`): physically contiguous per huge page.
    HugetlbMemfd,
}

impl std::fmt::Display for BufferKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::DmaBuf => "dma-buf",
            Self::Memfd => "memfd",
            Self::HugetlbMemfd => "hugetlb-memfd",
        })
    }
}

/// How the CPU caches the buffer's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    /// Normal write-back cached memory.
    Cached,
    /// Uncached (or write-combined) CPU mappings, e.g. `system-uncached`.
    Uncached,
}

impl std::fmt::Display for CacheMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cached => "cached",
            Self::Uncached => "uncached",
        })
    }
}

/// Whether the devices that touch a buffer see the CPU's caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Coherency {
    /// Devices snoop CPU caches (x86, most IPC-only use): no maintenance.
    #[default]
    Coherent,
    /// Devices do not snoop: CPU access must write back/invalidate caches.
    NonCoherent,
}

impl std::fmt::Display for Coherency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Coherent => "coherent",
            Self::NonCoherent => "non-coherent",
        })
    }
}

/// Physical properties of a buffer's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PhysicalProperties {
    /// Every physically contiguous run is at least this many bytes (the
    /// whole length for contiguous heaps, the page size otherwise).
    pub contiguous_up_to: u64,
    /// The size of the pages backing the buffer.
    pub page_size: u64,
    /// CPU cache mode of the memory.
    pub cache: CacheMode,
    /// Whether devices see CPU caches.
    pub coherency: Coherency,
    /// True when a device can import it (a dma-buf); false for CPU/IPC-only memory.
    pub device_importable: bool,
}

/// The physical properties the fd itself cannot tell, as the process that
/// allocated a buffer knows them: they travel with it (the broker's replies
/// from protocol version 3, a pool's welcome) to [`Buffer::from_fd_with`],
/// so that a buffer allocated for a device that does not snoop the CPU's
/// caches keeps its cache maintenance in every process that maps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropertyHint {
    /// [`PhysicalProperties::contiguous_up_to`].
    pub contiguous_up_to: u64,
    /// [`PhysicalProperties::cache`].
    pub cache: CacheMode,
    /// [`PhysicalProperties::coherency`].
    pub coherency: Coherency,
}

impl PhysicalProperties {
    /// What of these properties travels to another process.
    pub fn hint(&self) -> PropertyHint {
        PropertyHint { contiguous_up_to: self.contiguous_up_to, cache: self.cache, coherency: self.coherency }
    }
}

/// A buffer: an owned fd plus what is known about its memory.
#[derive(Debug, Clone)]
pub struct Buffer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    fd: OwnedFd,
    len: u64,
    kind: BufferKind,
    heap: String,
    name: Option<String>,
    properties: PhysicalProperties,
}

/// Everything about a buffer, for printing (`--json`) and the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BufferInfo {
    /// Length in bytes.
    pub len: u64,
    /// Backing file kind.
    pub kind: BufferKind,
    /// The heap it came from (a dmabroker heap name, or a dma-buf exporter name).
    pub heap: String,
    /// Its name (memfd name or dma-buf name), if any.
    pub name: Option<String>,
    /// Inode number: the identity of the buffer across fds and processes.
    pub inode: u64,
    /// Physical properties.
    pub properties: PhysicalProperties,
    /// memfd seals (`shrink`, `grow`, `write`, `seal`, `future-write`); empty for dma-bufs.
    pub seals: Vec<&'static str>,
}

impl Buffer {
    /// Wrap a freshly allocated fd (heaps use this).
    pub(crate) fn new(
        fd: OwnedFd,
        len: u64,
        kind: BufferKind,
        heap: impl Into<String>,
        name: Option<String>,
        properties: PhysicalProperties,
    ) -> Self {
        Self { inner: Arc::new(Inner { fd, len, kind, heap: heap.into(), name, properties }) }
    }

    /// Adopt a foreign fd (a dma-buf from V4L2 or DRM, a memfd) and find out
    /// what it is from `fstat`, `fstatfs` and `/proc/self/fdinfo`.
    ///
    /// A memfd without `F_SEAL_SHRINK` ([`is_size_sealed`](Self::is_size_sealed)
    /// is false) is adopted, but any other holder could truncate it: a
    /// mapping of it would then raise `SIGBUS` on its next access, so
    /// [`map_read`](Self::map_read) and [`map_read_write`](Self::map_read_write)
    /// refuse it ([`MapError::NotSizeSealed`]); it can still be passed on,
    /// published or handed to a device. Dma-bufs cannot change size.
    ///
    /// # Errors
    /// [`FromFdError::NotABuffer`] for sockets, pipes, regular files and
    /// anything else that is not buffer memory; the fd is closed.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, FromFdError> {
        adopt::adopt(fd)
    }

    /// [`from_fd`](Self::from_fd), with the physical properties its
    /// allocator reported ([`PropertyHint`]: from a broker reply or a pool's
    /// welcome) instead of the defaults an fd alone gives (coherent, cached,
    /// page-contiguous). A non-coherent memfd then gets its cache
    /// maintenance in this process too (see [`BufferMapping`]).
    /// `contiguous_up_to` is kept within the buffer's length.
    ///
    /// # Errors
    /// As [`from_fd`](Self::from_fd).
    pub fn from_fd_with(fd: OwnedFd, hint: PropertyHint) -> Result<Self, FromFdError> {
        let adopted = adopt::adopt(fd)?;
        // A buffer just adopted has no other handle, so this always unwraps.
        let mut inner = match Arc::try_unwrap(adopted.inner) {
            Ok(inner) => inner,
            Err(shared) => return Ok(Self { inner: shared }),
        };
        inner.properties.coherency = hint.coherency;
        inner.properties.cache = hint.cache;
        inner.properties.contiguous_up_to = hint.contiguous_up_to.clamp(1, inner.len.max(1));
        Ok(Self { inner: Arc::new(inner) })
    }

    /// A dma-buf that a trusted helper process (the broker's allocation
    /// worker) allocated from `heap` (`dma-heap/<name>` or `udmabuf`) and
    /// sent with its length and properties: checked with `fstat` only (an
    /// anonymous inode of `len` bytes, as every dma-buf is), not read back
    /// from `/proc/self/fdinfo` as [`from_fd_with`](Self::from_fd_with) does.
    ///
    /// # Errors
    /// [`FromFdError::NotABuffer`] when the fd is not a dma-buf of `len`
    /// bytes; the fd is closed.
    pub fn from_allocated(
        fd: OwnedFd,
        len: u64,
        heap: &str,
        name: Option<String>,
        hint: PropertyHint,
    ) -> Result<Self, FromFdError> {
        let mut b = adopt::adopt_allocated(fd, len, heap, name)?;
        if let Some(inner) = Arc::get_mut(&mut b.inner) {
            inner.properties.coherency = hint.coherency;
            inner.properties.cache = hint.cache;
            inner.properties.contiguous_up_to = hint.contiguous_up_to.clamp(1, len);
        }
        Ok(b)
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.inner.len
    }

    /// Always false: zero-length buffers are refused at allocation and adoption.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// The kind of file behind the buffer.
    pub fn kind(&self) -> BufferKind {
        self.inner.kind
    }

    /// The heap (or dma-buf exporter) it came from.
    pub fn heap(&self) -> &str {
        &self.inner.heap
    }

    /// The buffer's name, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    /// Its physical properties.
    pub fn properties(&self) -> &PhysicalProperties {
        &self.inner.properties
    }

    /// A new fd for the same buffer (`fcntl(F_DUPFD_CLOEXEC)`), for handing
    /// to code that takes ownership.
    ///
    /// # Errors
    /// `EMFILE` when this process is out of file descriptors.
    pub fn try_clone_fd(&self) -> std::io::Result<OwnedFd> {
        self.inner.fd.try_clone()
    }

    /// A new open file description of the same file with `O_RDONLY`, through
    /// `/proc/self/fd`: `mmap(PROT_WRITE, MAP_SHARED)`, `write()` and
    /// `ftruncate()` fail on it, which a dup of a read-write fd cannot give.
    /// For memfds (hugetlb ones too); a dma-buf cannot be reopened this way.
    ///
    /// # Errors
    /// The `open` errno (`ENXIO` for a dma-buf, `EMFILE`, ...); `EXDEV` when
    /// the path resolved to another file than this buffer's.
    pub fn reopen_read_only(&self) -> Result<OwnedFd, rustix::io::Errno> {
        self.reopen_fd(false)
    }

    /// A new open file description of the same file, `O_RDWR` when `write`
    /// (the file's mode must allow the caller), else `O_RDONLY`, through
    /// `/proc/self/fd`, as [`reopen_read_only`](Self::reopen_read_only).
    /// Unlike a dup, every such description counts in the inode's open
    /// counts, which the broker's accounting reads (file leases).
    ///
    /// # Errors
    /// As [`reopen_read_only`](Self::reopen_read_only); `EACCES` when the
    /// mode does not allow the caller to open it so.
    pub fn reopen_fd(&self, write: bool) -> Result<OwnedFd, rustix::io::Errno> {
        use rustix::fs::{Mode, OFlags};
        use std::os::fd::{AsFd, AsRawFd};
        let access = if write { OFlags::RDWR } else { OFlags::RDONLY };
        let fd = rustix::fs::open(
            format!("/proc/self/fd/{}", self.as_fd().as_raw_fd()),
            access | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // The same file, not whatever /proc resolved to.
        let (a, b) = (rustix::fs::fstat(self)?, rustix::fs::fstat(&fd)?);
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
            return Err(rustix::io::Errno::XDEV);
        }
        Ok(fd)
    }

    /// The same buffer (kind, heap, name, properties) over a new open file
    /// description ([`reopen_fd`](Self::reopen_fd)).
    ///
    /// # Errors
    /// As [`reopen_fd`](Self::reopen_fd).
    pub fn reopened(&self, write: bool) -> Result<Self, rustix::io::Errno> {
        let fd = self.reopen_fd(write)?;
        let i = &self.inner;
        Ok(Self::new(fd, i.len, i.kind, i.heap.clone(), i.name.clone(), i.properties))
    }

    /// Give up the handle and return the fd, when this is the last clone.
    ///
    /// # Errors
    /// Returns `self` back when other clones still share the fd.
    pub fn into_fd(self) -> Result<OwnedFd, Self> {
        Arc::try_unwrap(self.inner).map(|i| i.fd).map_err(|inner| Self { inner })
    }

    /// The inode number: equal for every fd of the same buffer, in any process.
    pub fn inode(&self) -> u64 {
        rustix::fs::fstat(&self.inner.fd).map_or(0, |st| st.st_ino)
    }

    /// The memfd seals currently set (empty for dma-bufs).
    pub fn seals(&self) -> Vec<&'static str> {
        let Ok(seals) = rustix::fs::fcntl_get_seals(&self.inner.fd) else {
            return Vec::new();
        };
        use rustix::fs::SealFlags as S;
        [
            (S::SHRINK, "shrink"),
            (S::GROW, "grow"),
            (S::WRITE, "write"),
            (S::SEAL, "seal"),
            (S::FUTURE_WRITE, "future-write"),
        ]
        .into_iter()
        .filter(|(flag, _)| seals.contains(*flag))
        .map(|(_, name)| name)
        .collect()
    }

    /// True when nobody can change the buffer's size (`F_SEAL_SHRINK` and
    /// `F_SEAL_GROW` on a memfd; always true for dma-bufs, whose size is fixed).
    /// An unsealed memfd can be truncated by any holder, which makes every
    /// other process that maps it die of SIGBUS.
    pub fn is_size_sealed(&self) -> bool {
        match self.kind() {
            BufferKind::DmaBuf => true,
            _ => {
                let seals = self.seals();
                seals.contains(&"shrink") && seals.contains(&"grow")
            }
        }
    }

    /// Everything about the buffer in one serializable value.
    pub fn info(&self) -> BufferInfo {
        BufferInfo {
            len: self.len(),
            kind: self.kind(),
            heap: self.heap().to_owned(),
            name: self.inner.name.clone(),
            inode: self.inode(),
            properties: self.inner.properties,
            seals: self.seals(),
        }
    }

    /// Map the whole buffer read-only.
    ///
    /// # Errors
    /// See [`MapError`].
    pub fn map_read(&self) -> Result<BufferMapping, MapError> {
        BufferMapping::new(self.clone(), dmabroker_sys::mmap::Protection::Read)
    }

    /// Map the whole buffer read-write.
    ///
    /// # Errors
    /// [`MapError::ReadOnly`] for an fd opened read-only (a read-only grant);
    /// see [`MapError`].
    pub fn map_read_write(&self) -> Result<BufferMapping, MapError> {
        BufferMapping::new(self.clone(), dmabroker_sys::mmap::Protection::ReadWrite)
    }
}

impl AsFd for Buffer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.fd.as_fd()
    }
}
