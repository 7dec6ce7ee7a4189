//! The C producer: `dmabroker_producer_*`. The library's `WriteSlot`
//! borrows its producer mutably, so a producer handle has at most one slot
//! out at a time; the slot lives inside the handle's state, next to the
//! producer it borrows (as in `mapping.rs`).

use super::{busy, lock, ConsumerStats, PoolOptions, PoolStats, DMABROKER_FRAME_FLAG_SYNC_FILE};

use crate::buffer::Buffer;
use crate::constraints::{ChoiceInfo, Constraints};
use crate::error::{guard, guard_value, Error, Status};
use crate::format::Layout;
use crate::heaps::Heaps;
use crate::{c_str, free_handle, handle, into_handle, out, timeout_ms};
use dmabroker_core::buffer::{BufferMapping, CpuWrite};
use dmabroker_core::pool::{
    Backpressure, FrameFlags, FrameMeta, PoolAllocError, PoolOptions as CorePoolOptions, Producer as CoreProducer,
    WriteSlot,
};
use std::ffi::{c_char, c_void};
use std::ptr::{self, NonNull};
use std::sync::Mutex;
use std::time::Duration;

/// A slot the producer is filling: the CPU access (if any) and the
/// library's slot, which borrows the producer. `write` is declared first,
/// so it is dropped (the access ended) before the slot.
pub(super) struct Slot {
    write: Option<CpuWrite<'static>>,
    slot: WriteSlot<'static>,
}

pub(super) struct ProducerState {
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
pub(super) unsafe fn pool_options(
    buffers: u32,
    buffer_len: u64,
    options: *const PoolOptions,
) -> Result<CorePoolOptions, Error> {
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
pub(super) unsafe fn with_heaps<T>(
    heaps: *const Heaps,
    f: impl FnOnce(&dmabroker_core::Heaps) -> T,
) -> Result<T, Error> {
    if heaps.is_null() {
        Ok(f(&Heaps::discover().heaps))
    } else {
        // SAFETY: non-NULL, and the caller passes a live handle.
        Ok(f(&unsafe { handle(heaps, "heaps") }?.heaps))
    }
}

/// A producer as a handle for C.
pub(super) fn into_producer(producer: CoreProducer) -> *mut Producer {
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
pub(super) unsafe fn new_for(
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
    guard_value((), || unsafe { free_handle(producer) });
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
