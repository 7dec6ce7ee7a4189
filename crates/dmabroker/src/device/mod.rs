//! Kernel devices that import and export buffers: V4L2 and DRM.
//!
//! - [`v4l2`]: video capture/output nodes; queues that capture into imported
//!   dma-bufs (`V4L2_MEMORY_DMABUF`) or export their own (`VIDIOC_EXPBUF`);
//!   memory-to-memory devices (vim2m, codecs) found by driver name, whose
//!   `OUTPUT` queue takes dma-bufs too; controls.
//! - [`drm`]: PRIME import/export (dma-buf fd <-> GEM handle) and dumb buffers.
//! - [`kms`]: displays: connectors, CRTCs, planes, properties, framebuffers
//!   over dmabroker buffers (`ADDFB2`), atomic commits, writeback.
//!
//! Both take buffers as `impl AsFd`/`BorrowedFd` and return `OwnedFd`, so any
//! [`Buffer`](crate::Buffer) (or a foreign dma-buf) can be passed, and what they
//! export can be adopted with [`Buffer::from_fd`](crate::Buffer::from_fd).

pub mod drm;
pub mod kms;
pub mod v4l2;
