//! The control block: one sealed memfd that the producer and every consumer
//! map read-write. Everything in it is an atomic; nothing else is shared.
//!
//! ```text
//! 0      header (256 B)   magic, version, geometry, stream state,
//!                         free_seq futex (own cache line: consumers bump it)
//! 256    buffer table     64 B per buffer (MAX_BUFFERS of them): holder mask,
//!                         seq and publish time of the frame it holds
//! 4352   consumer slots   256 B slot header + ring_cap entries of 64 B
//! ```
//!
//! A slot header keeps what the producer writes (`head`, drop counters) and
//! what the consumer writes (`tail`, `waiting`, counters) on separate cache
//! lines: every handoff touches both sides' lines exactly once.

use dmabroker_sys::mmap::AtomicMapping;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// `"DMBP"`: the first word of the control block and of every socket message.
pub(crate) const MAGIC: u32 = u32::from_le_bytes(*b"DMBP");
/// Layout and wire version; both sides must agree exactly.
/// 2: HELLO carries the consumer's pid, WELCOME the control block's length.
pub(crate) const VERSION: u32 = 2;

/// Most buffers in a pool: holders are tracked in one `u64` per buffer.
pub const MAX_BUFFERS: u32 = 64;
/// Most consumers attached at once: bit 63 of a holder mask is the producer's.
pub const MAX_CONSUMERS: u32 = 63;
/// The holder-mask bit that marks a buffer as being written by the producer.
pub(crate) const PRODUCER_BIT: u64 = 1 << 63;

/// Stream state in the header: 0 while running (a fresh memfd is zeroed),
/// this once the producer ended the stream on purpose.
pub(crate) const STREAM_CLOSED: u32 = 1;

/// Slot states.
pub(crate) const SLOT_FREE: u32 = 0;
/// Attached and receiving frames.
pub(crate) const SLOT_ACTIVE: u32 = 1;
/// Cut off by the producer (release timeout); its claims were taken back.
pub(crate) const SLOT_EVICTED: u32 = 2;

const H_MAGIC: usize = 0;
const H_VERSION: usize = 4;
const H_NBUF: usize = 8;
const H_MAX_CONSUMERS: usize = 12;
const H_RING_CAP: usize = 16;
const H_POLICY: usize = 20;
const H_BUF_LEN: usize = 24;
const H_STATE: usize = 32;
const H_PRODUCED: usize = 40;
const H_DROPPED: usize = 48;
// Consumers write these on every release: a cache line of their own.
const H_FREE_SEQ: usize = 64;
const H_PRODUCER_WAITING: usize = 68;
const HEADER_LEN: usize = 256;

const BUF_TABLE: usize = HEADER_LEN;
const BUF_STRIDE: usize = 64;
const B_MASK: usize = 0;
const B_SEQ: usize = 8;
const B_PUBLISHED_NS: usize = 16;

const SLOTS: usize = BUF_TABLE + MAX_BUFFERS as usize * BUF_STRIDE;
const SLOT_HEADER_LEN: usize = 256;
const S_STATE: usize = 0;
const S_PID: usize = 4;
const S_GENERATION: usize = 8;
// Producer-written line.
const S_HEAD: usize = 64;
const S_DROPPED: usize = 72;
const S_WAKES: usize = 80;
const S_PUBLISHED: usize = 88;
// Consumer-written line.
const S_TAIL: usize = 128;
const S_WAITING: usize = 132;
const S_RECEIVED: usize = 136;
const S_RELEASED: usize = 144;

/// Bytes per ring entry: one cache line, so the producer filling entry `n+1`
/// never invalidates the line a consumer is reading entry `n` from.
pub(crate) const ENTRY_LEN: usize = 64;
const E_SEQ: usize = 0;
const E_TIMESTAMP: usize = 8;
const E_BYTES_USED: usize = 16;
const E_META: usize = 24;
const E_INDEX: usize = 32;
const E_FLAGS: usize = 36;

/// The pool's geometry, as written in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub nbuf: u32,
    pub max_consumers: u32,
    pub ring_cap: u32,
    pub policy: u32,
    pub buf_len: u64,
}

impl Geometry {
    /// Bytes of control block this geometry needs; `None` when out of range.
    pub fn control_len(&self) -> Option<usize> {
        if self.nbuf == 0
            || self.nbuf > MAX_BUFFERS
            || self.max_consumers == 0
            || self.max_consumers > MAX_CONSUMERS
            || !self.ring_cap.is_power_of_two()
            || self.ring_cap < self.nbuf
            || self.ring_cap > MAX_BUFFERS
        {
            return None;
        }
        let slot = SLOT_HEADER_LEN + self.ring_cap as usize * ENTRY_LEN;
        Some(SLOTS + slot * self.max_consumers as usize)
    }
}

/// One frame's ring entry, as read by a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub seq: u64,
    pub timestamp_ns: u64,
    pub bytes_used: u64,
    pub meta: u64,
    pub index: u32,
    pub flags: u32,
}

/// The mapped control block with typed accessors.
#[derive(Debug)]
pub(crate) struct Control {
    map: AtomicMapping,
    geometry: Geometry,
}

impl Control {
    /// Wrap a mapping whose length was checked against `geometry`.
    /// Returns `None` when the mapping is too small for it.
    pub fn new(map: AtomicMapping, geometry: Geometry) -> Option<Self> {
        let need = geometry.control_len()?;
        (map.len() >= need).then_some(Self { map, geometry })
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Bytes mapped (the whole memfd).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Offsets are checked against the mapping length in `new` and every
    /// caller passes a slot/buffer/entry index below the geometry's bounds,
    /// so a miss here is a bug in this module, never bad input.
    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        self.map.atomic_u32(offset).expect("control block offset validated in Control::new")
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        self.map.atomic_u64(offset).expect("control block offset validated in Control::new")
    }

    /// Write the header of a fresh control block (producer only).
    pub fn init_header(&self) {
        let g = self.geometry;
        self.u32_at(H_VERSION).store(VERSION, Ordering::Relaxed);
        self.u32_at(H_NBUF).store(g.nbuf, Ordering::Relaxed);
        self.u32_at(H_MAX_CONSUMERS).store(g.max_consumers, Ordering::Relaxed);
        self.u32_at(H_RING_CAP).store(g.ring_cap, Ordering::Relaxed);
        self.u32_at(H_POLICY).store(g.policy, Ordering::Relaxed);
        self.u64_at(H_BUF_LEN).store(g.buf_len, Ordering::Relaxed);
        // The magic last, with Release: a reader that sees it sees the rest.
        self.u32_at(H_MAGIC).store(MAGIC, Ordering::Release);
    }

    /// Read the geometry a producer wrote (consumer side, before trusting
    /// anything in the welcome message).
    pub fn read_header(map: &AtomicMapping) -> Option<Geometry> {
        let u32_at = |o| map.atomic_u32(o).map(|a| a.load(Ordering::Acquire));
        if u32_at(H_MAGIC)? != MAGIC || u32_at(H_VERSION)? != VERSION {
            return None;
        }
        Some(Geometry {
            nbuf: u32_at(H_NBUF)?,
            max_consumers: u32_at(H_MAX_CONSUMERS)?,
            ring_cap: u32_at(H_RING_CAP)?,
            policy: u32_at(H_POLICY)?,
            buf_len: map.atomic_u64(H_BUF_LEN)?.load(Ordering::Relaxed),
        })
    }

    pub fn stream_state(&self) -> &AtomicU32 {
        self.u32_at(H_STATE)
    }
    pub fn produced(&self) -> &AtomicU64 {
        self.u64_at(H_PRODUCED)
    }
    pub fn dropped(&self) -> &AtomicU64 {
        self.u64_at(H_DROPPED)
    }
    pub fn free_seq(&self) -> &AtomicU32 {
        self.u32_at(H_FREE_SEQ)
    }
    pub fn producer_waiting(&self) -> &AtomicU32 {
        self.u32_at(H_PRODUCER_WAITING)
    }

    fn buf(&self, index: u32) -> usize {
        debug_assert!(index < self.geometry.nbuf);
        BUF_TABLE + index as usize * BUF_STRIDE
    }
    /// Who holds buffer `index`: bit `c` for consumer slot `c`, bit 63 for the producer.
    pub fn buf_mask(&self, index: u32) -> &AtomicU64 {
        self.u64_at(self.buf(index) + B_MASK)
    }
    pub fn buf_seq(&self, index: u32) -> &AtomicU64 {
        self.u64_at(self.buf(index) + B_SEQ)
    }
    pub fn buf_published_ns(&self, index: u32) -> &AtomicU64 {
        self.u64_at(self.buf(index) + B_PUBLISHED_NS)
    }

    fn slot(&self, slot: u32) -> usize {
        debug_assert!(slot < self.geometry.max_consumers);
        SLOTS + slot as usize * (SLOT_HEADER_LEN + self.geometry.ring_cap as usize * ENTRY_LEN)
    }
    pub fn slot_state(&self, slot: u32) -> &AtomicU32 {
        self.u32_at(self.slot(slot) + S_STATE)
    }
    pub fn slot_pid(&self, slot: u32) -> &AtomicU32 {
        self.u32_at(self.slot(slot) + S_PID)
    }
    pub fn slot_generation(&self, slot: u32) -> &AtomicU32 {
        self.u32_at(self.slot(slot) + S_GENERATION)
    }
    /// Next ring position the producer writes; also the consumer's futex word.
    pub fn head(&self, slot: u32) -> &AtomicU32 {
        self.u32_at(self.slot(slot) + S_HEAD)
    }
    pub fn slot_dropped(&self, slot: u32) -> &AtomicU64 {
        self.u64_at(self.slot(slot) + S_DROPPED)
    }
    pub fn slot_wakes(&self, slot: u32) -> &AtomicU64 {
        self.u64_at(self.slot(slot) + S_WAKES)
    }
    pub fn slot_published(&self, slot: u32) -> &AtomicU64 {
        self.u64_at(self.slot(slot) + S_PUBLISHED)
    }
    /// Next ring position to take; advanced by CAS by the consumer (take) or
    /// the producer (drop-oldest), so each entry goes to exactly one of them.
    pub fn tail(&self, slot: u32) -> &AtomicU32 {
        self.u32_at(self.slot(slot) + S_TAIL)
    }
    /// 1 while the consumer is (about to be) asleep on `head`.
    pub fn waiting(&self, slot: u32) -> &AtomicU32 {
        self.u32_at(self.slot(slot) + S_WAITING)
    }
    pub fn slot_received(&self, slot: u32) -> &AtomicU64 {
        self.u64_at(self.slot(slot) + S_RECEIVED)
    }
    pub fn slot_released(&self, slot: u32) -> &AtomicU64 {
        self.u64_at(self.slot(slot) + S_RELEASED)
    }

    fn entry(&self, slot: u32, pos: u32) -> usize {
        self.slot(slot) + SLOT_HEADER_LEN + (pos & (self.geometry.ring_cap - 1)) as usize * ENTRY_LEN
    }

    /// Write ring entry `pos` of `slot` (producer; published by the `head` store after it).
    pub fn write_entry(&self, slot: u32, pos: u32, e: &Entry) {
        let at = self.entry(slot, pos);
        self.u64_at(at + E_SEQ).store(e.seq, Ordering::Relaxed);
        self.u64_at(at + E_TIMESTAMP).store(e.timestamp_ns, Ordering::Relaxed);
        self.u64_at(at + E_BYTES_USED).store(e.bytes_used, Ordering::Relaxed);
        self.u64_at(at + E_META).store(e.meta, Ordering::Relaxed);
        self.u32_at(at + E_INDEX).store(e.index, Ordering::Relaxed);
        self.u32_at(at + E_FLAGS).store(e.flags, Ordering::Relaxed);
    }

    /// Read ring entry `pos` of `slot`. Only valid once the reader's CAS of
    /// `tail` from `pos` succeeds (the producer cannot reuse the entry before).
    pub fn read_entry(&self, slot: u32, pos: u32) -> Entry {
        let at = self.entry(slot, pos);
        Entry {
            seq: self.u64_at(at + E_SEQ).load(Ordering::Relaxed),
            timestamp_ns: self.u64_at(at + E_TIMESTAMP).load(Ordering::Relaxed),
            bytes_used: self.u64_at(at + E_BYTES_USED).load(Ordering::Relaxed),
            meta: self.u64_at(at + E_META).load(Ordering::Relaxed),
            index: self.u32_at(at + E_INDEX).load(Ordering::Relaxed),
            flags: self.u32_at(at + E_FLAGS).load(Ordering::Relaxed),
        }
    }

    /// Reset a slot for a new consumer (producer only; the slot is FREE and
    /// nobody else maps it as theirs).
    pub fn reset_slot(&self, slot: u32, pid: u32) {
        self.head(slot).store(0, Ordering::Relaxed);
        self.tail(slot).store(0, Ordering::Relaxed);
        self.waiting(slot).store(0, Ordering::Relaxed);
        for counter in [
            self.slot_dropped(slot),
            self.slot_wakes(slot),
            self.slot_published(slot),
            self.slot_received(slot),
            self.slot_released(slot),
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        self.slot_pid(slot).store(pid, Ordering::Relaxed);
        self.slot_generation(slot).fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_bounds() {
        let g = Geometry { nbuf: 4, max_consumers: 8, ring_cap: 4, policy: 0, buf_len: 4096 };
        assert_eq!(g.control_len(), Some(SLOTS + 8 * (256 + 4 * 64)));
        assert!(Geometry { nbuf: 65, ring_cap: 128, ..g }.control_len().is_none());
        assert!(Geometry { ring_cap: 3, ..g }.control_len().is_none());
        assert!(Geometry { ring_cap: 2, ..g }.control_len().is_none());
        assert!(Geometry { max_consumers: 64, ..g }.control_len().is_none());
        assert!(Geometry { nbuf: 0, ..g }.control_len().is_none());
    }
}
