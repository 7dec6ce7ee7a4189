//! DRM (`/dev/dri/*`): the subset of `drm.h`/`drm_mode.h` dmabroker uses for
//! PRIME import/export and dumb buffers.
//!
//! `DRM_IOCTL_VERSION`, `DRM_IOCTL_GET_CAP`, `DRM_IOCTL_GEM_CLOSE`,
//! `DRM_IOCTL_PRIME_HANDLE_TO_FD`, `DRM_IOCTL_PRIME_FD_TO_HANDLE`,
//! `DRM_IOCTL_MODE_CREATE_DUMB`, `DRM_IOCTL_MODE_MAP_DUMB` and
//! `DRM_IOCTL_MODE_DESTROY_DUMB`.
//!
//! # References
//! `include/uapi/drm/drm.h`, `include/uapi/drm/drm_mode.h`,
//! `drivers/gpu/drm/drm_prime.c`, `drivers/gpu/drm/drm_dumb_buffers.c`

use rustix::fs::OFlags;
use rustix::io::{Errno, Result};
use rustix::ioctl::{ioctl, opcode, Opcode, Setter, Updater};
use std::ffi::c_char;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// `struct drm_version` (64 bytes on 64-bit).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DrmVersion {
    /// Major version.
    pub version_major: i32,
    /// Minor version.
    pub version_minor: i32,
    /// Patch level.
    pub version_patchlevel: i32,
    /// In: size of `name`; out: length of the name.
    pub name_len: usize,
    /// Buffer for the driver name (not NUL-terminated).
    pub name: *mut c_char,
    /// In: size of `date`; out: length of the date.
    pub date_len: usize,
    /// Buffer for the driver date.
    pub date: *mut c_char,
    /// In: size of `desc`; out: length of the description.
    pub desc_len: usize,
    /// Buffer for the driver description.
    pub desc: *mut c_char,
}

/// `struct drm_get_cap` (16 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct DrmGetCap {
    /// `DRM_CAP_*`.
    pub capability: u64,
    /// The capability's value.
    pub value: u64,
}

/// `struct drm_gem_close` (8 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct DrmGemClose {
    /// GEM handle to release.
    pub handle: u32,
    /// Padding.
    pub pad: u32,
}

/// `struct drm_prime_handle` (12 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct DrmPrimeHandle {
    /// GEM handle.
    pub handle: u32,
    /// `DRM_CLOEXEC | DRM_RDWR` for export; unused for import.
    pub flags: u32,
    /// dma-buf fd: returned by export, given to import.
    pub fd: i32,
}

/// `struct drm_mode_create_dumb` (32 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct DrmModeCreateDumb {
    /// Height in pixels.
    pub height: u32,
    /// Width in pixels.
    pub width: u32,
    /// Bits per pixel.
    pub bpp: u32,
    /// Must be zero.
    pub flags: u32,
    /// Returned GEM handle.
    pub handle: u32,
    /// Returned bytes per line.
    pub pitch: u32,
    /// Returned size in bytes.
    pub size: u64,
}

/// `struct drm_mode_map_dumb` (16 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct DrmModeMapDumb {
    /// GEM handle.
    pub handle: u32,
    /// Padding.
    pub pad: u32,
    /// Returned fake offset to pass to `mmap` on the DRM fd.
    pub offset: u64,
}

/// `struct drm_mode_destroy_dumb` (4 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct DrmModeDestroyDumb {
    /// GEM handle.
    pub handle: u32,
}

/// `DRM_CAP_DUMB_BUFFER`.
pub const DRM_CAP_DUMB_BUFFER: u64 = 0x1;
/// `DRM_CAP_PRIME`: bit 0 import, bit 1 export.
pub const DRM_CAP_PRIME: u64 = 0x5;
/// `DRM_PRIME_CAP_IMPORT`.
pub const DRM_PRIME_CAP_IMPORT: u64 = 0x1;
/// `DRM_PRIME_CAP_EXPORT`.
pub const DRM_PRIME_CAP_EXPORT: u64 = 0x2;

/// `DRM_IOCTL_VERSION = _IOWR('d', 0x00, struct drm_version)`.
pub const DRM_IOCTL_VERSION: Opcode = opcode::read_write::<DrmVersion>(b'd', 0x00);
/// `DRM_IOCTL_GEM_CLOSE = _IOW('d', 0x09, struct drm_gem_close)`.
pub const DRM_IOCTL_GEM_CLOSE: Opcode = opcode::write::<DrmGemClose>(b'd', 0x09);
/// `DRM_IOCTL_GET_CAP = _IOWR('d', 0x0c, struct drm_get_cap)`.
pub const DRM_IOCTL_GET_CAP: Opcode = opcode::read_write::<DrmGetCap>(b'd', 0x0c);
/// `DRM_IOCTL_PRIME_HANDLE_TO_FD = _IOWR('d', 0x2d, struct drm_prime_handle)`.
pub const DRM_IOCTL_PRIME_HANDLE_TO_FD: Opcode = opcode::read_write::<DrmPrimeHandle>(b'd', 0x2d);
/// `DRM_IOCTL_PRIME_FD_TO_HANDLE = _IOWR('d', 0x2e, struct drm_prime_handle)`.
pub const DRM_IOCTL_PRIME_FD_TO_HANDLE: Opcode = opcode::read_write::<DrmPrimeHandle>(b'd', 0x2e);
/// `DRM_IOCTL_MODE_CREATE_DUMB = _IOWR('d', 0xB2, struct drm_mode_create_dumb)`.
pub const DRM_IOCTL_MODE_CREATE_DUMB: Opcode = opcode::read_write::<DrmModeCreateDumb>(b'd', 0xB2);
/// `DRM_IOCTL_MODE_MAP_DUMB = _IOWR('d', 0xB3, struct drm_mode_map_dumb)`.
pub const DRM_IOCTL_MODE_MAP_DUMB: Opcode = opcode::read_write::<DrmModeMapDumb>(b'd', 0xB3);
/// `DRM_IOCTL_MODE_DESTROY_DUMB = _IOWR('d', 0xB4, struct drm_mode_destroy_dumb)`.
pub const DRM_IOCTL_MODE_DESTROY_DUMB: Opcode = opcode::read_write::<DrmModeDestroyDumb>(b'd', 0xB4);

/// The strings and numbers `DRM_IOCTL_VERSION` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Major, minor and patch level.
    pub number: (i32, i32, i32),
    /// Driver name, e.g. `vgem`, `i915`, `amdgpu`.
    pub name: String,
    /// Driver date string.
    pub date: String,
    /// Driver description.
    pub desc: String,
}

/// `ioctl(fd, DRM_IOCTL_VERSION)`, twice: once for the string lengths, once
/// for the strings.
///
/// # Errors
/// `ENOTTY` when `fd` is not a DRM device.
pub fn version(fd: impl AsFd) -> Result<Version> {
    let fd = fd.as_fd();
    let mut v = DrmVersion {
        version_major: 0,
        version_minor: 0,
        version_patchlevel: 0,
        name_len: 0,
        name: std::ptr::null_mut(),
        date_len: 0,
        date: std::ptr::null_mut(),
        desc_len: 0,
        desc: std::ptr::null_mut(),
    };
    // SAFETY: DRM_IOCTL_VERSION reads and writes one drm_version; with all
    // lengths 0 the kernel writes through none of the (null) pointers.
    unsafe { ioctl(fd, Updater::<DRM_IOCTL_VERSION, _>::new(&mut v))? };
    // Cap what a driver may make us allocate; real strings are tiny.
    const MAX: usize = 4096;
    let mut name = vec![0u8; v.name_len.min(MAX)];
    let mut date = vec![0u8; v.date_len.min(MAX)];
    let mut desc = vec![0u8; v.desc_len.min(MAX)];
    v.name_len = name.len();
    v.name = name.as_mut_ptr().cast();
    v.date_len = date.len();
    v.date = date.as_mut_ptr().cast();
    v.desc_len = desc.len();
    v.desc = desc.as_mut_ptr().cast();
    // SAFETY: each pointer is a live Vec of exactly the length passed next to
    // it; drm_copy_field writes at most that many bytes into each.
    unsafe { ioctl(fd, Updater::<DRM_IOCTL_VERSION, _>::new(&mut v))? };
    // The kernel reports the full length even when it copied less.
    name.truncate(v.name_len);
    date.truncate(v.date_len);
    desc.truncate(v.desc_len);
    Ok(Version {
        number: (v.version_major, v.version_minor, v.version_patchlevel),
        name: String::from_utf8_lossy(&name).into_owned(),
        date: String::from_utf8_lossy(&date).into_owned(),
        desc: String::from_utf8_lossy(&desc).into_owned(),
    })
}

/// `ioctl(fd, DRM_IOCTL_GET_CAP)`: the value of a `DRM_CAP_*` capability.
///
/// # Errors
/// `EINVAL` for a capability the kernel does not know.
pub fn get_cap(fd: impl AsFd, capability: u64) -> Result<u64> {
    let mut c = DrmGetCap { capability, value: 0 };
    // SAFETY: DRM_IOCTL_GET_CAP reads and writes one drm_get_cap.
    unsafe { ioctl(fd, Updater::<DRM_IOCTL_GET_CAP, _>::new(&mut c))? };
    Ok(c.value)
}

/// `ioctl(fd, DRM_IOCTL_GEM_CLOSE)`: release a GEM handle of this DRM file.
///
/// # Errors
/// `EINVAL` for a handle this file does not hold.
pub fn gem_close(fd: impl AsFd, handle: u32) -> Result<()> {
    // SAFETY: DRM_IOCTL_GEM_CLOSE reads one drm_gem_close, passed by pointer.
    unsafe { ioctl(fd, Setter::<DRM_IOCTL_GEM_CLOSE, _>::new(DrmGemClose { handle, pad: 0 })) }
}

/// `ioctl(fd, DRM_IOCTL_PRIME_FD_TO_HANDLE)`: import a dma-buf, returning the
/// GEM handle this DRM file holds for it (the same handle each time the same
/// dma-buf is imported; release it with [`gem_close`]).
///
/// # Errors
/// `ENOSYS`/`EOPNOTSUPP` when the driver cannot import; `EINVAL` when the
/// buffer is unsuitable for the device (e.g. not contiguous); `EBADF`.
pub fn prime_fd_to_handle(fd: impl AsFd, dmabuf: impl AsFd) -> Result<u32> {
    let mut p = DrmPrimeHandle { handle: 0, flags: 0, fd: dmabuf.as_fd().as_raw_fd() };
    // SAFETY: DRM_IOCTL_PRIME_FD_TO_HANDLE reads and writes one
    // drm_prime_handle; `dmabuf` is borrowed for the duration of the call.
    unsafe { ioctl(fd, Updater::<DRM_IOCTL_PRIME_FD_TO_HANDLE, _>::new(&mut p))? };
    Ok(p.handle)
}

/// `ioctl(fd, DRM_IOCTL_PRIME_HANDLE_TO_FD)`: export a GEM handle as a
/// dma-buf, opened read-write and close-on-exec.
///
/// # Errors
/// `ENOSYS`/`EOPNOTSUPP` when the driver cannot export; `ENOENT` for an
/// unknown handle; `EINVAL` when read-write export is refused.
pub fn prime_handle_to_fd(fd: impl AsFd, handle: u32) -> Result<OwnedFd> {
    let mut p = DrmPrimeHandle { handle, flags: OFlags::CLOEXEC.bits() | OFlags::RDWR.bits(), fd: -1 };
    // SAFETY: DRM_IOCTL_PRIME_HANDLE_TO_FD reads and writes one drm_prime_handle.
    unsafe { ioctl(fd, Updater::<DRM_IOCTL_PRIME_HANDLE_TO_FD, _>::new(&mut p))? };
    if p.fd < 0 {
        return Err(Errno::BADF);
    }
    // SAFETY: on success the kernel installed a new fd in `p.fd` that nobody
    // else owns; it is adopted in this statement.
    Ok(unsafe { OwnedFd::from_raw_fd(p.fd) })
}

/// `ioctl(fd, DRM_IOCTL_MODE_CREATE_DUMB)`: allocate a dumb (CPU-drawable)
/// buffer; returns the kernel's answer with `handle`, `pitch` and `size`.
///
/// # Errors
/// `ENOSYS` when the driver has no dumb buffers; `EINVAL` for zero or
/// overflowing dimensions; `ENOMEM`.
pub fn mode_create_dumb(fd: impl AsFd, width: u32, height: u32, bpp: u32) -> Result<DrmModeCreateDumb> {
    let mut c = DrmModeCreateDumb { height, width, bpp, ..DrmModeCreateDumb::default() };
    // SAFETY: DRM_IOCTL_MODE_CREATE_DUMB reads and writes one drm_mode_create_dumb.
    unsafe { ioctl(fd, Updater::<DRM_IOCTL_MODE_CREATE_DUMB, _>::new(&mut c))? };
    Ok(c)
}

/// `ioctl(fd, DRM_IOCTL_MODE_MAP_DUMB)`: the fake offset at which the DRM fd
/// maps a dumb buffer with `mmap`.
///
/// # Errors
/// `ENOENT` for an unknown handle; `EINVAL` for an imported buffer on
/// drivers that cannot map those.
pub fn mode_map_dumb(fd: impl AsFd, handle: u32) -> Result<u64> {
    let mut m = DrmModeMapDumb { handle, ..DrmModeMapDumb::default() };
    // SAFETY: DRM_IOCTL_MODE_MAP_DUMB reads and writes one drm_mode_map_dumb.
    unsafe { ioctl(fd, Updater::<DRM_IOCTL_MODE_MAP_DUMB, _>::new(&mut m))? };
    Ok(m.offset)
}

/// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED, fd, offset)` of a DRM
/// device fd at the fake offset [`mode_map_dumb`] returned: the dumb
/// buffer's bytes.
///
/// # Errors
/// `EINVAL`/`EACCES` for an offset or length that is no dumb buffer of this
/// fd; `ENOMEM`.
pub fn map_dumb(fd: impl AsFd, offset: u64, len: usize) -> Result<crate::mmap::Mapping> {
    // SAFETY: the DRM core maps only a whole GEM object at its fake offset
    // (drm_gem_mmap refuses a range beyond the object), and a GEM object's
    // size is fixed at creation: nothing can shrink it under the mapping.
    unsafe { crate::mmap::Mapping::map_unchecked(fd, offset, len, crate::mmap::Protection::ReadWrite, false) }
}

/// `ioctl(fd, DRM_IOCTL_MODE_DESTROY_DUMB)`: release a dumb buffer's handle.
///
/// # Errors
/// `ENOENT`/`EINVAL` for an unknown handle.
pub fn mode_destroy_dumb(fd: impl AsFd, handle: u32) -> Result<()> {
    let mut d = DrmModeDestroyDumb { handle };
    // SAFETY: DRM_IOCTL_MODE_DESTROY_DUMB reads and writes one drm_mode_destroy_dumb.
    unsafe { ioctl(fd, Updater::<DRM_IOCTL_MODE_DESTROY_DUMB, _>::new(&mut d)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn abi_sizes_match_drm_h() {
        assert_eq!(size_of::<DrmVersion>(), 64);
        assert_eq!(size_of::<DrmGetCap>(), 16);
        assert_eq!(size_of::<DrmGemClose>(), 8);
        assert_eq!(size_of::<DrmPrimeHandle>(), 12);
        assert_eq!(size_of::<DrmModeCreateDumb>(), 32);
        assert_eq!(size_of::<DrmModeMapDumb>(), 16);
        assert_eq!(size_of::<DrmModeDestroyDumb>(), 4);
    }

    /// Values as libdrm's headers expand them on x86_64.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn opcodes_match_drm_h() {
        assert_eq!(DRM_IOCTL_VERSION, 0xc040_6400);
        assert_eq!(DRM_IOCTL_GEM_CLOSE, 0x4008_6409);
        assert_eq!(DRM_IOCTL_GET_CAP, 0xc010_640c);
        assert_eq!(DRM_IOCTL_PRIME_HANDLE_TO_FD, 0xc00c_642d);
        assert_eq!(DRM_IOCTL_PRIME_FD_TO_HANDLE, 0xc00c_642e);
        assert_eq!(DRM_IOCTL_MODE_CREATE_DUMB, 0xc020_64b2);
        assert_eq!(DRM_IOCTL_MODE_MAP_DUMB, 0xc010_64b3);
        assert_eq!(DRM_IOCTL_MODE_DESTROY_DUMB, 0xc004_64b4);
    }

    #[test]
    fn non_drm_fd_gives_enotty() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(version(&f).unwrap_err(), Errno::NOTTY);
        assert_eq!(prime_fd_to_handle(&f, &f).unwrap_err(), Errno::NOTTY);
    }
}
