//! Datagrams with file descriptors over `SOCK_SEQPACKET`: `sendmsg`/`recvmsg`
//! with `SCM_RIGHTS`, for both the client and the broker.
//!
//! Receiving reserves control space for [`RECV_FD_SLOTS`] descriptors, the
//! most one message can carry (`SCM_MAX_FD`), so that a peer sending too
//! many is seen and the kernel never closes a surplus itself: such a close
//! would run the file's release (a lingering socket, a FUSE file) in the
//! receiver's thread. The receiver hands what it does not keep to
//! [`crate::closer`].

use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Control-message space reserved when receiving, in descriptors.
pub const RECV_FD_SLOTS: usize = 253;

/// One received datagram.
#[derive(Debug)]
pub struct Received {
    /// Bytes received into the caller's buffer (never more than its length).
    pub len: usize,
    /// The datagram was longer than the buffer (`MSG_TRUNC`): it was cut.
    pub truncated: bool,
    /// Descriptors were dropped for lack of control space (`MSG_CTRUNC`).
    pub control_truncated: bool,
    /// The descriptors that came with it (owned: closed when dropped).
    pub fds: Vec<OwnedFd>,
}

/// `recvmsg(MSG_CMSG_CLOEXEC | MSG_TRUNC)`: receive one datagram and its fds.
/// `Ok(None)` means the peer closed the connection (or shut down its
/// sending side); an empty datagram from a peer still connected comes back
/// with `len` 0.
///
/// # Errors
/// `EAGAIN` on a non-blocking socket with nothing queued; other socket errors.
pub fn recv(socket: BorrowedFd<'_>, buf: &mut [u8], nonblocking: bool) -> Result<Option<Received>, Errno> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(RECV_FD_SLOTS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut flags = RecvFlags::CMSG_CLOEXEC | RecvFlags::TRUNC;
    if nonblocking {
        flags |= RecvFlags::DONTWAIT;
    }
    let msg = loop {
        match rustix::net::recvmsg(socket, &mut [IoSliceMut::new(buf)], &mut control, flags) {
            Err(Errno::INTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    // SEQPACKET returns 0 bytes both at the end of the stream and for an
    // empty datagram. At the end the peer has shut down (closed, or
    // shutdown(SHUT_WR)), which poll reports as POLLRDHUP; an empty datagram
    // from a peer still connected is returned as one (`len` 0), so that the
    // broker can answer it with an error.
    if msg.bytes == 0 && fds.is_empty() && peer_shut_down(socket) {
        return Ok(None);
    }
    Ok(Some(Received {
        len: msg.bytes.min(buf.len()),
        truncated: msg.flags.contains(ReturnFlags::TRUNC) || msg.bytes > buf.len(),
        control_truncated: msg.flags.contains(ReturnFlags::CTRUNC),
        fds,
    }))
}

/// Whether the peer of a connected socket has shut down its sending side
/// (closed, or `shutdown(SHUT_WR)`): `POLLRDHUP`/`POLLHUP` without waiting.
fn peer_shut_down(socket: BorrowedFd<'_>) -> bool {
    use rustix::event::{PollFd, PollFlags};
    let mut fds = [PollFd::new(&socket, PollFlags::RDHUP)];
    let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
    match rustix::event::poll(&mut fds, Some(&zero)) {
        Ok(_) => fds[0].revents().intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
        // Cannot tell: the end of the stream is the safe reading.
        Err(_) => true,
    }
}

/// `sendmsg(MSG_NOSIGNAL)`: send one datagram, with an fd when given.
///
/// # Errors
/// `EAGAIN` when non-blocking and the peer's queue is full; `EPIPE` when the
/// peer is gone; `EMSGSIZE` for a datagram beyond the socket's limit.
pub fn send(socket: BorrowedFd<'_>, bytes: &[u8], fd: Option<BorrowedFd<'_>>, nonblocking: bool) -> Result<(), Errno> {
    let mut flags = SendFlags::NOSIGNAL;
    if nonblocking {
        flags |= SendFlags::DONTWAIT;
    }
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(Errno::NOBUFS);
    }
    loop {
        match rustix::net::sendmsg(socket, &[IoSlice::new(bytes)], &mut control, flags) {
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
            // A datagram is sent whole or not at all.
            Ok(_) => return Ok(()),
        }
    }
}

/// Convenience for `AsFd` holders.
pub fn send_to(socket: &impl AsFd, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> Result<(), Errno> {
    send(socket.as_fd(), bytes, fd, false)
}
