//! Physical segments of a buffer, read from `/proc/self/pagemap`: the
//! scatterlist a user-space driver or an IOMMU mapping needs, and the proof
//! that a buffer is (or is not) physically contiguous.
//!
//! Each pagemap entry is 64 bits per virtual page: bit 63 "present", bits
//! 0-54 the page frame number. Since Linux 4.2 the frame number reads as zero
//! without `CAP_SYS_ADMIN`; that is reported as
//! [`PhysError::FramesHidden`], never as a buffer at address 0.
//!
//! ```no_run
//! # use dmabroker::heap::{AllocRequest, Heaps};
//! let buffer = Heaps::discover().allocate("hugetlb", &AllocRequest::new(2 << 20)).unwrap();
//! let segments = dmabroker::phys::segments(&buffer).unwrap();
//! assert!(dmabroker::phys::is_contiguous(&segments));
//! ```

use crate::buffer::{Buffer, BufferKind, MapError};
use crate::size::format_size;
use dmabroker_sys::mmap::{Mapping, Protection};
use serde::Serialize;
use std::os::unix::fs::FileExt;

/// One physically contiguous run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Segment {
    /// Physical start address.
    pub phys_addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Why the segments could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PhysError {
    /// Frame numbers read as zero.
    #[error("the kernel hides physical frame numbers from processes without CAP_SYS_ADMIN: run as root (or with that capability) to read physical segments")]
    FramesHidden,
    /// Reading the segments would fault in more of the buffer than there is
    /// memory available.
    #[error(
        "reading physical segments faults the whole buffer in (MAP_POPULATE): {} of this {} buffer \
         are not in memory yet, more than the {} available: read the segments of a smaller buffer, \
         or free memory first",
        format_size(*missing), format_size(*len), format_size(*available)
    )]
    TooLargeToPopulate {
        /// The buffer's length.
        len: u64,
        /// Bytes of it not resident yet, which populating would allocate.
        missing: u64,
        /// Memory available now (`MemAvailable`).
        available: u64,
    },
    /// A page is not resident (swapped out, or the mapping could not populate it).
    #[error("page at offset {offset} is not resident in memory (swapped out?)")]
    NotResident {
        /// Byte offset of the page in the buffer.
        offset: u64,
    },
    /// The exporter maps the dma-buf as raw page frames (`VM_PFNMAP`, as
    /// udmabuf and the dma-heaps do), which /proc/self/pagemap skips.
    #[error(
        "the exporter ({exporter}) maps this dma-buf as raw page frames (VM_PFNMAP), which \
         /proc/self/pagemap does not report: its physical layout is known only to the kernel \
         (its scatterlist); the heap's guarantee is contiguity up to {}",
        format_size(*contiguous_up_to)
    )]
    PfnMapped {
        /// The heap or exporter name.
        exporter: String,
        /// What the heap guarantees instead.
        contiguous_up_to: u64,
    },
    /// The buffer could not be mapped (device-only buffers need the exporter's own scatterlist).
    #[error("cannot map the buffer to read its pages: {0}")]
    Map(#[from] MapError),
    /// Reading /proc/self/pagemap failed.
    #[error("reading /proc/self/pagemap: {0}")]
    Pagemap(#[source] std::io::Error),
}

const PRESENT: u64 = 1 << 63;
const PFN_MASK: u64 = (1 << 55) - 1;

/// The physical segments of a buffer, merged, in buffer order.
///
/// Maps the buffer read-only with `MAP_POPULATE` (so every page is resident)
/// for the duration of the call. Before that, without faulting anything in,
/// it checks that the kernel shows frame numbers to this process
/// ([`PhysError::FramesHidden`] otherwise) and, for a shmem memfd (whose
/// pages come on first touch), that the pages still missing fit in the
/// memory available ([`PhysError::TooLargeToPopulate`] otherwise).
///
/// # Errors
/// [`PhysError`].
pub fn segments(buffer: &Buffer) -> Result<Vec<Segment>, PhysError> {
    let len = usize::try_from(buffer.len()).map_err(|_| MapError::TooLarge(buffer.len()))?;
    let page = rustix::param::page_size() as u64;
    let pagemap = std::fs::File::open("/proc/self/pagemap").map_err(PhysError::Pagemap)?;
    if !frames_visible(&pagemap, page)? {
        return Err(PhysError::FramesHidden);
    }
    check_fits(buffer)?;
    let map = Mapping::map(buffer, 0, len, Protection::Read, true)
        .map_err(|e| crate::buffer::mapping::map_error(buffer, Protection::Read, e))?;
    if buffer.kind() != BufferKind::DmaBuf {
        return read_segments(&pagemap, &map, page);
    }
    // MAP_POPULATE does nothing on the VM_PFNMAP/VM_IO mappings exporters
    // make (udmabuf inserts each frame from its fault handler): touch one
    // byte per page so every page is mapped before pagemap is read. The
    // pages exist already (dma-bufs are allocated or pinned at creation):
    // this allocates nothing.
    fault_in(&map, page);
    match read_segments(&pagemap, &map, page) {
        Err(PhysError::NotResident { .. }) if is_pfn_mapping(map.as_ptr() as u64) => Err(PhysError::PfnMapped {
            exporter: buffer.heap().to_owned(),
            contiguous_up_to: buffer.properties().contiguous_up_to,
        }),
        other => other,
    }
}

/// Read one byte of every page of `map`, faulting each in.
fn fault_in(map: &Mapping, page: u64) {
    let bytes = map.as_slice();
    for offset in (0..bytes.len()).step_by(usize::try_from(page).unwrap_or(4096).max(1)) {
        std::hint::black_box(bytes[offset]);
    }
}

/// Whether the mapping starting at `addr` is a raw PFN mapping (`pf` in
/// its /proc/self/smaps `VmFlags`), whose frames pagemap does not report.
fn is_pfn_mapping(addr: u64) -> bool {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return false;
    };
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ').filter(|(r, _)| r.contains('-') && !r.ends_with(':')) {
            let start = range.split('-').next().and_then(|s| u64::from_str_radix(s, 16).ok());
            inside = start == Some(addr);
        } else if inside {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.split_whitespace().any(|f| f == "pf");
            }
        }
    }
    false
}

/// Whether pagemap shows this process frame numbers, probed on one page
/// known to be resident: the one holding a local variable of this call.
/// A probe page reported absent proves nothing; the full read decides then.
fn frames_visible(pagemap: &std::fs::File, page: u64) -> Result<bool, PhysError> {
    let marker = std::hint::black_box(0x5au8);
    let addr = std::ptr::addr_of!(marker) as u64;
    let mut entry = [0u8; 8];
    pagemap.read_exact_at(&mut entry, addr / page * 8).map_err(PhysError::Pagemap)?;
    let entry = u64::from_le_bytes(entry);
    Ok(entry & PRESENT == 0 || entry & PFN_MASK != 0)
}

/// Refuse to populate a shmem memfd whose missing pages exceed the memory
/// available. Other buffers have their pages already: dma-heaps and udmabuf
/// allocate (or pin) them at creation, hugetlb takes them with fallocate.
fn check_fits(buffer: &Buffer) -> Result<(), PhysError> {
    if buffer.kind() != BufferKind::Memfd {
        return Ok(());
    }
    // st_blocks of a shmem file counts the pages it holds.
    let resident =
        rustix::fs::fstat(buffer).map_or(0, |st| u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512));
    let missing = buffer.len().saturating_sub(resident);
    let available = available_memory();
    if missing > available {
        return Err(PhysError::TooLargeToPopulate { len: buffer.len(), missing, available });
    }
    Ok(())
}

/// Memory available for new pages: `MemAvailable` (free memory plus what
/// the kernel can reclaim), or where /proc is unreadable free RAM and buffer
/// memory from sysinfo(2), which leaves out the page cache. Not on any fast
/// path: only before populating a buffer.
#[allow(clippy::useless_conversion)] // c_ulong is u32 on 32-bit targets
fn available_memory() -> u64 {
    crate::heap::meminfo("MemAvailable").unwrap_or_else(|| {
        let info = rustix::system::sysinfo();
        let unit = u64::from(info.mem_unit).max(1);
        u64::from(info.freeram).saturating_add(u64::from(info.bufferram)).saturating_mul(unit)
    })
}

/// The physical segments behind a live mapping.
///
/// # Errors
/// [`PhysError`].
pub fn segments_of_mapping(map: &Mapping) -> Result<Vec<Segment>, PhysError> {
    let page = rustix::param::page_size() as u64;
    let pagemap = std::fs::File::open("/proc/self/pagemap").map_err(PhysError::Pagemap)?;
    read_segments(&pagemap, map, page)
}

fn read_segments(file: &std::fs::File, map: &Mapping, page: u64) -> Result<Vec<Segment>, PhysError> {
    let start = map.as_ptr() as u64;
    let pages = (map.len() as u64).div_ceil(page);
    let mut raw = vec![0u8; pages as usize * 8];
    file.read_exact_at(&mut raw, start / page * 8).map_err(PhysError::Pagemap)?;
    let mut segments: Vec<Segment> = Vec::new();
    let mut hidden = true;
    for (i, entry) in raw.chunks_exact(8).enumerate() {
        let entry = u64::from_le_bytes(entry.try_into().unwrap_or_default());
        let offset = i as u64 * page;
        if entry & PRESENT == 0 {
            return Err(PhysError::NotResident { offset });
        }
        let pfn = entry & PFN_MASK;
        hidden &= pfn == 0;
        let addr = pfn * page;
        let len = page.min(map.len() as u64 - offset);
        match segments.last_mut() {
            Some(last) if last.phys_addr + last.len == addr => last.len += len,
            _ => segments.push(Segment { phys_addr: addr, len }),
        }
    }
    if hidden {
        return Err(PhysError::FramesHidden);
    }
    Ok(segments)
}

/// True when the segments form one run.
pub fn is_contiguous(segments: &[Segment]) -> bool {
    segments.len() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_segment_is_contiguous() {
        assert!(is_contiguous(&[Segment { phys_addr: 4096, len: 8192 }]));
        assert!(!is_contiguous(&[Segment { phys_addr: 0, len: 4096 }, Segment { phys_addr: 16384, len: 4096 }]));
        assert!(!is_contiguous(&[]));
    }
}
