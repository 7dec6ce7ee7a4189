//! Attaching: the handshake with the producer, and the checks every
//! buffer and the control block pass before the first frame.

use super::options::{ConsumerOptions, WaitMode};
use super::{Consumer, NEXT_ATTACHMENT};

use crate::buffer::{Buffer, BufferKind};
use crate::pool::error::{AttachError, AttachFd};
use crate::pool::layout::{Control, Geometry};
use crate::pool::now_ns;
use crate::pool::transport;
use dmabroker_sys::mmap::{AtomicMapping, MapError};
use rustix::io::Errno;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;

impl Consumer {
    /// Connect to a producer listening at `path` and attach.
    ///
    /// # Errors
    /// [`AttachError::NoProducer`] when nobody listens; see [`Consumer::attach`].
    pub fn connect(path: impl AsRef<Path>, wait: WaitMode) -> Result<Self, AttachError> {
        Self::connect_with(path, &ConsumerOptions { wait, ..ConsumerOptions::default() })
    }

    /// [`Consumer::connect`] with all options.
    ///
    /// # Errors
    /// See [`Consumer::connect`].
    pub fn connect_with(path: impl AsRef<Path>, options: &ConsumerOptions) -> Result<Self, AttachError> {
        let path = path.as_ref();
        let socket = transport::connect(path)
            .map_err(|source| AttachError::NoProducer { path: path.display().to_string(), source })?;
        Self::attach(socket, options)
    }

    /// Attach over a connected `SOCK_SEQPACKET` socket whose other end the
    /// producer got through [`crate::pool::Producer::attach`] or its listener.
    ///
    /// # Errors
    /// [`AttachError`]: refused (full, closed), protocol mismatch, an
    /// inconsistent welcome, no answer within `options.attach_timeout`.
    pub fn attach(socket: OwnedFd, options: &ConsumerOptions) -> Result<Self, AttachError> {
        let socket = crate::closer::CloseLater::connection(socket);
        let os = |op| move |source| AttachError::Os { op, source };
        rustix::net::sockopt::set_socket_timeout(
            &socket,
            rustix::net::sockopt::Timeout::Recv,
            Some(options.attach_timeout),
        )
        .map_err(os("SO_RCVTIMEO"))?;
        let flags = transport::HELLO_WANT_PROPERTIES
            | if options.want_sync_files { transport::HELLO_WANT_SYNC_FILES } else { 0 };
        // Our pid: the producer watches this process (not the one that made
        // the socket, e.g. a launcher's socketpair) once it checked the claim.
        let hello = [u64::from(flags), u64::from(std::process::id())];
        transport::send(socket.as_fd(), &transport::encode(&hello, transport::MSG_HELLO), &[], false).map_err(|e| {
            if e == Errno::PIPE || e == Errno::CONNRESET {
                AttachError::HungUp
            } else {
                AttachError::Os { op: "sendmsg", source: e }
            }
        })?;
        let (bytes, fds) = match transport::recv(socket.as_fd(), false) {
            Ok(Some(m)) => m,
            Ok(None) | Err(Errno::CONNRESET) => return Err(AttachError::HungUp),
            Err(Errno::AGAIN) => return Err(AttachError::Timeout(options.attach_timeout)),
            Err(Errno::MSGSIZE) => return Err(AttachError::Protocol("oversized message")),
            Err(e) => return Err(AttachError::Os { op: "recvmsg", source: e }),
        };
        let mut msg = transport::decode(&bytes, fds).map_err(|e| match e {
            transport::DecodeError::BadMagic => AttachError::Protocol("bad magic"),
            transport::DecodeError::Version(_) => AttachError::Protocol("version mismatch"),
            transport::DecodeError::Malformed => AttachError::Protocol("malformed message"),
        })?;
        // Before anything reaches the fds' file systems (seals, fstat,
        // mmap) or closes them here: each must be a memfd or a dma-buf, told
        // from fdinfo alone. A hostile producer's FUSE file would block the
        // first fstat (and the close) until its server answers.
        if !msg.fds.iter().all(|fd| crate::fdinfo::is_buffer_fd(fd.as_fd())) {
            crate::closer::close_all_later(std::mem::take(&mut msg.fds));
            return Err(AttachError::BadWelcome("an fd is neither a memfd nor a dma-buf"));
        }
        match msg.kind {
            transport::MSG_WELCOME => {}
            transport::MSG_REFUSED if msg.words.first() == Some(&u64::from(transport::REFUSED_CLOSED)) => {
                return Err(AttachError::Closed)
            }
            transport::MSG_REFUSED if msg.words.first() == Some(&u64::from(transport::REFUSED_BUSY)) => {
                return Err(AttachError::Busy)
            }
            transport::MSG_REFUSED => return Err(AttachError::PoolFull),
            _ => return Err(AttachError::Protocol("unexpected message")),
        }
        // 7 words, or 10 with the buffers' physical properties (a producer
        // that knows HELLO_WANT_PROPERTIES).
        let (geometry_words, hint) = match msg.words.len() {
            7 => (&msg.words[..], None),
            10 => (
                &msg.words[..7],
                Some(welcome_properties(&msg.words[7..]).ok_or(AttachError::BadWelcome("bad properties"))?),
            ),
            _ => return Err(AttachError::BadWelcome("wrong number of words")),
        };
        let [slot, nbuf, ring_cap, max_consumers, policy, buf_len, advertised_ctl_len] = geometry_words[..] else {
            return Err(AttachError::BadWelcome("wrong number of words"));
        };
        let bad = AttachError::BadWelcome;
        let small = |v: u64| u32::try_from(v).map_err(|_| bad("value out of range"));
        let welcome = Geometry {
            nbuf: small(nbuf)?,
            max_consumers: small(max_consumers)?,
            ring_cap: small(ring_cap)?,
            policy: small(policy)?,
            buf_len,
        };
        let slot = small(slot)?;
        let control_len = welcome.control_len().ok_or(bad("geometry out of range"))?;
        if slot >= welcome.max_consumers {
            return Err(bad("slot out of range"));
        }
        let mut fds = msg.fds.into_iter();
        let ctl_fd = fds.next().ok_or(bad("no control block fd"))?;
        let buffers: Vec<OwnedFd> = fds.collect();
        if buffers.len() != welcome.nbuf as usize {
            return Err(bad("fd count differs from the buffer count"));
        }
        // Sealed first, then sized: once F_SEAL_SHRINK|F_SEAL_GROW are set
        // nobody can remove them, so the size read after is final.
        let seals = rustix::fs::fcntl_get_seals(&ctl_fd).unwrap_or(rustix::fs::SealFlags::empty());
        if let Some(missing) = missing_size_seals(seals) {
            return Err(AttachError::Unsealed { fd: AttachFd::ControlBlock, missing });
        }
        let st = rustix::fs::fstat(&ctl_fd).map_err(os("fstat"))?;
        let size = st.st_size as u64;
        if size != advertised_ctl_len {
            return Err(AttachError::Length { fd: AttachFd::ControlBlock, len: size, expected: advertised_ctl_len });
        }
        let ctl_len = usize::try_from(size).map_err(|_| bad("control block size"))?;
        if ctl_len < control_len {
            return Err(bad("control block smaller than its geometry"));
        }
        let map = AtomicMapping::map(&ctl_fd, ctl_len, true).map_err(|e| match e {
            MapError::Os(source) => AttachError::Os { op: "mmap", source },
            // Checked above; a mapping refused anyway is the same refusal.
            _ => AttachError::Unsealed { fd: AttachFd::ControlBlock, missing: "F_SEAL_SHRINK" },
        })?;
        // The header must agree with what the socket said: two sources the
        // producer wrote, so a mismatch is a foreign or corrupted peer.
        if Control::read_header(&map) != Some(welcome) {
            return Err(bad("control block header differs from the welcome"));
        }
        let ctl = Control::new(map, welcome).ok_or(bad("control block smaller than its geometry"))?;
        let mut maps = Vec::with_capacity(buffers.len());
        for (index, fd) in buffers.into_iter().enumerate() {
            let buffer = match hint {
                Some(hint) => Buffer::from_fd_with(fd, hint),
                None => Buffer::from_fd(fd),
            }
            .map_err(|_| bad("an fd is not buffer memory"))?;
            check_buffer(&buffer, index, welcome.buf_len)?;
            maps.push(buffer.map_read().map_err(|source| AttachError::Map { index, source })?);
        }
        // The producer bumped the generation before sending the welcome we
        // just read (if it evicted us since, `recv` says so).
        let generation = ctl.slot_generation(slot).load(Ordering::Acquire);
        let attachment = NEXT_ATTACHMENT.fetch_add(1, Ordering::Relaxed);
        Ok(Self { ctl, socket, slot, maps, wait: options.wait, held: 0, last_health: now_ns(), generation, attachment })
    }
}

/// The size seals an fd lacks, or `None` when it has `F_SEAL_SHRINK` and
/// `F_SEAL_GROW` (a file that cannot be sealed has none).
/// The WELCOME's property words (see `transport::HELLO_WANT_PROPERTIES`).
pub(super) fn welcome_properties(words: &[u64]) -> Option<crate::buffer::PropertyHint> {
    use crate::buffer::{CacheMode, Coherency};
    let [contiguous_up_to, cache, coherency] = words[..] else { return None };
    Some(crate::buffer::PropertyHint {
        contiguous_up_to,
        cache: match cache {
            0 => CacheMode::Cached,
            1 => CacheMode::Uncached,
            _ => return None,
        },
        coherency: match coherency {
            0 => Coherency::Coherent,
            1 => Coherency::NonCoherent,
            _ => return None,
        },
    })
}

pub(super) fn missing_size_seals(seals: rustix::fs::SealFlags) -> Option<&'static str> {
    use rustix::fs::SealFlags as S;
    match (seals.contains(S::SHRINK), seals.contains(S::GROW)) {
        (true, true) => None,
        (false, true) => Some("F_SEAL_SHRINK"),
        (true, false) => Some("F_SEAL_GROW"),
        (false, false) => Some("F_SEAL_SHRINK and F_SEAL_GROW"),
    }
}

/// A received buffer is safe to map: its size cannot change (a dma-buf's
/// never does; a memfd needs both size seals) and it holds a whole frame.
pub(super) fn check_buffer(buffer: &Buffer, index: usize, frame_len: u64) -> Result<(), AttachError> {
    let fd = AttachFd::Buffer(index);
    if buffer.kind() != BufferKind::DmaBuf {
        let seals = rustix::fs::fcntl_get_seals(buffer).unwrap_or(rustix::fs::SealFlags::empty());
        if let Some(missing) = missing_size_seals(seals) {
            return Err(AttachError::Unsealed { fd, missing });
        }
        // `Buffer::from_fd` read the size before we saw the seals: it may
        // have been truncated in between, and we are about to map that size.
        let now = rustix::fs::fstat(buffer).map_err(|source| AttachError::Os { op: "fstat", source })?.st_size as u64;
        if now != buffer.len() {
            return Err(AttachError::Length { fd, len: now, expected: buffer.len() });
        }
    }
    if buffer.len() < frame_len {
        return Err(AttachError::Length { fd, len: buffer.len(), expected: frame_len });
    }
    Ok(())
}
