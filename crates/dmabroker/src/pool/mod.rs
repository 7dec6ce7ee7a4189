//! Zero-copy streaming pools: buffers shared once, frames handed off by index
//! through a shared ring.
//!
//! A [`Producer`] owns N buffers of one size (from any heap). Each
//! [`Consumer`] attaches over a `SOCK_SEQPACKET` socket and receives, once,
//! the fds of the buffers and of a small control block (a sealed memfd) that
//! every side maps. From then on a frame is a 64-byte ring entry — buffer
//! index, sequence number, `CLOCK_MONOTONIC` timestamp, bytes used, flags and
//! one caller word (`meta`, e.g. a checksum) — written into each consumer's
//! ring; no fd and no byte of the frame crosses a socket.
//!
//! ```no_run
//! use dmabroker::pool::{Consumer, PoolOptions, Producer, WaitMode, FrameMeta};
//! use dmabroker::Heaps;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let heaps = Heaps::discover();
//! let mut producer = Producer::allocate(&heaps, "memfd", &PoolOptions::new(4, 4096))?;
//! producer.listen("/tmp/camera.pool")?;
//! // ... in another process:
//! let mut consumer = Consumer::connect("/tmp/camera.pool", WaitMode::default())?;
//! // producer:
//! let mut slot = producer.acquire(None)?;
//! slot.mapping().begin_write()?[..5].copy_from_slice(b"hello");
//! slot.submit(FrameMeta::new(5))?;
//! // consumer:
//! let mut frame = consumer.recv(None)?;
//! assert_eq!(&frame.read()?[..5], b"hello");
//! drop(frame); // releases the buffer back to the producer
//! # Ok(()) }
//! ```
//!
//! # Allocating for devices
//! [`Producer::allocate`] takes buffers from a named heap.
//! [`Producer::allocate_for`] takes them from the heap that meets the
//! [`Constraints`](crate::constraints::Constraints) of every device that will
//! touch them (through [`crate::constraints::allocate_for`]), and
//! [`Producer::choice`] says which heap and why.
//! [`Producer::allocate_for_layout`] sizes the buffers for a
//! [`Layout`](crate::format::Layout): one pool buffer per frame, also for
//! the `…M` formats, whose plane buffers then lie back to back in it
//! ([`plane_offsets`]).
//!
//! ```no_run
//! use dmabroker::constraints::Constraints;
//! use dmabroker::format::{Layout, LayoutOptions, PixelFormat};
//! use dmabroker::pool::{PoolOptions, Producer};
//! use dmabroker::Heaps;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let camera = Constraints::probe("/dev/video0")?;
//! let layout = Layout::new(PixelFormat::Nv12, 1920, 1080, &LayoutOptions::default())?;
//! let producer = Producer::allocate_for_layout(&Heaps::discover(), &camera, &PoolOptions::new(4, 0), &layout)?;
//! let choice = producer.choice().expect("allocated by constraints");
//! println!("{}: {}", choice.heap, choice.reasons.join("; "));
//! # Ok(()) }
//! ```
//!
//! # Holding several frames
//! A [`Frame`] borrows its consumer, so it must go before the next
//! [`Consumer::recv`]. To hold several buffers at once (a reorder window,
//! a frame compared with the previous ones, a device still scanning one
//! out), detach a frame with [`Frame::keep`]: the [`KeptFrame`] keeps its
//! buffer held while the consumer receives more. Read it with
//! [`Consumer::read_kept`] (or import [`Consumer::kept_buffer`] into a
//! device) and give it back with [`Consumer::release_kept`];
//! [`Consumer::held_count`] says how many buffers the consumer holds.
//!
//! ```no_run
//! use dmabroker::pool::{Consumer, WaitMode};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut consumer = Consumer::connect("/tmp/camera.pool", WaitMode::default())?;
//! let older = consumer.recv(None)?.keep();
//! let newer = consumer.recv(None)?.keep();
//! // One read guard at a time: each ends with its statement.
//! let now = consumer.read_kept(&newer)?[0];
//! let before = consumer.read_kept(&older)?[0];
//! println!("{} ({} buffers held)", now.wrapping_sub(before), consumer.held_count());
//! consumer.release_kept(older)?;
//! consumer.release_kept(newer)?;
//! # Ok(()) }
//! ```
//!
//! The rules:
//! - A held buffer is never reused or overwritten while its consumer is
//!   attached: the producer hands it out again only after every holder
//!   released it, and drop-oldest takes back only frames no consumer has
//!   received yet, never a kept one. Eviction too: the producer takes back
//!   the frames queued for the evicted consumer but not received, and
//!   quarantines the buffers it received and still holds: they are handed
//!   out again only once it releases them or its socket closes, so no
//!   frame a consumer may still be reading is ever overwritten (a hung
//!   consumer that holds many frames therefore costs the pool those
//!   buffers until it exits). [`Frame::is_valid`] or
//!   [`Consumer::check_kept`] (false / [`KeptError::Evicted`]) still say
//!   that the consumer was evicted: the stream has gaps from then on.
//! - A kept frame names the attachment that received it. The consumer
//!   methods refuse one from another consumer, or from an earlier
//!   attachment in the same process ([`KeptError::Foreign`];
//!   [`ForeignFrame`] hands the frame back), so it cannot release a
//!   buffer it does not hold.
//! - Dropping a [`KeptFrame`] does **not** release its buffer (it has no
//!   reference to its consumer). The buffer stays held until the consumer
//!   is dropped, or until the producer evicts the consumer for holding it
//!   past the release timeout.
//! - [`PoolOptions::release_timeout`] runs per frame, from its receipt
//!   (when the producer sees the consumer took it from its ring): keeping
//!   a frame longer than that gets the consumer evicted
//!   ([`PoolError::Evicted`] from `recv`, [`KeptError::Evicted`] from
//!   `read_kept` and `check_kept`), whatever it does with its other frames.
//!   Time a frame waits unreceived in the ring does not count while the
//!   consumer makes progress (receives or releases frames): a slow
//!   consumer is not evicted, one that stops receiving is, once it made
//!   no progress for the timeout since the frame's hand-off.
//! - Every frame kept is a buffer the producer cannot fill. A consumer that
//!   keeps all of them stalls a [`Backpressure::Block`] producer (and with
//!   it every other consumer) until it releases one or is evicted; under
//!   [`Backpressure::DropOldest`] the producer only drops frames not yet
//!   received and waits when there are none. Keep fewer frames than the
//!   pool has buffers, and size pools for the frames consumers keep.
//!
//! # Handoff and wake-up
//! The producer writes the entry, then stores the ring's `head` (SeqCst) and
//! reads the consumer's `waiting` word; the consumer sets `waiting` (SeqCst)
//! and re-reads `head` before `futex_wait(head)`. Either the producer sees the
//! sleeper and issues one `futex_wake` (shared, not `FUTEX_PRIVATE`, because
//! the word lives in memory mapped by two processes), or the consumer sees the
//! new head and never sleeps. A running consumer costs the producer no system
//! call; a consumer spins for [`WaitMode::Block`]'s `spin` before sleeping.
//!
//! # Release and fan-out
//! Each buffer has a holder mask (bit `c` = consumer slot `c`). Publishing
//! sets the bits of every attached consumer; releasing clears one; the buffer
//! is free when the mask is zero. Backpressure ([`Backpressure`]) decides
//! what the producer does when no buffer is free: wait, or take back the
//! oldest frame that consumers have not started reading (each ring's `tail`
//! is advanced by CAS, so an entry goes to the consumer or is dropped, never
//! both). Drops are counted per consumer and per pool ([`PoolStats`]).
//!
//! # Failure
//! The producer polls each consumer's socket and pidfd between frames (every
//! 10 ms, or at once when starved): a consumer that died loses its claims and
//! its slot. One that holds a received frame longer than
//! [`PoolOptions::release_timeout`], or leaves a frame unreceived while it
//! makes no progress for that long, is evicted ([`PoolError::Evicted`]).
//! Receipt times are the producer's own observations (at its maintenance
//! points, so up to about 10 ms late while frames flow); the progress
//! counters live in the shared control block, so a consumer can fake
//! progress, which only lets it stall a [`Backpressure::Block`] pool as a
//! consumer without a release timeout would.
//! Consumers tell an orderly end ([`PoolError::Closed`]) from a producer
//! crash ([`PoolError::ProducerGone`], socket hang-up without the closed
//! mark) and from a pause ([`PoolError::Timeout`]).
//!
//! # Synchronisation with devices
//! CPU access goes through [`crate::buffer::BufferMapping`] guards, which do
//! `DMA_BUF_IOCTL_SYNC` for dma-bufs. A device consumer can instead ask for
//! explicit fences: a producer that submits with [`FrameMeta::sync_file`] on
//! a dma-buf pool exports a sync_file (`DMA_BUF_IOCTL_EXPORT_SYNC_FILE`, read
//! access: it signals when the writers are done) and sends it over the
//! socket to each consumer that asked in its HELLO — the one exception to
//! "no fds per frame", paid only by those who ask. The entry carries
//! [`FrameFlags::SYNC_FILE`], and [`Frame::take_sync_file`] yields the fd.
//!
//! A producer whose device is still writing the frame when it hands it off
//! (a GPU render, a KMS writeback, a V4L2 out-fence) supplies that device's
//! fence instead: [`WriteSlot::submit_with_fence`] takes a
//! [`SyncFile`](crate::fence::SyncFile), an fd checked to be a sync_file
//! (anything else is refused, naming what it is:
//! [`NotASyncFile`](crate::fence::NotASyncFile)), and sends it the same way
//! to the consumers that asked. A consumer waits on it with a bound,
//! [`Frame::wait_fence`] (or [`KeptFrame::wait_fence`]): `Ok` once it
//! signalled; [`FenceError::Timeout`] at the deadline, and
//! [`FenceError::Failed`] when it signalled with an error, each naming the
//! frame's seq, the time waited and the fence (its sync_file name and every
//! timeline and driver in it, from `SYNC_IOC_FILE_INFO`). It never hangs.
//!
//! ```no_run
//! use dmabroker::fence::SyncFile;
//! use dmabroker::pool::{Consumer, ConsumerOptions, FenceImport, FrameMeta, Producer};
//! use std::time::Duration;
//! # fn gpu_render(_: &dmabroker::Buffer) -> std::os::fd::OwnedFd { unimplemented!() }
//! # fn f(producer: &mut Producer) -> Result<(), Box<dyn std::error::Error>> {
//! // producer: the GPU is still writing when the frame is handed off.
//! let slot = producer.acquire(None)?;
//! let done = SyncFile::new(gpu_render(slot.buffer()))?;
//! slot.submit_with_fence(FrameMeta::new(4096), done, FenceImport::Reservation)?;
//! // consumer (asked for fences in its HELLO):
//! let options = ConsumerOptions { want_sync_files: true, ..Default::default() };
//! let mut consumer = Consumer::connect_with("/tmp/gpu.pool", &options)?;
//! let mut frame = consumer.recv(None)?;
//! frame.wait_fence(Duration::from_millis(50))?; // or FenceError::Timeout naming the fence
//! let first = frame.read()?[0];
//! # let _ = first; Ok(()) }
//! ```
//!
//! Consumers that do not ask for fences (or sync implicitly: a CPU read
//! guard, a KMS commit without `IN_FENCE_FD`, a GPU import) see the fence
//! only if it is also in the dma-buf's reservation: with
//! [`FenceImport::Reservation`] the producer attaches it there as a write
//! fence (`DMA_BUF_IOCTL_IMPORT_SYNC_FILE`, Linux 6.0+, dma-buf pools), and
//! `DMA_BUF_IOCTL_SYNC` then waits for it — with no bound, so a fence that
//! never signals blocks those readers until its timeline goes away; call
//! [`Frame::wait_fence`] first to keep the wait bounded.
//! [`FenceImport::CarryOnly`] leaves the reservation alone. The import is
//! never done implicitly: the producer chooses per frame. The wire does not
//! change: the fence travels in the same `SYNC` message, flagged by the
//! same [`FrameFlags::SYNC_FILE`], so consumers built before this know it.
//!
//! A capture device that fills the buffers itself (`V4L2_MEMORY_DMABUF`)
//! borrows them: [`WriteSlot::lend`] keeps a buffer out of the pool while
//! the device holds it, and [`Producer::reclaim`] takes it back to submit
//! once the device returned it filled (see `dmabroker demo --source v4l2`).
//!
//! # Consumer identity
//! Besides its socket, the producer watches each consumer's process with a
//! pidfd, which catches a consumer that died while a child it forked keeps
//! the socket open. Which process? `SO_PEERCRED` names the process that
//! created the socket: the consumer itself when it connected to
//! [`Producer::listen`]'s path, but the launcher when a launcher made a
//! [`socket_pair`] and handed one end to the consumer it started (the
//! launcher may exit at once, which must not drop a live consumer). So the
//! consumer puts its own pid in its HELLO, and the producer:
//!
//! - watches the `SO_PEERCRED` pid when it equals the HELLO pid (also when
//!   the HELLO pid is that process's pid in a nested pid namespace, the last
//!   `NSpid:` of `/proc/<pid>/status`);
//! - otherwise (a socket made by someone else) watches the HELLO pid, but
//!   only when that process's effective uid (`Uid:` in `/proc/<pid>/status`,
//!   the uid `SO_PEERCRED` reports) equals the `SO_PEERCRED` uid. The pidfd is
//!   opened before the uid is read and checked unfired after, so a pid
//!   reused in between cannot slip through;
//! - otherwise watches the socket alone (no pidfd): a hang-up still ends
//!   the consumer, only the "child keeps the socket" case goes unnoticed.
//!
//! Residual trust: the HELLO pid is a claim, not a kernel fact. A consumer
//! can name any process of the uid that made its socket; it can then make
//! the producer drop it early (that process exits) or rely on its socket
//! alone (a long-lived one). Either way it harms only itself: the pid picks
//! which liveness signal ends its own slot and is shown in
//! [`ConsumerStats::pid`]; it grants nothing, and a same-uid process could
//! signal or trace that process anyway. A consumer in another pid namespace
//! behind a launcher's socketpair names a pid of its namespace, which may
//! be another (same-uid) process here, with the same bounded effect.
//!
//! # What a consumer verifies
//! Every received fd is checked before it is mapped: the control block must
//! be a memfd with `F_SEAL_SHRINK` and `F_SEAL_GROW` and exactly the length
//! the WELCOME advertised; each buffer must be a dma-buf (fixed size) or a
//! memfd with both seals, hold a whole frame, and still have the size it had
//! when adopted. A file that could shrink would let the producer, or anyone
//! holding the fd, kill the consumer with SIGBUS; attach fails instead with
//! [`AttachError::Unsealed`] or [`AttachError::Length`], naming the fd
//! ([`AttachFd`]) and the missing seal.
//!
//! Trust: every attached consumer maps the control block read-write; a
//! consumer can disturb the stream for others but cannot reach the
//! producer's memory outside the pool. Frame buffers of memfd (and hugetlb)
//! pools reach consumers as `O_RDONLY` fds, so a consumer's bug cannot
//! change a frame the others read (a hostile process of the same user could
//! still reopen the memfd read-write through /proc: this guards against
//! mistakes, not attacks). A dma-buf fd cannot be reopened read-only, and a
//! device import can write it anyway.
//!
//! # Contract: consumers of dma-buf pools do not write
//! A consumer of a dma-buf pool holds a writable fd of every frame buffer,
//! and nothing in the kernel stops it (or a device it hands the buffer to)
//! from writing one. The API's contract is that it does not: a consumer
//! reads frames only ([`Frame`] gives no mutable view), and gives the
//! buffers to devices only for reading. A pool whose consumers are not
//! trusted to keep this contract must use memfd or hugetlb buffers, whose
//! consumers get read-only fds.

mod consumer;
mod error;
pub(crate) mod layout;
mod named;
mod producer;
pub mod transport;

pub use consumer::{Consumer, ConsumerOptions, ForeignFrame, Frame, FrameInfo, KeptError, KeptFrame, WaitMode};
pub use error::{AcquireError, AttachError, AttachFd, CreateError, FenceError, PoolAllocError, PoolError, SubmitError};
pub use layout::{MAX_BUFFERS, MAX_CONSUMERS};
pub use named::{attach_by_name, AttachedPool, NamedPoolError, PoolRegistration};
pub use producer::{ConsumerStats, PoolStats, Producer, WriteSlot};
pub use transport::{connect, socket_pair, ListenError, PathLock, PoolListener};

use std::time::Duration;

/// Where each plane of `layout` lies in a buffer of a pool made by
/// [`Producer::allocate_for_layout`], in plane order. One-buffer formats:
/// the layout's own offsets. `…M` formats, whose planes have buffers of
/// their own elsewhere: the pool buffer holds those buffers back to back,
/// so plane `i` starts where the sizes of the buffers before its own end.
///
/// ```
/// use dmabroker::format::{Layout, LayoutOptions, PixelFormat};
/// let nv12m = Layout::new(PixelFormat::Nv12M, 64, 32, &LayoutOptions::default().with_size_align(4096))?;
/// assert_eq!(dmabroker::pool::plane_offsets(&nv12m), [0, 4096]);
/// # Ok::<(), dmabroker::format::LayoutError>(())
/// ```
pub fn plane_offsets(layout: &crate::format::Layout) -> Vec<u64> {
    let starts: Vec<u64> = layout
        .buffer_sizes()
        .iter()
        .scan(0u64, |at, &size| {
            let start = *at;
            // Cannot overflow: Layout checked that the sizes sum in range.
            *at += size;
            Some(start)
        })
        .collect();
    layout.planes().iter().map(|p| starts[p.buffer] + p.offset).collect()
}

/// What the producer does when every buffer is still held by a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backpressure {
    /// Wait until a consumer releases one (lossless; the slowest consumer
    /// sets the pace, bounded by the release timeout).
    #[default]
    Block,
    /// Take back the oldest frame that some consumers have not started
    /// reading yet (live video: fresh frames beat complete ones). Frames a
    /// consumer is reading are never taken; when all are, the producer waits.
    DropOldest,
}

impl Backpressure {
    fn to_word(self) -> u32 {
        match self {
            Self::Block => 1,
            Self::DropOldest => 2,
        }
    }
}

/// How a pool is shaped and behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOptions {
    /// Number of buffers (1 to [`MAX_BUFFERS`]); 4-8 suits video.
    pub buffers: usize,
    /// Bytes per buffer (rounded up to the heap's page size on allocation).
    pub buffer_len: u64,
    /// What happens when no buffer is free.
    pub backpressure: Backpressure,
    /// A consumer is evicted when it holds a received frame longer than
    /// this (counted from receipt), or when a frame waits unreceived in its
    /// ring while it takes and releases no frame for this long (counted
    /// from the later of the frame's hand-off and its last progress).
    /// `None` waits forever. See [the module docs](self#holding-several-frames).
    pub release_timeout: Option<Duration>,
    /// Most consumers attached at once (1 to [`MAX_CONSUMERS`]).
    pub max_consumers: u32,
    /// A name for the buffers (shown in `/proc/*/fd` and fdinfo).
    pub name: String,
}

impl PoolOptions {
    /// `buffers` buffers of `buffer_len` bytes, blocking backpressure, a 5 s
    /// release timeout, up to 8 consumers.
    pub fn new(buffers: usize, buffer_len: u64) -> Self {
        Self {
            buffers,
            buffer_len,
            backpressure: Backpressure::Block,
            release_timeout: Some(Duration::from_secs(5)),
            max_consumers: 8,
            name: "pool".into(),
        }
    }

    /// Set the backpressure policy.
    pub fn backpressure(mut self, policy: Backpressure) -> Self {
        self.backpressure = policy;
        self
    }

    /// Set (or remove) the release timeout.
    pub fn release_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.release_timeout = timeout;
        self
    }

    /// Set the consumer limit.
    pub fn max_consumers(mut self, n: u32) -> Self {
        self.max_consumers = n;
        self
    }

    /// Name the buffers.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

bitflags::bitflags! {
    /// Per-frame flags carried in the ring entry.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct FrameFlags: u32 {
        /// The frame can be decoded on its own (encoders).
        const KEY_FRAME = 1 << 0;
        /// The source reported an error for this frame (e.g. V4L2 `V4L2_BUF_FLAG_ERROR`).
        const ERROR = 1 << 1;
        /// Reserved for the pool: a sync_file accompanies the frame on the socket.
        const SYNC_FILE = 1 << 16;
    }
}

impl FrameFlags {
    /// Bits callers may set; the others are the pool's.
    pub const USER: Self = Self::KEY_FRAME.union(Self::ERROR);
}

/// What the producer says about a frame it submits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// Bytes of the buffer the frame occupies.
    pub bytes_used: u64,
    /// Flags ([`FrameFlags::USER`] bits only).
    pub flags: FrameFlags,
    /// One word for the application: a checksum, a device timestamp, ...
    pub meta: u64,
    /// Export a sync_file for consumers that asked (dma-buf pools only).
    pub sync_file: bool,
}

impl FrameMeta {
    /// A frame of `bytes_used` bytes with no flags.
    pub fn new(bytes_used: u64) -> Self {
        Self { bytes_used, flags: FrameFlags::empty(), meta: 0, sync_file: false }
    }

    /// Set the application word.
    pub fn meta(mut self, meta: u64) -> Self {
        self.meta = meta;
        self
    }

    /// Set flags.
    pub fn flags(mut self, flags: FrameFlags) -> Self {
        self.flags = flags;
        self
    }

    /// Ask for a sync_file to accompany the frame.
    pub fn sync_file(mut self, yes: bool) -> Self {
        self.sync_file = yes;
        self
    }
}

/// What the pool does with a fence the producer supplies
/// ([`WriteSlot::submit_with_fence`]) besides carrying it to the consumers
/// that asked for fences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceImport {
    /// Carry it only: consumers that asked ([`ConsumerOptions::want_sync_files`])
    /// wait on it ([`Frame::wait_fence`]); the others must not read the
    /// frame before the device finished it by some other means.
    CarryOnly,
    /// Also attach it to the dma-buf's reservation as a write fence
    /// (`DMA_BUF_IOCTL_IMPORT_SYNC_FILE`, Linux 6.0+), so that consumers
    /// that sync implicitly wait too: a CPU read guard
    /// (`DMA_BUF_IOCTL_SYNC`), a KMS commit without `IN_FENCE_FD`, a GPU
    /// import. Their waits have no bound: a fence that never signals blocks
    /// them until its timeline goes away. dma-buf pools only.
    Reservation,
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of frame timestamps, shared
/// by every process on the machine.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

/// A timespec for `futex_wait` from a duration.
pub(crate) fn timespec(d: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec { tv_sec: d.as_secs() as _, tv_nsec: d.subsec_nanos().into() }
}
