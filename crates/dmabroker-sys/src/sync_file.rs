//! sync_file fds (`anon_inode:sync_file`): `SYNC_IOC_FILE_INFO`, which names
//! a fence (its sync_file name, and the timeline and driver of every fence
//! in it) and says whether it signalled, and with which error.
//!
//! # References
//! `include/uapi/linux/sync_file.h`, `drivers/dma-buf/sync_file.c`

use rustix::ioctl::{ioctl, opcode, Opcode, Updater};
use std::os::fd::AsFd;

/// `struct sync_fence_info` (80 bytes): one fence of a sync_file.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncFenceInfo {
    /// The fence's timeline name (NUL-terminated).
    pub obj_name: [u8; 32],
    /// The name of the driver that made the fence (NUL-terminated).
    pub driver_name: [u8; 32],
    /// 1 signalled, 0 pending, negative: signalled with that errno.
    pub status: i32,
    /// Reserved, zero.
    pub flags: u32,
    /// `CLOCK_MONOTONIC` ns when it signalled (0 while pending).
    pub timestamp_ns: u64,
}

/// `struct sync_file_info` (56 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncFileInfo {
    /// The sync_file's name (NUL-terminated): the user's (merged files) or
    /// `driver-timeline<context>-<seqno>`.
    pub name: [u8; 32],
    /// As [`SyncFenceInfo::status`], for the whole file.
    pub status: i32,
    /// Must be zero on input.
    pub flags: u32,
    /// In: room in `sync_fence_info` (0: count only); out: fences in the file.
    pub num_fences: u32,
    /// Must be zero.
    pub pad: u32,
    /// User pointer to `num_fences` [`SyncFenceInfo`]s.
    pub sync_fence_info: u64,
}

/// `SYNC_IOC_FILE_INFO = _IOWR('>', 4, struct sync_file_info)`.
pub const SYNC_IOC_FILE_INFO: Opcode = opcode::read_write::<SyncFileInfo>(b'>', 4);

/// `ioctl(sync_file, SYNC_IOC_FILE_INFO)` with no room for fences: the
/// file's name, its status (1 signalled, 0 pending, negative errno when it
/// signalled with an error) and in `num_fences` how many fences it holds.
///
/// # Errors
/// `ENOTTY` (or `EINVAL`) when the fd is not a sync_file.
pub fn file_status(sync_file: impl AsFd) -> rustix::io::Result<SyncFileInfo> {
    let mut info = SyncFileInfo::default();
    // SAFETY: SYNC_IOC_FILE_INFO reads and writes one `sync_file_info`, which
    // `SyncFileInfo` mirrors; with `num_fences == 0` the kernel follows no
    // user pointer.
    unsafe { ioctl(sync_file, Updater::<SYNC_IOC_FILE_INFO, _>::new(&mut info))? };
    Ok(info)
}

/// `ioctl(sync_file, SYNC_IOC_FILE_INFO)` twice: the count, then every
/// fence (timeline, driver, status, signal time). The file's `status` is
/// then the first error of its fences, else 0 while any is pending, else 1.
///
/// # Errors
/// As [`file_status`].
pub fn file_info(sync_file: impl AsFd) -> rustix::io::Result<(SyncFileInfo, Vec<SyncFenceInfo>)> {
    let fd = sync_file.as_fd();
    let count = file_status(fd)?.num_fences;
    if count == 0 {
        return Ok((file_status(fd)?, Vec::new()));
    }
    let mut fences = vec![SyncFenceInfo::default(); count as usize];
    let mut info =
        SyncFileInfo { num_fences: count, sync_fence_info: fences.as_mut_ptr() as u64, ..SyncFileInfo::default() };
    // SAFETY: as in `file_status`; and the kernel writes `num_fences`
    // (at most `count`, a sync_file's fences never change) `sync_fence_info`s
    // to the pointer, which points at `fences`, `count` of them, alive and
    // not otherwise borrowed for the call.
    unsafe { ioctl(fd, Updater::<SYNC_IOC_FILE_INFO, _>::new(&mut info))? };
    fences.truncate(info.num_fences.min(count) as usize);
    Ok((info, fences))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_uapi() {
        assert_eq!(std::mem::size_of::<SyncFenceInfo>(), 80);
        assert_eq!(std::mem::size_of::<SyncFileInfo>(), 56);
        // _IOWR('>', 4, 56 bytes) as the kernel spells it.
        assert_eq!(SYNC_IOC_FILE_INFO, 0xc038_3e04);
    }

    #[test]
    fn a_memfd_is_not_a_sync_file() {
        let memfd = rustix::fs::memfd_create("not-a-fence", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        assert!(file_status(&memfd).is_err());
    }
}
