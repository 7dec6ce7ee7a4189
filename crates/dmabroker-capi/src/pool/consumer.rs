//! The C consumer and its frames: `dmabroker_consumer_*` and
//! `dmabroker_frame_*`. A consumer handle may hold several frames: each is
//! the library's `KeptFrame` (which borrows nothing), kept in the
//! consumer's state by id with the CPU read access begun on it, so frame
//! handles are independent.

use super::{lock, ConsumerSelfStats, FrameInfo, WaitMode, WaitModeArg};

use crate::buffer::Buffer;
use crate::error::{guard, guard_value, Error, Status};
use crate::{c_str, free_handle, handle, into_handle, out};
use dmabroker_core::buffer::CpuRead;
use dmabroker_core::pool::{
    Consumer as CoreConsumer, ConsumerOptions as CoreConsumerOptions, KeptError, KeptFrame, PoolError,
    WaitMode as CoreWaitMode,
};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long `dmabroker_consumer_recv` waits in one go before it releases
/// the frames freed meanwhile by other threads and waits again.
pub(super) const RECV_SLICE: Duration = Duration::from_millis(10);

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
pub(super) struct HeldFrame {
    read: Option<CpuRead<'static>>,
    kept: KeptFrame,
}

pub(super) struct ConsumerState {
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

pub(super) struct ConsumerInner {
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
pub(super) fn wait_mode(wait: WaitModeArg) -> Result<CoreWaitMode, Error> {
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
pub(super) unsafe fn connect(path: *const c_char, options: &CoreConsumerOptions) -> Result<*mut Consumer, Error> {
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
/// `DMABROKER_ERROR_BUSY` (the pool serves as many consumers as it may, or
/// has too many attaches of this user pending),
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
    guard_value((), || unsafe { free_handle(consumer) });
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
                let received = state.consumer().recv(Some(slice)).map(dmabroker_core::pool::Frame::keep);
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
    });
}
