//! Kernel ABI for dmabroker: the only crate of the workspace with `unsafe` code.
//!
//! Every ioctl lives here in the first two of its three layers (see
//! `docs/ARCHITECTURE.md`): a `#[repr(C)]` struct plus its opcode, and a thin
//! function that takes only inputs and returns an [`OwnedFd`](std::os::fd::OwnedFd)
//! or a typed value. The domain types (`Buffer`, `Heap`, ...) live in the
//! `dmabroker` crate, which forbids `unsafe`.
//!
//! Also here: [`mmap::Mapping`] (RAII `mmap`/`munmap`), CPU cache maintenance by
//! line ([`cache`]), and adoption of inherited file descriptors ([`inherited`]).
//!
//! # References
//! - `include/uapi/linux/dma-heap.h`, `dma-buf.h`, `udmabuf.h`, `sync_file.h`
//! - `drivers/dma-buf/` in the kernel tree
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks, missing_docs)]

pub mod cache;
pub mod dma_buf;
pub mod dma_heap;
pub mod drm;
mod fd_ioctl;
pub mod inherited;
pub mod kcmp;
pub mod kms;
pub mod lease;
pub mod mmap;
pub mod socket;
pub mod spawn;
pub mod sw_sync;
pub mod sync_file;
#[cfg(test)]
#[path = "../../dmabroker/tests/common/skip.rs"]
pub(crate) mod test_skip;
pub mod udmabuf;
pub mod v4l2;

pub use rustix::io::Errno;
