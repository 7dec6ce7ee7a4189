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

use crate::buffer::{Buffer, MapError};
use dmabroker_sys::mmap::{Mapping, Protection};
use serde::Serialize;

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
pub enum PhysError {
    /// Frame numbers read as zero.
    #[error("the kernel hides physical frame numbers from processes without CAP_SYS_ADMIN: run as root (or with that capability) to read physical segments")]
    FramesHidden,
    /// A page is not resident (swapped out, or the mapping could not populate it).
    #[error("page at offset {offset} is not resident in memory (swapped out?)")]
    NotResident {
        /// Byte offset of the page in the buffer.
        offset: u64,
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
/// for the duration of the call.
///
/// # Errors
/// [`PhysError`].
pub fn segments(buffer: &Buffer) -> Result<Vec<Segment>, PhysError> {
    let len = usize::try_from(buffer.len()).map_err(|_| MapError::TooLarge(buffer.len()))?;
    let map = Mapping::map(buffer, 0, len, Protection::Read, true)
        .map_err(|e| crate::buffer::mapping::map_error(buffer, Protection::Read, e))?;
    segments_of_mapping(&map)
}

/// The physical segments behind a live mapping.
///
/// # Errors
/// [`PhysError`].
pub fn segments_of_mapping(map: &Mapping) -> Result<Vec<Segment>, PhysError> {
    use std::os::unix::fs::FileExt;
    let page = rustix::param::page_size() as u64;
    let start = map.as_ptr() as u64;
    let pages = (map.len() as u64).div_ceil(page);
    let file = std::fs::File::open("/proc/self/pagemap").map_err(PhysError::Pagemap)?;
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
