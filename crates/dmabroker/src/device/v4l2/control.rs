//! V4L2 controls (`VIDIOC_G_CTRL`/`VIDIOC_S_CTRL`) of a [`V4l2Device`]:
//! integer and boolean knobs such as a mem2mem device's horizontal flip.
//! On a mem2mem node each open fd is its own instance with its own
//! controls: set them on the device whose queues stream.

use super::V4l2Device;
use dmabroker_sys::v4l2::control as sys;
use rustix::io::Errno;

/// A control id (`V4L2_CID_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ControlId(pub u32);

impl ControlId {
    /// `V4L2_CID_HFLIP`: mirror each line (vim2m: output pixel `x` is input
    /// pixel `width - 1 - x`).
    pub const HFLIP: Self = Self(sys::cid::HFLIP);
    /// `V4L2_CID_VFLIP`: mirror the image top to bottom.
    pub const VFLIP: Self = Self(sys::cid::VFLIP);
    /// `V4L2_CID_FWHT_I_FRAME_QP`: vicodec's I-frame quantisation (1 finest, 31).
    pub const FWHT_I_FRAME_QP: Self = Self(sys::cid::FWHT_I_FRAME_QP);
    /// `V4L2_CID_FWHT_P_FRAME_QP`: vicodec's P-frame quantisation (1 finest, 31).
    pub const FWHT_P_FRAME_QP: Self = Self(sys::cid::FWHT_P_FRAME_QP);
}

impl std::fmt::Display for ControlId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::HFLIP => f.write_str("V4L2_CID_HFLIP"),
            Self::VFLIP => f.write_str("V4L2_CID_VFLIP"),
            Self::FWHT_I_FRAME_QP => f.write_str("V4L2_CID_FWHT_I_FRAME_QP"),
            Self::FWHT_P_FRAME_QP => f.write_str("V4L2_CID_FWHT_P_FRAME_QP"),
            Self(id) => write!(f, "control {id:#010x}"),
        }
    }
}

/// Why a control could not be read or set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The node has no such control (or it is not a simple integer/boolean).
    #[error("the device has no {0} (v4l2-ctl --list-ctrls lists its controls)")]
    NoSuchControl(ControlId),
    /// A menu or bitmask value the control does not have (integers are
    /// clamped instead).
    #[error("{value} is not a value of {id} (v4l2-ctl --list-ctrls shows its menu)")]
    OutOfRange {
        /// The control.
        id: ControlId,
        /// The value refused.
        value: i32,
    },
    /// The control is grabbed (drivers lock some while streaming).
    #[error("{0} cannot change now (grabbed while streaming): set it before stream_on")]
    Busy(ControlId),
    /// The control is read-only (set) or write-only (get).
    #[error("{0} cannot be accessed this way (read-only or write-only)")]
    Access(ControlId),
    /// Another errno.
    #[error("V4L2 control ioctl failed: {0}")]
    Os(#[source] Errno),
}

fn control_errno(id: ControlId, value: i32, e: Errno) -> ControlError {
    match e {
        Errno::INVAL | Errno::NOTTY => ControlError::NoSuchControl(id),
        Errno::RANGE => ControlError::OutOfRange { id, value },
        Errno::BUSY => ControlError::Busy(id),
        Errno::ACCESS => ControlError::Access(id),
        e => ControlError::Os(e),
    }
}

impl V4l2Device {
    /// `VIDIOC_G_CTRL`: the current value of a control.
    ///
    /// # Errors
    /// [`ControlError::NoSuchControl`], [`ControlError::Access`].
    pub fn control(&self, id: ControlId) -> Result<i32, ControlError> {
        sys::g_ctrl(&self.fd, id.0).map_err(|e| control_errno(id, 0, e))
    }

    /// `VIDIOC_S_CTRL`: set a control; returns the value it now has: the
    /// kernel clamps an integer to the control's range and step and makes a
    /// boolean 0 or 1, so compare when the exact value matters.
    ///
    /// # Errors
    /// [`ControlError::NoSuchControl`], [`ControlError::OutOfRange`],
    /// [`ControlError::Busy`], [`ControlError::Access`].
    pub fn set_control(&self, id: ControlId, value: i32) -> Result<i32, ControlError> {
        sys::s_ctrl(&self.fd, id.0, value).map_err(|e| control_errno(id, value, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_map_to_what_the_caller_can_do() {
        let id = ControlId::HFLIP;
        assert!(matches!(control_errno(id, 2, Errno::INVAL), ControlError::NoSuchControl(ControlId::HFLIP)));
        assert!(matches!(control_errno(id, 2, Errno::RANGE), ControlError::OutOfRange { value: 2, .. }));
        assert!(matches!(control_errno(id, 2, Errno::BUSY), ControlError::Busy(_)));
        assert!(matches!(control_errno(id, 2, Errno::IO), ControlError::Os(Errno::IO)));
        assert_eq!(ControlId::HFLIP.to_string(), "V4L2_CID_HFLIP");
        assert_eq!(ControlId(0x0098_0900).to_string(), "control 0x00980900");
    }
}
