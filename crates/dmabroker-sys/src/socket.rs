//! Socket state rustix does not expose: the send queue, the peer's groups,
//! and the peer's credentials with a pid of 0.

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

/// Largest group list the kernel keeps (`NGROUPS_MAX`).
const NGROUPS_MAX: usize = 65536;

/// `getsockopt(SO_PEERGROUPS)`: the supplementary groups the peer of a
/// connected Unix socket had when it called `connect()` (or `socketpair()`),
/// as recorded by the kernel with its `SO_PEERCRED` credentials. Unlike a read
/// of `/proc/PID/status` this cannot be raced by the peer exiting or changing
/// its groups afterwards.
///
/// # Errors
/// `ENOPROTOOPT` on kernels before 4.13; `ENOTSOCK`, `EBADF`, `ENOTCONN` as for `SO_PEERCRED`.
///
/// # References
/// - `sk_getsockopt()` case `SO_PEERGROUPS` and `groups_to_user()` in `net/core/sock.c`
pub fn peer_groups(socket: impl AsFd) -> rustix::io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    // libc has each architecture's number (59 in asm-generic, others on
    // alpha, mips, parisc, sparc); rustix has no wrapper for this option.
    let option = libc::SO_PEERGROUPS;
    let fd = socket.as_fd();
    let mut groups: Vec<u32> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size_of::<u32>()) as libc::socklen_t;
        // SAFETY: `fd` is a live borrowed descriptor; the kernel writes at most
        // `len` bytes into `groups`, whose buffer holds exactly `len` bytes, and
        // writes the length it used (or needs, on ERANGE) back into `len`.
        let rc = unsafe {
            libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, option, groups.as_mut_ptr().cast(), &raw mut len)
        };
        let needed = len as usize / size_of::<u32>();
        if rc == 0 {
            groups.truncate(needed.min(groups.len()));
            return Ok(groups);
        }
        let errno = rustix::io::Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(rustix::io::Errno::IO);
        // ERANGE: the buffer was too small and `len` now says how large it must be.
        if errno == rustix::io::Errno::RANGE && needed > groups.len() && needed <= NGROUPS_MAX {
            groups.resize(needed, 0);
            continue;
        }
        return Err(errno);
    }
}

/// `SO_PEERCRED` of a connected Unix socket, as `(pid, uid, gid)` recorded
/// when the peer called `connect()`. Unlike rustix's `socket_peercred`,
/// a pid of 0 is returned as is: the kernel reports 0 when the peer's process
/// is not visible in the reader's pid namespace (a broker in a child pid
/// namespace, its client outside).
///
/// # Errors
/// `ENOTSOCK`, `EBADF`, `ENOTCONN`.
///
/// # References
/// - `sk_getsockopt()` case `SO_PEERCRED` and `cred_to_ucred()` in `net/core/sock.c`
pub fn peer_cred(socket: impl AsFd) -> rustix::io::Result<(u32, u32, u32)> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `socket` is a live borrowed descriptor; the kernel writes at
    // most `len` bytes (the size of `cred`, a plain C struct of integers)
    // into `cred` and the length written into `len`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(rustix::io::Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(rustix::io::Errno::IO));
    }
    Ok((cred.pid.max(0) as u32, cred.uid, cred.gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_cred_of_a_socketpair_is_our_own() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (pid, uid, gid) = peer_cred(&a).unwrap();
        assert_eq!(pid, std::process::id());
        assert_eq!(uid, rustix::process::geteuid().as_raw());
        assert_eq!(gid, rustix::process::getegid().as_raw());
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(peer_cred(&f), Err(rustix::io::Errno::NOTSOCK));
    }

    #[test]
    fn peer_groups_of_a_socketpair_are_our_own_groups() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut theirs = peer_groups(&a).unwrap();
        let mut ours: Vec<u32> =
            rustix::process::getgroups().unwrap().into_iter().map(rustix::fs::Gid::as_raw).collect();
        theirs.sort_unstable();
        ours.sort_unstable();
        assert_eq!(theirs, ours);
    }

    #[test]
    fn peer_groups_of_a_non_socket_is_an_error() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(peer_groups(&f), Err(rustix::io::Errno::NOTSOCK));
    }
}
