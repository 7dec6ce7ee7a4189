//! Who is on the other end of a connection.
//!
//! `SO_PEERCRED` gives the uid, gid and pid the kernel recorded when the
//! client called `connect()`: the uid is the identity every decision uses,
//! and the client cannot forge it. `SO_PEERGROUPS` gives the supplementary
//! groups recorded at the same moment. The pid is only a number that could be
//! recycled once the client exits, so the broker opens a pidfd right away and
//! keeps it only after checking through it that the process is still alive
//! with the same uid.
//!
//! Kernels before 4.13 lack `SO_PEERGROUPS`; there the groups are read from
//! `/proc/PID/status` and trusted only when the pidfd check passes (a pid
//! number is reused only after its process has exited, which makes the pidfd
//! readable). Otherwise only the primary gid is trusted.

use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{pidfd_open, PidfdFlags};
use std::os::fd::{AsFd, OwnedFd};

/// A verified peer.
#[derive(Debug)]
pub struct Peer {
    /// User id (from the kernel at connect time).
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Process id at connect time; 0 when the client's process is not
    /// visible in the broker's pid namespace.
    pub pid: u32,
    /// Primary and supplementary groups.
    pub groups: Vec<u32>,
    /// A pidfd of the process, when it could be opened and verified.
    pub pidfd: Option<OwnedFd>,
}

/// Read `SO_PEERCRED` and pin the process with a pidfd.
///
/// # Errors
/// The `getsockopt` errno (the socket is not a connected Unix socket).
pub fn identify(socket: &impl AsFd) -> rustix::io::Result<Peer> {
    let (pid, uid, gid) = dmabroker_sys::socket::peer_cred(socket)?;
    let mut peer = Peer { uid, gid, pid, groups: vec![gid], pidfd: None };
    let recorded_groups = dmabroker_sys::socket::peer_groups(socket).ok();
    if let Some(groups) = &recorded_groups {
        peer.groups.extend(groups.iter().copied().filter(|g| *g != gid));
    }
    // pid 0: the client's process is outside the broker's pid namespace
    // (the broker runs in a child namespace). uid and groups come from the
    // kernel all the same, so it is served by them, without a pidfd.
    let Some(process) = rustix::process::Pid::from_raw(pid as i32) else {
        tracing::debug!(uid, "client outside the broker's pid namespace (pid 0): served by uid, without a pidfd");
        return Ok(peer);
    };
    // ESRCH: the client already exited; it gets served (its uid is still
    // right) but without a pidfd (and, on old kernels, with its primary group only).
    let Ok(pidfd) = pidfd_open(process, PidfdFlags::empty()) else { return Ok(peer) };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let alive = {
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        // A pidfd polls readable once its process has exited.
        matches!(poll(&mut fds, Some(&rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(0))
    };
    let status_uid = field(&status, "Uid:").and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok());
    if alive && status_uid == Some(uid) {
        if recorded_groups.is_none() {
            if let Some(groups) = field(&status, "Groups:") {
                peer.groups
                    .extend(groups.split_whitespace().filter_map(|g| g.parse::<u32>().ok()).filter(|g| *g != gid));
            }
        }
        peer.pidfd = Some(pidfd);
    }
    Ok(peer)
}

fn field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
}
