//! The consumer side: attaches once, then takes frames from its ring and
//! releases them, one at a time ([`Frame`]) or several at once ([`KeptFrame`]).

use super::error::PoolError;
use super::layout::{Control, SLOT_ACTIVE, STREAM_CLOSED};
use super::transport;
use super::{now_ns, timespec, FrameFlags};
use crate::buffer::{Buffer, BufferMapping, CpuRead};
use rustix::thread::futex;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod attach;
mod frame;
mod options;
pub use frame::{ForeignFrame, Frame, KeptError, KeptFrame};
pub use options::{ConsumerOptions, WaitMode};

/// The identity of the next attachment in this process: every
/// [`Consumer`] gets its own, never reused, so a [`KeptFrame`] names the
/// one attachment it came from.
static NEXT_ATTACHMENT: AtomicU64 = AtomicU64::new(1);

/// How often a waiting consumer checks that the producer is still alive.
const HEALTH_NS: u64 = 50_000_000;
/// Longest single futex sleep: health checks run between sleeps.
const SLEEP_SLICE: Duration = Duration::from_millis(50);

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
        self.maps.iter().map(super::super::buffer::mapping::BufferMapping::buffer)
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

#[cfg(test)]
mod tests;
