//! Start a program in a given cgroup (v2): `clone3(CLONE_INTO_CGROUP |
//! CLONE_PIDFD)` then `execveat(AT_EMPTY_PATH)`, so the child never runs one
//! instruction of the program outside the cgroup (writing its pid to
//! `cgroup.procs` after a fork would leave a window in which what it does is
//! charged to the parent's cgroup).
//!
//! The child runs only raw system calls between `clone3` and `execveat`
//! (`dup3`, `fcntl`, `prctl`, `exit_group`): it is a copy of one thread of a
//! possibly multi-threaded parent, where locks other threads held stay held,
//! so it must not allocate or take any lock. Everything it needs (the
//! argument vector, the pointers to it) is built before `clone3`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`, Linux 5.7),
/// `include/uapi/linux/sched.h`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// A started child.
#[derive(Debug)]
pub struct Child {
    /// Its pidfd (`CLONE_PIDFD`): signal and wait for it through this.
    pub pidfd: OwnedFd,
    /// Its pid, for logs.
    pub pid: u32,
}

/// Run the executable `exe` (an fd opened on it, e.g. of `/proc/self/exe`)
/// with `argv` and an empty environment, as a child that starts in the
/// cgroup whose directory `cgroup` is open (`O_PATH | O_DIRECTORY` is
/// enough), with `keep` as its fd 3 (every other fd of this process is
/// `O_CLOEXEC`, as std and rustix open them, and is not inherited), and
/// `SIGKILL` as its parent-death signal. `exit_signal` is `SIGCHLD`.
///
/// # Errors
/// `clone3`'s errno: `EACCES`/`EPERM` when this process may not move a
/// process into that cgroup (it needs write access to its `cgroup.procs`
/// and to that of the common ancestor), `EBUSY` for a cgroup with child
/// cgroups that use controllers (the "no internal processes" rule),
/// `ENOSYS` before Linux 5.3, `E2BIG`/`EINVAL` before 5.7 (no
/// `CLONE_INTO_CGROUP`). An `execveat` failure is seen as the child exiting
/// with status 127.
pub fn spawn_in_cgroup(
    exe: BorrowedFd<'_>,
    argv: &[CString],
    cgroup: BorrowedFd<'_>,
    keep: BorrowedFd<'_>,
) -> io::Result<Child> {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let empty = c"";
    let keep_fd = keep.as_raw_fd();
    // The child puts `keep` at fd 3 before it execs `exe`: an `exe` that is
    // fd 3 itself would be replaced by it first (execveat of a socket).
    let moved_exe = if exe.as_raw_fd() == 3 { Some(rustix::io::fcntl_dupfd_cloexec(exe, 4)?) } else { None };
    let exe_fd = moved_exe.as_ref().map_or(exe.as_raw_fd(), rustix::fd::AsRawFd::as_raw_fd);
    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: libc::CLONE_PIDFD as u64 | CLONE_INTO_CGROUP,
        pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 reads `args` (a valid, initialised struct of the size
    // passed) and writes the pidfd into `pidfd`, which outlives the call. No
    // stack is passed, so the child runs on a copy of this thread's stack
    // like fork(). In the child (rc 0) only async-signal-safe raw system
    // calls follow, on data prepared above (argv_ptrs, envp, empty: alive in
    // the child's copy of the address space), and it never returns from
    // this function: execveat replaces it, or exit_group ends it.
    let rc = unsafe {
        libc::syscall(libc::SYS_clone3, std::ptr::addr_of!(args), std::mem::size_of::<CloneArgs>() as libc::size_t)
    };
    if rc == 0 {
        // SAFETY: the child, see above: raw syscalls on valid pointers, then
        // either the new program or exit_group; nothing here allocates or
        // locks.
        unsafe {
            if keep_fd == 3 {
                // dup3 refuses equal fds: clear O_CLOEXEC instead.
                libc::syscall(libc::SYS_fcntl, 3, libc::F_SETFD, 0);
            } else {
                libc::syscall(libc::SYS_dup3, keep_fd, 3, 0);
            }
            libc::syscall(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            libc::syscall(
                libc::SYS_execveat,
                exe_fd,
                empty.as_ptr(),
                argv_ptrs.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
            libc::syscall(libc::SYS_exit_group, 127);
        }
        unreachable!("exit_group returned");
    }
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CLONE_PIDFD made the kernel store a new pidfd, owned by
    // nobody else, in `pidfd` before clone3 returned in the parent.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Child { pidfd, pid: rc as u32 })
}

/// The fd number [`spawn_in_cgroup`] gives the child's `keep`.
pub const CHILD_FD: std::os::fd::RawFd = 3;

/// In a child started by [`spawn_in_cgroup`]: adopt fd [`CHILD_FD`] when it
/// is a socket (else `None`, and the fd is left alone).
///
/// # Safety
/// Call once, at start-up, before anything else could have opened or
/// adopted fd 3: the caller promises nobody else owns it.
pub unsafe fn take_child_fd() -> Option<OwnedFd> {
    // SAFETY: fstat reads no memory of ours but the stat buffer rustix
    // provides; borrowing the raw number is valid for this call, since the
    // caller promises fd 3 is either closed (fstat then says EBADF) or ours.
    let st = rustix::fs::fstat(unsafe { BorrowedFd::borrow_raw(CHILD_FD) }).ok()?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
        return None;
    }
    // SAFETY: the fd is open (fstat succeeded) and, by the caller's promise,
    // owned by nobody else: adopting it makes its OwnedFd the only owner.
    Some(unsafe { OwnedFd::from_raw_fd(CHILD_FD) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// The cgroup2 mount point; in the test VM (whose init mounts none)
    /// cgroup2 is mounted at /sys/fs/cgroup first.
    fn cgroup2_mount() -> Option<String> {
        let find = || {
            let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
            info.lines().find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                (right.split_whitespace().next()? == "cgroup2")
                    .then(|| left.split_whitespace().nth(4))?
                    .map(str::to_owned)
            })
        };
        if find().is_none() && crate::test_skip::in_vm() {
            let _ = std::process::Command::new("mount").args(["-t", "cgroup2", "none", "/sys/fs/cgroup"]).status();
        }
        find()
    }

    /// The child runs the program in the cgroup asked (here this process's
    /// own), gets `keep` as fd 3, and its exit status comes through the pidfd.
    #[test]
    fn a_program_starts_in_the_cgroup_with_fd_3() {
        let test = "a_program_starts_in_the_cgroup_with_fd_3";
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned) else {
            crate::test_skip::skip(test, "no cgroup v2 entry in /proc/self/cgroup");
            return;
        };
        let Some(root) = cgroup2_mount() else {
            crate::test_skip::skip(test, "cgroup2 is not mounted (a hybrid or v1-only host)");
            return;
        };
        let dir = format!("{root}{}", path.trim_end_matches('/'));
        let cgroup = rustix::fs::open(
            dir.as_str(),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap_or_else(|e| panic!("{dir}: {e}"));
        let exe: OwnedFd = std::fs::File::open("/bin/sh").unwrap().into();
        let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        // fd 3 is a socket (`test -S`), and the cgroup is ours.
        let script = format!("test -S /proc/self/fd/3 && grep -qx '0::{path}' /proc/self/cgroup && exit 7; exit 1");
        let argv = [CString::new("sh").unwrap(), CString::new("-c").unwrap(), CString::new(script).unwrap()];
        let child = match spawn_in_cgroup(exe.as_fd(), &argv, cgroup.as_fd(), theirs.as_fd()) {
            Ok(c) => c,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM | libc::EBUSY)) => {
                crate::test_skip::skip(test, &format!("may not place a process in {dir}: {e}"));
                return;
            }
            Err(e) => panic!("clone3: {e}"),
        };
        drop((theirs, mine));
        let status = rustix::process::waitid(
            rustix::process::WaitId::PidFd(child.pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        )
        .unwrap()
        .unwrap();
        assert_eq!(status.exit_status(), Some(7), "the child did not see fd 3 or its cgroup");
    }
}
