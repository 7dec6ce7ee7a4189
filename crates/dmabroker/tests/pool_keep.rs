//! Several outstanding frames per consumer: `Frame::keep` and the
//! `Consumer::*_kept` calls. Kept buffers are never reused while held,
//! release gives them back, a kept frame works only with the attachment
//! that received it, and holding one past the release timeout evicts.

mod pool_support;

use dmabroker::pool::{
    socket_pair, Backpressure, Consumer, ConsumerOptions, FrameMeta, KeptError, KeptFrame, PoolError, PoolOptions,
    Producer,
};
use dmabroker::Heaps;
use pool_support::{checksum, fill};
use std::collections::BTreeSet;
use std::time::Duration;

const LEN: u64 = 16 << 10;
const WAIT: Option<Duration> = Some(Duration::from_secs(5));

/// Attach one more consumer to `p` over a socket pair.
fn attach(p: &mut Producer) -> Consumer {
    let (a, b) = socket_pair().unwrap();
    let before = p.attached();
    p.attach(a).unwrap();
    let t = std::thread::spawn(move || Consumer::attach(b, &ConsumerOptions::default()).unwrap());
    assert!(p.wait_for_consumers(before + 1, Duration::from_secs(5)));
    t.join().unwrap()
}

/// Fill a buffer with `seq`'s pattern and hand it off with its checksum.
/// Returns the buffer index used.
fn produce(p: &mut Producer, seq: u64) -> u32 {
    let mut slot = p.acquire(WAIT).unwrap();
    let index = slot.index();
    let sum = {
        let mut w = slot.mapping().begin_write().unwrap();
        fill(&mut w[..LEN as usize], seq);
        checksum(&w[..LEN as usize])
    };
    assert_eq!(slot.submit(FrameMeta::new(LEN).meta(sum)).unwrap(), seq);
    index
}

/// The kept frame still holds exactly what the producer wrote for it.
fn assert_intact(c: &mut Consumer, k: &KeptFrame) {
    let info = *k.info();
    let data = c.read_kept(k).unwrap();
    let mut want = vec![0u8; LEN as usize];
    fill(&mut want, info.seq);
    assert!(data[..LEN as usize] == want[..], "kept frame {} (buffer {}) was overwritten", info.seq, info.index);
    assert_eq!(checksum(&data[..LEN as usize]), info.meta);
}

/// Every buffer of the pool can be acquired at once: nobody holds any.
fn assert_all_free(p: &mut Producer) {
    let n = p.options().buffers;
    let mut lent = BTreeSet::new();
    for _ in 0..n {
        lent.insert(p.acquire(Some(Duration::from_millis(500))).unwrap().lend());
    }
    assert_eq!(lent.len(), n, "every buffer came back: {lent:?}");
    for index in lent {
        drop(p.reclaim(index).unwrap());
    }
}

fn keep_three_then_stream(policy: Backpressure) {
    let opts = PoolOptions::new(4, LEN).backpressure(policy).release_timeout(None);
    let mut p = Producer::allocate(&Heaps::discover(), "memfd", &opts).unwrap();
    let mut c = attach(&mut p);

    let mut kept = Vec::new();
    for seq in 0..3 {
        produce(&mut p, seq);
        kept.push(c.recv(WAIT).unwrap().keep());
        assert_eq!(c.held_count(), kept.len());
    }
    let kept_indices: BTreeSet<u32> = kept.iter().map(|k| k.info().index).collect();
    assert_eq!(kept_indices.len(), 3, "three distinct buffers held");

    // The fourth buffer carries the rest of the stream while three are held.
    let mut received = 0;
    for seq in 3..40 {
        let index = produce(&mut p, seq);
        assert!(!kept_indices.contains(&index), "frame {seq} reused kept buffer {index}");
        // Under drop-oldest, every other frame is left unread: the next
        // acquire must take that one back, never a kept one.
        if policy == Backpressure::DropOldest && seq % 2 == 0 {
            continue;
        }
        let mut f = c.recv(WAIT).unwrap();
        assert_eq!(f.info().seq, seq);
        assert_eq!(c_held_while_reading(&mut f), LEN as usize);
        received += 1;
        drop(f);
        assert_eq!(c.held_count(), 3);
    }
    assert!(received > 0);
    if policy == Backpressure::DropOldest {
        assert!(c.dropped() > 0, "unread frames were taken back");
    }
    for k in &kept {
        assert_intact(&mut c, k);
        assert!(c.owns(k));
        assert!(c.kept_buffer(k).unwrap().len() >= LEN);
    }
    let seqs: Vec<u64> = kept.iter().map(|k| k.info().seq).collect();
    assert_eq!(seqs, [0, 1, 2]);

    // Released, they go back to the producer.
    for k in kept {
        c.release_kept(k).unwrap();
    }
    assert_eq!(c.held_count(), 0);
    let stats = p.stats();
    assert_eq!(stats.consumers[0].released, stats.consumers[0].received);
    assert_all_free(&mut p);
}

/// The frame's bytes are readable while the kept frames are held.
fn c_held_while_reading(f: &mut dmabroker::pool::Frame<'_>) -> usize {
    let info = *f.info();
    let data = f.read().unwrap();
    assert_eq!(checksum(&data[..info.bytes_used as usize]), info.meta);
    info.bytes_used as usize
}

#[test]
fn consumer_keeps_three_frames_and_receives_more_under_block() {
    keep_three_then_stream(Backpressure::Block);
}

#[test]
fn drop_oldest_never_takes_back_a_kept_frame() {
    keep_three_then_stream(Backpressure::DropOldest);
}

#[test]
fn holding_every_buffer_stalls_a_blocking_producer_until_a_release() {
    let opts = PoolOptions::new(2, LEN).release_timeout(None);
    let mut p = Producer::allocate(&Heaps::discover(), "memfd", &opts).unwrap();
    let mut c = attach(&mut p);
    produce(&mut p, 0);
    produce(&mut p, 1);
    let a = c.recv(WAIT).unwrap().keep();
    let b = c.recv(WAIT).unwrap().keep();
    assert_eq!(c.held_count(), 2);
    assert!(matches!(p.acquire(Some(Duration::from_millis(50))), Err(dmabroker::pool::AcquireError::Timeout(_))));
    c.release_kept(a).unwrap();
    let index = p.acquire(Some(Duration::from_millis(500))).unwrap().index();
    assert_ne!(index, b.info().index);
    assert_intact(&mut c, &b);
    c.release_kept(b).unwrap();
}

#[test]
fn a_kept_frame_of_another_consumer_is_refused() {
    let opts = PoolOptions::new(4, LEN).release_timeout(None);
    let mut p = Producer::allocate(&Heaps::discover(), "memfd", &opts).unwrap();
    let mut c1 = attach(&mut p);
    let mut c2 = attach(&mut p);
    produce(&mut p, 0);
    let mut k1 = c1.recv(WAIT).unwrap().keep();
    let k2 = c2.recv(WAIT).unwrap().keep();
    assert_eq!(k1.info().index, k2.info().index, "fan-out: one buffer, two holders");
    assert!(!c2.owns(&k1));
    assert!(matches!(c2.kept_buffer(&k1), Err(KeptError::Foreign { .. })));
    assert!(matches!(c2.read_kept(&k1), Err(KeptError::Foreign { .. })));
    // Refused, and handed back: c2 still holds its own claim.
    let err = c2.release_kept(k1).unwrap_err();
    assert!(err.to_string().contains("another consumer"), "{err}");
    k1 = err.into_frame();
    assert_eq!((c1.held_count(), c2.held_count()), (1, 1));
    assert!(k1.take_sync_file().is_none(), "memfd pools send no sync_file");
    c1.release_kept(k1).unwrap();
    assert_eq!((c1.held_count(), c2.held_count()), (0, 1));
    // The buffer stays out of the pool while c2 holds it.
    let mut lent = Vec::new();
    for _ in 0..3 {
        lent.push(p.acquire(Some(Duration::from_millis(500))).unwrap().lend());
    }
    assert!(!lent.contains(&k2.info().index));
    assert!(p.acquire(Some(Duration::from_millis(20))).is_err());
    c2.release_kept(k2).unwrap();
    for index in lent {
        drop(p.reclaim(index).unwrap());
    }
    assert_all_free(&mut p);
}

#[test]
fn a_kept_frame_of_an_earlier_attachment_is_refused() {
    // One consumer slot, so the second attachment gets the first one's slot.
    let opts = PoolOptions::new(2, LEN).max_consumers(1).release_timeout(None);
    let mut p = Producer::allocate(&Heaps::discover(), "memfd", &opts).unwrap();
    let mut old = attach(&mut p);
    produce(&mut p, 0);
    let stale = old.recv(WAIT).unwrap().keep();
    let slot = old.slot();
    drop(old); // detaches: releases everything it held
    assert!(!p.wait_for_consumers(1, Duration::from_millis(50)), "the producer noticed the hang-up");
    let mut new = attach(&mut p);
    assert_eq!(new.slot(), slot);
    produce(&mut p, 1);
    let mine = new.recv(WAIT).unwrap().keep();
    assert!(!new.owns(&stale));
    assert!(matches!(new.read_kept(&stale), Err(KeptError::Foreign { .. })));
    let stale = new.release_kept(stale).unwrap_err().into_frame();
    assert_eq!(new.held_count(), 1);
    assert_intact(&mut new, &mine);
    new.release_kept(mine).unwrap();
    assert_eq!(new.held_count(), 0);
    drop(stale); // dropping a kept frame releases nothing (its consumer is gone anyway)
    assert_all_free(&mut p);
}

#[test]
fn keeping_a_frame_past_the_release_timeout_evicts_the_consumer() {
    let opts = PoolOptions::new(3, LEN).release_timeout(Some(Duration::from_millis(100)));
    let mut p = Producer::allocate(&Heaps::discover(), "memfd", &opts).unwrap();
    let mut c = attach(&mut p);
    produce(&mut p, 0);
    let k = c.recv(WAIT).unwrap().keep();
    // Receiving and releasing other frames does not reset the kept one's clock.
    for seq in 1..4 {
        produce(&mut p, seq);
        drop(c.recv(WAIT).unwrap());
    }
    // The producer checks its consumers while it waits for attachments.
    assert!(!p.wait_for_consumers(2, Duration::from_millis(300)));
    assert_eq!(p.attached(), 0);
    assert!(p.stats().consumers[0].evicted);
    assert!(matches!(c.recv(Some(Duration::ZERO)), Err(PoolError::Evicted)));
    assert!(matches!(c.read_kept(&k), Err(KeptError::Evicted)));
    // Releasing after the eviction is harmless, and the buffer is the pool's again.
    c.release_kept(k).unwrap();
    assert_eq!(c.held_count(), 0);
    assert_all_free(&mut p);
}

#[test]
fn a_dropped_kept_frame_stays_held_until_its_consumer_goes() {
    let opts = PoolOptions::new(2, LEN).release_timeout(None);
    let mut p = Producer::allocate(&Heaps::discover(), "memfd", &opts).unwrap();
    let mut c = attach(&mut p);
    produce(&mut p, 0);
    let index = {
        let k = c.recv(WAIT).unwrap().keep();
        k.info().index
    }; // dropped without release_kept
    assert_eq!(c.held_count(), 1);
    let other = p.acquire(Some(Duration::from_millis(500))).unwrap().lend();
    assert_ne!(other, index);
    assert!(p.acquire(Some(Duration::from_millis(20))).is_err(), "the dropped frame's buffer is still held");
    drop(p.reclaim(other).unwrap());
    drop(c);
    p.maintain_now();
    assert_all_free(&mut p);
}

/// Eviction does not hand out a frame the evicted consumer still holds: it
/// may still be reading it (quarantine until it releases it or hangs up).
#[test]
fn an_evicted_consumers_held_frame_is_quarantined() {
    let opts = PoolOptions::new(3, LEN).release_timeout(Some(Duration::from_millis(100)));
    let mut p = Producer::allocate(&Heaps::discover(), "memfd", &opts).unwrap();
    let mut c = attach(&mut p);
    let held = produce(&mut p, 0);
    let k = c.recv(WAIT).unwrap().keep();
    let queued = produce(&mut p, 1); // never received: taken back at eviction
    assert!(!p.wait_for_consumers(2, Duration::from_millis(300)));
    assert!(p.stats().consumers[0].evicted);
    let mut lent = BTreeSet::new();
    while let Ok(slot) = p.acquire(Some(Duration::from_millis(100))) {
        lent.insert(slot.lend());
    }
    assert!(lent.contains(&queued) && !lent.contains(&held), "lent {lent:?}, held {held}");
    for index in lent {
        drop(p.reclaim(index).unwrap());
    }
    c.release_kept(k).unwrap();
    assert_all_free(&mut p);
}
