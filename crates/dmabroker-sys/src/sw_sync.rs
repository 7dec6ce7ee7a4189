//! sw_sync (`CONFIG_SW_SYNC`, debugfs `/sys/kernel/debug/sync/sw_sync`): a
//! timeline whose fences are real sync_files signalled from user space.
//! Opening the node creates a timeline (closing it signals nothing and frees
//! it once its fences are gone); `SW_SYNC_IOC_CREATE_FENCE` makes a sync_file
//! that signals when the timeline reaches `value`; `SW_SYNC_IOC_INC`
//! advances the timeline.
//!
//! # References
//! `drivers/dma-buf/sw_sync.c` (the uapi lives there, not in a header)

use rustix::fs::{Mode, OFlags};
use rustix::ioctl::{ioctl, opcode, Opcode, Setter, Updater};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

/// Where debugfs shows the sw_sync device.
pub const SW_SYNC_PATH: &str = "/sys/kernel/debug/sync/sw_sync";

/// `struct sw_sync_create_fence_data` (40 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SwSyncCreateFenceData {
    /// Timeline value at which the fence signals.
    pub value: u32,
    /// Fence name (NUL-terminated), shown in /sys/kernel/debug/sync/info.
    pub name: [u8; 32],
    /// Returned sync_file fd.
    pub fence: i32,
}

/// `SW_SYNC_IOC_CREATE_FENCE = _IOWR('W', 0, struct sw_sync_create_fence_data)`.
pub const SW_SYNC_IOC_CREATE_FENCE: Opcode = opcode::read_write::<SwSyncCreateFenceData>(b'W', 0);
/// `SW_SYNC_IOC_INC = _IOW('W', 1, __u32)`.
pub const SW_SYNC_IOC_INC: Opcode = opcode::write::<u32>(b'W', 1);

/// Open a new timeline (`open(SW_SYNC_PATH)`).
///
/// # Errors
/// `ENOENT` without `CONFIG_SW_SYNC` or with debugfs unmounted; `EACCES`
/// unless root.
pub fn open_timeline() -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(SW_SYNC_PATH, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
}

/// `ioctl(timeline, SW_SYNC_IOC_CREATE_FENCE)`: a sync_file that signals
/// when `timeline` reaches `value`. `name` is cut to 31 bytes.
///
/// # Errors
/// The kernel's errno (`ENOMEM`, `EFAULT`).
pub fn create_fence(timeline: impl AsFd, value: u32, name: &str) -> rustix::io::Result<OwnedFd> {
    let mut data = SwSyncCreateFenceData { value, name: [0; 32], fence: -1 };
    let n = name.len().min(31);
    data.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: SW_SYNC_IOC_CREATE_FENCE reads and writes exactly one
    // `sw_sync_create_fence_data`, which `SwSyncCreateFenceData` mirrors.
    unsafe { ioctl(timeline, Updater::<SW_SYNC_IOC_CREATE_FENCE, _>::new(&mut data))? };
    // SAFETY: on success the kernel installed a new sync_file fd in
    // `data.fence` that nobody else owns; it is adopted here, once.
    Ok(unsafe { OwnedFd::from_raw_fd(data.fence) })
}

/// `ioctl(timeline, SW_SYNC_IOC_INC)`: advance the timeline by `by`,
/// signalling every fence it passes.
///
/// # Errors
/// The kernel's errno.
pub fn inc(timeline: impl AsFd, by: u32) -> rustix::io::Result<()> {
    // SAFETY: SW_SYNC_IOC_INC reads one `__u32` from the pointer Setter
    // passes, which points at `by` for the duration of the call.
    unsafe { ioctl(timeline, Setter::<SW_SYNC_IOC_INC, u32>::new(by)) }
}
