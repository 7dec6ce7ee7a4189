//! `sd_notify(3)` without libsystemd: `READY=1`, `STOPPING=1`, and the fd
//! store (`FDSTORE=1`, `FDSTOREREMOVE=1`) that keeps published buffers alive
//! across a broker restart.
//!
//! The service manager's socket is `$NOTIFY_SOCKET`, a datagram socket given
//! by path or, with a leading `@`, in the abstract namespace. Messages are
//! newline-separated `KEY=VALUE` assignments; an fd rides along with
//! `SCM_RIGHTS`. Stored fds come back at the next start in `LISTEN_FDS`, named
//! by `LISTEN_FDNAMES` (see [`dmabroker_sys::inherited`]).

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// A connection to the service manager.
#[derive(Debug)]
pub struct Notifier {
    socket: OwnedFd,
    addr: SocketAddrUnix,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; `None` when unset (not run by a service manager).
    /// The variable is removed so that children do not talk to the manager.
    pub fn from_env() -> Option<Self> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        std::env::remove_var("NOTIFY_SOCKET");
        let bytes = path.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddrUnix::new_abstract_name(name).ok()?,
            None => SocketAddrUnix::new(std::path::Path::new(&path)).ok()?,
        };
        let socket =
            rustix::net::socket_with(AddressFamily::UNIX, SocketType::DGRAM, SocketFlags::CLOEXEC, None).ok()?;
        Some(Self { socket, addr })
    }

    /// Send `state` (e.g. `READY=1`), with an fd when given.
    ///
    /// # Errors
    /// The `sendmsg` errno (the manager is gone, or refused the fd).
    pub fn notify(&self, state: &str, fd: Option<BorrowedFd<'_>>) -> rustix::io::Result<()> {
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            control.push(SendAncillaryMessage::ScmRights(&fds));
        }
        // Never block the event loop on the manager: its datagram queue is
        // short (net.unix.max_dgram_qlen, 10 by default), so retry for up to
        // a second while it drains, then give up.
        for _ in 0..100 {
            match rustix::net::sendmsg_addr(
                &self.socket,
                &self.addr,
                &[IoSlice::new(state.as_bytes())],
                &mut control,
                SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
            ) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::AGAIN) => std::thread::sleep(std::time::Duration::from_millis(10)),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e),
            }
        }
        Err(rustix::io::Errno::AGAIN)
    }

    /// Store `fd` under `name` (`FDSTORE=1`, `FDPOLL=0` so that the manager
    /// does not drop a buffer whose poll says "hang-up").
    ///
    /// # Errors
    /// As [`Notifier::notify`].
    pub fn store(&self, name: &str, fd: &impl AsFd) -> rustix::io::Result<()> {
        self.notify(&format!("FDSTORE=1\nFDNAME={name}\nFDPOLL=0"), Some(fd.as_fd()))
    }

    /// Drop the stored fds named `name`.
    ///
    /// # Errors
    /// As [`Notifier::notify`].
    pub fn remove(&self, name: &str) -> rustix::io::Result<()> {
        self.notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), None)
    }
}
