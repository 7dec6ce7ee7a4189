//! Atomic commits (`DRM_IOCTL_MODE_ATOMIC`): properties set by object and
//! name, one commit, and for a writeback connector its framebuffer
//! (`WRITEBACK_FB_ID`) with the out-fence (`WRITEBACK_OUT_FENCE_PTR`) that
//! signals when the frame is in memory.

use super::objects::find;
use super::{Framebuffer, KmsDevice, KmsError, KmsObject, Property, PropertyBlob};
use crate::fence::SyncFile;
use dmabroker_sys::kms::{atomic_commit_out_fence, drm};
use drm::control::{atomic::AtomicModeReq, connector, from_u32, property, AtomicCommitFlags, Device as _};
use rustix::io::Errno;
use std::collections::HashMap;

/// Why an atomic commit failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// The driver's atomic check refused the state.
    #[error(
        "driver {driver} refused the atomic state ({errno}): a mode, plane size, format or connector \
         combination it does not take (boot with drm.debug=0x10 to see its check's reason)"
    )]
    Rejected {
        /// The driver.
        driver: String,
        /// The errno (`EINVAL`, `ERANGE`, `ENOSPC`).
        errno: Errno,
    },
    /// This file is not DRM master (another process drives the display).
    #[error(
        "{path} is not ours to drive: another process is DRM master (a compositor or another test); \
         stop it, or run from a VT without one"
    )]
    NotMaster {
        /// The node.
        path: String,
    },
    /// A previous commit has not finished (non-blocking commits only).
    #[error("a previous commit on this CRTC is still pending (EBUSY): wait for it, then commit again")]
    Busy,
    /// A writeback framebuffer was set but the kernel made no out-fence.
    #[error("the commit succeeded but the kernel returned no writeback out-fence")]
    NoFence,
    /// Another errno.
    #[error("DRM_IOCTL_MODE_ATOMIC: {0}")]
    Os(Errno),
}

/// An atomic request being built; properties are named, looked up once
/// per object.
#[derive(Debug)]
pub struct AtomicRequest<'d> {
    dev: &'d KmsDevice,
    req: AtomicModeReq,
    props: HashMap<KmsObject, Vec<Property>>,
    writeback_fence: Option<(connector::Handle, property::Handle)>,
}

impl KmsDevice {
    /// A new, empty atomic request.
    pub fn atomic_request(&self) -> AtomicRequest<'_> {
        AtomicRequest { dev: self, req: AtomicModeReq::new(), props: HashMap::new(), writeback_fence: None }
    }
}

impl AtomicRequest<'_> {
    fn lookup(&mut self, object: KmsObject, name: &str) -> Result<Property, KmsError> {
        if !self.props.contains_key(&object) {
            let props = self.dev.properties(object)?;
            self.props.insert(object, props);
        }
        find(&self.props[&object], object, name).cloned()
    }

    /// Set property `name` of `object` to `value` (an id for object
    /// properties, a blob id for blobs, 16.16 fixed point for `SRC_*`).
    ///
    /// # Errors
    /// [`KmsError::NoSuchProperty`] naming what the object has.
    pub fn set(&mut self, object: KmsObject, name: &str, value: u64) -> Result<&mut Self, KmsError> {
        let p = self.lookup(object, name)?;
        let raw = from_u32(object.id()).ok_or(KmsError::NoSuchObject(object))?;
        self.req.add_raw_property(raw, p.handle, value);
        Ok(self)
    }

    /// Light `crtc` with the mode of `mode_blob` and route `connector` to
    /// it: the connector's `CRTC_ID`, the CRTC's `MODE_ID` and `ACTIVE`
    /// (commit with `modeset`).
    ///
    /// # Errors
    /// As [`Self::set`].
    pub fn enable(&mut self, connector: u32, crtc: u32, mode_blob: &PropertyBlob<'_>) -> Result<&mut Self, KmsError> {
        self.set(KmsObject::Connector(connector), "CRTC_ID", crtc.into())?
            .set(KmsObject::Crtc(crtc), "MODE_ID", mode_blob.id())?
            .set(KmsObject::Crtc(crtc), "ACTIVE", 1)
    }

    /// Turn the pipe [`Self::enable`] lit off again: `plane` leaves the
    /// CRTC, each of `connectors` is unrouted, the CRTC loses its mode and
    /// goes inactive (commit with `modeset`).
    ///
    /// # Errors
    /// As [`Self::set`].
    pub fn disable(&mut self, plane: u32, connectors: &[u32], crtc: u32) -> Result<&mut Self, KmsError> {
        let p = KmsObject::Plane(plane);
        self.set(p, "FB_ID", 0)?.set(p, "CRTC_ID", 0)?;
        for &c in connectors {
            self.set(KmsObject::Connector(c), "CRTC_ID", 0)?;
        }
        self.set(KmsObject::Crtc(crtc), "MODE_ID", 0)?.set(KmsObject::Crtc(crtc), "ACTIVE", 0)
    }

    /// Show `fb` on `plane` of `crtc` at full size, from (0, 0) of the
    /// framebuffer to (0, 0) of the CRTC: `FB_ID`, `CRTC_ID`, `SRC_*`, `CRTC_*`.
    ///
    /// # Errors
    /// As [`Self::set`].
    pub fn show(&mut self, plane: u32, crtc: u32, fb: &Framebuffer<'_>) -> Result<&mut Self, KmsError> {
        self.show_at(plane, crtc, fb, (fb.spec().width, fb.spec().height))
    }

    /// As [`Self::show`], the whole framebuffer scaled to `size` on the
    /// CRTC (where the driver scales; its atomic check says if not).
    ///
    /// # Errors
    /// As [`Self::set`].
    pub fn show_at(
        &mut self,
        plane: u32,
        crtc: u32,
        fb: &Framebuffer<'_>,
        size: (u32, u32),
    ) -> Result<&mut Self, KmsError> {
        let (w, h) = (u64::from(fb.spec().width), u64::from(fb.spec().height));
        let p = KmsObject::Plane(plane);
        self.set(p, "FB_ID", fb.id().into())?.set(p, "CRTC_ID", crtc.into())?;
        for (name, v) in [("SRC_X", 0), ("SRC_Y", 0), ("SRC_W", w << 16), ("SRC_H", h << 16)] {
            self.set(p, name, v)?;
        }
        for (name, v) in [("CRTC_X", 0), ("CRTC_Y", 0), ("CRTC_W", size.0.into()), ("CRTC_H", size.1.into())] {
            self.set(p, name, v)?;
        }
        Ok(self)
    }

    /// Route writeback `connector` to `crtc` with `fb` as its target
    /// (`CRTC_ID`, `WRITEBACK_FB_ID`), and ask for its out-fence: the
    /// commit then returns a [`SyncFile`] that signals when the frame is
    /// written. `fb` must have the mode's size and a format of
    /// [`KmsDevice::writeback_formats`].
    ///
    /// # Errors
    /// As [`Self::set`].
    pub fn writeback(&mut self, connector: u32, crtc: u32, fb: &Framebuffer<'_>) -> Result<&mut Self, KmsError> {
        let c = KmsObject::Connector(connector);
        self.set(c, "CRTC_ID", crtc.into())?.set(c, "WRITEBACK_FB_ID", fb.id().into())?;
        let fence = self.lookup(c, "WRITEBACK_OUT_FENCE_PTR")?;
        let handle = from_u32(connector).ok_or(KmsError::NoSuchObject(c))?;
        self.writeback_fence = Some((handle, fence.handle));
        Ok(self)
    }

    /// Commit, blocking until the new state is on screen; `modeset` allows
    /// mode changes (`DRM_MODE_ATOMIC_ALLOW_MODESET`). Returns the writeback
    /// out-fence when [`Self::writeback`] asked for one.
    ///
    /// # Errors
    /// [`CommitError`].
    pub fn commit(self, modeset: bool) -> Result<Option<SyncFile>, CommitError> {
        let flags = if modeset { AtomicCommitFlags::ALLOW_MODESET } else { AtomicCommitFlags::empty() };
        let card = self.dev.control();
        let result = match self.writeback_fence {
            Some((connector, prop)) => atomic_commit_out_fence(card, flags, self.req, connector, prop).and_then(|f| {
                // The kernel made it a sync_file; a refusal here would be a kernel bug.
                f.and_then(|fd| SyncFile::new(fd).ok()).map(Some).ok_or_else(|| std::io::Error::other("no fence"))
            }),
            None => card.atomic_commit(flags, self.req).map(|()| None),
        };
        result.map_err(|e| match Errno::from_io_error(&e) {
            None => CommitError::NoFence,
            Some(Errno::ACCESS | Errno::PERM) => CommitError::NotMaster { path: self.dev.path().display().to_string() },
            Some(Errno::BUSY) => CommitError::Busy,
            Some(errno @ (Errno::INVAL | Errno::RANGE | Errno::NOSPC | Errno::NOENT)) => {
                CommitError::Rejected { driver: self.dev.driver_name().to_owned(), errno }
            }
            Some(errno) => CommitError::Os(errno),
        })
    }
}
