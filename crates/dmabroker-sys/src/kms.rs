//! KMS (atomic modesetting) through the `drm` crate (drm-rs, Smithay), plus
//! the one call it cannot make safely: an atomic commit with an out-fence
//! pointer property (`WRITEBACK_OUT_FENCE_PTR`, `OUT_FENCE_PTR`), whose value
//! is a user address the kernel writes a new sync_file fd through.
//!
//! drm-rs already is the three layers of rule 2 (drm-sys structs and
//! opcodes, drm-ffi thin calls, drm the typed API, with pre-generated
//! bindings: no bindgen at build time), so everything else of KMS is used
//! from it directly by `dmabroker::device::kms`; it is re-exported here so
//! the workspace names one version.
//!
//! # References
//! `include/uapi/drm/drm_mode.h` (`struct drm_mode_atomic`),
//! `drivers/gpu/drm/drm_atomic_uapi.c` (`prepare_signaling`,
//! `setup_out_fence`, `complete_signaling`), `drivers/gpu/drm/drm_writeback.c`

pub use drm;

use drm::control::{atomic::AtomicModeReq, property, AtomicCommitFlags, Device, ResourceHandle};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// `DRM_IOCTL_MODE_ATOMIC` with `req` plus `fence_property` of `object` set
/// to the address of a local `s32`: the sync_file the kernel creates for the
/// commit (a writeback job's completion for `WRITEBACK_OUT_FENCE_PTR`).
///
/// Returns `None` when the commit succeeded but the kernel created no fence
/// (a `TEST_ONLY` commit, or a writeback connector given no framebuffer).
///
/// # Errors
/// The commit's errno (`EINVAL` for a state the driver's check refuses,
/// `EACCES` when this file is not DRM master, `EBUSY`); on error no fd was
/// installed (the kernel may have written an unused fd number, never read).
pub fn atomic_commit_out_fence<D: Device, H: ResourceHandle>(
    device: &D,
    flags: AtomicCommitFlags,
    mut req: AtomicModeReq,
    object: H,
    fence_property: property::Handle,
) -> io::Result<Option<OwnedFd>> {
    let mut fence: i32 = -1;
    // The kernel keeps the pointer only for the duration of this ioctl
    // (put_user in setup_out_fence, during the commit).
    let address = std::ptr::addr_of_mut!(fence) as u64;
    req.add_raw_property(object.into(), fence_property, address);
    device.atomic_commit(flags, req)?;
    if fence < 0 {
        return Ok(None);
    }
    // SAFETY: the commit succeeded, so complete_signaling installed the fd
    // the kernel wrote into `fence` (a new sync_file nobody else owns); it is
    // adopted here, once, in the statement after the call.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fence) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, BorrowedFd};

    struct NotACard(std::fs::File);
    impl AsFd for NotACard {
        fn as_fd(&self) -> BorrowedFd<'_> {
            self.0.as_fd()
        }
    }
    impl drm::Device for NotACard {}
    impl Device for NotACard {}

    /// A refused commit returns the errno and adopts nothing.
    #[test]
    fn failed_commit_adopts_no_fd() {
        let dev = NotACard(std::fs::File::open("/dev/null").unwrap());
        let object: drm::control::connector::Handle = drm::control::from_u32(1).unwrap();
        let prop: property::Handle = drm::control::from_u32(2).unwrap();
        let e =
            atomic_commit_out_fence(&dev, AtomicCommitFlags::empty(), AtomicModeReq::new(), object, prop).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(rustix::io::Errno::NOTTY.raw_os_error()));
    }
}
