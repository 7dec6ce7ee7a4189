//! The attach transport: a `SOCK_SEQPACKET` Unix socket per consumer.
//!
//! File descriptors cross only here, once per consumer, at attach time:
//!
//! ```text
//! consumer -> producer  HELLO    magic, version, flags (want sync_files), pid (getpid())
//! producer -> consumer  WELCOME  magic, version, slot, geometry, control length
//!                                + SCM_RIGHTS [control memfd, buffer 0 .. buffer N-1]
//!                   or  REFUSED  magic, version, reason (1 full, 2 closed, 3 busy)
//! producer -> consumer  SYNC     magic, seq + SCM_RIGHTS [sync_file]   (only when asked)
//! ```
//!
//! A SYNC's sync_file is exported from the buffer (`FrameMeta::sync_file`)
//! or the producer's own fence (`WriteSlot::submit_with_fence`); the wire
//! is the same for both (consumers need not tell them apart: each is a
//! fence to wait on), so peers that predate the producer's fences work.
//!
//! Version 2 (this one) added the HELLO's pid and the WELCOME's control
//! length; peers of another version are refused at the first message.
//!
//! After the handshake the socket carries nothing per frame (except the
//! optional sync_files); it stays open because its hang-up is how each side
//! learns that the other died. The socket can come from anywhere: a
//! [`PoolListener`] on a path, [`socket_pair`] in one process, or (later) the
//! broker handing a connected socket to both sides.

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::layout::{MAGIC, MAX_BUFFERS, VERSION};

pub(crate) const MSG_HELLO: u32 = 1;
pub(crate) const MSG_WELCOME: u32 = 2;
pub(crate) const MSG_REFUSED: u32 = 3;
pub(crate) const MSG_SYNC: u32 = 4;

/// HELLO flag: send a sync_file with each frame whose producer asked for one.
pub(crate) const HELLO_WANT_SYNC_FILES: u32 = 1;
/// HELLO flag: append the buffers' physical properties to the WELCOME
/// (contiguous_up_to, cache: 0 cached / 1 uncached, coherency: 0 coherent /
/// 1 non-coherent). A producer that does not know the flag sends the plain
/// 7-word WELCOME, and a consumer that does not set it gets that.
pub(crate) const HELLO_WANT_PROPERTIES: u32 = 2;

/// REFUSED reasons.
pub(crate) const REFUSED_FULL: u32 = 1;
pub(crate) const REFUSED_CLOSED: u32 = 2;
/// Too many connections of the consumer's uid (or in all) are waiting to
/// attach (see the producer's door). Consumers that predate it read it as full.
pub(crate) const REFUSED_BUSY: u32 = 3;

/// Largest message: a WELCOME with the property words (8 + 10 x 8 bytes).
pub(crate) const MAX_MSG: usize = 88;
/// Most fds in one message: the control block plus every buffer.
pub(crate) const MAX_FDS: usize = MAX_BUFFERS as usize + 1;
/// Control space reserved when receiving: `SCM_MAX_FD`, the most the kernel
/// lets one message carry.
const RECV_FD_SLOTS: usize = 253;

/// Why the pool's socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// Another live pool (or program) listens on the path.
    #[error("{0} is in use by a running process: choose another path or stop it")]
    AddressInUse(PathBuf),
    /// The path is too long for a Unix socket address (108 bytes).
    #[error("socket path {0} is too long (108 bytes at most): use a shorter directory")]
    PathTooLong(PathBuf),
    /// The directory is not writable.
    #[error("permission denied creating {0}")]
    PermissionDenied(PathBuf),
    /// Another error from socket/bind/listen.
    #[error("{op} on {path} failed: {source}")]
    Os {
        /// The call.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Something other than a socket is at the path (a regular file, a
    /// FIFO, a directory, a symbolic link...). It is never replaced: only a
    /// stale socket left by a dead producer is.
    #[error("{path} is {what}, not a socket: choose another path (only a stale pool socket is ever replaced)")]
    NotASocket {
        /// The path.
        path: PathBuf,
        /// What is there: `a directory`, `a regular file`, `a FIFO`, ...
        what: &'static str,
    },
    /// The path cannot name a socket file: it is empty (binding it would
    /// autobind an abstract address no consumer could find) or holds a NUL byte.
    #[error("invalid pool socket path {path:?}: {reason}")]
    InvalidPath {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
}

/// A `SOCK_SEQPACKET` socket bound to a path, where consumers connect.
/// Non-blocking: the producer accepts between frames. The path is removed on
/// drop, but only while it is still the socket this listener created (same
/// device and inode as at bind): a file someone put there since is left alone.
///
/// For its whole life it holds an exclusive `flock` on `<path>.lock` (taken
/// before the socket is bound, removed on drop), so two dmabroker producers
/// never race for one path: the second is refused
/// ([`ListenError::AddressInUse`]) also in the instant where the first has
/// bound its socket but not yet called `listen`.
#[derive(Debug)]
pub struct PoolListener {
    fd: OwnedFd,
    path: PathBuf,
    /// `(st_dev, st_ino)` of the socket file as bound.
    identity: Option<(u64, u64)>,
    /// Dropped last: the socket file goes while the lock is still held.
    _lock: PathLock,
}

/// An exclusive `flock` on a lock file, removed (while still locked) on drop.
/// Pools and the broker hold one on `<socket>.lock` before they bind, so
/// that two servers started at once never both think a path is theirs.
#[derive(Debug)]
pub struct PathLock {
    fd: OwnedFd,
    path: PathBuf,
}

impl PathLock {
    /// Lock `<socket>.lock` without waiting. `Ok(None)`: another process holds it.
    ///
    /// # Errors
    /// [`ListenError::PermissionDenied`] when the lock file cannot be
    /// created; [`ListenError::Os`] for other failures.
    pub fn take(socket: &Path) -> Result<Option<Self>, ListenError> {
        use rustix::fs::{FlockOperation, Mode, OFlags};
        let mut name = socket.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let os = |op, source| ListenError::Os { op, path: path.clone(), source };
        loop {
            let flags = OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW;
            let fd = match rustix::fs::open(&path, flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => fd,
                Err(Errno::ACCESS | Errno::PERM) => return Err(ListenError::PermissionDenied(path)),
                Err(e) => return Err(os("open", e)),
            };
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => return Ok(None),
                Err(e) => return Err(os("flock", e)),
            }
            // The holder before us may have removed the file after we
            // opened it: then we locked a file nobody else will; retry.
            let ours = rustix::fs::fstat(&fd).map_err(|e| os("fstat", e))?;
            match rustix::fs::lstat(&path) {
                Ok(now) if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino) => {
                    return Ok(Some(Self { fd, path }))
                }
                Ok(_) | Err(Errno::NOENT) => continue,
                Err(e) => return Err(os("lstat", e)),
            }
        }
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        // Removed while locked; a process that opened it meanwhile finds it
        // unlinked after locking and retries (see `take`).
        if let (Ok(ours), Ok(now)) = (rustix::fs::fstat(&self.fd), rustix::fs::lstat(&self.path)) {
            if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino) {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// `(st_dev, st_ino)` of the socket file at `path` (`lstat`: a symbolic
/// link is not followed), `None` when there is none.
fn socket_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.file_type().is_socket().then(|| (meta.dev(), meta.ino()))
}

impl PoolListener {
    /// `socket(AF_UNIX, SOCK_SEQPACKET)` + `bind(path)` + `listen`. A stale
    /// socket file left by a dead producer (`lstat` says socket, and
    /// connecting to it is refused) is replaced; nothing else ever is.
    ///
    /// Another dmabroker producer's socket is never replaced: it holds
    /// `<path>.lock` (see [`PoolListener`]). A live socket of another type
    /// (stream, datagram) answers the probe with `EPROTOTYPE` and is kept.
    /// What a probe cannot tell: a `SOCK_SEQPACKET` socket of some other
    /// program that is bound but not yet listening refuses connections like
    /// a stale one, and is replaced.
    ///
    /// # Errors
    /// [`ListenError::AddressInUse`] when a live process listens there (or
    /// another dmabroker producer holds the path's lock file, or a live
    /// socket of another type is there);
    /// [`ListenError::NotASocket`] when a regular file, FIFO, directory,
    /// symbolic link... is at the path; [`ListenError::InvalidPath`] for an
    /// empty path or one with a NUL byte; [`ListenError::PathTooLong`].
    pub fn bind(path: impl AsRef<Path>) -> Result<Self, ListenError> {
        use std::os::unix::ffi::OsStrExt;
        let path = path.as_ref().to_path_buf();
        let invalid = |reason| ListenError::InvalidPath { path: path.clone(), reason };
        if path.as_os_str().is_empty() {
            return Err(invalid("the path is empty (an unnamed socket would get an abstract address)"));
        }
        if path.as_os_str().as_bytes().contains(&0) {
            return Err(invalid("the path contains a NUL byte"));
        }
        let addr = SocketAddrUnix::new(path.as_path()).map_err(|_| ListenError::PathTooLong(path.clone()))?;
        let os = |op, source| ListenError::Os { op, path: path.clone(), source };
        // Refused before any lock file is made next to it (a directory's
        // lock would land in its parent).
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
                return Err(ListenError::NotASocket { path, what: crate::file_kind::of_metadata(&meta) });
            }
        }
        let Some(lock) = PathLock::take(&path)? else {
            return Err(ListenError::AddressInUse(path));
        };
        let fd = seqpacket_socket(SocketFlags::NONBLOCK).map_err(|e| os("socket", e))?;
        match rustix::net::bind(&fd, &addr) {
            Ok(()) => {}
            Err(Errno::ADDRINUSE) => {
                Self::replace_stale(&path)?;
                rustix::net::bind(&fd, &addr).map_err(|e| match e {
                    // Someone else bound it since: they are alive.
                    Errno::ADDRINUSE => ListenError::AddressInUse(path.clone()),
                    e => os("bind", e),
                })?;
            }
            Err(Errno::ACCESS | Errno::PERM) => return Err(ListenError::PermissionDenied(path)),
            Err(e) => return Err(os("bind", e)),
        }
        // Recorded before anything else can happen to the path: on drop,
        // only this very file is removed.
        let identity = socket_identity(&path);
        if let Err(source) = rustix::net::listen(&fd, 64) {
            // Dropped as a listener, so the file we just bound goes too.
            drop(Self { fd, path: path.clone(), identity, _lock: lock });
            return Err(os("listen", source));
        }
        Ok(Self { fd, path, identity, _lock: lock })
    }

    /// `bind` said EADDRINUSE: remove the file at `path` if it is a socket
    /// nobody listens on; refuse anything else.
    fn replace_stale(path: &Path) -> Result<(), ListenError> {
        use std::os::unix::fs::MetadataExt;
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            // Gone in the meantime: bind again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                let source = Errno::from_io_error(&e).unwrap_or(Errno::IO);
                return Err(ListenError::Os { op: "lstat", path: path.to_path_buf(), source });
            }
        };
        let ft = meta.file_type();
        if !std::os::unix::fs::FileTypeExt::is_socket(&ft) {
            return Err(ListenError::NotASocket {
                path: path.to_path_buf(),
                what: crate::file_kind::of_metadata(&meta),
            });
        }
        match connect(path) {
            // Only a socket whose connect is refused is stale.
            Err(Errno::CONNREFUSED) => {}
            Err(Errno::ACCESS | Errno::PERM) => return Err(ListenError::PermissionDenied(path.to_path_buf())),
            Err(Errno::NOENT) => return Ok(()),
            // Listening (or its backlog is full, EAGAIN: alive too), or a
            // live socket of another type (EPROTOTYPE: stream, datagram).
            Ok(_) | Err(Errno::AGAIN | Errno::PROTOTYPE) => return Err(ListenError::AddressInUse(path.to_path_buf())),
            Err(source) => return Err(ListenError::Os { op: "connect", path: path.to_path_buf(), source }),
        }
        // Still the socket we probed (not one a new producer just bound)?
        if socket_identity(path) != Some((meta.dev(), meta.ino())) {
            return Err(ListenError::AddressInUse(path.to_path_buf()));
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                Err(ListenError::PermissionDenied(path.to_path_buf()))
            }
            Err(e) => {
                let source = Errno::from_io_error(&e).unwrap_or(Errno::IO);
                Err(ListenError::Os { op: "unlink", path: path.to_path_buf(), source })
            }
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accept one pending connection, if any (never blocks).
    pub(crate) fn try_accept(&self) -> Result<Option<OwnedFd>, Errno> {
        match rustix::net::accept_with(&self.fd, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::AGAIN | Errno::INTR | Errno::CONNABORTED) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Drop for PoolListener {
    fn drop(&mut self) {
        // Only the socket file we bound: a file someone replaced it with
        // (or a new producer's socket) stays.
        if self.identity.is_some() && socket_identity(&self.path) == self.identity {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl AsFd for PoolListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A connection that has not said HELLO after this long is dropped.
pub(crate) const HELLO_TIMEOUT_NS: u64 = 5_000_000_000;

/// Send `REFUSED(closed)` on a connection (never blocks).
pub(crate) fn refuse_closed(socket: BorrowedFd<'_>) {
    let _ = send(socket, &encode(&[u64::from(REFUSED_CLOSED)], MSG_REFUSED), &[], true);
}

/// Read and discard whatever the peer sent (its HELLO), without blocking:
/// a Unix socket closed with unread data resets its peer, which would then
/// miss the REFUSED queued for it. Returns `(open, read_any)`: `open` is
/// false once the peer hung up.
pub(crate) fn drain(socket: BorrowedFd<'_>) -> (bool, bool) {
    let mut read_any = false;
    // Bounded: a peer that keeps sending does not keep the producer here.
    for _ in 0..8 {
        match recv(socket, true) {
            Ok(Some((_, fds))) => {
                crate::closer::close_all_later(fds);
                read_any = true;
            }
            Err(Errno::MSGSIZE) => read_any = true,
            Err(Errno::AGAIN) => return (true, read_any),
            Ok(None) | Err(_) => return (false, read_any),
        }
    }
    (true, read_any)
}

fn seqpacket_socket(extra: SocketFlags) -> Result<OwnedFd, Errno> {
    rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC | extra, None)
}

/// Connect a blocking `SOCK_SEQPACKET` socket to a pool's path.
///
/// # Errors
/// `ENOENT`/`ECONNREFUSED` when no producer listens there.
pub fn connect(path: impl AsRef<Path>) -> Result<OwnedFd, Errno> {
    let addr = SocketAddrUnix::new(path.as_ref()).map_err(|_| Errno::NAMETOOLONG)?;
    let fd = seqpacket_socket(SocketFlags::empty())?;
    rustix::net::connect(&fd, &addr)?;
    Ok(fd)
}

/// A connected `SOCK_SEQPACKET` pair: one end for [`super::Producer::attach`],
/// the other for [`super::Consumer::attach`] (tests, threads, or a broker
/// that introduces both sides).
///
/// # Errors
/// `EMFILE` when out of file descriptors.
pub fn socket_pair() -> Result<(OwnedFd, OwnedFd), Errno> {
    rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
}

/// Little-endian message words.
pub(crate) fn encode(words: &[u64], kind: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + words.len() * 8);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(VERSION << 16 | kind).to_le_bytes());
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

/// A decoded message: its kind and payload words.
#[derive(Debug)]
pub(crate) struct Message {
    pub kind: u32,
    pub words: Vec<u64>,
    pub fds: Vec<OwnedFd>,
}

/// Why a message was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Not a dmabroker pool peer.
    BadMagic,
    /// A pool peer speaking another version.
    Version(u32),
    /// Truncated or misaligned.
    Malformed,
}

/// Decode a message; on error its fds go to [`crate::closer`] (they came
/// from the peer: closing one could block in its release).
pub(crate) fn decode(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<Message, DecodeError> {
    match decode_words(bytes) {
        Ok((kind, words)) => Ok(Message { kind, words, fds }),
        Err(e) => {
            crate::closer::close_all_later(fds);
            Err(e)
        }
    }
}

fn decode_words(bytes: &[u8]) -> Result<(u32, Vec<u64>), DecodeError> {
    if bytes.len() < 8 || (bytes.len() - 8) & 7 != 0 {
        return Err(DecodeError::Malformed);
    }
    let word32 = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    if word32(0) != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let vk = word32(4);
    if vk >> 16 != VERSION {
        return Err(DecodeError::Version(vk >> 16));
    }
    let words = bytes[8..]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    Ok((vk & 0xffff, words))
}

/// `sendmsg` one message with fds (`SCM_RIGHTS`).
pub(crate) fn send(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    nonblocking: bool,
) -> Result<(), Errno> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Errno::TOOMANYREFS);
    }
    let flags = if nonblocking { SendFlags::DONTWAIT | SendFlags::NOSIGNAL } else { SendFlags::NOSIGNAL };
    loop {
        match rustix::net::sendmsg(socket, &[IoSlice::new(bytes)], &mut control, flags) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(_) => return Err(Errno::MSGSIZE),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `recvmsg` one message, adopting any fds it carries (closed on every
/// error path because they are `OwnedFd`s from the first moment).
/// A received message's bytes and the fds that came with it.
pub(crate) type Received = (Vec<u8>, Vec<OwnedFd>);

pub(crate) fn recv(socket: BorrowedFd<'_>, nonblocking: bool) -> Result<Option<Received>, Errno> {
    let mut bytes = vec![0u8; MAX_MSG];
    // Room for the most a message can carry (SCM_MAX_FD), so that the kernel
    // never closes a surplus in this thread (see crate::closer).
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(RECV_FD_SLOTS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let flags = if nonblocking { RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC } else { RecvFlags::CMSG_CLOEXEC };
    let msg = loop {
        match rustix::net::recvmsg(socket, &mut [IoSliceMut::new(&mut bytes)], &mut control, flags) {
            Ok(m) => break m,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg.bytes == 0 {
        // SEQPACKET: a zero-length read is the peer's orderly hang-up.
        crate::closer::close_all_later(fds);
        return Ok(None);
    }
    if msg.flags.contains(rustix::net::ReturnFlags::TRUNC)
        || msg.flags.contains(rustix::net::ReturnFlags::CTRUNC)
        || fds.len() > MAX_FDS
    {
        crate::closer::close_all_later(fds);
        return Err(Errno::MSGSIZE);
    }
    bytes.truncate(msg.bytes);
    Ok(Some((bytes, fds)))
}

/// True when the peer of `socket` has hung up (`POLLHUP`), without blocking.
pub(crate) fn hung_up(socket: BorrowedFd<'_>) -> bool {
    use rustix::event::{PollFd, PollFlags};
    let mut fds = [PollFd::from_borrowed_fd(socket, PollFlags::RDHUP)];
    match rustix::event::poll(&mut fds, Some(&rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 })) {
        Ok(_) => fds[0].revents().intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let bytes = encode(&[1, u64::MAX], MSG_WELCOME);
        let m = decode(&bytes, Vec::new()).unwrap();
        assert_eq!(m.kind, MSG_WELCOME);
        assert_eq!(m.words, vec![1, u64::MAX]);
    }

    #[test]
    fn decode_rejects_garbage() {
        assert_eq!(decode(b"abc", Vec::new()).unwrap_err(), DecodeError::Malformed);
        assert_eq!(decode(b"XXXXXXXX", Vec::new()).unwrap_err(), DecodeError::BadMagic);
        let mut other = encode(&[], MSG_HELLO);
        other[6] = 9;
        assert_eq!(decode(&other, Vec::new()).unwrap_err(), DecodeError::Version(9));
        let mut odd = encode(&[1], MSG_HELLO);
        odd.pop();
        assert_eq!(decode(&odd, Vec::new()).unwrap_err(), DecodeError::Malformed);
    }
}
