//! Socket queue state rustix does not expose.

use rustix::ioctl::{Getter, Opcode};
use std::ffi::c_int;
use std::os::fd::AsFd;

/// `SIOCOUTQ` (same number as `TIOCOUTQ`).
const SIOCOUTQ: Opcode = 0x5411;

/// `ioctl(fd, SIOCOUTQ)`: bytes sent on this socket that the peer has not
/// received yet. On a Unix socket each sent datagram stays charged to the
/// sender until the receiver's `recvmsg` consumes it (and installs its
/// `SCM_RIGHTS` fds), so 0 means every message sent, with its fds, has
/// arrived in the peer's fd table.
///
/// # Errors
/// `ENOTTY`/`EINVAL` for a non-socket; `EBADF`.
///
/// # References
/// - `unix_ioctl()` / `unix_outq_len()` in `net/unix/af_unix.c`
pub fn unreceived_bytes(socket: impl AsFd) -> rustix::io::Result<u64> {
    // SAFETY: SIOCOUTQ is a getter that writes exactly one `int` through the
    // pointer `Getter` provides; `Getter` owns storage of that type.
    unsafe {
        let ctl = Getter::<SIOCOUTQ, c_int>::new();
        rustix::ioctl::ioctl(socket, ctl).map(|n| n.max(0) as u64)
    }
}
