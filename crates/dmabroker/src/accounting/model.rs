//! What a scan finds: buffers, their holders (fds and mappings) and totals.

use crate::buffer::BufferKind;
use serde::Serialize;
use std::os::unix::fs::MetadataExt;

/// The identity of a buffer: the device of its filesystem and its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct BufferId {
    /// Device major number.
    pub dev_major: u32,
    /// Device minor number.
    pub dev_minor: u32,
    /// Inode number.
    pub inode: u64,
}

/// Where a buffer's size came from, most to least exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SizeSource {
    /// dma-buf `size:` in `/proc/<pid>/fdinfo`.
    Fdinfo,
    /// `stat` of the file (a memfd's fd, or `/proc/<pid>/map_files` as root).
    Stat,
    /// `/sys/kernel/dmabuf/buffers/<inode>/size`.
    Sysfs,
    /// The extent of its mappings (a lower bound: only mapped, size unknown).
    Mapping,
}

/// `stat` of a file behind an fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    /// Device major number.
    pub dev_major: u32,
    /// Device minor number.
    pub dev_minor: u32,
    /// Inode number.
    pub inode: u64,
    /// File size.
    pub size: u64,
}

impl FileStat {
    pub(super) fn from_stat(st: &rustix::fs::Stat) -> Self {
        Self {
            dev_major: rustix::fs::major(st.st_dev),
            dev_minor: rustix::fs::minor(st.st_dev),
            inode: st.st_ino,
            size: st.st_size as u64,
        }
    }

    pub(super) fn from_metadata(m: &std::fs::Metadata) -> Self {
        Self {
            dev_major: rustix::fs::major(m.dev()),
            dev_minor: rustix::fs::minor(m.dev()),
            inode: m.ino(),
            size: m.size(),
        }
    }

    pub(super) fn id(&self) -> BufferId {
        BufferId { dev_major: self.dev_major, dev_minor: self.dev_minor, inode: self.inode }
    }
}

/// One fd of a process that refers to a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdHolding {
    /// The fd number.
    pub fd: i32,
    /// The buffer.
    pub id: BufferId,
    /// Its kind.
    pub kind: BufferKind,
    /// Its size.
    pub size: u64,
    /// Where the size came from ([`SizeSource::Fdinfo`] or [`SizeSource::Stat`]).
    pub size_source: SizeSource,
    /// dma-buf exporter (`exp_name:`).
    pub exporter: Option<String>,
    /// dma-buf name or memfd name.
    pub name: Option<String>,
    /// dma-buf file reference count (`count:`).
    pub file_count: Option<u64>,
}

/// The mappings of one buffer in one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapHolding {
    /// The buffer.
    pub id: BufferId,
    /// Its kind.
    pub kind: BufferKind,
    /// dma-buf name or memfd name.
    pub name: Option<String>,
    /// Number of mappings (VMAs).
    pub mappings: u32,
    /// Bytes mapped, over all its mappings.
    pub mapped_bytes: u64,
    /// The highest file offset mapped (a lower bound of the size).
    pub extent: u64,
    /// The file size when it could be read (`/proc/<pid>/map_files`, root only).
    pub size: Option<u64>,
    /// One mapped range (`start`, `end`), to look the file up in `map_files`.
    pub range: (u64, u64),
}

/// Everything one process holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessHoldings {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Effective uid.
    pub uid: u32,
    /// Buffer fds.
    pub fds: Vec<FdHolding>,
    /// Buffer mappings, one entry per buffer.
    pub maps: Vec<MapHolding>,
}

/// A process that holds a buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Effective uid.
    pub uid: u32,
    /// The fds that refer to the buffer (empty: held only by mapping).
    pub fds: Vec<i32>,
    /// Number of mappings (VMAs) of the buffer.
    pub mappings: u32,
    /// Bytes mapped.
    pub mapped_bytes: u64,
}

/// One buffer and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BufferRecord {
    /// Inode number.
    pub inode: u64,
    /// Filesystem device, decimal `major:minor` (with the inode, the buffer's identity).
    pub device: String,
    /// Kind of buffer.
    pub kind: BufferKind,
    /// True for a dmabroker buffer (named `dmabroker:...`, or held by the
    /// broker process).
    pub dmabroker: bool,
    /// Size in bytes.
    pub size: u64,
    /// Where the size came from.
    pub size_source: SizeSource,
    /// dma-buf exporter (`system`, `udmabuf`, a driver), if known.
    pub exporter: Option<String>,
    /// dma-buf name or memfd name.
    pub name: Option<String>,
    /// dma-buf file reference count (`count:` in fdinfo).
    pub file_count: Option<u64>,
    /// `size / number of holding processes`.
    pub proportional_size: u64,
    /// The processes that hold it, by pid.
    pub holders: Vec<Holder>,
}

impl BufferRecord {
    /// The buffer's identity.
    pub fn id(&self) -> Option<BufferId> {
        let (major, minor) = self.device.split_once(':')?;
        Some(BufferId { dev_major: major.parse().ok()?, dev_minor: minor.parse().ok()?, inode: self.inode })
    }
}

/// What one process holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessTotals {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Effective uid.
    pub uid: u32,
    /// User name from `/etc/passwd`.
    pub user: Option<String>,
    /// Distinct buffers held.
    pub buffers: u64,
    /// Buffer fds open.
    pub fds: u64,
    /// Buffer mappings.
    pub mappings: u64,
    /// Sum of the sizes of the buffers it holds (each counted in full).
    pub bytes: u64,
    /// Its share: each buffer's size divided by the number of its holders.
    pub proportional_bytes: u64,
}

/// What one user's processes hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserTotals {
    /// uid.
    pub uid: u32,
    /// User name from `/etc/passwd`.
    pub user: Option<String>,
    /// Processes holding buffers.
    pub processes: u64,
    /// Distinct buffers held by any of its processes.
    pub buffers: u64,
    /// Sum of the sizes of those distinct buffers.
    pub bytes: u64,
    /// Sum of its processes' proportional shares.
    pub proportional_bytes: u64,
}

/// Totals for one kind of buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KindTotals {
    /// Kind.
    pub kind: BufferKind,
    /// Distinct buffers.
    pub buffers: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Grand totals, deduplicated by buffer identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Distinct buffers.
    pub buffers: u64,
    /// Sum of their sizes.
    pub bytes: u64,
    /// Per kind (only kinds present).
    pub by_kind: Vec<KindTotals>,
}
