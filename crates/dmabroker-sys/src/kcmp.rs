//! `kcmp(2)`: whether two tasks share a kernel resource, here their file
//! descriptor table. Threads normally share their process's table; one that
//! called `unshare(CLONE_FILES)` (or was cloned without `CLONE_FILES`) has its
//! own, listed only in `/proc/PID/task/TID/fd`. Accounting uses this to scan
//! such tables without reading every thread's (identical) table.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// `KCMP_FILES` (`include/uapi/linux/kcmp.h`): compare the fd tables.
const KCMP_FILES: libc::c_int = 2;

/// `KCMP_FILE`: compare two fds' open file descriptions.
const KCMP_FILE: libc::c_int = 0;

/// Whether two fds of this process share one open file description (a dup,
/// or an fd received over `SCM_RIGHTS` from one).
///
/// # Errors
/// As [`same_files`] (`ENOSYS`, `EPERM` under a seccomp filter); `EBADF`.
pub fn same_file(a: std::os::fd::BorrowedFd<'_>, b: std::os::fd::BorrowedFd<'_>) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let pid = libc::pid_t::try_from(std::process::id()).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    let (a, b) = (a.as_raw_fd() as libc::c_ulong, b.as_raw_fd() as libc::c_ulong);
    // SAFETY: kcmp takes integer arguments and no pointers (for KCMP_FILE
    // idx1 and idx2 are fd numbers of `pid`, this process, borrowed for
    // the call); it reads and writes no memory of this process.
    let rc = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, a, b) };
    match rc {
        0 => Ok(true),
        1..=3 => Ok(false),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Whether tasks `pid1` and `pid2` (process or thread ids, as in `/proc` and
/// `/proc/PID/task`) use the same file descriptor table.
///
/// # Errors
/// `ENOSYS` on kernels built without `CONFIG_KCMP` (before 5.12:
/// `CONFIG_CHECKPOINT_RESTORE`); `EPERM` when the caller may not ptrace-read
/// either task (`PTRACE_MODE_READ_REALCREDS`: another user's task without
/// `CAP_SYS_PTRACE`, Yama, a seccomp filter); `ESRCH` when a task is gone.
/// Callers fall back to reading every table.
///
/// # References
/// - `kcmp(2)`; `SYSCALL_DEFINE5(kcmp, ...)` in `kernel/kcmp.c`
pub fn same_files(pid1: u32, pid2: u32) -> io::Result<bool> {
    compare_files(pid1, pid2).map(|o| o == std::cmp::Ordering::Equal)
}

/// The order of the file descriptor tables of tasks `pid1` and `pid2`:
/// `Equal` when they share one; otherwise the kernel's (obfuscated, but
/// consistent for the life of the system) order of the two tables, so that
/// tasks can be sorted and deduplicated by table in `O(n log n)` calls.
///
/// # Errors
/// As [`same_files`]; `EINVAL` for the "unequal, no order" answer (3),
/// which the kernel does not give for `KCMP_FILES`.
pub fn compare_files(pid1: u32, pid2: u32) -> io::Result<std::cmp::Ordering> {
    let (Ok(a), Ok(b)) = (libc::pid_t::try_from(pid1), libc::pid_t::try_from(pid2)) else {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    };
    // SAFETY: kcmp takes five integer arguments and no pointers (idx1 and
    // idx2 are unused for KCMP_FILES and passed as 0); it reads and writes
    // no memory of this process.
    let rc = unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_FILES, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    match rc {
        0 => Ok(std::cmp::Ordering::Equal),
        // kcmp_ptr(): 1 when the first is below the second, 2 when above.
        1 => Ok(std::cmp::Ordering::Less),
        2 => Ok(std::cmp::Ordering::Greater),
        // 3: unequal, no order.
        3 => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        _ => Err(io::Error::last_os_error()),
    }
}

/// A thread of this process that holds one file in a file descriptor table
/// of its own (`unshare(CLONE_FILES)`), and nothing else: the situation
/// [`same_files`] exists to detect, for tests of accounting. The file stays
/// held until this is dropped (the thread exits and the kernel releases its
/// table).
#[derive(Debug)]
pub struct OwnTableHolder {
    tid: u32,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl OwnTableHolder {
    /// Start a thread with its own copy of this process's fd table, then
    /// close `fd` in the shared table: afterwards only that thread's table
    /// (listed in `/proc/self/task/TID/fd` only) holds the file.
    ///
    /// # Errors
    /// `unshare(2)` failures.
    pub fn hold(fd: OwnedFd) -> io::Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<u32>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: unshare(CLONE_FILES) gives this thread a copy of the
            // table: fds owned elsewhere stay valid where they are owned, and
            // this thread touches no fd afterwards (it reports on a channel,
            // waits on another, both futex-based, and exits, which releases
            // its copy).
            let rc = unsafe { libc::unshare(libc::CLONE_FILES) };
            let result = if rc == 0 {
                Ok(rustix::thread::gettid().as_raw_nonzero().get() as u32)
            } else {
                Err(io::Error::last_os_error())
            };
            let _ = ready_tx.send(result);
            let _ = stop_rx.recv();
        });
        let tid = ready_rx.recv().map_err(|_| io::Error::other("the holder thread died"))??;
        drop(fd);
        Ok(Self { tid, stop: Some(stop_tx), thread: Some(thread) })
    }

    /// The thread's id (`/proc/self/task/TID`).
    pub fn tid(&self) -> u32 {
        self.tid
    }
}

impl Drop for OwnTableHolder {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tid() -> u32 {
        rustix::thread::gettid().as_raw_nonzero().get() as u32
    }

    #[test]
    fn threads_share_files_until_one_unshares() {
        let me = std::process::id();
        match same_files(me, me) {
            Ok(same) => assert!(same),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                crate::test_skip::skip("threads_share_files_until_one_unshares", &format!("kcmp unavailable: {e}"));
                return;
            }
            Err(e) => panic!("kcmp: {e}"),
        }
        let shared = std::thread::spawn(|| same_files(std::process::id(), tid()).unwrap()).join().unwrap();
        assert!(shared, "a plain thread shares the process's fd table");
        let memfd = rustix::fs::memfd_create("kcmp-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let holder = OwnTableHolder::hold(memfd).unwrap();
        assert!(!same_files(me, holder.tid()).unwrap(), "a thread that unshared its files has its own table");
        let order = compare_files(me, holder.tid()).unwrap();
        assert_ne!(order, std::cmp::Ordering::Equal);
        assert_eq!(compare_files(holder.tid(), me).unwrap(), order.reverse(), "kcmp orders tables consistently");
        let links: Vec<String> = std::fs::read_dir(format!("/proc/self/task/{}/fd", holder.tid()))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|l| l.to_string_lossy().into_owned())
            .collect();
        assert!(links.iter().any(|l| l.starts_with("/memfd:kcmp-test")), "{links:?}");
    }

    #[test]
    fn a_task_that_does_not_exist_is_an_error() {
        assert!(same_files(std::process::id(), u32::MAX).is_err());
    }
}
