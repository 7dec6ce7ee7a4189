//! V4L2 controls (`VIDIOC_G_CTRL`/`VIDIOC_S_CTRL`): the integer and boolean
//! knobs of a node, e.g. a mem2mem device's `V4L2_CID_HFLIP`. On a
//! mem2mem node controls belong to the open file (one instance per fd), so
//! they must be set on the fd that streams.
//!
//! # References
//! `include/uapi/linux/videodev2.h`, `include/uapi/linux/v4l2-controls.h`,
//! <https://docs.kernel.org/userspace-api/media/v4l/vidioc-g-ctrl.html>

use rustix::io::Result;
use rustix::ioctl::{ioctl, opcode, Opcode, Updater};
use std::os::fd::AsFd;

/// `V4L2_CID_*` values used here (`v4l2-controls.h`).
pub mod cid {
    /// `V4L2_CID_BASE`: the first user-class control.
    pub const BASE: u32 = 0x0098_0900;
    /// `V4L2_CID_HFLIP`: mirror each line.
    pub const HFLIP: u32 = BASE + 20;
    /// `V4L2_CID_VFLIP`: mirror the image top to bottom.
    pub const VFLIP: u32 = BASE + 21;
    /// `V4L2_CID_CODEC_BASE`: the first codec-class control.
    pub const CODEC_BASE: u32 = 0x0099_0900;
    /// `V4L2_CID_FWHT_I_FRAME_QP`: vicodec's quantisation of I frames (1-31).
    pub const FWHT_I_FRAME_QP: u32 = CODEC_BASE + 290;
    /// `V4L2_CID_FWHT_P_FRAME_QP`: vicodec's quantisation of P frames (1-31).
    pub const FWHT_P_FRAME_QP: u32 = CODEC_BASE + 291;
}

/// `struct v4l2_control` (8 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct V4l2Control {
    /// Control id (`cid`).
    pub id: u32,
    /// Its value.
    pub value: i32,
}

/// `VIDIOC_G_CTRL = _IOWR('V', 27, struct v4l2_control)`.
pub const VIDIOC_G_CTRL: Opcode = opcode::read_write::<V4l2Control>(b'V', 27);
/// `VIDIOC_S_CTRL = _IOWR('V', 28, struct v4l2_control)`.
pub const VIDIOC_S_CTRL: Opcode = opcode::read_write::<V4l2Control>(b'V', 28);

/// `ioctl(fd, VIDIOC_G_CTRL)`: the current value of control `id`.
///
/// # Errors
/// `EINVAL` for a control the node lacks (or one that is not a simple
/// integer/boolean); `EACCES` for a write-only control.
pub fn g_ctrl(fd: impl AsFd, id: u32) -> Result<i32> {
    let mut c = V4l2Control { id, value: 0 };
    // SAFETY: VIDIOC_G_CTRL reads and writes one v4l2_control, which
    // V4l2Control mirrors (size asserted in the tests); `c` lives for the call.
    unsafe { ioctl(fd, Updater::<VIDIOC_G_CTRL, _>::new(&mut c))? };
    Ok(c.value)
}

/// `ioctl(fd, VIDIOC_S_CTRL)`: set control `id`; returns the value the
/// control now has: the kernel clamps an integer to its range and step and
/// makes a boolean 0 or 1 (`v4l2-ctrls-core.c`, `ROUND_TO_RANGE`).
///
/// # Errors
/// `EINVAL` for a control the node lacks; `ERANGE` for a menu or bitmask
/// value the control does not have; `EBUSY` while the control is grabbed
/// (streaming); `EACCES` for a read-only control.
pub fn s_ctrl(fd: impl AsFd, id: u32, value: i32) -> Result<i32> {
    let mut c = V4l2Control { id, value };
    // SAFETY: VIDIOC_S_CTRL reads and writes one v4l2_control, which
    // V4l2Control mirrors; `c` lives for the call.
    unsafe { ioctl(fd, Updater::<VIDIOC_S_CTRL, _>::new(&mut c))? };
    Ok(c.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::io::Errno;

    /// Size and opcodes from gcc on x86_64 against `linux/videodev2.h`.
    #[test]
    fn abi_matches_videodev2_h() {
        assert_eq!(std::mem::size_of::<V4l2Control>(), 8);
        assert_eq!(VIDIOC_G_CTRL, 0xc008_561b);
        assert_eq!(VIDIOC_S_CTRL, 0xc008_561c);
        assert_eq!(cid::HFLIP, 0x0098_0914);
        assert_eq!(cid::FWHT_I_FRAME_QP, 0x0099_0a22);
    }

    #[test]
    fn non_v4l2_fd_gives_enotty() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(g_ctrl(&f, cid::HFLIP).unwrap_err(), Errno::NOTTY);
        assert_eq!(s_ctrl(&f, cid::HFLIP, 1).unwrap_err(), Errno::NOTTY);
    }
}
