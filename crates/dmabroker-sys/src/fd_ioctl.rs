//! An ioctl pattern rustix lacks: the argument is a pointer to a struct the
//! kernel reads, and the return value is a new file descriptor
//! (`UDMABUF_CREATE`, `UDMABUF_CREATE_LIST`).

use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};
use std::ffi::c_void;
use std::marker::PhantomData;
use std::os::fd::{FromRawFd, OwnedFd};

/// Passes a pointer to the argument and adopts the ioctl's return value as
/// a new fd. The pointer's provenance covers the whole argument: one `T`
/// ([`new`](Self::new)) or a whole buffer of words ([`words`](Self::words))
/// for a header followed by items.
pub(crate) struct FdReturning<'a, const OPCODE: Opcode, T> {
    ptr: *mut c_void,
    _borrow: PhantomData<&'a mut T>,
}

impl<'a, const OPCODE: Opcode, T> FdReturning<'a, OPCODE, T> {
    /// # Safety
    /// `OPCODE` must be an ioctl that reads a `T` and, on success, returns a
    /// new file descriptor.
    pub(crate) unsafe fn new(value: &'a mut T) -> Self {
        Self { ptr: std::ptr::from_mut::<T>(value).cast(), _borrow: PhantomData }
    }

    /// The argument is `words`: a `T` at its start, followed by whatever the
    /// ioctl reads after it, all inside `words` (so the pointer passed is
    /// derived from the whole slice, not from a reference to the header).
    ///
    /// # Safety
    /// As for [`new`](Self::new); `words` must hold a valid `T` at its start
    /// (`T` 8-byte aligned at most) and every byte the ioctl reads.
    pub(crate) unsafe fn words(words: &'a mut [u64]) -> Self {
        Self { ptr: words.as_mut_ptr().cast(), _borrow: PhantomData }
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
        self.ptr
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
