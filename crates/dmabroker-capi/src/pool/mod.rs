//! Zero-copy streaming pools: `dmabroker_producer_*`, `dmabroker_consumer_*`
//! and `dmabroker_frame_*`.
//!
//! The library's `WriteSlot` borrows its producer mutably, so a producer
//! handle has at most one slot out at a time; the slot lives inside the
//! handle's state, next to the producer it borrows (as in `mapping.rs`).
//! A consumer handle may hold several frames: each is the library's
//! `KeptFrame` (which borrows nothing), kept in the consumer's state by id
//! with the CPU read access begun on it, so frame handles are independent.

use crate::error::{alloc_status, errno_status, map_status, Error, Status};
use dmabroker_core::buffer::{BufferMapping, SyncError};
use dmabroker_core::pool::{
    AcquireError, AttachError, Consumer as CoreConsumer, CreateError, FrameFlags, ListenError, PoolError,
    Producer as CoreProducer, SubmitError,
};
use std::ffi::c_char;
use std::sync::{Mutex, MutexGuard};

mod consumer;
mod producer;
pub use consumer::{
    dmabroker_consumer_connect, dmabroker_consumer_connect_with, dmabroker_consumer_free, dmabroker_consumer_get_stats,
    dmabroker_consumer_held_count, dmabroker_consumer_recv, dmabroker_frame_check, dmabroker_frame_data,
    dmabroker_frame_free, dmabroker_frame_get_buffer, dmabroker_frame_get_info, dmabroker_frame_take_sync_file,
    Consumer, ConsumerOptions, Frame,
};
pub use producer::{
    dmabroker_producer_acquire, dmabroker_producer_buffer_count, dmabroker_producer_cancel, dmabroker_producer_close,
    dmabroker_producer_free, dmabroker_producer_get_buffer, dmabroker_producer_get_consumer_stats,
    dmabroker_producer_get_stats, dmabroker_producer_listen, dmabroker_producer_new, dmabroker_producer_new_for,
    dmabroker_producer_new_for_layout, dmabroker_producer_submit, dmabroker_producer_wait_for_consumers, Producer,
};

/// Frame flag: the frame can be decoded on its own (encoders).
pub const DMABROKER_FRAME_FLAG_KEY_FRAME: u32 = 1;
/// Frame flag: the source reported an error for this frame.
pub const DMABROKER_FRAME_FLAG_ERROR: u32 = 2;
/// Frame flag: a sync_file goes with the frame. At submit: export one
/// (`DMA_BUF_IOCTL_EXPORT_SYNC_FILE`, Linux 6.0+) for the consumers that
/// asked for them; ignored for pools of buffers that are not dma-bufs
/// (memfd) and when no consumer asked. In `dmabroker_frame_info.flags`: one
/// came, `dmabroker_frame_take_sync_file` gives it.
pub const DMABROKER_FRAME_FLAG_SYNC_FILE: u32 = 1 << 16;

const _: () = {
    assert!(DMABROKER_FRAME_FLAG_KEY_FRAME == FrameFlags::KEY_FRAME.bits());
    assert!(DMABROKER_FRAME_FLAG_ERROR == FrameFlags::ERROR.bits());
    assert!(DMABROKER_FRAME_FLAG_SYNC_FILE == FrameFlags::SYNC_FILE.bits());
    const fn assert_send<T: Send>() {}
    assert_send::<CoreProducer>();
    assert_send::<CoreConsumer>();
    assert_send::<BufferMapping>();
};

/// How a consumer waits for frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum WaitMode {
    /// Spin briefly (20 us), then sleep on a futex: no CPU used while idle.
    Block = 0,
    /// Never sleep: the lowest latency, one CPU core fully used.
    BusyPoll = 1,
}

/// A `dmabroker_wait_mode` as C passes it (read as an integer).
pub type WaitModeArg = u32;

/// How `dmabroker_producer_new` shapes the pool. All-zero (`{0}`) means the
/// defaults.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct PoolOptions {
    /// A name for the buffers (shown in `/proc/PID/fd` and fdinfo); NULL: `"pool"`.
    pub name: *const c_char,
    /// A consumer is evicted when it holds a received frame longer than
    /// this (counted from receipt), or when a frame waits unreceived for it
    /// while it receives and frees no frame for this long (a slow consumer
    /// that keeps receiving is not evicted); 0: 5000 ms; negative: never.
    pub release_timeout_ms: i64,
    /// Most consumers attached at once (1 to 63); 0: 8.
    pub max_consumers: u32,
    /// When every buffer is held: take back the oldest frame consumers have
    /// not started reading (live video), instead of waiting for a release.
    pub drop_oldest: bool,
}

/// Counters of a pool (`dmabroker_producer_get_stats`).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct PoolStats {
    /// Frames submitted.
    pub produced: u64,
    /// Frames taken back from at least one consumer (drop-oldest).
    pub dropped: u64,
    /// Consumers that died or were evicted so far.
    pub lost_consumers: u64,
    /// Consumers known now (attached or evicted): the count for
    /// `dmabroker_producer_get_consumer_stats`.
    pub consumers: usize,
    /// Consumers attached and receiving frames now.
    pub attached: usize,
}

/// Counters of one consumer, as its producer sees them.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct ConsumerStats {
    /// Frames put in its ring.
    pub delivered: u64,
    /// Frames it took from its ring.
    pub received: u64,
    /// Frames it released.
    pub released: u64,
    /// Frames taken back before it read them (drop-oldest).
    pub dropped: u64,
    /// `futex_wake` calls the producer made for it (0 while it keeps up).
    pub wakes: u64,
    /// Its slot in the pool.
    pub slot: u32,
    /// Its process id.
    pub pid: u32,
    /// It was evicted for holding a frame too long.
    pub evicted: bool,
}

/// What a consumer sees of its own attachment (`dmabroker_consumer_get_stats`).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct ConsumerSelfStats {
    /// Bytes per buffer.
    pub buffer_len: u64,
    /// Frames the producer took back before this consumer read them.
    pub dropped: u64,
    /// Times the producer had to wake this consumer.
    pub wakes: u64,
    /// Buffers in the pool.
    pub buffer_count: u32,
    /// This consumer's slot in the pool.
    pub slot: u32,
}

/// What the producer said about a frame (`dmabroker_frame_get_info`).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct FrameInfo {
    /// Index of the buffer in the pool.
    pub index: u32,
    /// `DMABROKER_FRAME_FLAG_*` bits.
    pub flags: u32,
    /// Sequence number (gaps: frames dropped for this consumer).
    pub seq: u64,
    /// `CLOCK_MONOTONIC` nanoseconds when the producer submitted it.
    pub timestamp_ns: u64,
    /// Bytes of the buffer the frame occupies.
    pub bytes_used: u64,
    /// The producer's application word (a checksum, a device timestamp, ...).
    pub meta: u64,
}

// ---- errors -----------------------------------------------------------------

fn listen_status(e: &ListenError) -> Status {
    match e {
        ListenError::AddressInUse(_) => Status::DMABROKER_ERROR_ALREADY_EXISTS,
        ListenError::PathTooLong(_) | ListenError::InvalidPath { .. } => Status::DMABROKER_ERROR_INVALID_ARGUMENT,
        ListenError::NotASocket { .. } => Status::DMABROKER_ERROR_ALREADY_EXISTS,
        ListenError::PermissionDenied(_) => Status::DMABROKER_ERROR_PERMISSION_DENIED,
        ListenError::Os { source, .. } => errno_status(*source),
        #[allow(unreachable_patterns)]
        _ => Status::DMABROKER_ERROR_IO,
    }
}

impl From<ListenError> for Error {
    fn from(e: ListenError) -> Self {
        Self::new(listen_status(&e), e.to_string())
    }
}

impl From<CreateError> for Error {
    fn from(e: CreateError) -> Self {
        let status = match &e {
            CreateError::BufferCount(_)
            | CreateError::ConsumerCount(_)
            | CreateError::ZeroLength
            | CreateError::BufferTooSmall { .. }
            | CreateError::Unsealed(_) => Status::DMABROKER_ERROR_INVALID_ARGUMENT,
            CreateError::Alloc { source, .. } => alloc_status(source),
            CreateError::Map { source, .. } => map_status(source),
            CreateError::ControlBlock { source, .. } => errno_status(*source),
            CreateError::Listen(l) => listen_status(l),
            #[allow(unreachable_patterns)]
            _ => Status::DMABROKER_ERROR_IO,
        };
        Self::new(status, e.to_string())
    }
}

impl From<AttachError> for Error {
    fn from(e: AttachError) -> Self {
        let status = match &e {
            AttachError::NoProducer { .. } => Status::DMABROKER_ERROR_NO_PRODUCER,
            AttachError::PoolFull | AttachError::Busy => Status::DMABROKER_ERROR_BUSY,
            AttachError::Closed => Status::DMABROKER_ERROR_CLOSED,
            AttachError::Protocol(_)
            | AttachError::BadWelcome(_)
            | AttachError::HungUp
            | AttachError::Unsealed { .. }
            | AttachError::Length { .. } => Status::DMABROKER_ERROR_BROKER,
            AttachError::Timeout(_) => Status::DMABROKER_ERROR_TIMEOUT,
            AttachError::Map { source, .. } => map_status(source),
            AttachError::Os { source, .. } => errno_status(*source),
            #[allow(unreachable_patterns)]
            _ => Status::DMABROKER_ERROR_IO,
        };
        Self::new(status, e.to_string())
    }
}

impl From<AcquireError> for Error {
    fn from(e: AcquireError) -> Self {
        let status = match &e {
            AcquireError::Timeout(_) => Status::DMABROKER_ERROR_TIMEOUT,
            AcquireError::Closed => Status::DMABROKER_ERROR_CLOSED,
            #[allow(unreachable_patterns)]
            _ => Status::DMABROKER_ERROR_IO,
        };
        Self::new(status, e.to_string())
    }
}

impl From<SubmitError> for Error {
    fn from(e: SubmitError) -> Self {
        let status = match &e {
            SubmitError::TooLong { .. } | SubmitError::ReservedFlags(_) => Status::DMABROKER_ERROR_INVALID_ARGUMENT,
            SubmitError::SyncFile(_) => Status::DMABROKER_ERROR_UNSUPPORTED,
            #[allow(unreachable_patterns)]
            _ => Status::DMABROKER_ERROR_IO,
        };
        Self::new(status, e.to_string())
    }
}

impl From<PoolError> for Error {
    fn from(e: PoolError) -> Self {
        let status = match &e {
            PoolError::Closed => Status::DMABROKER_ERROR_CLOSED,
            PoolError::ProducerGone => Status::DMABROKER_ERROR_PRODUCER_GONE,
            PoolError::Timeout(_) => Status::DMABROKER_ERROR_TIMEOUT,
            PoolError::Evicted => Status::DMABROKER_ERROR_EVICTED,
            PoolError::Corrupt(_) => Status::DMABROKER_ERROR_BROKER,
            PoolError::Sync(SyncError::ReadOnlyMapping) => Status::DMABROKER_ERROR_READ_ONLY,
            PoolError::Sync(SyncError::DmaBufSync(errno)) | PoolError::Os { source: errno, .. } => errno_status(*errno),
            #[allow(unreachable_patterns)]
            _ => Status::DMABROKER_ERROR_IO,
        };
        Self::new(status, e.to_string())
    }
}

fn busy(what: &str) -> Error {
    Error::new(Status::DMABROKER_ERROR_BUSY, what.to_owned())
}

/// Lock a handle's state; a panic while locked (caught by the guard) leaves
/// it as consistent as before the call.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
