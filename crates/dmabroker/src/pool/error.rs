//! One error enum per pool operation.

use crate::buffer::{MapError, SyncError};
use crate::constraints::AllocForError;
use crate::heap::AllocError;
use rustix::io::Errno;

/// Why a pool could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// Fewer than 1 or more than [`super::MAX_BUFFERS`] buffers.
    #[error("a pool holds 1 to {max} buffers, {0} asked", max = super::MAX_BUFFERS)]
    BufferCount(usize),
    /// `max_consumers` out of range.
    #[error("a pool serves 1 to {max} consumers, {0} asked", max = super::MAX_CONSUMERS)]
    ConsumerCount(u32),
    /// The frame size is zero.
    #[error("buffer length 0: frames need at least one byte")]
    ZeroLength,
    /// A buffer is smaller than the pool's buffer length.
    #[error("buffer {index} has {len} bytes, the pool's frames need {need}: allocate buffers of one size")]
    BufferTooSmall {
        /// Which buffer.
        index: usize,
        /// Its length.
        len: u64,
        /// The pool's buffer length.
        need: u64,
    },
    /// A memfd buffer that any holder could truncate (which would SIGBUS every consumer).
    #[error("buffer {0} is a memfd without F_SEAL_SHRINK|F_SEAL_GROW: allocate it from a dmabroker heap")]
    Unsealed(usize),
    /// Allocation failed.
    #[error("allocating pool buffer {index}: {source}")]
    Alloc {
        /// Which buffer.
        index: usize,
        /// Why.
        #[source]
        source: AllocError,
    },
    /// Mapping a buffer for the producer failed.
    #[error("mapping pool buffer {index}: {source}")]
    Map {
        /// Which buffer.
        index: usize,
        /// Why.
        #[source]
        source: MapError,
    },
    /// Creating the shared control block failed.
    #[error("creating the pool's control block ({op}): {source}")]
    ControlBlock {
        /// The call that failed.
        op: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// A memfd buffer could not be reopened read-only for consumers
    /// (`open("/proc/self/fd/N", O_RDONLY)`: is /proc mounted?).
    #[error(
        "making pool buffer {index} private (fchmod 0600) or reopening it read-only for consumers \
         (/proc/self/fd: is /proc mounted? a memfd of another user that others may write cannot be made \
         private: pass buffers this process owns): {source}"
    )]
    ReadOnlyFd {
        /// Which buffer.
        index: usize,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Binding the attach socket failed.
    #[error(transparent)]
    Listen(#[from] super::ListenError),
}

/// Why [`super::Producer::allocate_for`] or
/// [`super::Producer::allocate_for_layout`] could not make a pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolAllocError {
    /// No heap meets the constraints, or every suitable heap failed, for
    /// buffer `index` (buffers before it were allocated and are freed again).
    #[error("allocating pool buffer {index} by constraints: {source}")]
    Alloc {
        /// Which buffer.
        index: usize,
        /// Why, with the heap choice's own reasons.
        #[source]
        source: AllocForError,
    },
    /// The buffers were allocated but the pool could not be made of them.
    #[error(transparent)]
    Create(#[from] CreateError),
}

/// Which of the fds received at attach time a check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachFd {
    /// The shared control block (always a memfd).
    ControlBlock,
    /// Pool buffer `n`.
    Buffer(usize),
}

impl std::fmt::Display for AttachFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ControlBlock => f.write_str("the control block"),
            Self::Buffer(n) => write!(f, "pool buffer {n}"),
        }
    }
}

/// Why a consumer could not attach (consumer side) or was not accepted
/// (producer side).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// Nobody listens on the path.
    #[error("no pool producer at {path}: is it running? ({source})")]
    NoProducer {
        /// The socket path.
        path: String,
        /// connect's errno.
        #[source]
        source: Errno,
    },
    /// The pool has `max_consumers` attached already.
    #[error("the pool is full (max_consumers reached): raise PoolOptions::max_consumers or detach a consumer")]
    PoolFull,
    /// Too many attaches of this user (or of everyone) are pending at the
    /// producer: the bound that keeps a flood of idle connections from
    /// costing the producer (see the producer's door).
    #[error(
        "the producer has too many attaches pending from this user (or in all): retry later; close idle \
         connections to the pool"
    )]
    Busy,
    /// The producer has closed the stream.
    #[error("the pool's stream is closed")]
    Closed,
    /// The peer is not a dmabroker pool, or speaks another version.
    #[error("the peer is not a dmabroker pool of this version ({0})")]
    Protocol(&'static str),
    /// The producer's geometry or fds do not add up.
    #[error("the producer sent an inconsistent pool description: {0}")]
    BadWelcome(&'static str),
    /// The peer hung up during the handshake.
    #[error("the peer hung up during the attach handshake")]
    HungUp,
    /// No answer in time.
    #[error(
        "the producer did not service the attach handshake within {0:?}: it is busy, or not calling \
         acquire/wait_for_consumers/maintain_now (handshakes run only inside those calls)"
    )]
    Timeout(std::time::Duration),
    /// A received fd could change size: a memfd without `F_SEAL_SHRINK` and
    /// `F_SEAL_GROW` (or a file that cannot be sealed at all). Whoever holds
    /// it could truncate it and make this consumer die of SIGBUS when it
    /// reads a frame, so it is refused before it is mapped.
    #[error("{fd} is not size-sealed (missing {missing}): a truncation would SIGBUS this consumer")]
    Unsealed {
        /// The control block or the buffer's index.
        fd: AttachFd,
        /// The missing seals: `F_SEAL_SHRINK`, `F_SEAL_GROW`, or both.
        missing: &'static str,
    },
    /// A received fd's size is not what the welcome advertised.
    #[error("{fd} has {len} bytes, the producer advertised {expected}")]
    Length {
        /// The control block or the buffer's index.
        fd: AttachFd,
        /// Its size (`fstat`, or the dma-buf's size).
        len: u64,
        /// The advertised size: exact for the control block, the pool's
        /// frame size as a minimum for a buffer.
        expected: u64,
    },
    /// A received buffer could not be mapped.
    #[error("mapping pool buffer {index}: {source}")]
    Map {
        /// Which buffer.
        index: usize,
        /// Why.
        #[source]
        source: MapError,
    },
    /// Another socket or mmap error.
    #[error("{op} failed during attach: {source}")]
    Os {
        /// The call.
        op: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
}

/// Why the producer could not get a free buffer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcquireError {
    /// Every buffer is held by consumers and none was released in time
    /// (backpressure: `Block`).
    #[error("no buffer was released within {0:?}: consumers are slower than the producer")]
    Timeout(std::time::Duration),
    /// The pool was closed.
    #[error("the pool is closed")]
    Closed,
}

/// Why a frame could not be handed off.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// More bytes used than the buffer has.
    #[error("bytes_used {used} is larger than the buffer ({len} bytes)")]
    TooLong {
        /// Requested bytes used.
        used: u64,
        /// Buffer length.
        len: u64,
    },
    /// Flags the pool reserves were set by the caller.
    #[error("frame flags {0:#x} include bits reserved for the pool")]
    ReservedFlags(u32),
    /// A sync_file was asked for, but exporting it failed.
    #[error("DMA_BUF_IOCTL_EXPORT_SYNC_FILE failed ({0}); Linux 6.0+ and a dma-buf buffer are needed")]
    SyncFile(#[source] Errno),
    /// [`FrameMeta::sync_file`](super::FrameMeta::sync_file) asks the pool
    /// to export the buffer's fences, and
    /// [`WriteSlot::submit_with_fence`](super::WriteSlot::submit_with_fence)
    /// supplies the frame's fence: a frame carries one.
    #[error(
        "the frame both asks for an exported sync_file (FrameMeta::sync_file) and supplies its own fence: \
         drop one (with FenceImport::Reservation the buffer's exported fences include the supplied one)"
    )]
    TwoFences,
    /// [`FenceImport::Reservation`](super::FenceImport::Reservation) on a
    /// pool whose buffers have no reservation object.
    #[error(
        "FenceImport::Reservation needs dma-buf buffers, this pool's are {0}: \
         submit with FenceImport::CarryOnly (consumers then wait on the fence explicitly)"
    )]
    ImportNeedsDmaBuf(crate::buffer::BufferKind),
    /// `DMA_BUF_IOCTL_IMPORT_SYNC_FILE` failed.
    #[error(
        "DMA_BUF_IOCTL_IMPORT_SYNC_FILE failed ({0}): it needs Linux 6.0+ (ENOTTY before); \
         submit with FenceImport::CarryOnly to carry the fence only"
    )]
    ImportFence(#[source] Errno),
}

/// Why a frame's fence did not signal cleanly
/// ([`Frame::wait_fence`](super::Frame::wait_fence)). Each names the frame
/// and the fence (sync_file name, timelines and drivers, from
/// `SYNC_IOC_FILE_INFO`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FenceError {
    /// The fence did not signal within the timeout: the producer's device
    /// has not finished the frame. The frame is still held.
    #[error(
        "frame {seq}: fence {fence} not signalled after {waited:?}: the producer's device has not finished \
         this frame; wait again, or release the frame unread"
    )]
    Timeout {
        /// The frame's sequence number.
        seq: u64,
        /// The fence.
        fence: crate::fence::FenceInfo,
        /// How long this call waited.
        waited: std::time::Duration,
    },
    /// The fence signalled with an error: the device failed on this frame
    /// (a GPU reset, a timeline torn down before it got there).
    #[error(
        "frame {seq}: fence {fence} signalled with error {error} after {waited:?}: \
         the producer's device failed on this frame; do not use its contents"
    )]
    Failed {
        /// The frame's sequence number.
        seq: u64,
        /// The fence.
        fence: crate::fence::FenceInfo,
        /// The error the fence carries.
        error: Errno,
        /// How long this call waited.
        waited: std::time::Duration,
    },
    /// `poll` or `SYNC_IOC_FILE_INFO` failed.
    #[error("frame {seq}: waiting on its fence: {op} failed: {source}")]
    Os {
        /// The frame's sequence number.
        seq: u64,
        /// The call.
        op: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
}

impl FenceError {
    pub(crate) fn of(seq: u64, e: crate::fence::WaitError) -> Self {
        use crate::fence::WaitError;
        match e {
            WaitError::Timeout { fence, waited } => Self::Timeout { seq, fence, waited },
            WaitError::Failed { fence, error, waited } => Self::Failed { seq, fence, error, waited },
            WaitError::Os { op, source } => Self::Os { seq, op, source },
        }
    }
}

/// Why a consumer got no frame. [`PoolError::Closed`],
/// [`PoolError::ProducerGone`] and [`PoolError::Timeout`] tell an orderly end,
/// a crash and a pause apart.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The producer ended the stream in order and every frame was received.
    #[error("the stream ended: the producer closed the pool")]
    Closed,
    /// The producer died (its socket hung up without closing the pool);
    /// every frame it handed off before was received.
    #[error("the producer died without closing the pool")]
    ProducerGone,
    /// No frame arrived within the timeout; the stream continues.
    #[error("no frame within {0:?}")]
    Timeout(std::time::Duration),
    /// The producer cut this consumer off because it held frames longer
    /// than the release timeout; its frames were taken back.
    #[error("evicted by the producer: frames were held longer than the pool's release timeout")]
    Evicted,
    /// The control block holds values no producer writes.
    #[error("the pool's control block is corrupt ({0})")]
    Corrupt(&'static str),
    /// CPU access could not begin.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// The call.
        op: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
}
