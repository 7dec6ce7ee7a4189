//! The producer side: owns the buffers and the control block, accepts
//! consumers, hands off frames, watches consumers' health.
//!
//! The producer is single-threaded by design: it services attach
//! handshakes, health checks and evictions only from inside its own calls
//! (see [`Producer`]).

use super::error::{AcquireError, AttachError, CreateError, PoolAllocError, SubmitError};
use super::layout::{Control, Entry, Geometry, PRODUCER_BIT, SLOT_ACTIVE, SLOT_EVICTED, SLOT_FREE, STREAM_CLOSED};
use super::transport::{self, PoolListener, HELLO_TIMEOUT_NS};
use super::{now_ns, timespec, Backpressure, FrameFlags, FrameMeta, PoolOptions};
use crate::buffer::{Buffer, BufferKind, BufferMapping};
use crate::closer::CloseLater;
use crate::constraints::{Choice, Constraints};
use crate::format::Layout;
use crate::heap::{AllocRequest, Heaps};
use dmabroker_sys::mmap::{AtomicMapping, MapError};
use rustix::io::Errno;
use rustix::thread::futex;
use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often the producer checks consumers' health and accepts new ones
/// while frames flow (it also does so at once whenever it is starved).
const MAINTENANCE_NS: u64 = 10_000_000;
/// Longest single futex sleep while starved: health checks run between sleeps.
const STARVED_SLICE: Duration = Duration::from_millis(10);

#[derive(Debug)]
struct Conn {
    /// Closed by a closer thread: messages the consumer queued may carry fds
    /// whose release blocks (see [`crate::closer`]).
    socket: CloseLater,
    pidfd: Option<OwnedFd>,
    pid: u32,
    want_sync: bool,
    evicted: bool,
    /// Entries put in its ring that it was not yet seen to take, oldest
    /// first: (ring position, buffer index).
    queued: VecDeque<(u32, u32)>,
    /// By buffer index: when the producer first saw it take the frame
    /// (its ring's tail passed the entry): the start of its hold time.
    /// `None` while the frame waits unreceived in its ring.
    received_at: Vec<Option<u64>>,
    /// Its received + released counters when last looked at, and when
    /// they last changed: the last time it made progress.
    progress: u64,
    progress_ns: u64,
}

#[derive(Debug)]
struct Pending {
    socket: CloseLater,
    since: u64,
    /// REFUSED(closed) was sent: kept only until its HELLO is read (closing
    /// a socket with unread data would reset the peer before it reads the
    /// answer), it hangs up, or the HELLO timeout.
    refused: bool,
}

/// Counters of one attached consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Its slot in the control block.
    pub slot: u32,
    /// Its process id: the pid its HELLO named when that was verified (see
    /// [the module docs](super#consumer-identity)), else `SO_PEERCRED`'s.
    pub pid: u32,
    /// Frames put in its ring.
    pub delivered: u64,
    /// Frames it took from its ring.
    pub received: u64,
    /// Frames it released.
    pub released: u64,
    /// Frames taken back before it read them (drop-oldest backpressure).
    pub dropped: u64,
    /// `futex_wake` calls the producer made for it (0 while it keeps up).
    pub wakes: u64,
    /// True when it was evicted for exceeding the release timeout.
    pub evicted: bool,
}

/// Counters of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    /// Frames submitted.
    pub produced: u64,
    /// Frames taken back from at least one consumer (drop-oldest).
    pub dropped: u64,
    /// Consumers that died or were evicted so far.
    pub lost_consumers: u64,
    /// Every consumer currently known (attached or evicted).
    pub consumers: Vec<ConsumerStats>,
}

/// The producing end of a pool.
///
/// # Threading and attach handshakes
/// A producer is single-threaded by design: nothing runs behind the
/// caller's back. Consumers that connect to [`Producer::listen`]'s socket
/// (or sockets given to [`Producer::attach`]) wait in the listen backlog
/// until the producer services them, which happens only inside
/// [`Producer::acquire`] (every 10 ms while frames flow, at once when
/// starved), [`Producer::wait_for_consumers`] and [`Producer::maintain_now`].
/// A consumer's attach therefore fails with [`super::AttachError::Timeout`]
/// (after [`super::ConsumerOptions::attach_timeout`], 5 s by default) when
/// the producer calls none of these for that long (it idles between frames,
/// or is blocked elsewhere): call [`Producer::maintain_now`] periodically
/// while idle. Health checks and evictions run at the same points.
///
/// After [`Producer::close`] the listener stays open until the producer is
/// dropped, and connections are answered with "closed"
/// ([`super::AttachError::Closed`]): those waiting at close at once, later
/// ones at the next [`Producer::acquire`] (which then fails with
/// [`AcquireError::Closed`]), [`Producer::wait_for_consumers`],
/// [`Producer::maintain_now`], or when the producer is dropped. Sockets given
/// to [`Producer::attach`] after close are answered at once.
///
/// # What consumers can do with the buffers
/// Memfd (and hugetlb memfd) buffers go to consumers as read-only fds: one
/// `O_RDONLY` reopen of each buffer (`open("/proc/self/fd/N")`), made once
/// when the pool is created. A consumer cannot map them writable
/// ([`MapError::ReadOnly`](crate::buffer::MapError::ReadOnly)), `write()`
/// or truncate them, so a buggy consumer cannot change a frame under the
/// producer and the other consumers. This is a guard, not a wall against a
/// hostile process: memfd inodes have mode 0777, so a consumer can reopen
/// its own `/proc/self/fd/N` read-write.
///
/// Dma-buf buffers go to consumers read-write: a dma-buf cannot be reopened
/// read-only, and a device that imports it may write to it whatever the fd
/// mode. Consumers of dma-buf pools are trusted not to write.
#[derive(Debug)]
pub struct Producer {
    ctl: Control,
    ctl_fd: OwnedFd,
    maps: Vec<BufferMapping>,
    /// What consumers receive for each buffer: a read-only reopen
    /// (`O_RDONLY`) of a memfd, or `None` to send the buffer's own fd
    /// (dma-bufs cannot be reopened read-only).
    shared: Vec<Option<OwnedFd>>,
    options: PoolOptions,
    conns: Vec<Option<Conn>>,
    pending: Vec<Pending>,
    listener: Option<PoolListener>,
    next_seq: u64,
    next_scan: u32,
    /// By buffer: the producer holds it (writing it, or lent). Kept here,
    /// not only as PRODUCER_BIT in the shared mask, which any consumer can
    /// write: a forged bit on every buffer would stop the producer for good.
    owned: Vec<bool>,
    last_maintenance: u64,
    lost_consumers: u64,
    closed: bool,
    /// The heap choice of [`Producer::allocate_for`].
    choice: Option<Choice>,
}

impl Producer {
    /// A pool over buffers the caller allocated (all at least
    /// `options.buffer_len` bytes; memfds must be size-sealed).
    ///
    /// # Errors
    /// [`CreateError`]: counts out of range, a buffer too small or unsealed,
    /// mapping or control-block creation failures.
    pub fn new(buffers: Vec<Buffer>, options: &PoolOptions) -> Result<Self, CreateError> {
        if buffers.is_empty() || buffers.len() > super::MAX_BUFFERS as usize {
            return Err(CreateError::BufferCount(buffers.len()));
        }
        if options.max_consumers == 0 || options.max_consumers > super::MAX_CONSUMERS {
            return Err(CreateError::ConsumerCount(options.max_consumers));
        }
        if options.buffer_len == 0 {
            return Err(CreateError::ZeroLength);
        }
        let mut maps = Vec::with_capacity(buffers.len());
        let mut shared = Vec::with_capacity(buffers.len());
        for (index, buffer) in buffers.into_iter().enumerate() {
            if buffer.len() < options.buffer_len {
                return Err(CreateError::BufferTooSmall { index, len: buffer.len(), need: options.buffer_len });
            }
            // Consumers map these; a truncation would SIGBUS all of them.
            if !buffer.is_size_sealed() {
                return Err(CreateError::Unsealed(index));
            }
            shared.push(match buffer.kind() {
                BufferKind::DmaBuf => None,
                BufferKind::Memfd | BufferKind::HugetlbMemfd => {
                    // A memfd is created mode 0777: a consumer of another uid
                    // could reopen /proc/self/fd/N of its read-only fd for
                    // writing. Private first, then reopened read-only.
                    make_private(&buffer).map_err(|source| CreateError::ReadOnlyFd { index, source })?;
                    Some(
                        Buffer::reopen_read_only(&buffer)
                            .map_err(|source| CreateError::ReadOnlyFd { index, source })?,
                    )
                }
            });
            maps.push(buffer.map_read_write().map_err(|source| CreateError::Map { index, source })?);
        }
        let nbuf = maps.len() as u32;
        let geometry = Geometry {
            nbuf,
            max_consumers: options.max_consumers,
            // A consumer never has more than nbuf entries outstanding (each
            // names a distinct buffer it holds), so this ring cannot overflow.
            ring_cap: nbuf.next_power_of_two(),
            policy: options.backpressure.to_word(),
            buf_len: options.buffer_len,
        };
        let (ctl_fd, ctl) = create_control(geometry)?;
        ctl.init_header();
        let conns = (0..options.max_consumers).map(|_| None).collect();
        Ok(Self {
            ctl,
            ctl_fd,
            maps,
            shared,
            options: options.clone(),
            conns,
            pending: Vec::new(),
            listener: None,
            next_seq: 0,
            next_scan: 0,
            owned: vec![false; nbuf as usize],
            last_maintenance: 0,
            lost_consumers: 0,
            closed: false,
            choice: None,
        })
    }

    /// Allocate `options.buffers` buffers from `heap` and make a pool of them.
    ///
    /// # Errors
    /// [`CreateError::Alloc`] naming the buffer that failed; see [`Producer::new`].
    pub fn allocate(heaps: &Heaps, heap: &str, options: &PoolOptions) -> Result<Self, CreateError> {
        if options.buffers == 0 || options.buffers > super::MAX_BUFFERS as usize {
            return Err(CreateError::BufferCount(options.buffers));
        }
        let buffers = (0..options.buffers)
            .map(|index| {
                let request = AllocRequest::new(options.buffer_len).name(format!("{}-{index}", options.name));
                heaps.allocate(heap, &request).map_err(|source| CreateError::Alloc { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(buffers, options)
    }

    /// Allocate `options.buffers` buffers of `options.buffer_len` bytes for
    /// the devices behind `constraints` and make a pool of them. Each buffer
    /// comes from [`crate::constraints::allocate_for`]: the cheapest heap
    /// that meets every requirement, falling back to the next suitable one
    /// when it runs out, so a pool may mix heaps (each meets everything).
    ///
    /// [`Producer::choice`] then says which heap and why (the first buffer's
    /// choice; a later buffer that came from another heap adds a reason).
    ///
    /// # Errors
    /// [`PoolAllocError::Alloc`] naming the buffer and wrapping
    /// [`crate::constraints::AllocForError`] (no heap meets the constraints,
    /// or every suitable one failed); [`PoolAllocError::Create`] as
    /// [`Producer::new`].
    pub fn allocate_for(
        heaps: &Heaps,
        constraints: &Constraints,
        options: &PoolOptions,
    ) -> Result<Self, PoolAllocError> {
        if options.buffers == 0 || options.buffers > super::MAX_BUFFERS as usize {
            return Err(CreateError::BufferCount(options.buffers).into());
        }
        if options.buffer_len == 0 {
            return Err(CreateError::ZeroLength.into());
        }
        let mut buffers = Vec::with_capacity(options.buffers);
        let mut first: Option<Choice> = None;
        for index in 0..options.buffers {
            let name = format!("{}-{index}", options.name);
            let (buffer, choice) =
                crate::constraints::allocate_for(heaps, constraints, options.buffer_len, Some(&name))
                    .map_err(|source| PoolAllocError::Alloc { index, source })?;
            buffers.push(buffer);
            match &mut first {
                None => first = Some(choice),
                Some(f) if f.heap != choice.heap => f.reasons.push(format!(
                    "buffer {index} came from {}: {}",
                    choice.heap,
                    choice
                        .reasons
                        .iter()
                        .filter(|r| r.starts_with("fell back"))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
                Some(_) => {}
            }
        }
        let mut producer = Self::new(buffers, options)?;
        producer.choice = first;
        Ok(producer)
    }

    /// [`Producer::allocate_for`] for frames of `layout`: each pool buffer
    /// holds one whole frame, `layout.total_size()` bytes (this replaces
    /// `options.buffer_len`).
    ///
    /// For a one-buffer format the planes lie where `layout` puts them. For
    /// a multi-buffer `…M` format (one buffer per plane in V4L2/DRM terms)
    /// the pool still allocates **one** buffer per frame, holding every
    /// plane's buffer back to back: plane buffer `b` starts at the sum of
    /// `layout.buffer_sizes()[..b]` (so [`LayoutOptions::size_align`](crate::format::LayoutOptions::size_align)
    /// aligns those starts), and [`plane_offsets`](super::plane_offsets)
    /// gives each plane's offset. Hand a device the same fd once per plane
    /// with those offsets (DRM and V4L2 `…M` take an fd and an offset per plane).
    ///
    /// # Errors
    /// As [`Producer::allocate_for`].
    pub fn allocate_for_layout(
        heaps: &Heaps,
        constraints: &Constraints,
        options: &PoolOptions,
        layout: &Layout,
    ) -> Result<Self, PoolAllocError> {
        let options = PoolOptions { buffer_len: layout.total_size(), ..options.clone() };
        Self::allocate_for(heaps, constraints, &options)
    }

    /// Which heap [`Producer::allocate_for`] chose and why (`reasons`,
    /// `passed_over`); `None` for pools made otherwise.
    pub fn choice(&self) -> Option<&Choice> {
        self.choice.as_ref()
    }

    /// Accept consumers on a socket at `path`. Handshakes run only inside
    /// [`Producer::acquire`], [`Producer::wait_for_consumers`] and
    /// [`Producer::maintain_now`] (see [`Producer`]). A stale socket file of
    /// a dead producer is replaced; any other file at `path` is left alone
    /// and refused. The socket file is removed when the producer is dropped
    /// (if it is still the one this call created).
    ///
    /// # Errors
    /// [`super::ListenError`]: a live process listens there
    /// ([`AddressInUse`](super::ListenError::AddressInUse)), a regular file,
    /// FIFO, directory... is there ([`NotASocket`](super::ListenError::NotASocket)),
    /// an empty path ([`InvalidPath`](super::ListenError::InvalidPath)), ...
    pub fn listen(&mut self, path: impl AsRef<Path>) -> Result<&Path, super::ListenError> {
        let listener = PoolListener::bind(path)?;
        Ok(self.listener.insert(listener).path())
    }

    /// Take a connected `SOCK_SEQPACKET` socket whose other end belongs to a
    /// consumer (from [`super::socket_pair`], a broker, ...). The handshake
    /// completes during the next [`Producer::acquire`],
    /// [`Producer::wait_for_consumers`] or [`Producer::maintain_now`]; after
    /// [`Producer::close`] the consumer is told "closed" at once.
    ///
    /// # Errors
    /// [`AttachError::Os`] when the socket cannot be made non-blocking.
    pub fn attach(&mut self, socket: OwnedFd) -> Result<(), AttachError> {
        rustix::io::ioctl_fionbio(&socket, true).map_err(|source| AttachError::Os { op: "FIONBIO", source })?;
        let refused = self.closed;
        if refused {
            transport::refuse_closed(socket.as_fd());
        }
        self.pending.push(Pending { socket: CloseLater::connection(socket), since: now_ns(), refused });
        Ok(())
    }

    /// Accept and health-check consumers until `n` are attached.
    /// Returns whether `n` were reached within `timeout` (at once after
    /// [`Producer::close`]: no consumer can attach any more).
    pub fn wait_for_consumers(&mut self, n: usize, timeout: Duration) -> bool {
        if self.closed {
            self.service_connections(now_ns());
            return self.attached() >= n;
        }
        let deadline = now_ns().saturating_add(nanos(timeout));
        loop {
            self.maintain(now_ns());
            if self.attached() >= n {
                return true;
            }
            if now_ns() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Consumers attached and receiving frames now.
    pub fn attached(&self) -> usize {
        self.conns.iter().flatten().filter(|c| !c.evicted).count()
    }

    /// The pool's buffers.
    pub fn buffers(&self) -> impl Iterator<Item = &Buffer> {
        self.maps.iter().map(|m| m.buffer())
    }

    /// The options it was made with.
    pub fn options(&self) -> &PoolOptions {
        &self.options
    }

    /// Get a free buffer to fill. Blocks (or drops the oldest unread frame,
    /// per [`Backpressure`]) while consumers hold every buffer.
    ///
    /// # Errors
    /// [`AcquireError::Timeout`] when nothing was released within `timeout`;
    /// [`AcquireError::Closed`] after [`Producer::close`].
    pub fn acquire(&mut self, timeout: Option<Duration>) -> Result<WriteSlot<'_>, AcquireError> {
        if self.closed {
            // Tell consumers still connecting that the pool is closed.
            self.service_connections(now_ns());
            return Err(AcquireError::Closed);
        }
        let start = now_ns();
        if start.saturating_sub(self.last_maintenance) >= MAINTENANCE_NS {
            self.maintain(start);
        }
        let index = loop {
            if let Some(i) = self.take_free() {
                break i;
            }
            let now = now_ns();
            self.maintain(now);
            if let Some(i) = self.take_free() {
                break i;
            }
            if self.options.backpressure == Backpressure::DropOldest {
                if let Some(i) = self.drop_oldest() {
                    break i;
                }
            }
            let elapsed = Duration::from_nanos(now.saturating_sub(start));
            let slice = match timeout {
                Some(t) if elapsed >= t => return Err(AcquireError::Timeout(t)),
                Some(t) => (t - elapsed).min(STARVED_SLICE),
                None => STARVED_SLICE,
            };
            // Sleep on free_seq: a releasing consumer bumps it and wakes us if
            // it sees `producer_waiting` (the same Dekker pairing as the rings).
            self.ctl.producer_waiting().store(1, Ordering::SeqCst);
            let seen = self.ctl.free_seq().load(Ordering::SeqCst);
            if !self.any_free() {
                let _ = futex::wait(self.ctl.free_seq(), futex::Flags::empty(), seen, Some(&timespec(slice)));
            }
            self.ctl.producer_waiting().store(0, Ordering::Relaxed);
        };
        Ok(WriteSlot { producer: self, index, submitted: false })
    }

    /// A buffer lent with [`WriteSlot::lend`], as a slot again: submit it
    /// once the device filled it, or drop the slot to return the buffer to
    /// the pool. `None` when `index` is out of range or not lent.
    pub fn reclaim(&mut self, index: u32) -> Option<WriteSlot<'_>> {
        if index as usize >= self.maps.len()
            || !self.owned[index as usize]
            || self.ctl.buf_mask(index).load(Ordering::Acquire) != PRODUCER_BIT
        {
            return None;
        }
        // No WriteSlot is alive (it would borrow self mutably), so a set
        // producer bit alone means the buffer is lent.
        Some(WriteSlot { producer: self, index, submitted: false })
    }

    fn any_free(&self) -> bool {
        (0..self.maps.len() as u32)
            .any(|i| !self.owned[i as usize] && self.ctl.buf_mask(i).load(Ordering::Acquire) == 0)
    }

    /// Claim a free buffer for writing, round robin.
    fn take_free(&mut self) -> Option<u32> {
        let n = self.maps.len() as u32;
        for k in 0..n {
            let i = (self.next_scan + k) % n;
            // Acquire pairs with the consumers' releasing fetch_and: their
            // reads of the buffer happened before we overwrite it.
            if !self.owned[i as usize]
                && self.ctl.buf_mask(i).compare_exchange(0, PRODUCER_BIT, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                self.owned[i as usize] = true;
                self.next_scan = (i + 1) % n;
                return Some(i);
            }
        }
        None
    }

    /// Drop-oldest: take back the oldest frame that every holder still has
    /// unread at the tail of its ring. Frames being read are never taken.
    fn drop_oldest(&mut self) -> Option<u32> {
        let mut held: Vec<(u64, u32)> = (0..self.maps.len() as u32)
            .filter(|&i| {
                let m = self.ctl.buf_mask(i).load(Ordering::Acquire);
                !self.owned[i as usize] && m != 0 && m & PRODUCER_BIT == 0
            })
            .map(|i| (self.ctl.buf_seq(i).load(Ordering::Relaxed), i))
            .collect();
        held.sort_unstable();
        for (seq, i) in held {
            let mask = self.ctl.buf_mask(i).load(Ordering::Acquire);
            // Only a frame that is the oldest unread entry of every holder
            // can be taken whole; skip it if any holder is reading it.
            let at_tail = |c: u32| {
                let t = self.ctl.tail(c).load(Ordering::Acquire);
                if self.ctl.head(c).load(Ordering::Relaxed) == t {
                    return None;
                }
                let e = self.ctl.read_entry(c, t);
                (e.index == i && e.seq == seq).then_some(t)
            };
            // Bits of slots that do not exist are not consumers (a corrupted
            // mask): never index by them; reap clears them.
            let slots = self.conns.len() as u32;
            if bits(mask, slots).any(|c| at_tail(c).is_none()) {
                continue;
            }
            let mut taken = false;
            for c in bits(mask, slots) {
                let Some(t) = at_tail(c) else { continue };
                // The CAS races the consumer's own take of the same entry:
                // exactly one wins, so a frame is either read or dropped.
                if self.ctl.tail(c).compare_exchange(t, t.wrapping_add(1), Ordering::AcqRel, Ordering::Relaxed).is_ok()
                {
                    self.ctl.buf_mask(i).fetch_and(!(1u64 << c), Ordering::AcqRel);
                    self.ctl.slot_dropped(c).fetch_add(1, Ordering::Relaxed);
                    taken = true;
                }
            }
            if taken {
                self.ctl.dropped().fetch_add(1, Ordering::Relaxed);
            }
            if self.ctl.buf_mask(i).compare_exchange(0, PRODUCER_BIT, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                self.owned[i as usize] = true;
                return Some(i);
            }
            // A consumer took it in the meantime: it is being read; try the next.
        }
        None
    }

    fn publish(&mut self, index: u32, meta: &FrameMeta) -> Result<u64, SubmitError> {
        let len = self.maps[index as usize].len() as u64;
        if meta.bytes_used > len {
            return Err(SubmitError::TooLong { used: meta.bytes_used, len });
        }
        if !FrameFlags::USER.contains(meta.flags) {
            return Err(SubmitError::ReservedFlags(meta.flags.bits()));
        }
        let seq = self.next_seq;
        let active: Vec<u32> = (0..self.conns.len() as u32)
            .filter(|&c| self.conns[c as usize].as_ref().is_some_and(|conn| !conn.evicted))
            .collect();
        let buffer = self.maps[index as usize].buffer();
        let sync_file = if meta.sync_file
            && buffer.kind() == BufferKind::DmaBuf
            && active.iter().any(|&c| self.conns[c as usize].as_ref().is_some_and(|x| x.want_sync))
        {
            // READ: the sync_file signals when writers (the producer's device)
            // are done, which is what a reading consumer must wait for.
            Some(
                dmabroker_sys::dma_buf::export_sync_file(buffer, dmabroker_sys::dma_buf::DMA_BUF_SYNC_READ as u32)
                    .map_err(SubmitError::SyncFile)?,
            )
        } else {
            None
        };
        self.next_seq += 1;
        let now = now_ns();
        let holders = active.iter().fold(0u64, |m, &c| m | 1 << c);
        self.ctl.buf_seq(index).store(seq, Ordering::Relaxed);
        self.ctl.buf_published_ns(index).store(now, Ordering::Relaxed);
        // Replaces PRODUCER_BIT; Release publishes the frame's bytes.
        self.ctl.buf_mask(index).store(holders, Ordering::Release);
        self.owned[index as usize] = false;
        let cap = self.ctl.geometry().ring_cap;
        for &c in &active {
            // What it took so far is received; this buffer's new frame is not yet.
            self.observe(c, now);
            if let Some(at) = self.conns[c as usize].as_mut().and_then(|x| x.received_at.get_mut(index as usize)) {
                *at = None;
            }
        }
        for c in active {
            let conn = self.conns[c as usize].as_ref();
            let head = self.ctl.head(c);
            let h = head.load(Ordering::Relaxed);
            if h.wrapping_sub(self.ctl.tail(c).load(Ordering::Acquire)) >= cap {
                // Unreachable while the ring holds one entry per buffer at most;
                // kept so a corrupted tail cannot make us overwrite unread entries.
                self.ctl.buf_mask(index).fetch_and(!(1u64 << c), Ordering::AcqRel);
                self.ctl.slot_dropped(c).fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut flags = meta.flags;
            if let (Some(fd), Some(conn)) = (&sync_file, conn.filter(|x| x.want_sync)) {
                // Sent before the entry is visible, so the consumer finds it
                // queued when it sees the flag. A full socket loses the fence,
                // not the frame: the flag is then left unset.
                let msg = transport::encode(&[seq], transport::MSG_SYNC);
                if transport::send(conn.socket.as_fd(), &msg, &[fd.as_fd()], true).is_ok() {
                    flags |= FrameFlags::SYNC_FILE;
                }
            }
            self.ctl.write_entry(
                c,
                h,
                &Entry {
                    seq,
                    timestamp_ns: now,
                    bytes_used: meta.bytes_used,
                    meta: meta.meta,
                    index,
                    flags: flags.bits(),
                },
            );
            // SeqCst store, then SeqCst load of `waiting`: pairs with the
            // consumer's store of `waiting` and load of `head` (Dekker).
            head.store(h.wrapping_add(1), Ordering::SeqCst);
            if let Some(conn) = self.conns[c as usize].as_mut() {
                conn.queued.push_back((h, index));
            }
            self.ctl.slot_published(c).fetch_add(1, Ordering::Relaxed);
            if self.ctl.waiting(c).load(Ordering::SeqCst) != 0 {
                let _ = futex::wake(head, futex::Flags::empty(), 1);
                self.ctl.slot_wakes(c).fetch_add(1, Ordering::Relaxed);
            }
        }
        self.ctl.produced().fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    /// Accept new consumers, finish handshakes, reap dead consumers, evict
    /// hung ones. Runs inside [`Producer::acquire`]; call it when the producer
    /// idles for long between frames.
    pub fn maintain_now(&mut self) {
        self.maintain(now_ns());
    }

    fn maintain(&mut self, now: u64) {
        self.last_maintenance = now;
        // Reap first: the slot of a consumer that hung up is free again
        // before a newcomer (perhaps the same consumer reconnecting) asks.
        self.reap(now);
        self.service_connections(now);
    }

    /// Accept new connections and answer those that said HELLO: attach
    /// them, or refuse them (full; closed, which is answered without
    /// waiting for the HELLO).
    fn service_connections(&mut self, now: u64) {
        if let Some(listener) = &self.listener {
            while let Ok(Some(socket)) = listener.try_accept() {
                self.pending.push(Pending { socket: CloseLater::connection(socket), since: now, refused: false });
            }
        }
        for mut p in std::mem::take(&mut self.pending) {
            if self.closed && !p.refused {
                // Answered before its HELLO is even read: the consumer
                // finds the answer whenever it sent its HELLO.
                transport::refuse_closed(p.socket.as_fd());
                p.refused = true;
            }
            if p.refused {
                let (open, read_hello) = transport::drain(p.socket.as_fd());
                if open && !read_hello && now.saturating_sub(p.since) < HELLO_TIMEOUT_NS {
                    self.pending.push(p);
                }
                continue;
            }
            match transport::recv(p.socket.as_fd(), true) {
                Ok(Some((bytes, fds))) => {
                    // A HELLO carries no fd: whatever came along is closed
                    // off the frame path (its release may block).
                    crate::closer::close_all_later(fds);
                    match transport::decode(&bytes, Vec::new()) {
                        Ok(m) if m.kind == transport::MSG_HELLO => self.finish_attach(p.socket, &m.words),
                        // Not a pool consumer: hang up on it (off the frame path too).
                        _ => {}
                    }
                }
                Err(Errno::AGAIN) if now.saturating_sub(p.since) < HELLO_TIMEOUT_NS => self.pending.push(p),
                _ => {}
            }
        }
    }

    fn finish_attach(&mut self, socket: CloseLater, hello: &[u64]) {
        let refuse = |reason: u32| {
            let _ = transport::send(
                socket.as_fd(),
                &transport::encode(&[reason as u64], transport::MSG_REFUSED),
                &[],
                true,
            );
        };
        if self.closed {
            return refuse(transport::REFUSED_CLOSED);
        }
        let Some(slot) = (0..self.conns.len() as u32)
            .find(|&c| self.conns[c as usize].is_none() && self.ctl.slot_state(c).load(Ordering::Acquire) == SLOT_FREE)
        else {
            return refuse(transport::REFUSED_FULL);
        };
        let want_sync = hello.first().is_some_and(|f| f & u64::from(transport::HELLO_WANT_SYNC_FILES) != 0);
        let want_properties = hello.first().is_some_and(|f| f & u64::from(transport::HELLO_WANT_PROPERTIES) != 0);
        let hello_pid = hello.get(1).and_then(|&p| u32::try_from(p).ok()).filter(|&p| p != 0);
        let creds = rustix::net::sockopt::socket_peercred(&socket)
            .ok()
            .map(|c| PeerCred { pid: c.pid.as_raw_nonzero().get() as u32, uid: c.uid.as_raw() });
        // The pidfd catches a consumer that died while a forked child keeps
        // its socket open; the socket catches everything else.
        let (pid, pidfd) = watch_consumer(creds, hello_pid);
        self.ctl.reset_slot(slot, pid);
        self.ctl.slot_state(slot).store(SLOT_ACTIVE, Ordering::Release);
        let g = self.ctl.geometry();
        let ctl_len = self.ctl.len() as u64;
        let mut words = vec![
            slot as u64,
            g.nbuf as u64,
            g.ring_cap as u64,
            g.max_consumers as u64,
            g.policy as u64,
            g.buf_len,
            ctl_len,
        ];
        // The buffers' physical properties (all alike: allocated together),
        // so a non-coherent pool keeps its cache maintenance in consumers.
        if let (true, Some(m)) = (want_properties, self.maps.first()) {
            let p = m.buffer().properties();
            words.extend([
                p.contiguous_up_to,
                u64::from(p.cache == crate::buffer::CacheMode::Uncached),
                u64::from(p.coherency == crate::buffer::Coherency::NonCoherent),
            ]);
        }
        let mut fds = vec![self.ctl_fd.as_fd()];
        // Read-only reopens of memfds; dma-bufs as they are.
        fds.extend(
            self.maps.iter().zip(&self.shared).map(|(m, ro)| ro.as_ref().map_or(m.buffer().as_fd(), AsFd::as_fd)),
        );
        if transport::send(socket.as_fd(), &transport::encode(&words, transport::MSG_WELCOME), &fds, true).is_err() {
            self.ctl.slot_state(slot).store(SLOT_FREE, Ordering::Release);
            return;
        }
        tracing::debug!(slot, pid, "pool consumer attached");
        self.conns[slot as usize] = Some(Conn {
            socket,
            pidfd,
            pid,
            want_sync,
            evicted: false,
            queued: VecDeque::new(),
            received_at: vec![None; self.maps.len()],
            progress: 0,
            progress_ns: now_ns(),
        });
    }

    /// Find consumers that died (socket hang-up, pidfd readable) or hold a
    /// frame past the release timeout.
    fn reap(&mut self, now: u64) {
        use rustix::event::{PollFd, PollFlags};
        let mut dead = Vec::new();
        {
            let mut who = Vec::new();
            let mut fds = Vec::new();
            for (c, conn) in self.conns.iter().enumerate() {
                if let Some(conn) = conn {
                    who.push(c);
                    fds.push(PollFd::new(&conn.socket, PollFlags::RDHUP));
                    if let Some(p) = &conn.pidfd {
                        who.push(c);
                        fds.push(PollFd::new(p, PollFlags::IN));
                    }
                }
            }
            if !fds.is_empty() && rustix::event::poll(&mut fds, Some(&timespec(Duration::ZERO))).is_ok() {
                for (c, fd) in who.iter().zip(&fds) {
                    if !fd.revents().is_empty() && !dead.contains(c) {
                        dead.push(*c);
                    }
                }
            }
        }
        for c in dead {
            self.lose(c as u32, false);
        }
        // Only the producer sets consumer bits, and only for attached,
        // non-evicted consumers; an evicted one keeps its bits (quarantine)
        // until its socket closes, which clears them. Any other bit was
        // written by a misbehaving peer and would pin the buffer forever.
        let live = self.conns.iter().enumerate().filter(|(_, conn)| conn.is_some()).fold(0u64, |m, (c, _)| m | 1 << c);
        let mut cleared = false;
        for i in 0..self.maps.len() as u32 {
            // The producer bit of a buffer the producer does not hold is a
            // peer's forgery too.
            let stale = if self.owned[i as usize] { !(live | PRODUCER_BIT) } else { !live };
            let mask = self.ctl.buf_mask(i);
            if mask.load(Ordering::Relaxed) & stale != 0 {
                mask.fetch_and(!stale, Ordering::AcqRel);
                cleared = true;
            }
        }
        if cleared {
            tracing::warn!("pool control block had holder bits of no attached consumer: cleared");
        }
        if let Some(timeout) = self.options.release_timeout {
            self.evict_overdue(now, nanos(timeout));
        }
    }

    /// Note what consumer `c` took from its ring since last looked at (the
    /// receipt time of those frames: now) and whether it made progress.
    fn observe(&mut self, c: u32, now: u64) {
        let tail = self.ctl.tail(c).load(Ordering::Acquire);
        let counters = self
            .ctl
            .slot_received(c)
            .load(Ordering::Relaxed)
            .wrapping_add(self.ctl.slot_released(c).load(Ordering::Relaxed));
        let Some(conn) = self.conns[c as usize].as_mut() else { return };
        if counters != conn.progress {
            conn.progress = counters;
            conn.progress_ns = now;
        }
        // Positions wrap: an entry is behind the tail when tail - pos,
        // as a signed distance, is positive (the ring is far smaller than 2^31).
        while let Some(&(pos, index)) = conn.queued.front() {
            if tail.wrapping_sub(pos) as i32 <= 0 {
                break;
            }
            conn.queued.pop_front();
            if let Some(at) = conn.received_at.get_mut(index as usize) {
                *at = Some(now);
            }
        }
    }

    /// Evict the consumers past the release timeout (`limit` ns): one that
    /// holds a frame it received more than `limit` ago, or one with a
    /// frame waiting unreceived in its ring that made no progress (took
    /// or released no frame) for `limit` since that frame's hand-off. A
    /// slow consumer whose frames wait in its ring while it works through
    /// the earlier ones is not evicted.
    fn evict_overdue(&mut self, now: u64, limit: u64) {
        let slots = self.conns.len() as u32;
        for c in 0..slots {
            if self.conns[c as usize].as_ref().is_some_and(|x| !x.evicted) {
                self.observe(c, now);
            }
        }
        for i in 0..self.maps.len() as u32 {
            let mask = self.ctl.buf_mask(i).load(Ordering::Acquire) & !PRODUCER_BIT;
            if mask == 0 {
                continue;
            }
            let published = self.ctl.buf_published_ns(i).load(Ordering::Relaxed);
            for c in bits(mask, slots) {
                let Some(conn) = self.conns[c as usize].as_ref().filter(|x| !x.evicted) else { continue };
                let (overdue, why) = match conn.received_at.get(i as usize).copied().flatten() {
                    Some(at) => (now.saturating_sub(at) > limit, "held a frame past the release timeout"),
                    None => (
                        now.saturating_sub(published.max(conn.progress_ns)) > limit,
                        "made no progress for the release timeout",
                    ),
                };
                if overdue {
                    tracing::warn!(slot = c, "pool consumer {why}: evicted");
                    self.lose(c, true);
                }
            }
        }
    }

    /// Consumer `c` is gone (`evict = false`: take back everything it holds
    /// and free its slot) or evicted (`evict = true`): an evicted consumer
    /// keeps its slot and the bits of the buffers it holds (quarantined)
    /// until its socket hangs up, so no frame it may still be reading is
    /// overwritten, and a late release from a live-but-hung process cannot
    /// clear a successor's bit.
    fn lose(&mut self, c: u32, evict: bool) {
        let Some(conn) = self.conns[c as usize].as_mut() else { return };
        let already = conn.evicted;
        if !already {
            self.lost_consumers += 1;
        }
        if evict {
            conn.evicted = true;
            self.ctl.slot_state(c).store(SLOT_EVICTED, Ordering::SeqCst);
            // The mark is visible before any later write to the buffers it
            // held: a consumer that reads a buffer, then still sees itself
            // active (`Frame::is_valid`), read no byte written after it.
            std::sync::atomic::fence(Ordering::SeqCst);
            // Wake it so it learns of the eviction now, not at its next timeout.
            let _ = futex::wake(self.ctl.head(c), futex::Flags::empty(), u32::MAX);
            // Frames still queued in its ring, not received: take them back
            // entry by entry with the same tail CAS the consumer uses to
            // receive (exactly one side wins each), so none of them can be
            // read any more.
            let bit = 1u64 << c;
            let nbuf = self.maps.len() as u32;
            loop {
                let t = self.ctl.tail(c).load(Ordering::Acquire);
                if self.ctl.head(c).load(Ordering::Acquire) == t {
                    break;
                }
                let e = self.ctl.read_entry(c, t);
                if self.ctl.tail(c).compare_exchange(t, t.wrapping_add(1), Ordering::AcqRel, Ordering::Relaxed).is_ok()
                    && e.index < nbuf
                {
                    self.ctl.buf_mask(e.index).fetch_and(!bit, Ordering::AcqRel);
                    self.ctl.slot_dropped(c).fetch_add(1, Ordering::Relaxed);
                }
            }
            // Quarantine: the buffers it received and still holds keep its
            // bit (so none is handed out again and overwritten while it may
            // still read it) until it releases them or its socket closes.
            self.ctl.free_seq().fetch_add(1, Ordering::Relaxed);
            return;
        } else {
            tracing::debug!(slot = c, pid = conn.pid, "pool consumer gone");
            self.conns[c as usize] = None;
            self.ctl.slot_state(c).store(SLOT_FREE, Ordering::Release);
        }
        // Also when an evicted slot is finally freed: no bit of it may
        // survive into the next consumer that gets this slot.
        let bit = 1u64 << c;
        for i in 0..self.maps.len() as u32 {
            self.ctl.buf_mask(i).fetch_and(!bit, Ordering::AcqRel);
        }
        self.ctl.free_seq().fetch_add(1, Ordering::Relaxed);
    }

    /// Counters of the pool and of each consumer.
    pub fn stats(&self) -> PoolStats {
        let consumers = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(c, conn)| conn.as_ref().map(|conn| (c as u32, conn)))
            .map(|(c, conn)| ConsumerStats {
                slot: c,
                pid: conn.pid,
                delivered: self.ctl.slot_published(c).load(Ordering::Relaxed),
                received: self.ctl.slot_received(c).load(Ordering::Relaxed),
                released: self.ctl.slot_released(c).load(Ordering::Relaxed),
                dropped: self.ctl.slot_dropped(c).load(Ordering::Relaxed),
                wakes: self.ctl.slot_wakes(c).load(Ordering::Relaxed),
                evicted: conn.evicted,
            })
            .collect();
        PoolStats {
            produced: self.ctl.produced().load(Ordering::Relaxed),
            dropped: self.ctl.dropped().load(Ordering::Relaxed),
            lost_consumers: self.lost_consumers,
            consumers,
        }
    }

    /// End the stream in order: consumers receive the frames already handed
    /// off, then [`super::PoolError::Closed`]. Also done on drop.
    ///
    /// Consumers still in their handshake are refused with
    /// [`super::AttachError::Closed`] now; those that connect later, while the
    /// producer lives, at its next call that services handshakes or when it
    /// is dropped (see [`Producer`]).
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.ctl.stream_state().store(STREAM_CLOSED, Ordering::SeqCst);
        for c in 0..self.conns.len() as u32 {
            if self.conns[c as usize].is_some() {
                let _ = futex::wake(self.ctl.head(c), futex::Flags::empty(), u32::MAX);
            }
        }
        // Only the connections: no health check or eviction here, which
        // could take back frames handed off before the close.
        self.service_connections(now_ns());
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.close();
        // Answer whoever connected since: "closed", not a hang-up.
        self.service_connections(now_ns());
    }
}

/// What `SO_PEERCRED` said about a consumer's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PeerCred {
    pid: u32,
    uid: u32,
}

/// Which process to watch for a consumer, and its pidfd: see the module
/// docs' [consumer identity](super#consumer-identity).
fn watch_consumer(creds: Option<PeerCred>, hello_pid: Option<u32>) -> (u32, Option<OwnedFd>) {
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
fn proc_status(pid: u32, key: &str) -> Option<Vec<u32>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix(key))?;
    line.split_whitespace().map(|w| w.parse().ok()).collect()
}

/// True when the process behind `pidfd` has exited.
fn pidfd_fired(pidfd: &OwnedFd) -> bool {
    use rustix::event::{PollFd, PollFlags};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    rustix::event::poll(&mut fds, Some(&timespec(Duration::ZERO))).map_or(true, |n| n > 0)
}

/// Mode 0600 for a pool memfd (its owner and root may still reopen it
/// writable; they could write it anyway). A file that cannot be changed is
/// accepted only when nobody but its owner may write it already.
fn make_private(buffer: &Buffer) -> Result<(), Errno> {
    match rustix::fs::fchmod(buffer, rustix::fs::Mode::from_raw_mode(0o600)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let st = rustix::fs::fstat(buffer)?;
            if st.st_mode & 0o022 == 0 {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// Iterate the set bits of a holder mask as consumer slots below `slots`
/// (the mask lives in shared memory: it may name slots that do not exist).
fn bits(mask: u64, slots: u32) -> impl Iterator<Item = u32> {
    let mask = mask & !PRODUCER_BIT;
    (0..slots.min(63)).filter(move |c| mask & (1 << c) != 0)
}

/// A duration in nanoseconds, saturating (`as u64` would wrap huge ones to
/// small values: a "practically forever" release timeout evicting at once).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(super) fn create_control(geometry: Geometry) -> Result<(OwnedFd, Control), CreateError> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let err = |op| move |source| CreateError::ControlBlock { op, source };
    let len = geometry.control_len().ok_or(CreateError::BufferCount(geometry.nbuf as usize))?;
    let len = len.next_multiple_of(rustix::param::page_size());
    let fd = rustix::fs::memfd_create("dmabroker:pool-control", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(err("memfd_create"))?;
    rustix::fs::ftruncate(&fd, len as u64).map_err(err("ftruncate"))?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(err("F_ADD_SEALS"))?;
    let map = AtomicMapping::map(&fd, len, true).map_err(|e| match e {
        MapError::Os(source) => CreateError::ControlBlock { op: "mmap", source },
        _ => CreateError::ControlBlock { op: "mmap (seals)", source: Errno::PERM },
    })?;
    let ctl =
        Control::new(map, geometry).ok_or(CreateError::ControlBlock { op: "size check", source: Errno::INVAL })?;
    Ok((fd, ctl))
}

/// A free buffer the producer is filling. [`WriteSlot::submit`] hands it
/// off; dropping it unsubmitted returns it to the pool.
#[derive(Debug)]
#[must_use = "dropping the slot unsubmitted returns it to the pool"]
pub struct WriteSlot<'p> {
    producer: &'p mut Producer,
    index: u32,
    submitted: bool,
}

impl WriteSlot<'_> {
    /// The buffer's index in the pool.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The buffer (to queue it to a device, e.g. `V4L2_MEMORY_DMABUF`).
    pub fn buffer(&self) -> &Buffer {
        self.producer.maps[self.index as usize].buffer()
    }

    /// Its CPU mapping: write through [`BufferMapping::begin_write`].
    pub fn mapping(&mut self) -> &mut BufferMapping {
        &mut self.producer.maps[self.index as usize]
    }

    /// Keep the buffer out of the pool without handing off a frame, e.g.
    /// while it is queued in a capture device that will fill it
    /// (`V4L2_MEMORY_DMABUF`). [`Producer::acquire`] never returns a lent
    /// buffer; [`Producer::reclaim`] takes it back to submit it (or, dropped
    /// unsubmitted, to return it to the pool). Returns its index.
    pub fn lend(mut self) -> u32 {
        // The producer bit stays set: to consumers and to take_free the
        // buffer is in use, exactly as while this slot existed.
        self.submitted = true;
        self.index
    }

    /// Hand the frame to every attached consumer; returns its sequence number.
    ///
    /// # Errors
    /// [`SubmitError`]; the buffer goes back to the pool.
    pub fn submit(mut self, meta: FrameMeta) -> Result<u64, SubmitError> {
        let seq = self.producer.publish(self.index, &meta)?;
        self.submitted = true;
        Ok(seq)
    }
}

impl Drop for WriteSlot<'_> {
    fn drop(&mut self) {
        if !self.submitted {
            self.producer.ctl.buf_mask(self.index).store(0, Ordering::Release);
            self.producer.owned[self.index as usize] = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lent_buffers_stay_out_of_the_pool_until_reclaimed() {
        let heaps = Heaps::discover();
        let mut p = Producer::allocate(&heaps, "memfd", &PoolOptions::new(2, 4096)).unwrap();
        let lent = p.acquire(Some(Duration::ZERO)).unwrap().lend();
        // Not lent: the other buffer is free, an index out of range is nothing.
        assert!(p.reclaim(1 - lent).is_none());
        assert!(p.reclaim(7).is_none());
        // acquire only ever finds the other one.
        for _ in 0..3 {
            let slot = p.acquire(Some(Duration::ZERO)).unwrap();
            assert_eq!(slot.index(), 1 - lent);
        }
        let other = p.acquire(Some(Duration::ZERO)).unwrap().lend();
        assert!(matches!(p.acquire(Some(Duration::ZERO)), Err(AcquireError::Timeout(_))));
        // Reclaimed and submitted (no consumers): free again.
        let slot = p.reclaim(lent).expect("lent");
        assert_eq!(slot.index(), lent);
        slot.submit(FrameMeta::new(1)).unwrap();
        assert_eq!(p.acquire(Some(Duration::ZERO)).unwrap().index(), lent);
        // Reclaimed and dropped unsubmitted: back in the pool too.
        drop(p.reclaim(other).expect("lent"));
        assert!(p.reclaim(other).is_none());
        assert_eq!(p.stats().produced, 1);
    }

    /// A producer and `n` consumers attached over socket pairs (in-process).
    fn pool(options: &PoolOptions, n: usize) -> (Producer, Vec<crate::pool::Consumer>) {
        let mut p = Producer::allocate(&Heaps::discover(), "memfd", options).unwrap();
        let consumers = (0..n)
            .map(|_| {
                let (a, b) = crate::pool::socket_pair().unwrap();
                p.attach(a).unwrap();
                let t = std::thread::spawn(move || crate::pool::Consumer::attach(b, &Default::default()).unwrap());
                assert!(p.wait_for_consumers(p.attached() + 1, Duration::from_secs(5)));
                t.join().unwrap()
            })
            .collect();
        (p, consumers)
    }

    /// Finding 7: memfd pool buffers were left mode 0777, so a consumer of
    /// another uid could reopen its read-only fd read-write.
    #[test]
    fn memfd_pool_buffers_are_private_before_read_only_fds_go_out() {
        let p = Producer::allocate(&Heaps::discover(), "memfd", &PoolOptions::new(2, 4096)).unwrap();
        for ro in p.shared.iter().flatten() {
            assert_eq!(rustix::fs::fstat(ro).unwrap().st_mode & 0o777, 0o600);
        }
        assert_eq!(p.shared.iter().flatten().count(), 2);
    }

    /// Finding 7: bit 63 (the producer's) set by a consumer on every buffer
    /// stopped the producer for good (no buffer looked free or droppable).
    #[test]
    fn a_forged_producer_bit_cannot_stop_the_producer() {
        let mut p = Producer::allocate(&Heaps::discover(), "memfd", &PoolOptions::new(2, 4096)).unwrap();
        for i in 0..2 {
            p.ctl.buf_mask(i).store(PRODUCER_BIT, Ordering::Relaxed);
        }
        assert!(p.reclaim(1).is_none(), "a forged bit is not a lent buffer");
        p.maintain_now();
        let slot = p.acquire(Some(Duration::from_millis(500))).expect("the forged bits were cleared");
        drop(slot);
    }

    #[test]
    fn garbage_holder_bits_neither_panic_nor_pin_buffers() {
        // Bits a peer wrote into the shared masks: a slot beyond the pool's
        // consumer count, and an existing slot nobody is attached to.
        for (policy, timeout) in [
            (Backpressure::DropOldest, None),
            (Backpressure::DropOldest, Some(Duration::from_millis(1))),
            (Backpressure::Block, Some(Duration::from_millis(1))),
            (Backpressure::Block, None),
        ] {
            let opts = PoolOptions::new(2, 4096).max_consumers(2).backpressure(policy).release_timeout(timeout);
            let mut p = Producer::allocate(&Heaps::discover(), "memfd", &opts).unwrap();
            p.ctl.buf_mask(0).store(1 << 40 | 1 << 1, Ordering::Relaxed);
            p.ctl.buf_mask(1).store(1 << 62, Ordering::Relaxed);
            // Directly: drop-oldest must not index slot 40 or 62.
            assert_eq!(p.drop_oldest(), None);
            // Maintenance clears them, so the buffers come back.
            let a = p.acquire(Some(Duration::from_secs(1))).unwrap().lend();
            let b = p.acquire(Some(Duration::from_secs(1))).unwrap().lend();
            assert_ne!(a, b);
        }
    }

    #[test]
    fn huge_release_timeout_does_not_wrap_to_a_short_one() {
        // 18446744074 s is 2^64 ns plus about 0.29 s: `as u64` made it 0.29 s.
        let opts = PoolOptions::new(1, 4096).release_timeout(Some(Duration::from_secs(18_446_744_074)));
        let (mut p, mut c) = pool(&opts, 1);
        p.acquire(None).unwrap().submit(FrameMeta::new(1)).unwrap();
        let _frame = c[0].recv(Some(Duration::from_secs(1))).unwrap();
        p.ctl.buf_published_ns(0).store(now_ns() - 1_000_000_000, Ordering::Relaxed);
        p.maintain_now();
        assert_eq!(p.attached(), 1, "evicted after 1 s with a timeout of centuries");
    }

    #[test]
    fn consumer_whose_slot_was_given_to_another_does_not_read_its_ring() {
        let opts = PoolOptions::new(2, 4096).max_consumers(1);
        let (mut p, mut old) = pool(&opts, 1);
        // The producer thinks the first consumer dead (e.g. its pidfd fired)
        // and gives slot 0 to a new one while the first still runs.
        p.lose(0, false);
        let (a, b) = crate::pool::socket_pair().unwrap();
        p.attach(a).unwrap();
        let t = std::thread::spawn(move || crate::pool::Consumer::attach(b, &Default::default()).unwrap());
        assert!(p.wait_for_consumers(1, Duration::from_secs(5)));
        let mut new = t.join().unwrap();
        assert_eq!(new.slot(), 0);
        p.acquire(None).unwrap().submit(FrameMeta::new(1)).unwrap();
        assert!(matches!(old[0].recv(Some(Duration::ZERO)), Err(crate::pool::PoolError::Evicted)));
        let frame = new.recv(Some(Duration::from_secs(1))).unwrap();
        assert_eq!(frame.info().seq, 0);
        // The old one going away must not release the new one's claim.
        drop(old);
        assert_eq!(p.ctl.buf_mask(frame.info().index).load(Ordering::Relaxed), 1);
    }

    /// A process of ours that lives until killed: stands for a consumer
    /// started by a launcher.
    fn child() -> std::process::Child {
        std::process::Command::new("sleep").arg("60").spawn().expect("spawn sleep")
    }

    fn me() -> PeerCred {
        PeerCred { pid: std::process::id(), uid: rustix::process::geteuid().as_raw() }
    }

    #[test]
    fn consumer_identity_rules() {
        let mut kid = child();
        let kid_pid = kid.id();
        // Connected itself (or an old HELLO without a pid): SO_PEERCRED's pid.
        for hello in [Some(me().pid), None] {
            let (pid, fd) = watch_consumer(Some(me()), hello);
            assert_eq!(pid, me().pid);
            assert!(fd.is_some());
        }
        // A launcher's socketpair: the HELLO pid, same user.
        let (pid, fd) = watch_consumer(Some(me()), Some(kid_pid));
        assert_eq!(pid, kid_pid);
        assert!(fd.is_some());
        // Another user's process: socket only.
        let stranger = PeerCred { uid: me().uid.wrapping_add(1), ..me() };
        let (pid, fd) = watch_consumer(Some(stranger), Some(kid_pid));
        assert_eq!(pid, me().pid);
        assert!(fd.is_none());
        // A pid that names nothing (pid_max is at most 2^22): socket only.
        let (pid, fd) = watch_consumer(Some(me()), Some(u32::MAX >> 1));
        assert_eq!(pid, me().pid);
        assert!(fd.is_none());
        // Not even a pid_t (regression: debug builds panicked on these).
        for claimed in [1 << 31, u32::MAX] {
            let (pid, fd) = watch_consumer(Some(me()), Some(claimed));
            assert_eq!(pid, me().pid);
            assert!(fd.is_none());
        }
        // No credentials at all.
        assert_eq!(watch_consumer(None, Some(kid_pid)).0, 0);
        kid.kill().unwrap();
        kid.wait().unwrap();
        // Exited and reaped: nothing to open.
        assert!(watch_consumer(Some(me()), Some(kid_pid)).1.is_none());
    }

    #[test]
    fn socketpair_consumer_is_watched_by_its_hello_pid() {
        let mut p = Producer::allocate(&Heaps::discover(), "memfd", &PoolOptions::new(2, 4096)).unwrap();
        // We made the pair (the launcher); the consumer is another process
        // that says so in its HELLO. Its socket end stays open here.
        let mut kid = child();
        let (a, b) = crate::pool::socket_pair().unwrap();
        p.attach(a).unwrap();
        let hello = transport::encode(&[0, u64::from(kid.id())], transport::MSG_HELLO);
        transport::send(b.as_fd(), &hello, &[], false).unwrap();
        assert!(p.wait_for_consumers(1, Duration::from_secs(5)));
        assert_eq!(p.stats().consumers[0].pid, kid.id());
        let (welcome, fds) = transport::recv(b.as_fd(), false).unwrap().unwrap();
        let welcome = transport::decode(&welcome, fds).unwrap();
        assert_eq!(welcome.kind, transport::MSG_WELCOME);
        assert_eq!(welcome.words[6], p.ctl.len() as u64, "the WELCOME advertises the control length");
        // The launcher (us) lives on and the socket is open: only the
        // consumer's pidfd can tell that it died.
        kid.kill().unwrap();
        kid.wait().unwrap();
        p.maintain_now();
        assert_eq!(p.attached(), 0);
        assert_eq!(p.stats().lost_consumers, 1);
        drop(b);
    }

    #[test]
    fn corrupt_entry_flags_release_the_buffer() {
        let opts = PoolOptions::new(2, 4096);
        let (mut p, mut c) = pool(&opts, 1);
        p.acquire(None).unwrap().submit(FrameMeta::new(1)).unwrap();
        let mut e = p.ctl.read_entry(0, 0);
        e.flags = 1 << 20;
        p.ctl.write_entry(0, 0, &e);
        assert!(matches!(c[0].recv(Some(Duration::from_secs(1))), Err(crate::pool::PoolError::Corrupt(_))));
        assert_eq!(p.ctl.buf_mask(e.index).load(Ordering::Relaxed), 0, "claim kept after a corrupt entry");
    }
}
