//! Counters of the pool and of each consumer.

use super::Producer;

use std::sync::atomic::Ordering;

/// Counters of one attached consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Its slot in the control block.
    pub slot: u32,
    /// Its process id: the pid its HELLO named when that was verified (see
    /// [the module docs](super#consumer-identity)), else `SO_PEERCRED`'s.
    pub pid: u32,
    /// Frames put in its ring.
    pub delivered: u64,
    /// Frames it took from its ring.
    pub received: u64,
    /// Frames it released.
    pub released: u64,
    /// Frames taken back before it read them (drop-oldest backpressure).
    pub dropped: u64,
    /// `futex_wake` calls the producer made for it (0 while it keeps up).
    pub wakes: u64,
    /// True when it was evicted for exceeding the release timeout.
    pub evicted: bool,
}

/// Counters of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    /// Frames submitted.
    pub produced: u64,
    /// Frames taken back from at least one consumer (drop-oldest).
    pub dropped: u64,
    /// Consumers that died or were evicted so far.
    pub lost_consumers: u64,
    /// Every consumer currently known (attached or evicted).
    pub consumers: Vec<ConsumerStats>,
}

impl Producer {
    /// Counters of the pool and of each consumer.
    pub fn stats(&self) -> PoolStats {
        let consumers = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(c, conn)| conn.as_ref().map(|conn| (c as u32, conn)))
            .map(|(c, conn)| ConsumerStats {
                slot: c,
                pid: conn.pid,
                delivered: self.ctl.slot_published(c).load(Ordering::Relaxed),
                received: self.ctl.slot_received(c).load(Ordering::Relaxed),
                released: self.ctl.slot_released(c).load(Ordering::Relaxed),
                dropped: self.ctl.slot_dropped(c).load(Ordering::Relaxed),
                wakes: self.ctl.slot_wakes(c).load(Ordering::Relaxed),
                evicted: conn.evicted,
            })
            .collect();
        PoolStats {
            produced: self.ctl.produced().load(Ordering::Relaxed),
            dropped: self.ctl.dropped().load(Ordering::Relaxed),
            lost_consumers: self.lost_consumers,
            consumers,
        }
    }
}
