//! File leases and open-file-description locks (`fcntl(2)`) used as probes
//! of an inode, never to hold anything:
//!
//! - [`opened_elsewhere`]: whether any open file description of the inode
//!   other than the caller's exists (`F_SETLEASE F_WRLCK` is granted only
//!   when the inode's write and read open counts are the caller's own). An
//!   mmap, an fd in flight inside `SCM_RIGHTS` and an io_uring fixed file
//!   each keep their open file description, so they count, where no scan of
//!   `/proc` can see the last two.
//! - [`same_inode`]: whether two fds refer to the same inode, by a lock
//!   taken on one and seen through the other (locks live on the inode), so
//!   that two files whose `(st_dev, st_ino)` collide (hugetlbfs numbers its
//!   inodes with a 32-bit counter that wraps) are told apart.
//!
//! # References
//! - `fcntl(2)` (Leases, Open file description locks); `fs/locks.c`
//!   `check_conflicting_open()` (i_writecount, i_readcount),
//!   `generic_setlease()`, `fcntl_getlk()`

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

/// The signal a lease break would send the caller: the default (`SIGIO`)
/// kills a process that does not handle it, `SIGURG` is ignored by default.
/// A probe's lease lives for two system calls, but another process may open
/// the file in between.
const LEASE_BREAK_SIGNAL: libc::c_int = libc::SIGURG;
/// `F_SETSIG` (10, `include/uapi/asm-generic/fcntl.h`), which the libc
/// crate does not export.
const F_SETSIG: libc::c_int = 10;

/// Whether an open file description of `fd`'s inode other than `fd`'s own
/// exists: `Ok(false)` means the caller's is the only one.
///
/// Open file descriptions that `memfd_create` (or any `alloc_file_pseudo`
/// caller) made are not in the inode's write count: only those made by
/// `open()` (a reopen of `/proc/self/fd/N`) are. Callers that rely on the
/// answer hold, and hand out, only reopened descriptions.
///
/// While the probe's lease exists (between two `fcntl` calls), another
/// process opening the file waits for it to end, or gets `EWOULDBLOCK` with
/// `O_NONBLOCK`.
///
/// # Errors
/// `EACCES` when the caller neither owns the file nor has `CAP_LEASE`;
/// `EINVAL` when the file system does not support leases or they are off
/// (`fs.leases-enable = 0`); other `fcntl` errnos.
pub fn opened_elsewhere(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl(F_SETSIG) takes an integer argument; `raw` is a valid fd
    // for the duration of the call (borrowed).
    if unsafe { libc::fcntl(raw, F_SETSIG, LEASE_BREAK_SIGNAL) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETLEASE takes an integer argument.
    if unsafe { libc::fcntl(raw, libc::F_SETLEASE, libc::F_WRLCK) } < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(true),
            _ => Err(e),
        };
    }
    // SAFETY: as above. The lease is ours; removing it cannot fail but for
    // a bad fd, which `fd` is not.
    unsafe { libc::fcntl(raw, libc::F_SETLEASE, libc::F_UNLCK) };
    Ok(false)
}

/// Whether `a` and `b` refer to the same inode, whatever their
/// `(st_dev, st_ino)` say: an open-file-description read lock of one byte
/// at a random offset (`key`, kept below 2^62) is taken through `a`, and
/// `F_OFD_GETLK` through `b` must report exactly that lock. A different
/// inode reports no lock, or another process's lock at another range; a
/// lock that covers the key but is not exactly it (someone locking
/// everything) gives `Err(EDEADLK)`: ambiguous, to be refused.
///
/// Both fds must be readable (a read lock needs `FMODE_READ`); `a` and `b`
/// must be distinct open file descriptions (a lock never conflicts with
/// its own description: the same description gives `Ok(false)`).
///
/// # Errors
/// `EBADF` when `a` is not open for reading; `EINVAL` for files that do not
/// support locks; `EDEADLK` for the ambiguous answer above.
pub fn same_inode(a: BorrowedFd<'_>, b: BorrowedFd<'_>, key: u64) -> io::Result<bool> {
    let start = libc::off_t::try_from(key & ((1 << 62) - 1)).unwrap_or(1 << 40);
    let lock = |kind: libc::c_int| libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start,
        l_len: 1,
        l_pid: 0,
    };
    let mut mine = lock(libc::F_RDLCK as libc::c_int);
    // SAFETY: F_OFD_SETLK reads one `struct flock`, which `mine` is, alive
    // for the call; `a` is a valid borrowed fd.
    if unsafe { libc::fcntl(a.as_raw_fd(), libc::F_OFD_SETLK, &raw mut mine) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut probe = lock(libc::F_WRLCK as libc::c_int);
    // SAFETY: F_OFD_GETLK reads and writes one `struct flock`, `probe`.
    let rc = unsafe { libc::fcntl(b.as_fd().as_raw_fd(), libc::F_OFD_GETLK, &raw mut probe) };
    let err = io::Error::last_os_error();
    let mut unlock = lock(libc::F_UNLCK as libc::c_int);
    // SAFETY: as F_OFD_SETLK above; removes the lock just taken.
    unsafe { libc::fcntl(a.as_raw_fd(), libc::F_OFD_SETLK, &raw mut unlock) };
    if rc < 0 {
        return Err(err);
    }
    match i32::from(probe.l_type) {
        t if t == libc::F_UNLCK => Ok(false),
        _ if probe.l_start == start && probe.l_len == 1 && probe.l_pid == -1 => Ok(true),
        // Someone else's lock over the key: it may hide ours.
        _ if probe.l_start <= start && (probe.l_len == 0 || probe.l_start + probe.l_len > start) => {
            Err(io::Error::from_raw_os_error(libc::EDEADLK))
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn memfd() -> OwnedFd {
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd = rustix::fs::memfd_create("lease", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        fd
    }

    fn reopen(fd: &OwnedFd, flags: rustix::fs::OFlags) -> OwnedFd {
        rustix::fs::open(
            format!("/proc/self/fd/{}", fd.as_raw_fd()),
            flags | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn a_lease_probe_counts_every_other_open_file_description() {
        use rustix::fs::OFlags;
        let original = memfd();
        let own = reopen(&original, OFlags::RDWR);
        drop(original); // memfd_create's own description is not counted
        match opened_elsewhere(own.as_fd()) {
            Ok(false) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                crate::test_skip::skip("a_lease_probe_counts_every_other_open_file_description", "no leases here");
                return;
            }
            r => panic!("alone: {r:?}"),
        }
        let dup = own.try_clone().unwrap();
        assert!(!opened_elsewhere(own.as_fd()).unwrap(), "a dup shares the caller's description");
        drop(dup);
        let ro = reopen(&own, OFlags::RDONLY);
        assert!(opened_elsewhere(own.as_fd()).unwrap(), "a read-only open counts");
        drop(ro);
        let rw = reopen(&own, OFlags::RDWR);
        let map = crate::mmap::Mapping::map(rw.as_fd(), 0, 4096, crate::mmap::Protection::Read, false);
        drop(rw);
        if map.is_ok() {
            assert!(opened_elsewhere(own.as_fd()).unwrap(), "a mapping keeps its description");
        }
        drop(map);
        assert!(!opened_elsewhere(own.as_fd()).unwrap());
    }

    #[test]
    fn a_lock_tells_one_inode_from_another() {
        use rustix::fs::OFlags;
        let a = memfd();
        let b = memfd();
        let a_again = reopen(&a, OFlags::RDONLY);
        assert!(same_inode(a.as_fd(), a_again.as_fd(), 12345).unwrap());
        assert!(!same_inode(a.as_fd(), b.as_fd(), 12345).unwrap());
        // Another description holding a lock over everything on b: ambiguous
        // for b, never "the same".
        let b_again = reopen(&b, OFlags::RDONLY);
        let mut all = libc::flock {
            l_type: libc::F_RDLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        // SAFETY: F_OFD_SETLK reads one `struct flock`, `all`.
        assert_eq!(unsafe { libc::fcntl(b_again.as_raw_fd(), libc::F_OFD_SETLK, &raw mut all) }, 0);
        let r = same_inode(a.as_fd(), b.as_fd(), 777);
        assert!(!matches!(r, Ok(true)), "a's key lock is not on b: {r:?}");
        let r = same_inode(b.as_fd(), b_again.as_fd(), 777);
        assert!(!matches!(r, Ok(false)), "{r:?}");
    }
}
