//! The consumer side: attaches once, then takes frames from its ring and
//! releases them, one at a time ([`Frame`]) or several at once ([`KeptFrame`]).

use super::error::{AttachError, AttachFd, PoolError};
use super::layout::{Control, Geometry, SLOT_ACTIVE, STREAM_CLOSED};
use super::transport;
use super::{now_ns, timespec, FrameFlags};
use crate::buffer::{Buffer, BufferKind, BufferMapping, CpuRead, SyncError};
use dmabroker_sys::mmap::{AtomicMapping, MapError};
use rustix::io::Errno;
use rustix::thread::futex;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The identity of the next attachment in this process: every
/// [`Consumer`] gets its own, never reused, so a [`KeptFrame`] names the
/// one attachment it came from.
static NEXT_ATTACHMENT: AtomicU64 = AtomicU64::new(1);

/// How often a waiting consumer checks that the producer is still alive.
const HEALTH_NS: u64 = 50_000_000;
/// Longest single futex sleep: health checks run between sleeps.
const SLEEP_SLICE: Duration = Duration::from_millis(50);

/// How a consumer waits for the next frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Spin for `spin`, then sleep on a futex (one wake-up syscall from the
    /// producer per frame at most, none while this consumer keeps up).
    Block {
        /// How long to spin before sleeping.
        spin: Duration,
    },
    /// Never sleep: lowest latency, one CPU core fully used.
    BusyPoll,
}

impl Default for WaitMode {
    /// `Block` with a 20 us spin: longer than a typical producer burst gap,
    /// far shorter than a frame period.
    fn default() -> Self {
        Self::Block { spin: Duration::from_micros(20) }
    }
}

/// How a consumer attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// How to wait for frames.
    pub wait: WaitMode,
    /// Receive a sync_file with each frame the producer exports one for.
    pub want_sync_files: bool,
    /// How long to wait for the producer's answer when attaching.
    pub attach_timeout: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self { wait: WaitMode::default(), want_sync_files: false, attach_timeout: Duration::from_secs(5) }
    }
}

/// What the producer said about a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FrameInfo {
    /// Buffer index in the pool.
    pub index: u32,
    /// Sequence number (gaps: frames dropped for this consumer).
    pub seq: u64,
    /// `CLOCK_MONOTONIC` ns when the producer handed it off.
    pub timestamp_ns: u64,
    /// Bytes of the buffer the frame occupies.
    pub bytes_used: u64,
    /// Flags.
    pub flags: FrameFlags,
    /// The producer's application word.
    pub meta: u64,
}

/// The consuming end of a pool.
#[derive(Debug)]
pub struct Consumer {
    ctl: Control,
    /// Closed by a closer thread: messages the producer queued may carry
    /// fds whose release blocks (see [`crate::closer`]).
    socket: crate::closer::CloseLater,
    slot: u32,
    maps: Vec<BufferMapping>,
    wait: WaitMode,
    held: u64,
    last_health: u64,
    /// The slot's generation when we attached: the producer bumps it each
    /// time it gives the slot to a consumer, so a slot taken from us and
    /// handed to another is not mistaken for ours.
    generation: u32,
    /// This attachment's identity in the process ([`NEXT_ATTACHMENT`]):
    /// what a [`KeptFrame`] is checked against.
    attachment: u64,
}

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
    /// producer got through [`super::Producer::attach`] or its listener.
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

    /// Whether the slot is still ours and receiving: not evicted, not freed
    /// (the producer thought us dead) nor given to another consumer since.
    fn active(&self) -> bool {
        self.ctl.slot_state(self.slot).load(Ordering::Acquire) == SLOT_ACTIVE
            && self.ctl.slot_generation(self.slot).load(Ordering::Relaxed) == self.generation
    }

    /// Whether the slot is still ours, checked after reading: the reads
    /// issued before this call happen before the check.
    fn still_active(&self) -> bool {
        std::sync::atomic::fence(Ordering::Acquire);
        self.active()
    }

    /// Whether this consumer is still attached: not evicted (nor dropped by
    /// the producer as dead). While it is, no buffer it holds is reused.
    pub fn is_attached(&self) -> bool {
        self.still_active()
    }

    /// Whether `frame`'s buffer still holds the frame, to check **after**
    /// reading it: `Ok` when this consumer was not evicted since it
    /// received the frame, so no byte read before this call was written by
    /// the producer since. [`KeptError::Evicted`] when the producer evicted
    /// it (the release timeout passed): it may have reused the buffer, and
    /// the bytes read may be torn or another frame's; discard them.
    /// [`Consumer::release_kept`] still succeeds after an eviction.
    ///
    /// # Errors
    /// [`KeptError::Foreign`], [`KeptError::Evicted`].
    pub fn check_kept(&self, frame: &KeptFrame) -> Result<(), KeptError> {
        self.check_owner(frame)?;
        if self.still_active() {
            Ok(())
        } else {
            Err(KeptError::Evicted)
        }
    }

    /// This consumer's slot in the pool.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Number of buffers in the pool.
    pub fn buffer_count(&self) -> usize {
        self.maps.len()
    }

    /// The pool's buffers, in index order (what [`FrameInfo::index`]
    /// names): to map or import each once, e.g. into a framework's memory.
    pub fn buffers(&self) -> impl Iterator<Item = &Buffer> {
        self.maps.iter().map(|m| m.buffer())
    }

    /// The pool's frame size in bytes.
    pub fn buffer_len(&self) -> u64 {
        self.ctl.geometry().buf_len
    }

    /// Change how [`Consumer::recv`] waits.
    pub fn set_wait_mode(&mut self, wait: WaitMode) {
        self.wait = wait;
    }

    /// Frames the producer took back before this consumer read them.
    pub fn dropped(&self) -> u64 {
        self.ctl.slot_dropped(self.slot).load(Ordering::Relaxed)
    }

    /// Wake-ups the producer spent on this consumer.
    pub fn wakes(&self) -> u64 {
        self.ctl.slot_wakes(self.slot).load(Ordering::Relaxed)
    }

    /// Buffers this consumer holds now: the frame being read plus every
    /// [`KeptFrame`] not yet released (dropped ones included; after an
    /// eviction, until they are released).
    pub fn held_count(&self) -> usize {
        self.held.count_ones() as usize
    }

    /// Whether `frame` was received by this attachment (the only consumer
    /// that can read or release it).
    pub fn owns(&self, frame: &KeptFrame) -> bool {
        frame.attachment == self.attachment
    }

    /// The buffer of a kept frame (to import it into a device).
    ///
    /// # Errors
    /// [`KeptError::Foreign`] when another consumer (or an earlier
    /// attachment) received `frame`.
    pub fn kept_buffer(&self, frame: &KeptFrame) -> Result<&Buffer, KeptError> {
        self.check_owner(frame)?;
        Ok(self.maps[frame.info.index as usize].buffer())
    }

    /// Begin CPU reads of a kept frame's buffer, as [`Frame::read`] does.
    /// Several kept frames can be read one after the other; the guard
    /// borrows the consumer, so one guard at a time.
    ///
    /// # Errors
    /// [`KeptError::Foreign`]; [`KeptError::Evicted`] when the producer
    /// took the buffer back (the release timeout passed: it may hold
    /// another frame now); [`KeptError::Sync`] when the sync ioctl fails.
    pub fn read_kept(&mut self, frame: &KeptFrame) -> Result<CpuRead<'_>, KeptError> {
        self.check_owner(frame)?;
        if !self.active() {
            return Err(KeptError::Evicted);
        }
        Ok(self.maps[frame.info.index as usize].begin_read()?)
    }

    /// Give a kept frame's buffer back to the producer. Also succeeds after
    /// an eviction (the producer already took the buffer back).
    ///
    /// # Errors
    /// [`ForeignFrame`], holding `frame` again, when another consumer (or
    /// an earlier attachment) received it: nothing is released.
    pub fn release_kept(&mut self, frame: KeptFrame) -> Result<(), ForeignFrame> {
        if !self.owns(&frame) {
            return Err(ForeignFrame(frame));
        }
        self.release(frame.info.index);
        Ok(())
    }

    fn check_owner(&self, frame: &KeptFrame) -> Result<(), KeptError> {
        if self.owns(frame) {
            Ok(())
        } else {
            Err(KeptError::Foreign { index: frame.info.index })
        }
    }

    /// The next frame. Frames already handed off are always delivered before
    /// an end-of-stream error.
    ///
    /// # Errors
    /// [`PoolError::Closed`] (orderly end), [`PoolError::ProducerGone`]
    /// (producer died), [`PoolError::Timeout`], [`PoolError::Evicted`],
    /// [`PoolError::Corrupt`].
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Frame<'_>, PoolError> {
        let start = now_ns();
        let slot = self.slot;
        loop {
            if !self.active() {
                return Err(PoolError::Evicted);
            }
            let closed = self.ctl.stream_state().load(Ordering::Acquire) == STREAM_CLOSED;
            let tail = self.ctl.tail(slot);
            let t = tail.load(Ordering::Acquire);
            let h = self.ctl.head(slot).load(Ordering::Acquire);
            if t != h {
                let e = self.ctl.read_entry(slot, t);
                // Lost to the producer's drop-oldest: the entry went there.
                if tail.compare_exchange(t, t.wrapping_add(1), Ordering::AcqRel, Ordering::Relaxed).is_err() {
                    continue;
                }
                return self.take(e);
            }
            if closed {
                return Err(PoolError::Closed);
            }
            let now = now_ns();
            let waited = Duration::from_nanos(now.saturating_sub(start));
            if let Some(limit) = timeout.filter(|l| waited >= *l) {
                return Err(PoolError::Timeout(limit));
            }
            if now.saturating_sub(self.last_health) >= HEALTH_NS {
                self.last_health = now;
                if transport::hung_up(self.socket.as_fd()) {
                    // Re-read in this order: a closing producer marks the
                    // stream before its socket closes; a dead one never does.
                    if self.ctl.stream_state().load(Ordering::Acquire) == STREAM_CLOSED {
                        continue;
                    }
                    if self.ctl.head(slot).load(Ordering::Acquire) != tail.load(Ordering::Acquire) {
                        continue;
                    }
                    if !self.active() {
                        return Err(PoolError::Evicted);
                    }
                    return Err(PoolError::ProducerGone);
                }
            }
            match self.wait {
                WaitMode::BusyPoll => std::hint::spin_loop(),
                WaitMode::Block { spin } if waited < spin => std::hint::spin_loop(),
                WaitMode::Block { .. } => {
                    let head = self.ctl.head(slot);
                    let waiting = self.ctl.waiting(slot);
                    waiting.store(1, Ordering::SeqCst);
                    if head.load(Ordering::SeqCst) == h {
                        let slice = timeout.map_or(SLEEP_SLICE, |l| l.saturating_sub(waited).min(SLEEP_SLICE));
                        // EAGAIN (head moved), ETIMEDOUT, EINTR: all mean "look again".
                        let _ = futex::wait(head, futex::Flags::empty(), h, Some(&timespec(slice)));
                    }
                    waiting.store(0, Ordering::Relaxed);
                }
            }
        }
    }

    fn take(&mut self, e: super::layout::Entry) -> Result<Frame<'_>, PoolError> {
        let g = self.ctl.geometry();
        if e.index >= g.nbuf {
            return Err(PoolError::Corrupt("buffer index out of range"));
        }
        // A buffer we still hold (a kept frame) is never handed off again by
        // a producer that follows the protocol: refuse it, and leave the
        // claim to the frame that has it. So a held buffer has exactly one
        // frame, whose reads no other frame's can alias (the C API keeps a
        // read guard per kept frame on that promise).
        if self.held & (1 << e.index) != 0 {
            return Err(PoolError::Corrupt("a buffer this consumer still holds was handed off again"));
        }
        // From here the entry names a buffer we hold: every error path must
        // release it, or the claim stays until we are evicted for it.
        self.held |= 1 << e.index;
        let Some(flags) = FrameFlags::from_bits(e.flags) else {
            self.release(e.index);
            return Err(PoolError::Corrupt("unknown frame flags"));
        };
        if e.bytes_used > self.maps[e.index as usize].len() as u64 {
            self.release(e.index);
            return Err(PoolError::Corrupt("bytes_used larger than the buffer"));
        }
        self.ctl.slot_received(self.slot).fetch_add(1, Ordering::Relaxed);
        let sync_file = if flags.contains(FrameFlags::SYNC_FILE) { self.take_sync_file(e.seq) } else { None };
        let info = FrameInfo {
            index: e.index,
            seq: e.seq,
            timestamp_ns: e.timestamp_ns,
            bytes_used: e.bytes_used,
            flags,
            meta: e.meta,
        };
        Ok(Frame { consumer: self, info, sync_file })
    }

    /// The sync_file sent for frame `seq`: messages arrive in frame order;
    /// those of frames dropped for this consumer are skipped (and closed).
    fn take_sync_file(&self, seq: u64) -> Option<OwnedFd> {
        loop {
            let (bytes, fds) = transport::recv(self.socket.as_fd(), true).ok()??;
            let mut msg = transport::decode(&bytes, fds).ok()?;
            // Only sync_files are kept; anything else the producer sent is
            // closed off this thread (its release could block).
            if !msg.fds.iter().all(|fd| crate::fdinfo::is_sync_file(fd.as_fd())) {
                crate::closer::close_all_later(std::mem::take(&mut msg.fds));
            }
            match msg.words.first() {
                Some(&s) if msg.kind == transport::MSG_SYNC && s == seq => return msg.fds.into_iter().next(),
                Some(&s) if s < seq => continue,
                _ => return None,
            }
        }
    }

    fn release(&mut self, index: u32) {
        let bit = 1u64 << index;
        if self.held & bit == 0 {
            return;
        }
        self.held &= !bit;
        // Also when evicted: the producer quarantines the buffers an evicted
        // consumer holds (its bit stays set) and keeps its slot until this
        // socket closes, so clearing our own bit ends that buffer's
        // quarantine and cannot touch a successor's claim.
        // Release: our reads of the buffer happen before the producer reuses it.
        self.ctl.buf_mask(index).fetch_and(!(1u64 << self.slot), Ordering::Release);
        self.ctl.slot_released(self.slot).fetch_add(1, Ordering::Relaxed);
        self.ctl.free_seq().fetch_add(1, Ordering::SeqCst);
        if self.ctl.producer_waiting().load(Ordering::SeqCst) != 0 {
            let _ = futex::wake(self.ctl.free_seq(), futex::Flags::empty(), 1);
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        for index in 0..self.maps.len() as u32 {
            self.release(index);
        }
    }
}

/// The size seals an fd lacks, or `None` when it has `F_SEAL_SHRINK` and
/// `F_SEAL_GROW` (a file that cannot be sealed has none).
/// The WELCOME's property words (see `transport::HELLO_WANT_PROPERTIES`).
fn welcome_properties(words: &[u64]) -> Option<crate::buffer::PropertyHint> {
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

fn missing_size_seals(seals: rustix::fs::SealFlags) -> Option<&'static str> {
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
fn check_buffer(buffer: &Buffer, index: usize, frame_len: u64) -> Result<(), AttachError> {
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

/// A received frame; the buffer goes back to the producer when it drops,
/// unless [`Frame::keep`] detaches it to hold several at once.
#[derive(Debug)]
#[must_use = "dropping the frame gives its buffer back to the producer at once"]
pub struct Frame<'c> {
    consumer: &'c mut Consumer,
    info: FrameInfo,
    sync_file: Option<OwnedFd>,
}

impl Frame<'_> {
    /// What the producer said about it.
    pub fn info(&self) -> &FrameInfo {
        &self.info
    }

    /// The buffer (to import it into a device).
    pub fn buffer(&self) -> &Buffer {
        self.consumer.maps[self.info.index as usize].buffer()
    }

    /// The buffer's read-only CPU mapping.
    pub fn mapping(&mut self) -> &mut BufferMapping {
        &mut self.consumer.maps[self.info.index as usize]
    }

    /// Begin CPU reads of the whole buffer (the frame is the first
    /// [`FrameInfo::bytes_used`] bytes); `DMA_BUF_IOCTL_SYNC` for dma-bufs.
    ///
    /// # Errors
    /// [`SyncError`] when the sync ioctl fails.
    pub fn read(&mut self) -> Result<CpuRead<'_>, SyncError> {
        self.mapping().begin_read()
    }

    /// The frame's sync_file, when the producer exported one and this
    /// consumer asked for them ([`ConsumerOptions::want_sync_files`]).
    pub fn take_sync_file(&mut self) -> Option<OwnedFd> {
        self.sync_file.take()
    }

    /// Whether the buffer still holds this frame, to check **after**
    /// reading it: true when the consumer was not evicted since it received
    /// the frame, so no byte read before this call was overwritten by the
    /// producer. False after an eviction (the frame was held past the
    /// release timeout): the producer may have reused the buffer, and the
    /// bytes read may be torn or another frame's; discard them (the next
    /// [`Consumer::recv`] fails with [`PoolError::Evicted`]).
    ///
    /// ```no_run
    /// # use dmabroker::pool::{Consumer, WaitMode};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let mut consumer = Consumer::connect("/tmp/camera.pool", WaitMode::default())?;
    /// let mut frame = consumer.recv(None)?;
    /// let copy = frame.read()?.to_vec();
    /// if !frame.is_valid() {
    ///     return Err("evicted while reading: the copy may be torn".into());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_valid(&self) -> bool {
        self.consumer.still_active()
    }

    /// Give the buffer back now (same as dropping the frame).
    pub fn release(self) {}

    /// Keep the frame past this borrow of the consumer, so that the next
    /// [`Consumer::recv`] can run while the buffer stays held. Read it with
    /// [`Consumer::read_kept`], give it back with [`Consumer::release_kept`].
    /// A sync_file not taken yet goes with it.
    pub fn keep(mut self) -> KeptFrame {
        let kept =
            KeptFrame { attachment: self.consumer.attachment, info: self.info, sync_file: self.sync_file.take() };
        // The buffer stays held: skip the release in `Drop`. Nothing else
        // in the frame needs dropping (a reference, plain data, `None`).
        std::mem::forget(self);
        kept
    }
}

/// A frame detached from the borrow of its [`Consumer`] by [`Frame::keep`]:
/// its buffer stays held (the producer cannot reuse it) until
/// [`Consumer::release_kept`].
///
/// It names the attachment that received it: the consumer methods that
/// take it refuse a kept frame of another consumer, or of an earlier
/// attachment of the same process ([`KeptError::Foreign`], [`ForeignFrame`]).
///
/// Dropping it does **not** release the buffer (no reference to the
/// consumer is kept): the buffer stays held until the consumer is dropped,
/// or until the producer evicts the consumer for holding it past
/// [`PoolOptions::release_timeout`](super::PoolOptions::release_timeout).
#[derive(Debug)]
#[must_use = "a kept frame holds its buffer until Consumer::release_kept (dropping it does not release it)"]
pub struct KeptFrame {
    attachment: u64,
    info: FrameInfo,
    sync_file: Option<OwnedFd>,
}

impl KeptFrame {
    /// What the producer said about it.
    pub fn info(&self) -> &FrameInfo {
        &self.info
    }

    /// The frame's sync_file, when the producer exported one and the
    /// consumer asked for them ([`ConsumerOptions::want_sync_files`]).
    pub fn take_sync_file(&mut self) -> Option<OwnedFd> {
        self.sync_file.take()
    }
}

/// Why a [`KeptFrame`] could not be used with a consumer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeptError {
    /// The frame was received by another consumer, or by an earlier
    /// attachment: only the consumer that received it can use it.
    #[error(
        "the kept frame of buffer {index} belongs to another consumer attachment: use the consumer that received it"
    )]
    Foreign {
        /// The frame's buffer index.
        index: u32,
    },
    /// The producer evicted this consumer and took the buffer back: it
    /// may hold another frame now.
    #[error("evicted by the producer: the kept frame was held longer than the pool's release timeout")]
    Evicted,
    /// CPU access could not begin.
    #[error(transparent)]
    Sync(#[from] SyncError),
}

/// [`Consumer::release_kept`] was given a frame another consumer (or an
/// earlier attachment) received; the frame is handed back untouched.
#[derive(Debug)]
pub struct ForeignFrame(pub KeptFrame);

impl ForeignFrame {
    /// The kept frame, to release on the consumer that received it.
    pub fn into_frame(self) -> KeptFrame {
        self.0
    }
}

impl std::fmt::Display for ForeignFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the kept frame of buffer {} belongs to another consumer attachment: release it on the consumer that received it",
            self.0.info.index
        )
    }
}

impl std::error::Error for ForeignFrame {}

impl Drop for Frame<'_> {
    fn drop(&mut self) {
        self.consumer.release(self.info.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::{AllocRequest, Heaps};
    use rustix::fs::{MemfdFlags, SealFlags};

    const G: Geometry = Geometry { nbuf: 2, max_consumers: 1, ring_cap: 2, policy: 1, buf_len: 4096 };

    /// A control block for `g`, sealed or not; returns it and its length.
    fn control(g: Geometry, sealed: bool) -> (OwnedFd, u64) {
        if sealed {
            let (fd, ctl) = super::super::producer::create_control(g).unwrap();
            ctl.init_header();
            return (fd, ctl.len() as u64);
        }
        let len = g.control_len().unwrap().next_multiple_of(rustix::param::page_size());
        // Same bytes as a sealed one (copied: an unsealed memfd cannot be
        // mapped safely, which is the point of the test using it).
        let (sealed, ctl) = super::super::producer::create_control(g).unwrap();
        ctl.init_header();
        let mut bytes = vec![0u8; len];
        rustix::io::pread(&sealed, &mut bytes, 0).unwrap();
        let fd = rustix::fs::memfd_create("ctl", MemfdFlags::CLOEXEC).unwrap();
        rustix::io::pwrite(&fd, &bytes, 0).unwrap();
        (fd, len as u64)
    }

    fn sealed_buffer(len: u64) -> OwnedFd {
        let b = Heaps::discover().allocate("memfd", &AllocRequest::new(len)).unwrap();
        assert!(b.is_size_sealed());
        b.try_clone_fd().unwrap()
    }

    fn memfd_with(seals: SealFlags) -> OwnedFd {
        let fd = rustix::fs::memfd_create("dmabroker:test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
        fd
    }

    /// Attach to a fake producer that sends this welcome.
    fn attach_to(g: Geometry, ctl: OwnedFd, ctl_len: u64, buffers: Vec<OwnedFd>) -> Result<Consumer, AttachError> {
        let (a, b) = super::super::socket_pair().unwrap();
        let producer = std::thread::spawn(move || {
            let (bytes, _) = transport::recv(a.as_fd(), false).unwrap().unwrap();
            let hello = transport::decode(&bytes, Vec::new()).unwrap();
            assert_eq!(
                hello.words,
                [u64::from(transport::HELLO_WANT_PROPERTIES), u64::from(std::process::id())],
                "the HELLO asks for properties and carries our pid"
            );
            let words =
                [0, g.nbuf as u64, g.ring_cap as u64, g.max_consumers as u64, g.policy as u64, g.buf_len, ctl_len];
            let mut fds = vec![ctl.as_fd()];
            fds.extend(buffers.iter().map(|b| b.as_fd()));
            transport::send(a.as_fd(), &transport::encode(&words, transport::MSG_WELCOME), &fds, false).unwrap();
            a
        });
        let result = Consumer::attach(b, &ConsumerOptions::default());
        drop(producer.join().unwrap());
        result
    }

    #[test]
    fn well_formed_welcome_attaches() {
        let (ctl, len) = control(G, true);
        let c = attach_to(G, ctl, len, vec![sealed_buffer(4096), sealed_buffer(4096)]).unwrap();
        assert_eq!(c.buffer_count(), 2);
    }

    #[test]
    fn unsealed_buffers_are_refused_by_index_and_seal() {
        let cases = [
            (SealFlags::GROW, "F_SEAL_SHRINK"),
            (SealFlags::SHRINK, "F_SEAL_GROW"),
            (SealFlags::empty(), "F_SEAL_SHRINK and F_SEAL_GROW"),
            (SealFlags::WRITE.union(SealFlags::SEAL), "F_SEAL_SHRINK and F_SEAL_GROW"),
        ];
        for (seals, missing) in cases {
            let (ctl, len) = control(G, true);
            let err = attach_to(G, ctl, len, vec![sealed_buffer(4096), memfd_with(seals)]).unwrap_err();
            assert!(
                matches!(err, AttachError::Unsealed { fd: AttachFd::Buffer(1), missing: m } if m == missing),
                "{seals:?}: {err}"
            );
            assert!(err.to_string().contains("pool buffer 1"), "{err}");
        }
        // A memfd made without MFD_ALLOW_SEALING can never be sealed.
        let plain = rustix::fs::memfd_create("dmabroker:plain", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&plain, 4096).unwrap();
        let (ctl, len) = control(G, true);
        let err = attach_to(G, ctl, len, vec![plain, sealed_buffer(4096)]).unwrap_err();
        assert!(matches!(err, AttachError::Unsealed { fd: AttachFd::Buffer(0), .. }), "{err}");
    }

    #[test]
    fn unsealed_control_block_is_refused() {
        let (ctl, len) = control(G, false);
        let err = attach_to(G, ctl, len, vec![sealed_buffer(4096), sealed_buffer(4096)]).unwrap_err();
        assert!(
            matches!(
                err,
                AttachError::Unsealed { fd: AttachFd::ControlBlock, missing: "F_SEAL_SHRINK and F_SEAL_GROW" }
            ),
            "{err}"
        );
    }

    #[test]
    fn lengths_must_be_the_advertised_ones() {
        let (ctl, len) = control(G, true);
        let err = attach_to(G, ctl, len + 4096, vec![sealed_buffer(4096), sealed_buffer(4096)]).unwrap_err();
        assert!(
            matches!(err, AttachError::Length { fd: AttachFd::ControlBlock, len: l, expected } if l == len && expected == len + 4096),
            "{err}"
        );
        let big = Geometry { buf_len: 8192, ..G };
        let (ctl, len) = control(big, true);
        let err = attach_to(big, ctl, len, vec![sealed_buffer(8192), sealed_buffer(4096)]).unwrap_err();
        assert!(matches!(err, AttachError::Length { fd: AttachFd::Buffer(1), len: 4096, expected: 8192 }), "{err}");
    }
}
