//! An ioctl pattern rustix lacks: the argument is a pointer to a struct the
//! kernel reads, and the return value is a new file descriptor
//! (`UDMABUF_CREATE`, `UDMABUF_CREATE_LIST`).

use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};
use std::ffi::c_void;
use std::os::fd::{FromRawFd, OwnedFd};

/// Passes `*mut T` and adopts the ioctl's return value as a new fd.
pub(crate) struct FdReturning<'a, const OPCODE: Opcode, T> {
    value: &'a mut T,
}

impl<'a, const OPCODE: Opcode, T> FdReturning<'a, OPCODE, T> {
    /// # Safety
    /// `OPCODE` must be an ioctl that reads a `T` (or a `T` followed by data the
    /// caller placed after it) and, on success, returns a new file descriptor.
    pub(crate) unsafe fn new(value: &'a mut T) -> Self {
        Self { value }
    }
}

// SAFETY: the opcode/type pairing is the caller's promise in `new`; the kernel
// may write to the struct, so IS_MUTATING is true.
unsafe impl<const OPCODE: Opcode, T> Ioctl for FdReturning<'_, OPCODE, T> {
    type Output = OwnedFd;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        OPCODE
    }

    fn as_ptr(&mut self) -> *mut c_void {
        (self.value as *mut T).cast()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _extract_output: *mut c_void) -> rustix::io::Result<OwnedFd> {
        if out < 0 {
            return Err(rustix::io::Errno::BADF);
        }
        // SAFETY: per `new`'s contract a successful call returned a fresh fd
        // that nobody else owns; we adopt it in the same statement.
        Ok(unsafe { OwnedFd::from_raw_fd(out) })
    }
}
