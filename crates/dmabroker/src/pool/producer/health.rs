//! Consumers' health: progress, hold times, eviction and reaping of the
//! consumers that died or stopped releasing.

use super::{bits, nanos, Producer};

use crate::pool::layout::{PRODUCER_BIT, SLOT_EVICTED, SLOT_FREE};
use crate::pool::timespec;
use rustix::thread::futex;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Producer {
    /// Find consumers that died (socket hang-up, pidfd readable) or hold a
    /// frame past the release timeout.
    pub(super) fn reap(&mut self, now: u64) {
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
    pub(super) fn observe(&mut self, c: u32, now: u64) {
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
    pub(super) fn evict_overdue(&mut self, now: u64, limit: u64) {
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
    pub(super) fn lose(&mut self, c: u32, evict: bool) {
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
        }
        tracing::debug!(slot = c, pid = conn.pid, "pool consumer gone");
        self.conns[c as usize] = None;
        self.ctl.slot_state(c).store(SLOT_FREE, Ordering::Release);
        // Also when an evicted slot is finally freed: no bit of it may
        // survive into the next consumer that gets this slot.
        let bit = 1u64 << c;
        for i in 0..self.maps.len() as u32 {
            self.ctl.buf_mask(i).fetch_and(!bit, Ordering::AcqRel);
        }
        self.ctl.free_seq().fetch_add(1, Ordering::Relaxed);
    }
}
