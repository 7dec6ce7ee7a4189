//! The broker's handle on one allocation worker: start it in a cgroup, ask
//! it for one buffer with a bounded wait, end it.

use super::work::{self, WorkReply, WorkRequest};
use dmabroker::proto::wire;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// One worker process, living in one cgroup.
#[derive(Debug)]
pub struct Worker {
    /// Its pidfd.
    pub pidfd: OwnedFd,
    /// Its pid (logs, tests).
    pub pid: u32,
    socket: OwnedFd,
    /// When it last answered.
    pub last_used: Instant,
}

/// Why a worker gave no buffer.
#[derive(Debug)]
pub enum Failure {
    /// It answered with a refusal.
    Refused(WorkReply),
    /// No answer within the time (a frozen cgroup, a stopped worker): it is
    /// killed.
    Timeout(Duration),
    /// It died, or sent something unreadable.
    Died(String),
}

impl Worker {
    /// Start `dmabroker charge-worker` (the executable `exe`) in the cgroup
    /// `path` of the mount `root`.
    ///
    /// # Errors
    /// Opening the cgroup directory, the socket pair, `clone3`.
    pub fn spawn(exe: &OwnedFd, root: &Path, path: &str) -> std::io::Result<Self> {
        let dir = super::cgroup::dir(root, path);
        let cgroup = rustix::fs::open(
            &dir,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let (mine, theirs) =
            rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
        let cstr = |s: &str| CString::new(s).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput));
        let argv = [
            cstr("dmabroker")?,
            cstr("charge-worker")?,
            cstr("--cgroup-root")?,
            CString::new(root.as_os_str().as_encoded_bytes())
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?,
            cstr("--cgroup")?,
            cstr(path)?,
        ];
        let child = dmabroker_sys::spawn::spawn_in_cgroup(exe.as_fd(), &argv, cgroup.as_fd(), theirs.as_fd())?;
        drop(theirs);
        Ok(Self { pidfd: child.pidfd, pid: child.pid, socket: mine, last_used: Instant::now() })
    }

    /// Ask for one buffer and wait at most `timeout` for the answer.
    pub fn allocate(
        &mut self,
        request: &WorkRequest,
        timeout: Duration,
    ) -> Result<(OwnedFd, u64, dmabroker::buffer::PropertyHint), Failure> {
        match wire::send(self.socket.as_fd(), &work::encode(request), None, true) {
            Ok(()) => {}
            Err(e) => return Err(Failure::Died(format!("cannot send it the request: {e}"))),
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.kill();
                return Err(Failure::Timeout(timeout));
            }
            let ts = rustix::time::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) };
            let mut fds = [PollFd::new(&self.socket, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => break,
                Err(e) => return Err(Failure::Died(format!("poll: {e}"))),
            }
        }
        let mut buf = vec![0u8; work::MAX_MESSAGE];
        let received = match wire::recv(self.socket.as_fd(), &mut buf, true) {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Failure::Died("it exited".into())),
            Err(e) => return Err(Failure::Died(format!("recv: {e}"))),
        };
        let mut fds = received.fds;
        match work::decode::<WorkReply>(&buf[..received.len]) {
            Some(WorkReply::Allocated { len, hint }) if fds.len() == 1 => {
                self.last_used = Instant::now();
                Ok((fds.remove(0), len, hint))
            }
            Some(reply @ (WorkReply::OverLimit { .. } | WorkReply::Failed { .. })) => {
                self.last_used = Instant::now();
                Err(Failure::Refused(reply))
            }
            _ => Err(Failure::Died("it sent a malformed reply".into())),
        }
    }

    /// Send it `SIGKILL` (through the pidfd: never another process).
    pub fn kill(&self) {
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL);
    }

    /// End it: closing the socket makes it exit; the pidfd stays for the
    /// reaping.
    pub fn retire(self) -> OwnedFd {
        drop(self.socket);
        self.pidfd
    }
}

/// Whether the child of `pidfd` has exited, reaping it if so (`ECHILD`: it
/// was reaped already, e.g. `SIGCHLD` ignored).
pub fn reap(pidfd: &OwnedFd) -> bool {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    match waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED | WaitIdOptions::NOHANG) {
        Ok(Some(_)) => true,
        Ok(None) => false,
        Err(rustix::io::Errno::INTR) => false,
        Err(_) => true,
    }
}
