//! Who a consumer is: its credentials, and the pidfd that tells when it dies.

use crate::pool::timespec;
use std::os::fd::OwnedFd;
use std::time::Duration;

/// What `SO_PEERCRED` said about a consumer's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PeerCred {
    pub(super) pid: u32,
    pub(super) uid: u32,
}

/// Which process to watch for a consumer, and its pidfd: see the module
/// docs' [consumer identity](super#consumer-identity).
pub(super) fn watch_consumer(creds: Option<PeerCred>, hello_pid: Option<u32>) -> (u32, Option<OwnedFd>) {
    let open = |pid: u32| {
        // A HELLO pid of 2^31 or more is no process (and `pid as i32` would
        // be negative, which `Pid::from_raw` asserts against).
        i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
    };
    let Some(creds) = creds else {
        // Not a Unix socket peer we can identify: the socket alone tells.
        return (0, None);
    };
    let Some(claimed) = hello_pid else { return (creds.pid, open(creds.pid)) };
    // The process that connected (or its pid inside a nested pid namespace:
    // the consumer reports getpid() as it sees it).
    if claimed == creds.pid || proc_status(creds.pid, "NSpid:").and_then(|v| v.last().copied()) == Some(claimed) {
        return (creds.pid, open(creds.pid));
    }
    // A socket made by someone else (a launcher's socketpair): trust the
    // claim only for a process of the same user. Open the pidfd first, read
    // the uid, then check the pidfd has not fired: a process that has not
    // exited still owns its pid, so the uid read was that process's.
    let Some(pidfd) = open(claimed) else {
        tracing::debug!(claimed, "pool consumer's HELLO pid names no process: watching its socket only");
        return (creds.pid, None);
    };
    let euid = proc_status(claimed, "Uid:").and_then(|v| v.get(1).copied());
    if euid == Some(creds.uid) && !pidfd_fired(&pidfd) {
        return (claimed, Some(pidfd));
    }
    tracing::warn!(
        claimed,
        peer_pid = creds.pid,
        peer_uid = creds.uid,
        "pool consumer's HELLO pid is another user's process: watching its socket only"
    );
    (creds.pid, None)
}

/// The numbers of one line of `/proc/<pid>/status` (`Uid:`, `NSpid:`).
pub(super) fn proc_status(pid: u32, key: &str) -> Option<Vec<u32>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix(key))?;
    line.split_whitespace().map(|w| w.parse().ok()).collect()
}

/// True when the process behind `pidfd` has exited.
pub(super) fn pidfd_fired(pidfd: &OwnedFd) -> bool {
    use rustix::event::{PollFd, PollFlags};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    rustix::event::poll(&mut fds, Some(&timespec(Duration::ZERO))).map_or(true, |n| n > 0)
}
