//! dma-buf file descriptors: `DMA_BUF_IOCTL_SYNC`, `DMA_BUF_SET_NAME`,
//! `DMA_BUF_IOCTL_EXPORT_SYNC_FILE`, `DMA_BUF_IOCTL_IMPORT_SYNC_FILE`.
//!
//! # References
//! `include/uapi/linux/dma-buf.h`, `drivers/dma-buf/dma-buf.c`

use rustix::ioctl::{ioctl, opcode, IntegerSetter, Opcode, Setter, Updater};
use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `struct dma_buf_sync`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct DmaBufSync {
    /// `DMA_BUF_SYNC_*` bits.
    pub flags: u64,
}

/// `DMA_BUF_SYNC_READ`: the CPU will read.
pub const DMA_BUF_SYNC_READ: u64 = 1 << 0;
/// `DMA_BUF_SYNC_WRITE`: the CPU will write.
#[allow(clippy::identity_op)] // spelled as in dma-buf.h
pub const DMA_BUF_SYNC_WRITE: u64 = 2 << 0;
/// `DMA_BUF_SYNC_RW`.
pub const DMA_BUF_SYNC_RW: u64 = DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE;
/// `DMA_BUF_SYNC_START` (zero: the absence of `END`).
pub const DMA_BUF_SYNC_START: u64 = 0 << 2;
/// `DMA_BUF_SYNC_END`.
pub const DMA_BUF_SYNC_END: u64 = 1 << 2;
/// Maximum length of a dma-buf name, including the NUL (`DMA_BUF_NAME_LEN`).
pub const DMA_BUF_NAME_LEN: usize = 32;

/// `DMA_BUF_IOCTL_SYNC = _IOW('b', 0, struct dma_buf_sync)`.
pub const DMA_BUF_IOCTL_SYNC: Opcode = opcode::write::<DmaBufSync>(b'b', 0);
/// `DMA_BUF_SET_NAME = _IOW('b', 1, const char *)`; the argument is the
/// pointer itself. `_A`/`_B` are the same number sized for 32/64-bit pointers.
pub const DMA_BUF_SET_NAME: Opcode = opcode::write::<*const u8>(b'b', 1);
/// `DMA_BUF_SET_NAME_A = _IOW('b', 1, __u32)`.
pub const DMA_BUF_SET_NAME_A: Opcode = opcode::write::<u32>(b'b', 1);
/// `DMA_BUF_SET_NAME_B = _IOW('b', 1, __u64)`.
pub const DMA_BUF_SET_NAME_B: Opcode = opcode::write::<u64>(b'b', 1);

/// `struct dma_buf_export_sync_file`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct DmaBufExportSyncFile {
    /// `DMA_BUF_SYNC_READ`/`WRITE`: which fences to export.
    pub flags: u32,
    /// Returned sync_file fd.
    pub fd: i32,
}

/// `struct dma_buf_import_sync_file`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct DmaBufImportSyncFile {
    /// `DMA_BUF_SYNC_READ`/`WRITE`: add the fence as shared or exclusive.
    pub flags: u32,
    /// The sync_file fd to import.
    pub fd: i32,
}

/// `DMA_BUF_IOCTL_EXPORT_SYNC_FILE = _IOWR('b', 2, struct dma_buf_export_sync_file)`.
pub const DMA_BUF_IOCTL_EXPORT_SYNC_FILE: Opcode = opcode::read_write::<DmaBufExportSyncFile>(b'b', 2);
/// `DMA_BUF_IOCTL_IMPORT_SYNC_FILE = _IOW('b', 3, struct dma_buf_import_sync_file)`.
pub const DMA_BUF_IOCTL_IMPORT_SYNC_FILE: Opcode = opcode::write::<DmaBufImportSyncFile>(b'b', 3);

/// `ioctl(dmabuf, DMA_BUF_IOCTL_SYNC, flags)`: begin (`START`) or end (`END`)
/// CPU access for reading and/or writing.
///
/// # Errors
/// `EINVAL` for unknown flag bits; `ENOTTY` when `fd` is not a dma-buf.
pub fn sync(dmabuf: impl AsFd, flags: u64) -> rustix::io::Result<()> {
    // SAFETY: DMA_BUF_IOCTL_SYNC reads exactly one `struct dma_buf_sync`.
    unsafe { ioctl(dmabuf, Setter::<DMA_BUF_IOCTL_SYNC, _>::new(DmaBufSync { flags })) }
}

/// `ioctl(dmabuf, DMA_BUF_SET_NAME, name)`: name the buffer; the name shows in
/// `/proc/*/fdinfo` (`name:`) and in debugfs. At most 31 bytes.
///
/// # Errors
/// `EINVAL` when the name is too long; `ENOTTY` when `fd` is not a dma-buf.
pub fn set_name(dmabuf: impl AsFd, name: &CStr) -> rustix::io::Result<()> {
    // SAFETY: DMA_BUF_SET_NAME takes a pointer to a NUL-terminated string that
    // the kernel copies (strndup_user) before returning; `name` outlives the call.
    unsafe { ioctl(dmabuf, IntegerSetter::<DMA_BUF_SET_NAME>::new_pointer(name.as_ptr() as *mut _)) }
}

/// `ioctl(dmabuf, DMA_BUF_IOCTL_EXPORT_SYNC_FILE)`: a sync_file holding the
/// buffer's current fences for the given access (`DMA_BUF_SYNC_READ`/`WRITE`).
///
/// # Errors
/// `ENOTTY` before Linux 6.0 or for non-dma-buf fds; `EINVAL` for bad flags.
pub fn export_sync_file(dmabuf: impl AsFd, flags: u32) -> rustix::io::Result<OwnedFd> {
    let mut data = DmaBufExportSyncFile { flags, fd: -1 };
    // SAFETY: the opcode reads and writes one `dma_buf_export_sync_file`.
    unsafe { ioctl(dmabuf, Updater::<DMA_BUF_IOCTL_EXPORT_SYNC_FILE, _>::new(&mut data))? };
    // SAFETY: on success the kernel installed a new fd in `data.fd`, owned by
    // nobody else; adopted in this statement.
    Ok(unsafe { OwnedFd::from_raw_fd(data.fd) })
}

/// `ioctl(dmabuf, DMA_BUF_IOCTL_IMPORT_SYNC_FILE)`: attach the fence of a
/// sync_file to the buffer. The sync_file stays owned by the caller.
///
/// # Errors
/// `ENOTTY` before Linux 6.0; `EINVAL` when `sync_file` is not a sync_file.
pub fn import_sync_file(dmabuf: impl AsFd, flags: u32, sync_file: BorrowedFd<'_>) -> rustix::io::Result<()> {
    let data = DmaBufImportSyncFile { flags, fd: sync_file.as_raw_fd() };
    // SAFETY: the opcode reads one `dma_buf_import_sync_file`; the fd in it is
    // borrowed for the duration of the call.
    unsafe { ioctl(dmabuf, Setter::<DMA_BUF_IOCTL_IMPORT_SYNC_FILE, _>::new(data)) }
}
