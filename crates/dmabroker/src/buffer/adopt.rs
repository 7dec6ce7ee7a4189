//! `Buffer::from_fd`: tell what a foreign fd is.

use super::{Buffer, BufferKind, CacheMode, Coherency, PhysicalProperties};
use crate::fdinfo::{fd_link, FdInfo};
use rustix::fs::FileType;
use std::os::fd::{AsRawFd, OwnedFd};

/// `TMPFS_MAGIC` from `linux/magic.h`.
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// `DMA_BUF_MAGIC` from `linux/magic.h`: the kernel's dmabuf file system.
const DMA_BUF_MAGIC: i64 = 0x444d_4142;
/// `HUGETLBFS_MAGIC`.
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// Why an fd could not be adopted as a buffer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FromFdError {
    /// The fd is something other than buffer memory.
    #[error(
        "fd is {what}, which is not a buffer: pass a dma-buf (from a dma-heap, V4L2 EXPBUF or DRM PRIME) \
         or a memfd (from memfd_create)"
    )]
    NotABuffer {
        /// What it is instead (`a socket`, `a regular file (/tmp/x)`, ...).
        what: String,
    },
    /// A zero-length memfd.
    #[error("the memfd is empty (0 bytes): size it with ftruncate before sharing it")]
    Empty,
    /// The kernel would not say what the fd is (`fstat`, `fstatfs` or
    /// `/proc/self/fdinfo` failed).
    #[error("cannot inspect the fd (fstat/fstatfs, /proc/self/fdinfo: is /proc mounted?): {0}")]
    Os(#[from] std::io::Error),
}

pub(super) fn adopt(fd: OwnedFd) -> Result<Buffer, FromFdError> {
    let stat = rustix::fs::fstat(&fd).map_err(std::io::Error::from)?;
    let file_type = FileType::from_raw_mode(stat.st_mode);
    let link = fd_link(None, fd.as_raw_fd()).unwrap_or_default();
    // A regular file on tmpfs or hugetlbfs (a memfd) is never a dma-buf
    // (those are anonymous inodes with no file type): only other files need
    // /proc/self/fdinfo, whose open + reads + close cost more than the rest
    // of the adoption together (every broker allocation adopts one fd).
    let fs_type = match file_type {
        FileType::RegularFile => Some(rustix::fs::fstatfs(&fd).map_err(std::io::Error::from)?.f_type as i64),
        _ => None,
    };
    let info = match fs_type {
        Some(TMPFS_MAGIC | HUGETLBFS_MAGIC) => None,
        _ => Some(FdInfo::read(None, fd.as_raw_fd())?),
    };
    if let Some(info) = info.filter(FdInfo::is_dma_buf) {
        let len = info.dma_buf_size().unwrap_or(stat.st_size as u64);
        let exporter = info.exporter().unwrap_or("unknown").to_owned();
        let properties = dma_buf_properties(&exporter, len);
        let name = info.dma_buf_name().map(str::to_owned);
        let heap = heap_of_exporter(&exporter, |p| std::fs::symlink_metadata(p).is_ok());
        return Ok(Buffer::new(fd, len, BufferKind::DmaBuf, heap, name, properties));
    }
    let not_a_buffer = |what: String| Err(FromFdError::NotABuffer { what });
    match file_type {
        FileType::Socket => return not_a_buffer(format!("a socket ({link})")),
        FileType::Fifo => return not_a_buffer(format!("a pipe ({link})")),
        FileType::Directory => return not_a_buffer(format!("a directory ({link})")),
        FileType::CharacterDevice => return not_a_buffer(format!("a character device ({link})")),
        FileType::BlockDevice => return not_a_buffer(format!("a block device ({link})")),
        FileType::RegularFile => {}
        _ => return not_a_buffer(format!("an unknown kind of file ({link})")),
    }
    let fs_type = fs_type.unwrap_or_default();
    // dmabroker names its memfds `dmabroker:<name>`; an adopted buffer
    // reports the same name it was allocated with.
    let memfd_name = link.strip_prefix("/memfd:").map(|n| {
        let n = n.trim_end_matches(" (deleted)");
        n.strip_prefix("dmabroker:").unwrap_or(n).to_owned()
    });
    let len = stat.st_size as u64;
    let kind = match (fs_type, &memfd_name) {
        (HUGETLBFS_MAGIC, _) => BufferKind::HugetlbMemfd,
        (TMPFS_MAGIC, Some(_)) => BufferKind::Memfd,
        (TMPFS_MAGIC, None) => {
            return not_a_buffer(format!("a regular file on tmpfs not made by memfd_create ({link})"))
        }
        _ => return not_a_buffer(format!("a regular file ({link})")),
    };
    if len == 0 {
        return Err(FromFdError::Empty);
    }
    let page_size =
        if kind == BufferKind::HugetlbMemfd { stat.st_blksize as u64 } else { rustix::param::page_size() as u64 };
    let properties = PhysicalProperties {
        contiguous_up_to: page_size,
        page_size,
        cache: CacheMode::Cached,
        coherency: Coherency::Coherent,
        device_importable: false,
    };
    let heap = if kind == BufferKind::HugetlbMemfd { "hugetlb" } else { "memfd" };
    Ok(Buffer::new(fd, len, kind, heap, memfd_name, properties))
}

/// The heap name dmabroker uses for a dma-buf's exporter: a dma-heap
/// exports under its bare name (`system`), which is `dma-heap/system` here
/// when `/dev/dma_heap/system` exists (`exists` tells); other exporters
/// (`udmabuf`, V4L2 and DRM drivers) keep their name.
pub(crate) fn heap_of_exporter(exporter: &str, exists: impl Fn(&str) -> bool) -> String {
    let plain = !exporter.is_empty() && !exporter.contains('/') && !exporter.starts_with('.');
    if plain && exporter != "udmabuf" && exists(&format!("{}/{exporter}", crate::heap::dma_heap::DIRECTORY)) {
        format!("dma-heap/{exporter}")
    } else {
        exporter.to_owned()
    }
}

/// What can be told of a dma-buf from its exporter's name alone.
pub(crate) fn dma_buf_properties(exporter: &str, len: u64) -> PhysicalProperties {
    let page = rustix::param::page_size() as u64;
    let contiguous = is_contiguous_exporter(exporter);
    PhysicalProperties {
        contiguous_up_to: if contiguous { len } else { page },
        page_size: page,
        cache: if exporter.contains("uncached") { CacheMode::Uncached } else { CacheMode::Cached },
        coherency: Coherency::Coherent,
        device_importable: true,
    }
}

/// A dma-buf a helper of this program allocated from `heap` and sent here
/// with its length: `fstatfs` and `fstat` alone check it (every dma-buf is
/// an inode of the kernel's dmabuf file system, `DMA_BUF_MAGIC`, whose size
/// is the buffer's), where [`adopt`] also reads `/proc/self/fdinfo`, whose
/// open + read + close cost more than the rest of the hand-off.
pub(super) fn adopt_allocated(fd: OwnedFd, len: u64, heap: &str, name: Option<String>) -> Result<Buffer, FromFdError> {
    let stat = rustix::fs::fstat(&fd).map_err(std::io::Error::from)?;
    let fs_type = rustix::fs::fstatfs(&fd).map_err(std::io::Error::from)?.f_type as i64;
    if fs_type != DMA_BUF_MAGIC || stat.st_size as u64 != len || len == 0 {
        let link = fd_link(None, fd.as_raw_fd()).unwrap_or_default();
        return Err(FromFdError::NotABuffer {
            what: format!(
                "not the {len}-byte dma-buf of {heap} its allocator reported ({link}, {} bytes)",
                stat.st_size
            ),
        });
    }
    let exporter = heap.strip_prefix("dma-heap/").unwrap_or(heap);
    Ok(Buffer::new(fd, len, BufferKind::DmaBuf, heap, name, dma_buf_properties(exporter, len)))
}

/// CMA heaps (`linux,cma`, `reserved`, vendor `*cma*` names) and videobuf2's
/// dma-contig allocator hand out physically contiguous memory.
pub(crate) fn is_contiguous_exporter(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("cma") || n == "reserved" || n.contains("dma-contig") || n.contains("dma_contig")
}

#[cfg(test)]
mod tests {
    use super::heap_of_exporter;

    #[test]
    fn dma_heap_exporters_are_named_as_heaps() {
        let exists = |p: &str| p == "/dev/dma_heap/system" || p == "/dev/dma_heap/udmabuf";
        assert_eq!(heap_of_exporter("system", exists), "dma-heap/system");
        assert_eq!(heap_of_exporter("udmabuf", exists), "udmabuf");
        assert_eq!(heap_of_exporter("vivid", exists), "vivid");
        assert_eq!(heap_of_exporter("system", |_| false), "system");
        assert_eq!(heap_of_exporter("../x", |_| true), "../x");
    }
}
