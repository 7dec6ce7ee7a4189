//! The release timeout: who is evicted and who is not; frames held across
//! an eviction are detectably invalid; a consumer that hung up frees its
//! slot for the next one.

mod pool_support;

use dmabroker::pool::{
    socket_pair, AttachError, Consumer, ConsumerOptions, FrameMeta, KeptError, PoolError, PoolOptions, Producer,
    WaitMode,
};
use dmabroker::Heaps;
use std::time::{Duration, Instant};

fn pool(buffers: usize, timeout_ms: u64) -> Producer {
    let opts = PoolOptions::new(buffers, 4096).release_timeout(Some(Duration::from_millis(timeout_ms)));
    Producer::allocate(&Heaps::discover(), "memfd", &opts).unwrap()
}

fn submit(p: &mut Producer, byte: u8) -> Result<(), dmabroker::pool::AcquireError> {
    let mut s = p.acquire(Some(Duration::from_secs(10)))?;
    s.mapping().begin_write().unwrap().fill(byte);
    s.submit(FrameMeta::new(4096).meta(u64::from(byte))).unwrap();
    Ok(())
}

fn consumer(p: &mut Producer) -> Consumer {
    let (a, b) = socket_pair().unwrap();
    p.attach(a).unwrap();
    let attaching = std::thread::spawn(move || Consumer::attach(b, &ConsumerOptions::default()).unwrap());
    assert!(p.wait_for_consumers(1, Duration::from_secs(5)));
    attaching.join().unwrap()
}

/// 300 ms per frame, each released at once: its frames wait in its ring
/// longer than the 1 s timeout in all, but it keeps making progress.
#[test]
fn a_slow_consumer_that_keeps_receiving_is_not_evicted() {
    const FRAMES: u8 = 8;
    let mut p = pool(4, 1000);
    let mut c = consumer(&mut p);
    let slow = std::thread::spawn(move || {
        let mut n = 0;
        loop {
            match c.recv(Some(Duration::from_secs(10))) {
                Ok(mut f) => {
                    let meta = f.info().meta;
                    assert!(f.read().unwrap().iter().all(|&b| u64::from(b) == meta));
                    std::thread::sleep(Duration::from_millis(300));
                    assert!(f.is_valid());
                    n += 1;
                }
                Err(PoolError::Closed) => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    });
    for byte in 1..=FRAMES {
        submit(&mut p, byte).unwrap();
    }
    let stats = p.stats();
    p.close();
    assert_eq!(slow.join().unwrap().unwrap(), u32::from(FRAMES));
    assert!(!stats.consumers[0].evicted, "{stats:?}");
    assert_eq!(stats.lost_consumers, 0);
}

/// A consumer that stops receiving is evicted once it made no progress for
/// the timeout, and the blocked producer goes on.
#[test]
fn a_consumer_that_stops_receiving_is_evicted() {
    let mut p = pool(2, 300);
    let mut c = consumer(&mut p);
    submit(&mut p, 1).unwrap();
    drop(c.recv(Some(Duration::from_secs(5))).unwrap());
    let started = Instant::now();
    // Two frames fill both buffers; the third waits for the eviction.
    for byte in 2..=4 {
        submit(&mut p, byte).unwrap();
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert!(p.stats().consumers[0].evicted);
    assert!(!c.is_attached());
    assert!(matches!(c.recv(Some(Duration::ZERO)), Err(PoolError::Evicted)));
}

/// Holding one frame past the timeout evicts a consumer even while it
/// keeps receiving and releasing the others; the held frame then reads as
/// invalid (its buffer may have been reused).
#[test]
fn a_consumer_holding_one_frame_too_long_is_evicted_and_told() {
    let mut p = pool(3, 300);
    let mut c = consumer(&mut p);
    let busy = std::thread::spawn(move || {
        let kept = c.recv(Some(Duration::from_secs(5))).unwrap().keep();
        assert!(c.check_kept(&kept).is_ok());
        let started = Instant::now();
        let evicted = loop {
            match c.recv(Some(Duration::from_secs(5))) {
                Ok(f) => assert!(f.is_valid()),
                Err(PoolError::Evicted) => break started.elapsed(),
                Err(e) => panic!("{e}"),
            }
        };
        assert!(matches!(c.check_kept(&kept), Err(KeptError::Evicted)));
        assert!(matches!(c.read_kept(&kept), Err(KeptError::Evicted)));
        c.release_kept(kept).unwrap();
        evicted
    });
    let started = Instant::now();
    while !p.stats().consumers[0].evicted && started.elapsed() < Duration::from_secs(10) {
        submit(&mut p, 7).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let evicted_after = busy.join().unwrap();
    assert!(evicted_after >= Duration::from_millis(250), "{evicted_after:?}");
    assert!(evicted_after < Duration::from_secs(5), "{evicted_after:?}");
    // The producer reuses the buffer the evicted consumer kept.
    for byte in 0..6 {
        submit(&mut p, byte).unwrap();
    }
}

/// max_consumers 1: a consumer that detached frees the slot for the next,
/// even when the producer finds the hang-up and the new HELLO together.
#[test]
fn a_consumer_reconnecting_to_a_full_pool_after_hanging_up_attaches() {
    let opts = PoolOptions::new(2, 4096).max_consumers(1);
    let mut p = Producer::allocate(&Heaps::discover(), "memfd", &opts).unwrap();
    let path = pool_support::socket_path("reconnect");
    p.listen(&path).unwrap();
    let path2 = path.clone();
    let connecting = std::thread::spawn(move || Consumer::connect(&path2, WaitMode::default()));
    assert!(p.wait_for_consumers(1, Duration::from_secs(5)));
    drop(connecting.join().unwrap().unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let path2 = path.clone();
    let connecting = std::thread::spawn(move || Consumer::connect(&path2, WaitMode::default()));
    // Let the HELLO arrive before the producer looks at anything.
    std::thread::sleep(Duration::from_millis(200));
    let attached = p.wait_for_consumers(1, Duration::from_secs(5));
    let again = connecting.join().unwrap();
    assert!(!matches!(again, Err(AttachError::PoolFull)), "refused as full after the old consumer hung up");
    assert!(attached);
    again.unwrap();
    drop(p);
    let _ = std::fs::remove_file(&path);
}
