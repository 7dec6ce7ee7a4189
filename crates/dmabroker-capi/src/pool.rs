//! Zero-copy streaming pools: `dmabroker_producer_*`, `dmabroker_consumer_*`
//! and `dmabroker_frame_*`.
//!
//! The library's `WriteSlot` borrows its producer mutably, so a producer
//! handle has at most one slot out at a time; the slot lives inside the
//! handle's state, next to the producer it borrows (as in `mapping.rs`).
//! A consumer handle may hold several frames: each is the library's
//! `KeptFrame` (which borrows nothing), kept in the consumer's state by id
//! with the CPU read access begun on it, so frame handles are independent.

use crate::buffer::Buffer;
use crate::constraints::{ChoiceInfo, Constraints};
use crate::error::{alloc_status, errno_status, guard, guard_value, map_status, Error, Status};
use crate::format::Layout;
use crate::heaps::Heaps;
use crate::{c_str, free_handle, handle, into_handle, out, timeout_ms};
use dmabroker_core::buffer::{BufferMapping, CpuRead, CpuWrite, SyncError};
use dmabroker_core::pool::{
    AcquireError, AttachError, Backpressure, Consumer as CoreConsumer, ConsumerOptions as CoreConsumerOptions,
    CreateError, FrameFlags, FrameMeta, KeptError, KeptFrame, ListenError, PoolAllocError, PoolError,
    PoolOptions as CorePoolOptions, Producer as CoreProducer, SubmitError, WaitMode as CoreWaitMode, WriteSlot,
};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

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
            AttachError::PoolFull => Status::DMABROKER_ERROR_BUSY,
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
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---- producer ---------------------------------------------------------------

/// A slot the producer is filling: the CPU access (if any) and the
/// library's slot, which borrows the producer. `write` is declared first,
/// so it is dropped (the access ended) before the slot.
struct Slot {
    write: Option<CpuWrite<'static>>,
    slot: WriteSlot<'static>,
}

struct ProducerState {
    /// The producer, from `Box::into_raw`; owned by this state and freed in
    /// its `Drop`. While `slot` is `Some`, the slot inside holds the only
    /// reference to it; otherwise nothing does.
    producer: NonNull<CoreProducer>,
    slot: Option<Slot>,
}

// SAFETY: ProducerState owns the Producer behind `producer` exclusively
// (see the field's comment), the Producer, its mappings and the guards
// borrowing them hold Send data (asserted above for Producer and
// BufferMapping); moving the state moves that ownership with it.
unsafe impl Send for ProducerState {}

impl ProducerState {
    /// The producer, when no slot borrows it.
    fn producer(&mut self) -> Result<&mut CoreProducer, Error> {
        if self.slot.is_some() {
            return Err(busy("a slot is acquired: call dmabroker_producer_submit or dmabroker_producer_cancel first"));
        }
        // SAFETY: `producer` lives until this state's Drop; no slot exists
        // (checked above), so nothing else refers to it, and the returned
        // reference borrows `self`, so no slot can be made while it lives.
        Ok(unsafe { self.producer.as_mut() })
    }
}

impl Drop for ProducerState {
    fn drop(&mut self) {
        // An acquired slot goes back to the pool (its access ended first).
        self.slot = None;
        // SAFETY: `producer` came from Box::into_raw in dmabroker_producer_new;
        // with the slot gone nothing refers to it, and it is freed only here.
        drop(unsafe { Box::from_raw(self.producer.as_ptr()) });
    }
}

/// The producing end of a pool (opaque): owns N buffers of one size,
/// accepts consumers on a socket and hands them frames by index. Made by
/// `dmabroker_producer_new`, released by `dmabroker_producer_free` (which
/// closes the stream). Its calls lock it, so threads may share it; a call
/// that waits (acquire, wait for consumers) holds the lock meanwhile.
pub struct Producer {
    state: Mutex<ProducerState>,
    buffers: Vec<dmabroker_core::Buffer>,
}

/// Allocate `buffers` buffers of `buffer_len` bytes each from the heap
/// named `heap` (`"memfd"`, `"dma-heap/system"`, ...) and make a pool of
/// them. `heaps` may be NULL (discovered for this call); `options` may be
/// NULL (the defaults). Consumers attach after `dmabroker_producer_listen`.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` (NULL pointers, 0 or more than 64
/// buffers, size 0, more than 63 consumers), the allocation's errors
/// (`DMABROKER_ERROR_NO_SUCH_HEAP`, `_OUT_OF_MEMORY`, ...), `DMABROKER_ERROR_IO`.
///
/// # Safety
/// `heaps` is NULL or a live handle; `heap` is NULL or a C string;
/// `options` is NULL or readable (its `name` NULL or a C string); `out` is
/// NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_producer_new(
    heaps: *const Heaps,
    heap: *const c_char,
    buffers: u32,
    buffer_len: u64,
    options: *const PoolOptions,
    out: *mut *mut Producer,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        // SAFETY: the caller passes NULL or a C string.
        let heap = unsafe { c_str(heap, "heap") }?;
        // SAFETY: the caller passes NULL or a readable dmabroker_pool_options.
        let o = unsafe { pool_options(buffers, buffer_len, options) }?;
        // SAFETY: the caller passes NULL or a live handle.
        let producer = unsafe { with_heaps(heaps, |h| CoreProducer::allocate(h, heap, &o)) }??;
        *out = into_producer(producer);
        Ok(())
    })
}

/// The library's pool options from C's (NULL: the defaults).
///
/// # Safety
/// `options` is NULL or readable, its `name` NULL or a C string.
unsafe fn pool_options(buffers: u32, buffer_len: u64, options: *const PoolOptions) -> Result<CorePoolOptions, Error> {
    let mut o = CorePoolOptions::new(buffers as usize, buffer_len);
    // SAFETY: the caller passes NULL or a readable dmabroker_pool_options.
    if let Some(c) = unsafe { options.as_ref() } {
        if !c.name.is_null() {
            // SAFETY: non-NULL, and the caller passes a C string.
            o = o.name(unsafe { c_str(c.name, "options->name") }?);
        }
        match c.release_timeout_ms {
            0 => {}
            ms => o = o.release_timeout(timeout_ms(ms)),
        }
        if c.max_consumers != 0 {
            o = o.max_consumers(c.max_consumers);
        }
        if c.drop_oldest {
            o = o.backpressure(Backpressure::DropOldest);
        }
    }
    Ok(o)
}

/// Run `f` with the heaps of `heaps`, or discovered ones when it is NULL.
///
/// # Safety
/// `heaps` is NULL or a live handle.
unsafe fn with_heaps<T>(heaps: *const Heaps, f: impl FnOnce(&dmabroker_core::Heaps) -> T) -> Result<T, Error> {
    if heaps.is_null() {
        Ok(f(&Heaps::discover().heaps))
    } else {
        // SAFETY: non-NULL, and the caller passes a live handle.
        Ok(f(&unsafe { handle(heaps, "heaps") }?.heaps))
    }
}

/// A producer as a handle for C.
fn into_producer(producer: CoreProducer) -> *mut Producer {
    let buffers = producer.buffers().cloned().collect();
    let producer = NonNull::from(Box::leak(Box::new(producer)));
    into_handle(Producer { state: Mutex::new(ProducerState { producer, slot: None }), buffers })
}

impl From<PoolAllocError> for Error {
    fn from(e: PoolAllocError) -> Self {
        match e {
            // The status of the choice (no heap meets them: UNSUPPORTED) or
            // of the last heap tried, with the buffer named.
            PoolAllocError::Alloc { index, source } => {
                let inner = Error::from(source);
                Self::new(inner.status, format!("allocating pool buffer {index} by constraints: {}", inner.message))
            }
            PoolAllocError::Create(c) => c.into(),
            #[allow(unreachable_patterns)]
            e => Self::new(Status::DMABROKER_ERROR_IO, e.to_string()),
        }
    }
}

/// Shared by `dmabroker_producer_new_for` and `_new_for_layout`.
///
/// # Safety
/// As `dmabroker_producer_new_for`; `layout`, when given, is NULL or a live handle.
#[allow(clippy::too_many_arguments)]
unsafe fn new_for(
    heaps: *const Heaps,
    constraints: *const Constraints,
    layout: Option<*const Layout>,
    buffers: u32,
    buffer_len: u64,
    options: *const PoolOptions,
    out: *mut *mut Producer,
    choice_info: *mut ChoiceInfo,
) -> Result<(), Error> {
    // SAFETY: the caller passes NULL or a writable dmabroker_choice_info.
    let mut info = unsafe { choice_info.as_mut() };
    if let Some(i) = info.as_deref_mut() {
        *i = ChoiceInfo::EMPTY;
    }
    // SAFETY: the caller passes NULL or a writable pointer slot.
    let out = unsafe { crate::out(out, "out") }?;
    *out = ptr::null_mut();
    // SAFETY: the caller passes NULL or a live handle.
    let constraints = unsafe { handle(constraints, "constraints") }?.effective()?;
    // SAFETY: the caller passes NULL or a live handle.
    let layout = layout.map(|l| unsafe { handle(l, "layout") }).transpose()?;
    // SAFETY: the caller passes NULL or a readable dmabroker_pool_options.
    let o = unsafe { pool_options(buffers, buffer_len, options) }?;
    // SAFETY: the caller passes NULL or a live handle.
    let producer = unsafe {
        with_heaps(heaps, |h| match layout {
            Some(l) => CoreProducer::allocate_for_layout(h, &constraints, &o, &l.layout),
            None => CoreProducer::allocate_for(h, &constraints, &o),
        })
    }??;
    if let (Some(i), Some(choice)) = (info, producer.choice()) {
        *i = ChoiceInfo::of(choice);
    }
    *out = into_producer(producer);
    Ok(())
}

/// Allocate `buffers` buffers of `buffer_len` bytes each for the devices
/// behind `constraints` (as `dmabroker_alloc_for`: the cheapest heap that
/// meets every requirement, the next suitable one when it runs out) and
/// make a pool of them, so the same pool can feed a device. `heaps` may be
/// NULL (discovered for this call); `options` may be NULL (the defaults);
/// `choice_info` may be NULL, otherwise it receives the heap and the
/// reasons of the first buffer's choice (a later buffer from another heap
/// adds a reason): free its strings with `dmabroker_choice_info_clear`.
///
/// # Errors
/// `DMABROKER_ERROR_UNSUPPORTED` (no heap meets the constraints; the
/// message says what each heap lacks), the status of the last heap tried
/// when every suitable one failed (`DMABROKER_ERROR_OUT_OF_MEMORY`, ...),
/// `DMABROKER_ERROR_INVALID_ARGUMENT` (NULL pointers, 0 or more than 64
/// buffers, size 0, more than 63 consumers). On failure `*out` is NULL and
/// `*choice_info` all-zero.
///
/// # Safety
/// `heaps` is NULL or a live handle; `constraints` is NULL or a live
/// handle; `options` is NULL or readable (its `name` NULL or a C string);
/// `out` is NULL or writable for one pointer; `choice_info` is NULL or
/// writable for one `dmabroker_choice_info` (its old contents are
/// overwritten, not freed).
#[no_mangle]
pub unsafe extern "C" fn dmabroker_producer_new_for(
    heaps: *const Heaps,
    constraints: *const Constraints,
    buffers: u32,
    buffer_len: u64,
    options: *const PoolOptions,
    out: *mut *mut Producer,
    choice_info: *mut ChoiceInfo,
) -> Status {
    // SAFETY: the caller's promises are new_for's contract.
    guard(|| unsafe { new_for(heaps, constraints, None, buffers, buffer_len, options, out, choice_info) })
}

/// `dmabroker_producer_new_for` with buffers sized for frames of `layout`
/// (`dmabroker_layout_total_size` bytes each): one pool buffer per frame.
/// For a `...M` format (a buffer per plane in V4L2/DRM terms) each pool
/// buffer holds the plane buffers back to back: plane buffer `b` starts at
/// the sum of `dmabroker_layout_buffer_size` of the buffers before it, so
/// hand a device the same fd once per plane with those offsets.
///
/// # Errors
/// Those of `dmabroker_producer_new_for` (`layout` NULL:
/// `DMABROKER_ERROR_INVALID_ARGUMENT`).
///
/// # Safety
/// As `dmabroker_producer_new_for`; `layout` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_producer_new_for_layout(
    heaps: *const Heaps,
    constraints: *const Constraints,
    layout: *const Layout,
    buffers: u32,
    options: *const PoolOptions,
    out: *mut *mut Producer,
    choice_info: *mut ChoiceInfo,
) -> Status {
    // SAFETY: the caller's promises are new_for's contract; the length is
    // the layout's (new_for replaces it).
    guard(|| unsafe { new_for(heaps, constraints, Some(layout), buffers, 1, options, out, choice_info) })
}

/// Close the stream (consumers receive the frames already handed off, then
/// `DMABROKER_ERROR_CLOSED`), release the producer's buffers and remove its
/// socket. NULL is ignored. A slot still acquired goes back unsubmitted.
///
/// # Safety
/// `producer` is NULL or a live handle not freed before, used by no other
/// thread during the call nor afterwards.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_producer_free(producer: *mut Producer) {
    // SAFETY: the caller passes NULL or a live handle it gives up.
    guard_value((), || unsafe { free_handle(producer) })
}

/// Accept consumers on a Unix socket at `path` (a stale socket file of a
/// dead producer is replaced, and nothing but a socket ever is; the socket is
/// removed when the producer is freed, if it is still the one made here).
/// While it lives the producer holds a `flock` on `path` + `".lock"` (also
/// removed when it is freed), so a second dmabroker producer on the same
/// path is refused even before the first listens. Handshakes run during acquire and wait-for-consumers calls; after
/// `dmabroker_producer_close` late consumers are refused with
/// `DMABROKER_ERROR_CLOSED` at the producer's next call or when it is freed.
///
/// # Errors
/// `DMABROKER_ERROR_ALREADY_EXISTS` (a live process listens there, another
/// producer holds the lock file, a live socket of another type is there, or
/// the path is a file, FIFO, directory or anything else that is not a socket),
/// `DMABROKER_ERROR_PERMISSION_DENIED`, `DMABROKER_ERROR_INVALID_ARGUMENT`
/// (NULL, an empty path, a path over 107 bytes), `DMABROKER_ERROR_BUSY` (a slot is
/// acquired), `DMABROKER_ERROR_IO`.
///
/// # Safety
/// `producer` is NULL or a live handle; `path` is NULL or a C string.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_producer_listen(producer: *const Producer, path: *const c_char) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { handle(producer, "producer") }?;
        // SAFETY: the caller passes NULL or a C string.
        let path = crate::socket_path_arg(unsafe { c_str(path, "path") }?, "path")?;
        lock(&p.state).producer()?.listen(path)?;
        Ok(())
    })
}

/// Accept consumers until `count` are attached, for at most `timeout_ms`
/// milliseconds (negative: no limit).
///
/// # Errors
/// `DMABROKER_ERROR_TIMEOUT` (fewer attached in time; those that did stay),
/// `DMABROKER_ERROR_BUSY` (a slot is acquired), `DMABROKER_ERROR_INVALID_ARGUMENT`.
///
/// # Safety
/// `producer` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_producer_wait_for_consumers(
    producer: *const Producer,
    count: usize,
    timeout_ms: i64,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { handle(producer, "producer") }?;
        let mut state = lock(&p.state);
        let core = state.producer()?;
        // "No limit": about 68 years, which the library's nanosecond
        // deadline arithmetic holds without overflow.
        let limit = crate::timeout_ms(timeout_ms).unwrap_or(Duration::from_secs(1 << 31));
        if core.wait_for_consumers(count, limit) {
            Ok(())
        } else {
            Err(Error::new(
                Status::DMABROKER_ERROR_TIMEOUT,
                format!("{} of {count} consumers attached within {timeout_ms} ms", core.attached()),
            ))
        }
    })
}

/// Get a free buffer to fill: `*index` receives its index in the pool.
/// When `data` is not NULL, CPU write access to the whole buffer begins
/// (`DMA_BUF_IOCTL_SYNC` for dma-bufs) and `*data` points to it, valid
/// until submit or cancel, which end the access. With `data` NULL the CPU
/// does not touch it (a device fills it: `dmabroker_producer_get_buffer`
/// gives its fd). `*len` (when `len` is not NULL) receives the buffer's length.
///
/// While every buffer is held by consumers it waits (or, with
/// `drop_oldest`, takes back the oldest unread frame), for at most
/// `timeout_ms` (negative: no limit). One slot at a time: submit or cancel
/// it before the next acquire.
///
/// # Errors
/// `DMABROKER_ERROR_TIMEOUT`, `DMABROKER_ERROR_CLOSED` (after
/// `dmabroker_producer_close`), `DMABROKER_ERROR_BUSY` (a slot is already
/// acquired), `DMABROKER_ERROR_INVALID_ARGUMENT`, `DMABROKER_ERROR_IO`
/// (the sync ioctl failed; the buffer went back). On failure `*index` is
/// `UINT32_MAX`, `*data` NULL and `*len` 0.
///
/// # Safety
/// `producer` is NULL or a live handle; `index` is NULL or writable;
/// `data` and `len` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_producer_acquire(
    producer: *const Producer,
    timeout_ms: i64,
    index: *mut u32,
    data: *mut *mut c_void,
    len: *mut usize,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let mut data = unsafe { data.as_mut() };
        if let Some(d) = data.as_deref_mut() {
            *d = ptr::null_mut();
        }
        // SAFETY: the caller passes NULL or a writable size_t.
        let mut len = unsafe { len.as_mut() };
        if let Some(l) = len.as_deref_mut() {
            *l = 0;
        }
        // SAFETY: the caller passes NULL or a writable uint32_t.
        let index = unsafe { out(index, "index") }?;
        *index = u32::MAX;
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { handle(producer, "producer") }?;
        let mut state = lock(&p.state);
        if state.slot.is_some() {
            return Err(busy("a slot is already acquired: submit or cancel it before the next acquire"));
        }
        // SAFETY: the producer lives until ProducerState's Drop, which drops
        // the slot first, so 'static outlives every use; no slot exists
        // (checked above), so this is the only reference, and the state lock
        // keeps it so until the slot is stored in `state.slot`.
        let core: &'static mut CoreProducer = unsafe { &mut *state.producer.as_ptr() };
        let mut slot = core.acquire(crate::timeout_ms(timeout_ms))?;
        let buffer_len = slot.buffer().len();
        let write = if let Some(d) = data {
            // SAFETY: the mapping lives in the producer (see above) as long
            // as the slot; the guard made from it is stored next to the
            // slot and dropped before it (Slot's field order), and the slot
            // is not used to reach the mapping while the guard lives.
            let mapping: &'static mut BufferMapping = unsafe { &mut *ptr::from_mut(slot.mapping()) };
            let mut g = mapping.begin_write()?;
            *d = g.as_mut_ptr().cast::<c_void>();
            Some(g)
        } else {
            None
        };
        *index = slot.index();
        if let Some(l) = len {
            *l = usize::try_from(buffer_len).unwrap_or(usize::MAX);
        }
        state.slot = Some(Slot { write, slot });
        Ok(())
    })
}

/// Hand the acquired buffer to every attached consumer as a frame of
/// `bytes_used` bytes with `flags` (`DMABROKER_FRAME_FLAG_*`) and the
/// application word `meta`. Ends the CPU access begun by acquire.
/// `*seq` (when `seq` is not NULL) receives the frame's sequence number.
/// With `DMABROKER_FRAME_FLAG_SYNC_FILE`, a dma-buf pool exports a
/// sync_file (it signals when the buffer's writers are done) for each
/// consumer that asked for them; other pools ignore the flag.
///
/// # Errors
/// `DMABROKER_ERROR_NOT_BEGUN` (no slot acquired),
/// `DMABROKER_ERROR_INVALID_ARGUMENT` (`bytes_used` beyond the buffer,
/// unknown flags: the slot stays acquired, fix and retry, or cancel),
/// `DMABROKER_ERROR_UNSUPPORTED` (the sync_file could not be exported:
/// Linux 6.0+ is needed; the buffer went back unsubmitted).
///
/// # Safety
/// `producer` is NULL or a live handle; `seq` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_producer_submit(
    producer: *const Producer,
    bytes_used: u64,
    flags: u32,
    meta: u64,
    seq: *mut u64,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable uint64_t.
        let seq = unsafe { seq.as_mut() };
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { handle(producer, "producer") }?;
        let mut state = lock(&p.state);
        let Some(slot) = state.slot.as_ref() else {
            return Err(Error::new(
                Status::DMABROKER_ERROR_NOT_BEGUN,
                "no slot is acquired: call dmabroker_producer_acquire first",
            ));
        };
        let buffer_len = slot.slot.buffer().len();
        if bytes_used > buffer_len {
            return Err(Error::invalid(format!(
                "bytes_used {bytes_used} is larger than the buffer ({buffer_len} bytes)"
            )));
        }
        let sync_file = flags & DMABROKER_FRAME_FLAG_SYNC_FILE != 0;
        let user = flags & !DMABROKER_FRAME_FLAG_SYNC_FILE;
        let flags = FrameFlags::from_bits(user).filter(|f| FrameFlags::USER.contains(*f)).ok_or_else(|| {
            Error::invalid(format!(
                "flags {flags:#x}: only DMABROKER_FRAME_FLAG_KEY_FRAME (1), DMABROKER_FRAME_FLAG_ERROR (2) \
                 and DMABROKER_FRAME_FLAG_SYNC_FILE (1 << 16) may be set"
            ))
        })?;
        let Slot { write, slot } = state.slot.take().expect("checked above");
        // The end of the CPU access, before the consumers see the frame.
        drop(write);
        let s = slot.submit(FrameMeta::new(bytes_used).flags(flags).meta(meta).sync_file(sync_file))?;
        if let Some(out) = seq {
            *out = s;
        }
        Ok(())
    })
}

/// Give the acquired buffer back unsubmitted (ending the CPU access).
///
/// # Errors
/// `DMABROKER_ERROR_NOT_BEGUN` (no slot acquired), `DMABROKER_ERROR_INVALID_ARGUMENT`.
///
/// # Safety
/// `producer` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_producer_cancel(producer: *const Producer) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { handle(producer, "producer") }?;
        match lock(&p.state).slot.take() {
            Some(slot) => {
                drop(slot);
                Ok(())
            }
            None => Err(Error::new(Status::DMABROKER_ERROR_NOT_BEGUN, "no slot is acquired: nothing to cancel")),
        }
    })
}

/// End the stream in order: consumers receive the frames handed off, then
/// `DMABROKER_ERROR_CLOSED`; acquire fails with it from now on. A slot
/// still acquired goes back unsubmitted. (Freeing the producer also closes.)
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL.
///
/// # Safety
/// `producer` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_producer_close(producer: *const Producer) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { handle(producer, "producer") }?;
        let mut state = lock(&p.state);
        state.slot = None;
        state.producer()?.close();
        Ok(())
    })
}

/// The number of buffers in the pool (0 for NULL).
///
/// # Safety
/// `producer` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_producer_buffer_count(producer: *const Producer) -> u32 {
    guard_value(0, || {
        // SAFETY: the caller passes NULL or a live handle.
        unsafe { handle(producer, "producer") }.map_or(0, |p| p.buffers.len() as u32)
    })
}

/// A new handle to buffer number `index` of the pool (the same memory; free
/// it with `dmabroker_buffer_free`): its fd for a device
/// (`dmabroker_buffer_fd`, e.g. V4L2 `QBUF` with `V4L2_MEMORY_DMABUF`), its
/// length, its info.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL pointers or an index out of range.
///
/// # Safety
/// `producer` is NULL or a live handle; `out` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_producer_get_buffer(
    producer: *const Producer,
    index: u32,
    out: *mut *mut Buffer,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { handle(producer, "producer") }?;
        let b = p.buffers.get(index as usize).ok_or_else(|| {
            Error::invalid(format!("buffer index {index} is out of range: the pool has {} buffers", p.buffers.len()))
        })?;
        *out = into_handle(Buffer::new(b.clone()));
        Ok(())
    })
}

/// The pool's counters.
///
/// # Errors
/// `DMABROKER_ERROR_BUSY` (a slot is acquired), `DMABROKER_ERROR_INVALID_ARGUMENT`.
///
/// # Safety
/// `producer` is NULL or a live handle; `out` is NULL or writable for one
/// `dmabroker_pool_stats`.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_producer_get_stats(producer: *const Producer, out: *mut PoolStats) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable dmabroker_pool_stats.
        let out = unsafe { crate::out(out, "out") }?;
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { handle(producer, "producer") }?;
        let mut state = lock(&p.state);
        let core = state.producer()?;
        let s = core.stats();
        *out = PoolStats {
            produced: s.produced,
            dropped: s.dropped,
            lost_consumers: s.lost_consumers,
            consumers: s.consumers.len(),
            attached: core.attached(),
        };
        Ok(())
    })
}

/// The counters of consumer number `index` (0 to `dmabroker_pool_stats.consumers` - 1).
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` (NULL pointers, an index out of
/// range), `DMABROKER_ERROR_BUSY` (a slot is acquired).
///
/// # Safety
/// `producer` is NULL or a live handle; `out` is NULL or writable for one
/// `dmabroker_consumer_stats`.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_producer_get_consumer_stats(
    producer: *const Producer,
    index: usize,
    out: *mut ConsumerStats,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable dmabroker_consumer_stats.
        let out = unsafe { crate::out(out, "out") }?;
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { handle(producer, "producer") }?;
        let mut state = lock(&p.state);
        let stats = state.producer()?.stats();
        let c = stats.consumers.get(index).ok_or_else(|| {
            Error::invalid(format!(
                "consumer index {index} is out of range: the pool knows {} consumers",
                stats.consumers.len()
            ))
        })?;
        *out = ConsumerStats {
            delivered: c.delivered,
            received: c.received,
            released: c.released,
            dropped: c.dropped,
            wakes: c.wakes,
            slot: c.slot,
            pid: c.pid,
            evicted: c.evicted,
        };
        Ok(())
    })
}

// ---- consumer ---------------------------------------------------------------

/// How long `dmabroker_consumer_recv` waits in one go before it releases
/// the frames freed meanwhile by other threads and waits again.
const RECV_SLICE: Duration = Duration::from_millis(10);

/// How `dmabroker_consumer_connect_with` attaches. All-zero (`{0}`) means
/// the defaults (those of `dmabroker_consumer_connect` with
/// `DMABROKER_WAIT_MODE_BLOCK`).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct ConsumerOptions {
    /// How `dmabroker_consumer_recv` waits (a `dmabroker_wait_mode`; 0: `BLOCK`).
    pub wait: WaitModeArg,
    /// Receive the sync_file of each frame the producer exports one for
    /// (dma-buf pools, frames submitted with `DMABROKER_FRAME_FLAG_SYNC_FILE`);
    /// take it with `dmabroker_frame_take_sync_file`.
    pub want_sync_files: bool,
    /// How long to wait for the producer's answer when attaching, in
    /// milliseconds; 0: 5000; negative: no limit.
    pub attach_timeout_ms: i64,
}

/// A frame handed to C and not freed yet: the library's kept frame and the
/// CPU read access begun on it (if any). `read` is declared first, so it
/// is dropped (the access ended) before the frame is released.
struct HeldFrame {
    read: Option<CpuRead<'static>>,
    kept: KeptFrame,
}

struct ConsumerState {
    /// The consumer, from `Box::into_raw`; owned by this state and freed in
    /// its `Drop`, after every access in `frames` has ended. Besides the
    /// state, only the read guards in `frames` refer into it, each to the
    /// mapping of a buffer its frame holds.
    consumer: NonNull<CoreConsumer>,
    /// Frames handed to C and not released yet, by id.
    frames: HashMap<u64, HeldFrame>,
    next_id: u64,
}

// SAFETY: ConsumerState owns the Consumer behind `consumer` exclusively (see
// the field's comment); the Consumer, its mappings and the guards borrowing
// them hold Send data (asserted above); moving the state moves that
// ownership with it.
unsafe impl Send for ConsumerState {}

impl Drop for ConsumerState {
    fn drop(&mut self) {
        // Every access ends before the mappings go; the consumer releases
        // the buffers of the frames still held when it drops.
        self.frames.clear();
        // SAFETY: `consumer` came from Box::into_raw in `connect`; with the
        // guards gone nothing refers to it, and it is freed only here.
        drop(unsafe { Box::from_raw(self.consumer.as_ptr()) });
    }
}

impl ConsumerState {
    /// The consumer.
    fn consumer(&mut self) -> &mut CoreConsumer {
        // SAFETY: `consumer` lives until this state's Drop, and the returned
        // reference borrows `self` exclusively (the state's lock is held),
        // so no other reference is made through the state meanwhile. The
        // read guards in `frames` point only into the mappings of buffers
        // their frames hold, which the consumer's methods leave alone
        // while held: `recv` refuses a hand-off of a held buffer, and only
        // `read_kept`/`kept_buffer` reach a held buffer's mapping, which
        // this module calls only for a frame that has no guard yet.
        unsafe { self.consumer.as_mut() }
    }

    /// Give the frames of `ids` back to the producer (their accesses end first).
    fn release(&mut self, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            if let Some(HeldFrame { read, kept }) = self.frames.remove(&id) {
                drop(read);
                // This consumer received it: never foreign.
                let _ = self.consumer().release_kept(kept);
            }
        }
    }
}

struct ConsumerInner {
    state: Mutex<ConsumerState>,
    /// Frames freed while another thread held `state` (a recv waiting),
    /// released by the next holder: `dmabroker_frame_free` never waits.
    freed: Mutex<Vec<u64>>,
    /// Threads other than a receiver waiting for `state`: a receiver lets
    /// them in between its wait slices before it locks again.
    contenders: AtomicUsize,
    buffer_count: u32,
    buffer_len: u64,
    slot: u32,
}

impl ConsumerInner {
    /// Run `f` on the locked state; frames freed meanwhile by other
    /// threads are released before `f` and after the lock is let go.
    fn with<R>(&self, f: impl FnOnce(&mut ConsumerState) -> R) -> R {
        self.contenders.fetch_add(1, Ordering::SeqCst);
        let state = lock(&self.state);
        self.contenders.fetch_sub(1, Ordering::SeqCst);
        self.run(state, f)
    }

    /// Run `f` on `state` (locked by the caller), draining first and
    /// settling after the lock is let go.
    fn run<R>(&self, mut state: MutexGuard<'_, ConsumerState>, f: impl FnOnce(&mut ConsumerState) -> R) -> R {
        let result = {
            self.drain(&mut state);
            f(&mut state)
        };
        drop(state);
        self.settle();
        result
    }

    /// `with` for a receiver: before locking, let in the threads waiting
    /// for the state (frame_data, get_stats, ...) for at most one slice, so
    /// a receiver looping over its slices never starves them.
    fn with_as_receiver<R>(&self, f: impl FnOnce(&mut ConsumerState) -> R) -> R {
        let start = Instant::now();
        while self.contenders.load(Ordering::SeqCst) > 0 && start.elapsed() < RECV_SLICE {
            std::thread::yield_now();
        }
        self.run(lock(&self.state), f)
    }

    /// Release the frames queued in `freed` (the caller holds the state).
    fn drain(&self, state: &mut ConsumerState) {
        let ids = std::mem::take(&mut *lock(&self.freed));
        state.release(ids);
    }

    /// Release the queued frames, unless another thread holds the state:
    /// every holder settles after it lets go (`with`), so a frame queued
    /// while the state is held is released by that holder.
    fn settle(&self) {
        while !lock(&self.freed).is_empty() {
            match self.state.try_lock() {
                Ok(mut state) => self.drain(&mut state),
                Err(TryLockError::Poisoned(poisoned)) => self.drain(&mut poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => return,
            }
        }
    }

    /// Release the frame `id` now, or as soon as the thread holding the
    /// state lets go of it.
    fn free(&self, id: u64) {
        lock(&self.freed).push(id);
        self.settle();
    }
}

/// The consuming end of a pool (opaque): made by `dmabroker_consumer_connect`
/// or `_connect_with`, released by `dmabroker_consumer_free`. It may hold
/// several frames at once, each a `dmabroker_frame` of its own. Its calls
/// lock it, so threads may share it.
pub struct Consumer {
    inner: Arc<ConsumerInner>,
}

/// A received frame (opaque): made by `dmabroker_consumer_recv`; its buffer
/// stays held (the producer does not reuse it) until `dmabroker_frame_free`,
/// which ends CPU access and gives the buffer back. Frames are independent:
/// a consumer may hold several, freed in any order. A frame keeps its
/// consumer alive (attached) until it is freed.
pub struct Frame {
    inner: Arc<ConsumerInner>,
    id: u64,
    info: FrameInfo,
    buffer: dmabroker_core::Buffer,
    sync_file: Mutex<Option<OwnedFd>>,
    /// The address and length of the frame's bytes once its CPU access
    /// began (the first `dmabroker_frame_data`): later calls answer from
    /// here without locking the consumer. The address stays valid until
    /// the frame is freed (the access lives in the consumer's state).
    data: OnceLock<(usize, usize)>,
}

impl From<KeptError> for Error {
    fn from(e: KeptError) -> Self {
        match e {
            KeptError::Evicted => Self::new(Status::DMABROKER_ERROR_EVICTED, e.to_string()),
            KeptError::Sync(s) => PoolError::Sync(s).into(),
            _ => Self::invalid(e.to_string()),
        }
    }
}

/// A `dmabroker_wait_mode` as the library's.
fn wait_mode(wait: WaitModeArg) -> Result<CoreWaitMode, Error> {
    if wait == WaitMode::Block as u32 {
        Ok(CoreWaitMode::default())
    } else if wait == WaitMode::BusyPoll as u32 {
        Ok(CoreWaitMode::BusyPoll)
    } else {
        Err(Error::invalid(format!("wait {wait} is not a dmabroker_wait_mode (BLOCK = 0, BUSY_POLL = 1)")))
    }
}

/// Attach at `path` and give C the handle.
///
/// # Safety
/// `path` is NULL or a C string.
unsafe fn connect(path: *const c_char, options: &CoreConsumerOptions) -> Result<*mut Consumer, Error> {
    // SAFETY: the caller passes NULL or a C string.
    let path = crate::socket_path_arg(unsafe { c_str(path, "path") }?, "path")?;
    let consumer = CoreConsumer::connect_with(path, options)?;
    let buffer_count = u32::try_from(consumer.buffer_count()).unwrap_or(u32::MAX);
    let buffer_len = consumer.buffer_len();
    let slot = consumer.slot();
    let consumer = NonNull::from(Box::leak(Box::new(consumer)));
    Ok(into_handle(Consumer {
        inner: Arc::new(ConsumerInner {
            state: Mutex::new(ConsumerState { consumer, frames: HashMap::new(), next_id: 0 }),
            freed: Mutex::new(Vec::new()),
            contenders: AtomicUsize::new(0),
            buffer_count,
            buffer_len,
            slot,
        }),
    }))
}

/// Attach to the producer listening at the socket `path`: receive the
/// pool's buffers once and map them read-only. `wait` (a
/// `dmabroker_wait_mode`) says how `dmabroker_consumer_recv` waits.
///
/// # Errors
/// `DMABROKER_ERROR_NO_PRODUCER` (nothing listens there),
/// `DMABROKER_ERROR_BUSY` (the pool serves as many consumers as it may),
/// `DMABROKER_ERROR_CLOSED` (the stream ended), `DMABROKER_ERROR_TIMEOUT`
/// (no answer in 5 s), `DMABROKER_ERROR_BROKER` (not a dmabroker pool of
/// this version), `DMABROKER_ERROR_INVALID_ARGUMENT` (NULL pointers, an
/// empty path, a path over 107 bytes, an unknown wait mode),
/// `DMABROKER_ERROR_IO`.
///
/// # Safety
/// `path` is NULL or a C string; `out` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_consumer_connect(
    path: *const c_char,
    wait: WaitModeArg,
    out: *mut *mut Consumer,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        let options = CoreConsumerOptions { wait: wait_mode(wait)?, ..CoreConsumerOptions::default() };
        // SAFETY: the caller passes NULL or a C string.
        *out = unsafe { connect(path, &options) }?;
        Ok(())
    })
}

/// `dmabroker_consumer_connect` with options: the wait mode, sync_files,
/// the attach timeout. `options` may be NULL (the defaults).
///
/// # Errors
/// Those of `dmabroker_consumer_connect`.
///
/// # Safety
/// `path` is NULL or a C string; `options` is NULL or readable; `out` is
/// NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_consumer_connect_with(
    path: *const c_char,
    options: *const ConsumerOptions,
    out: *mut *mut Consumer,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        let mut o = CoreConsumerOptions::default();
        // SAFETY: the caller passes NULL or a readable dmabroker_consumer_options.
        if let Some(c) = unsafe { options.as_ref() } {
            o.wait = wait_mode(c.wait)?;
            o.want_sync_files = c.want_sync_files;
            match c.attach_timeout_ms {
                0 => {}
                // "No limit": the kernel takes so long a receive timeout as none.
                ms => o.attach_timeout = crate::timeout_ms(ms).unwrap_or(Duration::from_secs(1 << 31)),
            }
        }
        // SAFETY: the caller passes NULL or a C string.
        *out = unsafe { connect(path, &o) }?;
        Ok(())
    })
}

/// Detach (release every buffer held and close the socket). NULL is
/// ignored. Frames not yet freed keep the attachment until the last of
/// them is freed.
///
/// # Safety
/// `consumer` is NULL or a live handle not freed before, used by no other
/// thread during the call nor afterwards.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_consumer_free(consumer: *mut Consumer) {
    // SAFETY: the caller passes NULL or a live handle it gives up.
    guard_value((), || unsafe { free_handle(consumer) })
}

/// The next frame, waiting at most `timeout_ms` milliseconds (negative: no
/// limit; 0: only look). Frames already handed off are always delivered
/// before an end-of-stream status.
///
/// Frames received before may still be held: each is freed on its own
/// (`dmabroker_frame_free`). Every frame held is a buffer the producer
/// cannot fill: holding all of them stalls a producer that waits for a
/// release (the default), and holding one longer than the release timeout
/// gets this consumer evicted. A frame freed by another thread during the
/// wait is released within 10 ms.
///
/// # Errors
/// `DMABROKER_ERROR_TIMEOUT` (nothing yet; the stream goes on),
/// `DMABROKER_ERROR_CLOSED` (the producer ended the stream),
/// `DMABROKER_ERROR_PRODUCER_GONE` (it died), `DMABROKER_ERROR_EVICTED`,
/// `DMABROKER_ERROR_INVALID_ARGUMENT`, `DMABROKER_ERROR_BROKER` (the
/// control block is corrupt). `*frame` is NULL on failure.
///
/// # Safety
/// `consumer` is NULL or a live handle; `frame` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_consumer_recv(
    consumer: *const Consumer,
    timeout_ms: i64,
    frame: *mut *mut Frame,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(frame, "frame") }?;
        *out = ptr::null_mut();
        // SAFETY: the caller passes NULL or a live handle.
        let c = unsafe { handle(consumer, "consumer") }?;
        let inner = &c.inner;
        let limit = crate::timeout_ms(timeout_ms);
        let start = Instant::now();
        // One lock per slice: between slices other threads (frame_data,
        // frame_free, get_stats) get the state.
        let (id, kept_info, buffer, sync_file) = loop {
            let left = limit.map(|l| l.saturating_sub(start.elapsed()));
            let slice = left.map_or(RECV_SLICE, |l| l.min(RECV_SLICE));
            let got = inner.with_as_receiver(|state| -> Result<Option<_>, Error> {
                // Kept at once: the frame no longer borrows the consumer.
                let received = state.consumer().recv(Some(slice)).map(|f| f.keep());
                let mut kept = match received {
                    Ok(kept) => kept,
                    // Time left: wait on (after letting others in).
                    Err(PoolError::Timeout(_)) if left.is_none_or(|l| l > slice) => return Ok(None),
                    Err(PoolError::Timeout(_)) => {
                        return Err(Error::from(PoolError::Timeout(limit.unwrap_or_default())));
                    }
                    Err(e) => return Err(Error::from(e)),
                };
                let buffer = match state.consumer().kept_buffer(&kept) {
                    Ok(b) => b.clone(),
                    Err(e) => {
                        let _ = state.consumer().release_kept(kept);
                        return Err(Error::from(e));
                    }
                };
                let sync_file = kept.take_sync_file();
                let info = *kept.info();
                let id = state.next_id;
                state.next_id += 1;
                state.frames.insert(id, HeldFrame { read: None, kept });
                Ok(Some((id, info, buffer, sync_file)))
            })?;
            if let Some(got) = got {
                break got;
            }
        };
        let info = FrameInfo {
            index: kept_info.index,
            flags: kept_info.flags.bits(),
            seq: kept_info.seq,
            timestamp_ns: kept_info.timestamp_ns,
            bytes_used: kept_info.bytes_used,
            meta: kept_info.meta,
        };
        *out = into_handle(Frame {
            inner: Arc::clone(inner),
            id,
            info,
            buffer,
            sync_file: Mutex::new(sync_file),
            data: OnceLock::new(),
        });
        Ok(())
    })
}

/// This consumer's view of the pool: buffers, their length, its slot, the
/// frames dropped for it and the wake-ups it needed. While another thread
/// is in `dmabroker_consumer_recv`, waits for the end of its current wait
/// slice (10 ms at most).
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL pointers.
///
/// # Safety
/// `consumer` is NULL or a live handle; `out` is NULL or writable for one
/// `dmabroker_consumer_self_stats`.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_consumer_get_stats(
    consumer: *const Consumer,
    out: *mut ConsumerSelfStats,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable struct.
        let out = unsafe { crate::out(out, "out") }?;
        // SAFETY: the caller passes NULL or a live handle.
        let c = unsafe { handle(consumer, "consumer") }?;
        let (dropped, wakes) = c.inner.with(|state| {
            let core = state.consumer();
            (core.dropped(), core.wakes())
        });
        *out = ConsumerSelfStats {
            buffer_len: c.inner.buffer_len,
            dropped,
            wakes,
            buffer_count: c.inner.buffer_count,
            slot: c.inner.slot,
        };
        Ok(())
    })
}

/// The number of buffers this consumer holds: its frames not freed yet
/// (frames freed by another thread during a recv count until released).
/// While another thread is in `dmabroker_consumer_recv`, waits for the end
/// of its current wait slice (10 ms at most).
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL pointers. On failure
/// `*count` is 0.
///
/// # Safety
/// `consumer` is NULL or a live handle; `count` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_consumer_held_count(consumer: *const Consumer, count: *mut usize) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable size_t.
        let count = unsafe { out(count, "count") }?;
        *count = 0;
        // SAFETY: the caller passes NULL or a live handle.
        let c = unsafe { handle(consumer, "consumer") }?;
        *count = c.inner.with(|state| state.consumer().held_count());
        Ok(())
    })
}

/// What the producer said about the frame: buffer index, flags, sequence
/// number, timestamp, bytes used, application word. `flags` has
/// `DMABROKER_FRAME_FLAG_SYNC_FILE` when a sync_file came with the frame.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL pointers.
///
/// # Safety
/// `frame` is NULL or a live handle; `out` is NULL or writable for one
/// `dmabroker_frame_info`.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_frame_get_info(frame: *const Frame, out: *mut FrameInfo) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable dmabroker_frame_info.
        let out = unsafe { crate::out(out, "out") }?;
        // SAFETY: the caller passes NULL or a live handle.
        *out = unsafe { handle(frame, "frame") }?.info;
        Ok(())
    })
}

/// The frame's bytes: begins CPU read access (`DMA_BUF_IOCTL_SYNC` for
/// dma-bufs) on the first call; `*data` points to the frame's `*len` bytes
/// (its `bytes_used`), read-only and valid until the frame is freed, which
/// ends the access. Later calls give the same pointer. Several frames of a
/// consumer may be read at the same time. The first call on a frame may
/// wait for the end of the current wait slice (10 ms at most) of a
/// `dmabroker_consumer_recv` in another thread; later calls never wait.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` (NULL pointers),
/// `DMABROKER_ERROR_EVICTED` (the consumer was evicted before the access
/// began: the buffer may hold another frame now), `DMABROKER_ERROR_IO`
/// (the sync ioctl failed). On failure `*data` is NULL and `*len` 0.
///
/// # Safety
/// `frame` is NULL or a live handle; `data` and `len` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_frame_data(
    frame: *const Frame,
    data: *mut *const c_void,
    len: *mut usize,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let data = unsafe { out(data, "data") }?;
        *data = ptr::null();
        // SAFETY: the caller passes NULL or a writable size_t.
        let len = unsafe { out(len, "len") }?;
        *len = 0;
        // SAFETY: the caller passes NULL or a live handle.
        let f = unsafe { handle(frame, "frame") }?;
        if let Some(&(bytes, bytes_len)) = f.data.get() {
            // Begun before: no lock, so a recv in another thread never delays it.
            *data = bytes as *const c_void;
            *len = bytes_len;
            return Ok(());
        }
        let (bytes, bytes_len) = f.inner.with(|state| -> Result<_, Error> {
            let consumer = state.consumer;
            let held = state.frames.get_mut(&f.id).ok_or_else(|| Error::invalid("the frame was already released"))?;
            if held.read.is_none() {
                // SAFETY: the consumer lives until ConsumerState's Drop, which
                // ends every access first, so 'static outlives every use of
                // the guard; the state lock is held, so nothing else uses the
                // consumer now. The guard reaches only this frame's buffer's
                // mapping, held until the frame is released, which drops the
                // guard first (ConsumerState::release, HeldFrame's field
                // order). Nothing else reaches that mapping meanwhile: one
                // guard per frame, one frame per held buffer (the library
                // refuses to hand a held buffer off again), and the
                // consumer's other methods leave held buffers' mappings alone.
                let core: &'static mut CoreConsumer = unsafe { &mut *consumer.as_ptr() };
                held.read = Some(core.read_kept(&held.kept)?);
            }
            let bytes = held.read.as_ref().expect("begun above");
            Ok((bytes.as_ptr(), bytes.len()))
        })?;
        let bytes_len = usize::try_from(f.info.bytes_used).unwrap_or(usize::MAX).min(bytes_len);
        // Another thread may have begun it meanwhile: the same access (one
        // guard per frame), so the same address.
        let _ = f.data.set((bytes as usize, bytes_len));
        *data = bytes.cast::<c_void>();
        *len = bytes_len;
        Ok(())
    })
}

/// Whether the frame's buffer still holds the frame: call it **after**
/// reading the bytes of `dmabroker_frame_data`. `DMABROKER_OK`: the
/// consumer was not evicted since it received the frame, so no byte read
/// before this call was overwritten. `DMABROKER_ERROR_EVICTED`: the
/// producer evicted the consumer (a frame held past the release timeout)
/// and took back every buffer it held, this one included; it may have
/// reused it, so the bytes read may be torn or another frame's: discard
/// them. The frame must still be freed. While another thread is in
/// `dmabroker_consumer_recv`, waits for the end of its current wait slice
/// (10 ms at most).
///
/// # Errors
/// `DMABROKER_ERROR_EVICTED`, `DMABROKER_ERROR_INVALID_ARGUMENT` (NULL).
///
/// # Safety
/// `frame` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_frame_check(frame: *const Frame) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let f = unsafe { handle(frame, "frame") }?;
        f.inner.with(|state| -> Result<(), Error> {
            let held = state.frames.get(&f.id).ok_or_else(|| Error::invalid("the frame was already released"))?;
            // SAFETY: see `ConsumerState::consumer`: the state lock is held,
            // and this shared reference lives only for the check.
            let core: &CoreConsumer = unsafe { state.consumer.as_ref() };
            Ok(core.check_kept(&held.kept)?)
        })
    })
}

/// A new handle to the frame's buffer (the same memory; free it with
/// `dmabroker_buffer_free`), e.g. to import its fd into a device.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL pointers.
///
/// # Safety
/// `frame` is NULL or a live handle; `out` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_frame_get_buffer(frame: *const Frame, out: *mut *mut Buffer) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        // SAFETY: the caller passes NULL or a live handle.
        let f = unsafe { handle(frame, "frame") }?;
        *out = into_handle(Buffer::new(f.buffer.clone()));
        Ok(())
    })
}

/// Take the frame's sync_file: `*fd` receives it (the caller owns it and
/// must `close()` it), or -1 when none came with the frame: the consumer
/// did not ask (`dmabroker_consumer_options.want_sync_files`), the producer
/// did not export one (`DMABROKER_FRAME_FLAG_SYNC_FILE` at submit), the
/// pool's buffers are not dma-bufs (memfd pools never have one), or it was
/// taken already. Wait for it (`poll` for `POLLIN`) before touching the
/// buffer with a device; `dmabroker_frame_data` needs no fence.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL pointers (`*fd` is then -1).
///
/// # Safety
/// `frame` is NULL or a live handle; `fd` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_frame_take_sync_file(frame: *const Frame, fd: *mut c_int) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable int.
        let fd = unsafe { out(fd, "fd") }?;
        *fd = -1;
        // SAFETY: the caller passes NULL or a live handle.
        let f = unsafe { handle(frame, "frame") }?;
        if let Some(sync_file) = lock(&f.sync_file).take() {
            *fd = sync_file.into_raw_fd();
        }
        Ok(())
    })
}

/// Release the frame: end CPU access and give the buffer back to the
/// producer (a sync_file not taken is closed). NULL is ignored. Pointers
/// from `dmabroker_frame_data` are invalid afterwards. Never waits: while
/// another thread is in `dmabroker_consumer_recv`, that call releases the
/// buffer within 10 ms.
///
/// # Safety
/// `frame` is NULL or a live handle not freed before, used by no other
/// thread during the call nor afterwards.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_frame_free(frame: *mut Frame) {
    guard_value((), || {
        if frame.is_null() {
            return;
        }
        // SAFETY: non-NULL, from into_handle, given up by the caller.
        let f = unsafe { Box::from_raw(frame) };
        f.inner.free(f.id);
        // The last handle of a freed consumer detaches it here.
        drop(f);
    })
}
