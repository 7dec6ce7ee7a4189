//! dmabroker: user-space buffer allocation and sharing for Linux.
//!
//! One API over every allocator ([`heap`]: dma-heaps, udmabuf, sealed memfd,
//! hugetlb), buffers referenced by file descriptors ([`buffer::Buffer`]),
//! explicit CPU access with cache coherency ([`buffer::CpuRead`],
//! [`buffer::CpuWrite`]), physical segments ([`phys`]), pixel formats
//! ([`format`](mod@format)) and the devices that import and export buffers ([`device`]).
//!
//! ```no_run
//! use dmabroker::heap::{AllocRequest, Heaps};
//! let heaps = Heaps::discover();
//! let heap = heaps.get("memfd").expect("memfd is always present");
//! let buffer = heap.allocate(&AllocRequest::new(1 << 20)).unwrap();
//! let mut map = buffer.map_read_write().unwrap();
//! map.begin_write().unwrap().fill(0x80);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod accounting;
pub mod buffer;
pub mod client;
pub mod closer;
pub mod constraints;
pub mod device;
pub mod fdinfo;
pub mod fence;
pub mod file_kind;
pub mod format;
pub mod heap;
pub(crate) mod kernel_text;
pub mod phys;
pub mod pool;
pub mod proto;
pub mod size;
#[cfg(test)]
#[path = "../tests/common/skip.rs"]
pub(crate) mod test_skip;

pub use buffer::{Buffer, BufferKind};
pub use heap::{AllocRequest, Heap, Heaps};
