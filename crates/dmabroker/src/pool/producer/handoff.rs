//! Frame handoff: free buffers to the producer (blocking, drop-oldest),
//! published frames into every consumer's ring, and the write slot.

use super::{bits, Producer, MAINTENANCE_NS, STARVED_SLICE};

use crate::buffer::{Buffer, BufferKind, BufferMapping};
use crate::fence::SyncFile;
use crate::pool::error::{AcquireError, SubmitError};
use crate::pool::layout::{Entry, PRODUCER_BIT};
use crate::pool::transport::{self};
use crate::pool::{now_ns, timespec, Backpressure, FenceImport, FrameFlags, FrameMeta};
use rustix::thread::futex;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Producer {
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
            // Starved: maintain (a dead consumer's buffers come back) at the
            // same period as while frames flow, not on every wake-up: a
            // consumer releasing one frame at a time woke the producer into
            // a full pass (a poll of every consumer) per frame.
            if now.saturating_sub(self.last_maintenance) >= MAINTENANCE_NS {
                self.maintain(now);
                if let Some(i) = self.take_free() {
                    break i;
                }
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

    pub(super) fn any_free(&self) -> bool {
        (0..self.maps.len() as u32)
            .any(|i| !self.owned[i as usize] && self.ctl.buf_mask(i).load(Ordering::Acquire) == 0)
    }

    /// Claim a free buffer for writing, round robin.
    pub(super) fn take_free(&mut self) -> Option<u32> {
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
    pub(super) fn drop_oldest(&mut self) -> Option<u32> {
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

    pub(super) fn publish(
        &mut self,
        index: u32,
        meta: &FrameMeta,
        fence: Option<(SyncFile, FenceImport)>,
    ) -> Result<u64, SubmitError> {
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
        if fence.is_some() && meta.sync_file {
            return Err(SubmitError::TwoFences);
        }
        let buffer = self.maps[index as usize].buffer();
        let supplied = match fence {
            Some((fence, FenceImport::Reservation)) => {
                if buffer.kind() != BufferKind::DmaBuf {
                    return Err(SubmitError::ImportNeedsDmaBuf(buffer.kind()));
                }
                // WRITE: the fence joins the exclusive (writer) fences, the
                // ones readers' implicit syncs wait for.
                dmabroker_sys::dma_buf::import_sync_file(
                    buffer,
                    dmabroker_sys::dma_buf::DMA_BUF_SYNC_WRITE as u32,
                    fence.as_fd(),
                )
                .map_err(SubmitError::ImportFence)?;
                Some(fence.into_fd())
            }
            Some((fence, FenceImport::CarryOnly)) => Some(fence.into_fd()),
            None => None,
        };
        let sync_file = if supplied.is_some() {
            supplied
        } else if meta.sync_file
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
        let seq = self.producer.publish(self.index, &meta, None)?;
        self.submitted = true;
        Ok(seq)
    }

    /// Hand the frame off with the fence of the device that is still
    /// writing it (a Vulkan `SYNC_FD` export, a KMS or V4L2 out-fence...):
    /// every consumer that asked for fences gets it with the frame and
    /// waits on it ([`Frame::wait_fence`](crate::pool::Frame::wait_fence));
    /// with [`FenceImport::Reservation`] the dma-buf's implicit-sync users
    /// wait on it too. Returns the frame's sequence number.
    ///
    /// ```no_run
    /// # use dmabroker::pool::{FenceImport, FrameMeta, Producer};
    /// # use dmabroker::fence::SyncFile;
    /// # fn render(_: &dmabroker::Buffer) -> std::os::fd::OwnedFd { unimplemented!() }
    /// # fn f(producer: &mut Producer) -> Result<(), Box<dyn std::error::Error>> {
    /// let slot = producer.acquire(None)?;
    /// let done = SyncFile::new(render(slot.buffer()))?; // refuses a non-sync_file fd
    /// slot.submit_with_fence(FrameMeta::new(4096), done, FenceImport::Reservation)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`submit`](Self::submit), and [`SubmitError::TwoFences`] with
    /// [`FrameMeta::sync_file`], [`SubmitError::ImportNeedsDmaBuf`] and
    /// [`SubmitError::ImportFence`] for [`FenceImport::Reservation`]; the
    /// buffer goes back to the pool and the fence is closed.
    pub fn submit_with_fence(
        mut self,
        meta: FrameMeta,
        fence: SyncFile,
        import: FenceImport,
    ) -> Result<u64, SubmitError> {
        let seq = self.producer.publish(self.index, &meta, Some((fence, import)))?;
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
