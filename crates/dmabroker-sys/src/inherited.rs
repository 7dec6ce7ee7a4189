//! File descriptors inherited from a service manager (`LISTEN_FDS`,
//! `sd_listen_fds(3)`): the listening socket of socket activation and the
//! buffers stored in the fd store (`FDSTORE=1`).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// `SD_LISTEN_FDS_START`: inherited fds start at 3.
pub const LISTEN_FDS_START: RawFd = 3;

/// One inherited descriptor and its `LISTEN_FDNAMES` entry.
#[derive(Debug)]
pub struct InheritedFd {
    /// The descriptor, now owned (and marked close-on-exec).
    pub fd: OwnedFd,
    /// Its name, `"unknown"` when the manager gave none.
    pub name: String,
}

/// Take the descriptors passed with `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES`
/// when `LISTEN_PID` names this process, and unset those variables so that
/// children do not inherit them. Returns an empty list otherwise.
///
/// Each returned fd is adopted as owned. Only the first call in a process
/// adopts anything; later calls return an empty list.
///
/// # Safety
/// The numbers `3..3+LISTEN_FDS` must belong to nobody else in this
/// process: no other code may already own them (as an `OwnedFd`, `File`, a
/// C library's handle) or close them later, or two owners would close one
/// descriptor and the second close could hit an unrelated file. Call it
/// early in `main`, before any code that could adopt or close inherited
/// descriptors. It also removes `LISTEN_*` from the environment: no other
/// thread may read or write the environment during the call (in practice:
/// call it while the process has one thread).
pub unsafe fn take_listen_fds() -> Vec<InheritedFd> {
    // The environment alone cannot guarantee a single adoption: any code may
    // set LISTEN_FDS again (std::env::set_var is safe in edition 2021), and a
    // second adoption of the same numbers would make two OwnedFds close one
    // fd. This flag makes "first call only" hold for the whole process.
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Vec::new();
    }
    let pid_ok =
        std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()).is_some_and(|p| p == std::process::id());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<i32>().ok());
    let names: Vec<String> =
        std::env::var("LISTEN_FDNAMES").map(|v| v.split(':').map(str::to_owned).collect()).unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // Single-threaded start-up is this function's documented contract.
        std::env::remove_var(var);
    }
    let Some(count) = count.filter(|n| pid_ok && (0..=65536).contains(n)) else {
        return Vec::new();
    };
    (0..count)
        .filter_map(|i| {
            let raw = LISTEN_FDS_START + i;
            // Skip numbers that are not open (a manager that lied): fcntl fails.
            rustix::io::fcntl_getfd(
                // SAFETY: borrowing a raw number only for this fcntl probe; it is
                // not closed or stored.
                unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) },
            )
            .ok()?;
            // SAFETY: the service manager passed `raw` to this process for it to
            // own (sd_listen_fds contract); nothing else in this process owns it
            // (this fn's caller's promise), and the TAKEN flag above lets only
            // the first call get here.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
            let name = names.get(i as usize).cloned().unwrap_or_else(|| "unknown".into());
            Some(InheritedFd { fd, name })
        })
        .collect()
}
