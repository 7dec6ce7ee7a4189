//! DRM devices: PRIME import of dmabroker buffers (fd -> GEM handle), PRIME
//! export of GEM objects (handle -> dma-buf fd) and dumb buffers.
//!
//! ```no_run
//! use dmabroker::device::drm::DrmDevice;
//! use dmabroker::heap::{AllocRequest, Heaps};
//! use std::os::fd::AsFd;
//!
//! let drm = DrmDevice::open("/dev/dri/card0")?;
//! println!("driver {}", drm.driver_name());
//! let buffer = Heaps::discover().allocate("dma-heap/system", &AllocRequest::new(1 << 20))?;
//! let handle = drm.prime_import(buffer.as_fd())?;
//! drm.gem_close(handle)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! GEM handles are plain numbers, not RAII: importing the same dma-buf twice
//! returns the same handle, and one `GEM_CLOSE` releases it, so the caller
//! decides when. Dropping the [`DrmDevice`] releases every handle it holds.
//!
//! # References
//! <https://docs.kernel.org/gpu/drm-mm.html#prime-buffer-sharing>,
//! `drivers/gpu/drm/drm_prime.c`, `drivers/gpu/drm/drm_dumb_buffers.c`

use dmabroker_sys::drm as sys;
use dmabroker_sys::mmap::Mapping;
use rustix::fs::{open, Mode, OFlags};
use rustix::io::Errno;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// A GEM handle: a DRM file's name for a buffer object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GemHandle(pub u32);

/// A dumb buffer as `DRM_IOCTL_MODE_CREATE_DUMB` returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumbBuffer {
    /// Its GEM handle.
    pub handle: GemHandle,
    /// Bytes per line chosen by the driver.
    pub pitch: u32,
    /// Size in bytes.
    pub size: u64,
}

/// Whether the driver imports and exports dma-bufs (`DRM_CAP_PRIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimeCaps {
    /// `DRM_PRIME_CAP_IMPORT`.
    pub import: bool,
    /// `DRM_PRIME_CAP_EXPORT`.
    pub export: bool,
}

/// Why a DRM device could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// `open` failed.
    #[error(
        "cannot open {path}: {source} (does it exist, and may this user open it? see the 'video'/'render' groups)"
    )]
    Open {
        /// The node.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `DRM_IOCTL_VERSION` failed.
    #[error("{path} is not a DRM device (DRM_IOCTL_VERSION: {errno})")]
    NotDrm {
        /// The node.
        path: PathBuf,
        /// The errno.
        errno: Errno,
    },
}

/// Why a PRIME import or export failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrimeError {
    /// The driver has no PRIME support in this direction.
    #[error("driver {driver} cannot {op} dma-bufs (no PRIME support)")]
    Unsupported {
        /// The driver.
        driver: String,
        /// `import` or `export`.
        op: &'static str,
    },
    /// The fd is not a dma-buf.
    #[error("the fd is not a dma-buf (a memfd must first become one through udmabuf)")]
    NotADmaBuf,
    /// The handle is unknown to this DRM file.
    #[error("GEM handle {0} does not exist on this DRM file")]
    NoSuchHandle(u32),
    /// The device cannot use this buffer (e.g. needs contiguous memory).
    #[error("the device cannot use this buffer (contiguity, alignment or address limit): {0}")]
    Unsuitable(#[source] Errno),
    /// Another errno.
    #[error("PRIME ioctl failed: {0}")]
    Os(#[source] Errno),
}

/// Why a dumb-buffer operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DumbError {
    /// The driver has no dumb buffers.
    #[error("driver {0} has no dumb buffers")]
    Unsupported(String),
    /// Zero or overflowing dimensions, or a bpp the driver refuses.
    #[error("invalid dumb buffer {width}x{height} at {bpp} bpp")]
    InvalidSize {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Bits per pixel.
        bpp: u32,
    },
    /// The handle is unknown to this DRM file.
    #[error("GEM handle {0} does not exist on this DRM file")]
    NoSuchHandle(u32),
    /// The buffer does not fit the address space.
    #[error("dumb buffer of {0} bytes cannot be mapped in this process")]
    TooLarge(u64),
    /// Another errno.
    #[error("dumb buffer ioctl or mmap failed: {0}")]
    Os(#[source] Errno),
}

/// A CPU mapping of a dumb buffer through the DRM fd, unmapped on drop.
#[derive(Debug)]
#[must_use = "dropping the mapping unmaps it at once"]
pub struct DumbMapping {
    map: Mapping,
}

impl DumbMapping {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.map.as_slice()
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // Always mapped read-write in `map_dumb`.
        self.map.as_mut_slice().unwrap_or_default()
    }
}

/// An open DRM node (`/dev/dri/card*` or `renderD*`).
#[derive(Debug)]
pub struct DrmDevice {
    fd: OwnedFd,
    path: PathBuf,
    version: sys::Version,
}

/// The `/dev/dri/*` nodes of this machine (primary `card*` first, then
/// `renderD*`), sorted.
pub fn drm_nodes() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/dev/dri")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("card") || n.starts_with("renderD")
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|p| {
        let s = p.to_string_lossy().into_owned();
        (s.contains("renderD"), s.len(), s)
    });
    v
}

impl DrmDevice {
    /// Open a node read-write and ask its driver's name.
    ///
    /// Dumb buffers need a primary node (`card*`): render nodes refuse them.
    ///
    /// # Errors
    /// [`OpenError::Open`], or [`OpenError::NotDrm`] for a non-DRM file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        let fd = open(&path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| OpenError::Open { path: path.clone(), source: e.into() })?;
        let version = sys::version(&fd).map_err(|errno| OpenError::NotDrm { path: path.clone(), errno })?;
        Ok(Self { fd, path, version })
    }

    /// The first node whose driver is `driver` (e.g. `vgem`), primary nodes
    /// first; `None` when there is none.
    pub fn find(driver: &str) -> Option<Self> {
        drm_nodes().into_iter().filter_map(|p| Self::open(p).ok()).find(|d| d.driver_name() == driver)
    }

    /// The open fd, the node's path and the driver's version, for a layer
    /// that drives the same node another way (`device::kms`).
    pub(crate) fn into_parts(self) -> (OwnedFd, PathBuf, sys::Version) {
        (self.fd, self.path, self.version)
    }

    /// The node's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The driver's name (`vgem`, `i915`, `amdgpu`, ...).
    pub fn driver_name(&self) -> &str {
        &self.version.name
    }

    /// The driver's version and description.
    pub fn version(&self) -> &sys::Version {
        &self.version
    }

    /// `DRM_IOCTL_GET_CAP(DRM_CAP_PRIME)`.
    ///
    /// # Errors
    /// The errno, for kernels without the capability query.
    pub fn prime_caps(&self) -> Result<PrimeCaps, Errno> {
        let v = sys::get_cap(&self.fd, sys::DRM_CAP_PRIME)?;
        Ok(PrimeCaps { import: v & sys::DRM_PRIME_CAP_IMPORT != 0, export: v & sys::DRM_PRIME_CAP_EXPORT != 0 })
    }

    fn prime_errno(&self, op: &'static str, e: Errno) -> PrimeError {
        match e {
            Errno::NOSYS | Errno::OPNOTSUPP | Errno::NOTTY => {
                PrimeError::Unsupported { driver: self.version.name.clone(), op }
            }
            e => PrimeError::Os(e),
        }
    }

    /// `DRM_IOCTL_PRIME_FD_TO_HANDLE`: import a dma-buf. The same dma-buf
    /// imported twice gives the same handle.
    ///
    /// # Errors
    /// [`PrimeError::NotADmaBuf`], [`PrimeError::Unsupported`],
    /// [`PrimeError::Unsuitable`] when the device cannot reach the memory.
    pub fn prime_import(&self, dmabuf: impl AsFd) -> Result<GemHandle, PrimeError> {
        let dmabuf = dmabuf.as_fd();
        sys::prime_fd_to_handle(&self.fd, dmabuf).map(GemHandle).map_err(|e| match e {
            Errno::BADF => PrimeError::NotADmaBuf,
            // dma_buf_get() says EINVAL for any non-dma-buf file; a real
            // dma-buf refused with EINVAL is one the device cannot use.
            Errno::INVAL if !is_dma_buf(dmabuf) => PrimeError::NotADmaBuf,
            Errno::INVAL | Errno::NOMEM | Errno::FAULT => PrimeError::Unsuitable(e),
            e => self.prime_errno("import", e),
        })
    }

    /// `DRM_IOCTL_PRIME_HANDLE_TO_FD`: export a GEM object as a dma-buf
    /// (read-write, close-on-exec). Re-exporting an imported buffer gives
    /// back the original dma-buf.
    ///
    /// # Errors
    /// [`PrimeError::NoSuchHandle`], [`PrimeError::Unsupported`].
    pub fn prime_export(&self, handle: GemHandle) -> Result<OwnedFd, PrimeError> {
        sys::prime_handle_to_fd(&self.fd, handle.0).map_err(|e| match e {
            Errno::NOENT => PrimeError::NoSuchHandle(handle.0),
            e => self.prime_errno("export", e),
        })
    }

    /// `DRM_IOCTL_GEM_CLOSE`: release a handle.
    ///
    /// # Errors
    /// `EINVAL` for a handle this file does not hold.
    pub fn gem_close(&self, handle: GemHandle) -> Result<(), Errno> {
        sys::gem_close(&self.fd, handle.0)
    }

    /// `DRM_IOCTL_MODE_CREATE_DUMB`: a CPU-drawable buffer of `width` x
    /// `height` pixels at `bpp` bits each; the driver picks pitch and size.
    ///
    /// # Errors
    /// [`DumbError::Unsupported`] (also on render nodes),
    /// [`DumbError::InvalidSize`].
    pub fn create_dumb(&self, width: u32, height: u32, bpp: u32) -> Result<DumbBuffer, DumbError> {
        if width == 0 || height == 0 || bpp == 0 {
            return Err(DumbError::InvalidSize { width, height, bpp });
        }
        let c = sys::mode_create_dumb(&self.fd, width, height, bpp).map_err(|e| match e {
            Errno::NOSYS | Errno::OPNOTSUPP | Errno::NOTTY | Errno::ACCESS => {
                DumbError::Unsupported(self.version.name.clone())
            }
            Errno::INVAL => DumbError::InvalidSize { width, height, bpp },
            e => DumbError::Os(e),
        })?;
        Ok(DumbBuffer { handle: GemHandle(c.handle), pitch: c.pitch, size: c.size })
    }

    /// `DRM_IOCTL_MODE_MAP_DUMB` + `mmap` of the DRM fd at the returned
    /// offset: the dumb buffer's bytes, read-write.
    ///
    /// # Errors
    /// [`DumbError::NoSuchHandle`], [`DumbError::TooLarge`], [`DumbError::Os`].
    pub fn map_dumb(&self, buffer: &DumbBuffer) -> Result<DumbMapping, DumbError> {
        let offset = sys::mode_map_dumb(&self.fd, buffer.handle.0).map_err(|e| match e {
            Errno::NOENT => DumbError::NoSuchHandle(buffer.handle.0),
            e => DumbError::Os(e),
        })?;
        let len = usize::try_from(buffer.size).map_err(|_| DumbError::TooLarge(buffer.size))?;
        let map = sys::map_dumb(&self.fd, offset, len).map_err(DumbError::Os)?;
        Ok(DumbMapping { map })
    }

    /// `DRM_IOCTL_MODE_DESTROY_DUMB`: release a dumb buffer's handle (the
    /// memory lives on while exported dma-bufs or mappings hold it).
    ///
    /// # Errors
    /// [`DumbError::NoSuchHandle`].
    pub fn destroy_dumb(&self, handle: GemHandle) -> Result<(), DumbError> {
        sys::mode_destroy_dumb(&self.fd, handle.0).map_err(|e| match e {
            Errno::NOENT | Errno::INVAL => DumbError::NoSuchHandle(handle.0),
            e => DumbError::Os(e),
        })
    }
}

fn is_dma_buf(fd: BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    crate::fdinfo::FdInfo::read(None, fd.as_raw_fd()).is_ok_and(|i| i.is_dma_buf())
}

impl AsFd for DrmDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_rejects_non_drm() {
        match DrmDevice::open("/dev/null") {
            Err(OpenError::NotDrm { errno, .. }) => assert_eq!(errno, Errno::NOTTY),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(DrmDevice::open("/nonexistent/card9"), Err(OpenError::Open { .. })));
    }
}
