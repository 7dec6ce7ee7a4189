//! The sink's published stream: the dmabroker [`Producer`], its
//! registration with the broker, writable mappings of its frames, and the
//! thread that lets consumers in.
//!
//! Frames lent to upstream through [`super::pool`] are tracked per buffer
//! index with a generation, so that a GstBuffer that outlives its frame
//! (a `last-sample`, a tee) can never give back or submit a frame that was
//! lent again since.

use dmabroker::pool::{AcquireError, FrameMeta, PoolRegistration, Producer};
use dmabroker::BufferKind;
use dmabroker_sys::mmap::{MapError, Mapping, Protection};
use rustix::event::{poll, PollFd, PollFlags};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// One acquire attempt holds the lock at most this long, so that render
/// (which submits, and so frees frames) never waits behind a starving pool.
const ACQUIRE_SLICE: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// In the producer's hands (free, or submitted to consumers).
    Pool,
    /// Lent to a GstBuffer of generation `gen`.
    Lent(u64),
}

/// The part behind the lock.
#[derive(Debug)]
pub(crate) struct Inner {
    pub producer: Producer,
    /// Writable mappings parked per index while no lease holds them.
    parked: Vec<Option<Mapping>>,
    slots: Vec<Slot>,
    /// Live leases by mapping address: (index, generation).
    live: HashMap<usize, (u32, u64)>,
    next_gen: u64,
}

/// Counters the element shows.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub frames: AtomicU64,
    pub zero_copy: AtomicU64,
    pub copies: AtomicU64,
    pub consumers_seen: AtomicU64,
}

/// A published stream.
#[derive(Debug)]
pub(crate) struct Stream {
    inner: Mutex<Inner>,
    /// Frame size in bytes (the caps' `GstVideoInfo` size).
    pub frame_len: usize,
    /// Every frame is a dma-buf: the pool lends them as `GstDmaBufMemory`
    /// (so `v4l2src io-mode=dmabuf-import` can queue them to its driver).
    pub dmabuf: bool,
    /// Each frame's dma-buf identity (`st_dev`, `st_ino`), by index: how
    /// render tells that a dma-buf memory is the frame a lease lent.
    inodes: Vec<Option<(u64, u64)>>,
    pub flushing: AtomicBool,
    stop: Arc<AtomicBool>,
    doorbell: Mutex<Option<JoinHandle<()>>>,
    pub counters: Counters,
}

/// A frame lent to a GstBuffer: its writable mapping, given back (and the
/// frame too, unless it was submitted) when the GstMemory is freed.
pub(crate) struct Lease {
    map: Option<Mapping>,
    index: u32,
    gen: u64,
    stream: Arc<Stream>,
}

impl Lease {
    /// The frame's index in the pool.
    pub fn index(&self) -> u32 {
        self.index
    }
}

impl AsMut<[u8]> for Lease {
    fn as_mut(&mut self) -> &mut [u8] {
        // Leases hold read-write mappings (made so in `lend`).
        self.map.as_mut().and_then(Mapping::as_mut_slice).unwrap_or_default()
    }
}

impl AsRef<[u8]> for Lease {
    fn as_ref(&self) -> &[u8] {
        self.map.as_ref().map(Mapping::as_slice).unwrap_or_default()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(map) = self.map.take() else { return };
        let mut inner = self.stream.lock();
        inner.live.remove(&(map.as_ptr() as usize));
        let i = self.index as usize;
        if inner.slots.get(i) == Some(&Slot::Lent(self.gen)) {
            // Never submitted (upstream dropped it, a flush): back to the pool.
            drop(inner.producer.reclaim(self.index));
            inner.slots[i] = Slot::Pool;
        }
        if let Some(parked) = inner.parked.get_mut(i) {
            if parked.is_none() {
                *parked = Some(map);
            }
        }
    }
}

/// Why [`Stream::lend`] returned no frame.
#[derive(Debug)]
pub(crate) enum LendError {
    Flushing,
    Closed,
    Map(MapError),
}

impl Stream {
    /// Wrap `producer` (already allocated) and start letting in the
    /// consumers `registration` brings.
    pub fn new(producer: Producer, registration: PoolRegistration, frame_len: usize) -> Result<Arc<Self>, MapError> {
        let mut parked = Vec::new();
        let mut inodes = Vec::new();
        let mut dmabuf = true;
        for buffer in producer.buffers() {
            let len = usize::try_from(buffer.len()).map_err(|_| MapError::Os(rustix::io::Errno::FBIG))?;
            parked.push(Some(Mapping::map(buffer.as_fd(), 0, len, Protection::ReadWrite, true)?));
            dmabuf &= buffer.kind() == BufferKind::DmaBuf;
            inodes.push(identity(buffer.as_fd()));
        }
        let dmabuf = dmabuf && !parked.is_empty();
        let n = parked.len();
        let stop = Arc::new(AtomicBool::new(false));
        let stream = Arc::new(Self {
            inner: Mutex::new(Inner {
                producer,
                parked,
                slots: vec![Slot::Pool; n],
                live: HashMap::new(),
                next_gen: 1,
            }),
            frame_len,
            dmabuf,
            inodes,
            flushing: AtomicBool::new(false),
            stop: stop.clone(),
            doorbell: Mutex::new(None),
            counters: Counters::default(),
        });
        let weak = Arc::downgrade(&stream);
        let handle = std::thread::Builder::new()
            .name("dmabroker-doorbell".into())
            .spawn(move || doorbell(registration, weak, stop))
            .map_err(|_| rustix::io::Errno::AGAIN)?;
        *stream.doorbell.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(stream)
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not take the stream down with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lend upstream a free frame (waits per the pool's backpressure).
    pub fn lend(self: &Arc<Self>) -> Result<(Lease, usize), LendError> {
        loop {
            if self.flushing.load(Ordering::Acquire) {
                return Err(LendError::Flushing);
            }
            let mut inner = self.lock();
            let index = match inner.producer.acquire(Some(ACQUIRE_SLICE)) {
                Ok(slot) => slot.lend(),
                Err(AcquireError::Timeout(_)) => continue,
                Err(_) => return Err(LendError::Closed),
            };
            let gen = inner.next_gen;
            inner.next_gen += 1;
            let i = index as usize;
            inner.slots[i] = Slot::Lent(gen);
            let map = match inner.parked[i].take() {
                Some(map) => map,
                // An older GstBuffer still holds the parked mapping.
                None => {
                    let Some(buffer) = inner.producer.buffers().nth(i) else { return Err(LendError::Closed) };
                    let len = usize::try_from(buffer.len())
                        .map_err(|_| LendError::Map(MapError::Os(rustix::io::Errno::FBIG)))?;
                    match Mapping::map(buffer.as_fd(), 0, len, Protection::ReadWrite, true) {
                        Ok(map) => map,
                        Err(e) => {
                            drop(inner.producer.reclaim(index));
                            inner.slots[i] = Slot::Pool;
                            return Err(LendError::Map(e));
                        }
                    }
                }
            };
            let len = map.len();
            inner.live.insert(map.as_ptr() as usize, (index, gen));
            return Ok((Lease { map: Some(map), index, gen, stream: self.clone() }, len));
        }
    }

    /// A dup of frame `index`'s fd (for the dma-buf memory a lease is
    /// lent as).
    pub fn dup_fd(&self, index: u32) -> Option<OwnedFd> {
        self.lock().producer.buffers().nth(index as usize)?.try_clone_fd().ok()
    }

    /// Submit the lent frame whose mapping starts at `addr`, if it is one
    /// of ours and still lent: `Ok(true)`; `Ok(false)`: not ours (copy it).
    /// With `dmabuf` (the identity of the dma-buf the rendered memory
    /// holds), the frame must also be that dma-buf.
    pub fn submit_lent(&self, addr: usize, dmabuf: Option<(u64, u64)>, meta: FrameMeta) -> Result<bool, String> {
        let mut inner = self.lock();
        let Some(&(index, gen)) = inner.live.get(&addr) else { return Ok(false) };
        if inner.slots[index as usize] != Slot::Lent(gen) {
            return Ok(false);
        }
        if dmabuf.is_some() && self.inodes.get(index as usize).copied().flatten() != dmabuf {
            return Ok(false);
        }
        inner.slots[index as usize] = Slot::Pool;
        let Some(slot) = inner.producer.reclaim(index) else { return Ok(false) };
        slot.submit(meta).map(|_| true).map_err(|e| e.to_string())
    }

    /// Copy `fill`'s output into a free frame and submit it.
    pub fn submit_copy(
        &self,
        meta: impl FnOnce(&[u8]) -> FrameMeta,
        fill: impl FnOnce(&mut [u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut fill = Some(fill);
        loop {
            if self.flushing.load(Ordering::Acquire) {
                return Err("flushing".into());
            }
            let mut inner = self.lock();
            let mut slot = match inner.producer.acquire(Some(ACQUIRE_SLICE)) {
                Ok(slot) => slot,
                Err(AcquireError::Timeout(_)) => continue,
                Err(e) => return Err(e.to_string()),
            };
            let frame_meta = {
                let mut write = slot.mapping().begin_write().map_err(|e| e.to_string())?;
                let bytes = &mut write[..self.frame_len];
                if let Some(fill) = fill.take() {
                    fill(bytes)?;
                }
                meta(bytes)
            };
            return slot.submit(frame_meta).map(|_| ()).map_err(|e| e.to_string());
        }
    }

    /// Consumers attached now.
    pub fn attached(&self) -> usize {
        self.lock().producer.attached()
    }

    /// Wait up to `timeout` for `n` consumers (in slices, so the doorbell
    /// thread can add them); returns whether they came.
    pub fn wait_for_consumers(&self, n: usize, timeout: Duration, cancelled: &AtomicBool) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.lock().producer.wait_for_consumers(n, Duration::from_millis(10)) {
                return true;
            }
            if std::time::Instant::now() >= deadline || cancelled.load(Ordering::Acquire) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// End the stream: consumers see an orderly close; the doorbell thread
    /// ends and the name is released.
    pub fn close(&self) {
        self.stop.store(true, Ordering::Release);
        self.lock().producer.close();
        let handle = self.doorbell.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// The (`st_dev`, `st_ino`) of an open file: one per dma-buf, shared by
/// every fd of it.
#[allow(clippy::unnecessary_cast)] // narrower than u64 on some 32-bit targets
pub(crate) fn identity(fd: std::os::fd::BorrowedFd<'_>) -> Option<(u64, u64)> {
    rustix::fs::fstat(fd).ok().map(|st| (st.st_dev as u64, st.st_ino as u64))
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Let in the consumers the broker sends, and keep handshakes and health
/// checks running while upstream is idle.
fn doorbell(mut registration: PoolRegistration, stream: std::sync::Weak<Stream>, stop: Arc<AtomicBool>) {
    let slice = rustix::time::Timespec { tv_sec: 0, tv_nsec: 20_000_000 };
    while !stop.load(Ordering::Acquire) {
        let readable = {
            let mut fds = [PollFd::new(&registration, PollFlags::IN)];
            poll(&mut fds, Some(&slice)).is_ok_and(|n| n > 0)
        };
        let Some(stream) = stream.upgrade() else { return };
        if readable {
            loop {
                match registration.accept() {
                    Ok(Some((socket, who))) => {
                        stream.counters.consumers_seen.fetch_add(1, Ordering::Relaxed);
                        eprintln_debug(&format!(
                            "dmabrokersink: consumer uid {} pid {} ({}) attaching to pool `{}`",
                            who.uid,
                            who.pid,
                            who.access,
                            registration.name()
                        ));
                        let _ = stream.lock().producer.attach(socket);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        // The broker went away: consumers attached keep
                        // streaming, new ones cannot come.
                        return;
                    }
                }
            }
        }
        stream.lock().producer.maintain_now();
    }
}

fn eprintln_debug(line: &str) {
    gst::debug!(crate::sink::imp::CAT, "{line}");
}
