//! KMS displays (atomic modesetting): connectors, CRTCs, planes and their
//! properties by name, property blobs, framebuffers over dmabroker buffers
//! (PRIME + `ADDFB2` with a [`Layout`](crate::format::Layout)'s pitches and
//! offsets), atomic commits, and the writeback connector's output with its
//! out-fence.
//!
//! ```no_run
//! use dmabroker::device::kms::{FramebufferSpec, KmsDevice, KmsObject};
//! use dmabroker::format::{Layout, LayoutOptions, PixelFormat};
//! use dmabroker::heap::{AllocRequest, Heaps};
//! use std::os::fd::AsFd;
//!
//! let kms = KmsDevice::find("vkms").expect("a vkms card");
//! let layout = Layout::new(PixelFormat::Xbgr32, 640, 480, &LayoutOptions::default())?;
//! let buffer = Heaps::discover().allocate("dma-heap/system", &AllocRequest::new(layout.total_size()))?;
//! let fb = kms.add_framebuffer(&[buffer.as_fd()], &FramebufferSpec::from_layout(&layout, None)?)?;
//! let plane = kms.planes()?.into_iter().find(|p| p.kind.is_primary()).expect("a primary plane");
//! let mut req = kms.atomic_request();
//! req.set(KmsObject::Plane(plane.id), "FB_ID", fb.id().into())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Every object the kernel names by id is a plain number here
//! ([`KmsObject`]); what must be released is RAII: [`Framebuffer`] (`RMFB`
//! on drop) and [`PropertyBlob`] (`DESTROYPROPBLOB` on drop). The ioctls
//! come from Smithay's `drm` crate (re-exported by `dmabroker_sys::kms`),
//! which has pre-generated bindings; the one call it cannot make safely (an
//! out-fence pointer property) is `dmabroker_sys::kms::atomic_commit_out_fence`.
//!
//! A commit that changes the display needs DRM master: the first process to
//! open a card node while nobody holds it becomes master.
//!
//! # References
//! <https://docs.kernel.org/gpu/drm-kms.html>, `include/uapi/drm/drm_mode.h`,
//! `drivers/gpu/drm/drm_atomic_uapi.c`, `drivers/gpu/drm/drm_writeback.c`

mod commit;
mod framebuffer;
pub mod in_formats;
mod objects;
mod offers;

pub use commit::{AtomicRequest, CommitError};
pub use framebuffer::{AddFbError, Framebuffer, FramebufferSpec, FramebufferSpecError, PlaneSpec};
pub use objects::{Connector, Crtc, DisplayMode, KmsObject, Plane, PlaneKind, Property, PropertyBlob};
pub use offers::OfferError;

use dmabroker_sys::kms::drm;
use drm::Device as _;
use rustix::io::Errno;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The open card as drm-rs wants it: an fd with the two marker traits.
#[derive(Debug)]
struct Card(OwnedFd);

impl AsFd for Card {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
impl drm::Device for Card {}
impl drm::control::Device for Card {}

/// Why a KMS device could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsOpenError {
    /// The node cannot be opened, or is no DRM device
    /// ([`crate::device::drm::DrmDevice::open`]).
    #[error(transparent)]
    Device(#[from] crate::device::drm::OpenError),
    /// The driver refused a client capability KMS needs (a render-only
    /// driver such as vgem, or a render node).
    #[error(
        "{path} (driver {driver}) does not do atomic modesetting: DRM_CLIENT_CAP_{cap} refused ({errno}); \
         open a primary node (/dev/dri/cardN) of a display driver"
    )]
    NoAtomic {
        /// The node.
        path: PathBuf,
        /// The driver.
        driver: String,
        /// The capability refused: `UNIVERSAL_PLANES` or `ATOMIC`.
        cap: &'static str,
        /// The errno.
        errno: Errno,
    },
}

/// Why a KMS query (resources, properties, blobs) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// The object has no property of that name.
    #[error("{object} has no property {name} (it has: {})", .have.join(", "))]
    NoSuchProperty {
        /// The object.
        object: KmsObject,
        /// The name asked for.
        name: String,
        /// The names it has.
        have: Vec<String>,
    },
    /// The object does not exist (any more: a hot-unplugged connector).
    #[error("{0} does not exist on this device")]
    NoSuchObject(KmsObject),
    /// A property is not of the kind the caller needs (a blob, a number).
    #[error("property {name} of {object} is not {expected}")]
    WrongPropertyType {
        /// The object.
        object: KmsObject,
        /// The property.
        name: String,
        /// What was needed.
        expected: &'static str,
    },
    /// An ioctl failed.
    #[error("{what}: {source}")]
    Os {
        /// The query, in words.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

impl KmsError {
    fn os(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Os { what: what.into(), source }
    }
}

/// An open DRM primary node with atomic modesetting enabled for this file.
#[derive(Debug)]
pub struct KmsDevice {
    card: Card,
    path: PathBuf,
    driver: String,
    writeback: bool,
}

impl KmsDevice {
    /// Open `path` read-write and enable the client capabilities
    /// `UNIVERSAL_PLANES` and `ATOMIC` (required), and `WRITEBACK_CONNECTORS`
    /// (optional: [`Self::writeback_enabled`] says whether the driver took it).
    ///
    /// # Errors
    /// [`KmsOpenError`]: the node cannot be opened, is no DRM device, or its
    /// driver does no atomic modesetting.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, KmsOpenError> {
        let (fd, path, version) = crate::device::drm::DrmDevice::open(path)?.into_parts();
        let card = Card(fd);
        for (cap, name) in
            [(drm::ClientCapability::UniversalPlanes, "UNIVERSAL_PLANES"), (drm::ClientCapability::Atomic, "ATOMIC")]
        {
            card.set_client_capability(cap, true).map_err(|e| KmsOpenError::NoAtomic {
                path: path.clone(),
                driver: version.name.clone(),
                cap: name,
                errno: Errno::from_io_error(&e).unwrap_or(Errno::INVAL),
            })?;
        }
        // Needs ATOMIC first; drivers without writeback connectors refuse it.
        let writeback = card.set_client_capability(drm::ClientCapability::WritebackConnectors, true).is_ok();
        Ok(Self { card, path, driver: version.name, writeback })
    }

    /// The first primary node (`/dev/dri/card*`) whose driver is `driver`
    /// (e.g. `vkms`) and which does atomic modesetting.
    pub fn find(driver: &str) -> Option<Self> {
        crate::device::drm::drm_nodes()
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("card")))
            .filter_map(|p| Self::open(p).ok())
            .find(|d| d.driver == driver)
    }

    /// The node's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The driver's name (`vkms`, `i915`, ...).
    pub fn driver_name(&self) -> &str {
        &self.driver
    }

    /// Whether the driver accepted `DRM_CLIENT_CAP_WRITEBACK_CONNECTORS`:
    /// only then does [`Self::connectors`] list writeback connectors.
    pub fn writeback_enabled(&self) -> bool {
        self.writeback
    }

    fn control(&self) -> &Card {
        &self.card
    }
}

impl AsFd for KmsDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.card.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_rejects_non_drm() {
        use crate::device::drm::OpenError;
        assert!(matches!(
            KmsDevice::open("/dev/null"),
            Err(KmsOpenError::Device(OpenError::NotDrm { errno: Errno::NOTTY, .. }))
        ));
        assert!(matches!(KmsDevice::open("/nonexistent/card9"), Err(KmsOpenError::Device(OpenError::Open { .. }))));
    }
}
