//! A slow consumer next to a fast one, under both backpressure policies.

mod pool_support;

use dmabroker::pool::{
    socket_pair, Backpressure, Consumer, ConsumerOptions, FrameMeta, PoolError, PoolOptions, Producer, WaitMode,
};
use dmabroker::Heaps;
use pool_support::{checksum, fill};
use std::time::{Duration, Instant};

const FRAMES: u64 = 200;

/// Returns (frames received, checksum mismatches, frames dropped for it).
fn consumer(socket: std::os::fd::OwnedFd, delay: Duration) -> std::thread::JoinHandle<(u64, u64, u64)> {
    std::thread::spawn(move || {
        let mut c =
            Consumer::attach(socket, &ConsumerOptions { wait: WaitMode::BusyPoll, ..Default::default() }).unwrap();
        let (mut n, mut bad) = (0, 0);
        loop {
            let frame = c.recv(Some(Duration::from_secs(20)));
            match frame {
                Ok(mut f) => {
                    let info = *f.info();
                    let data = f.read().unwrap();
                    std::thread::sleep(delay); // hold the frame while "processing" it
                    if checksum(&data[..info.bytes_used as usize]) != info.meta {
                        bad += 1;
                    }
                    n += 1;
                }
                Err(PoolError::Closed) => break,
                Err(e) => panic!("{e}"),
            }
        }
        (n, bad, c.dropped())
    })
}

/// (received, checksum mismatches, dropped) of one consumer.
type Counts = (u64, u64, u64);

fn run(policy: Backpressure) -> (Duration, Counts, Counts, dmabroker::pool::PoolStats) {
    let opts = PoolOptions::new(3, 16 << 10).backpressure(policy);
    let mut p = Producer::allocate(&Heaps::discover(), "memfd", &opts).unwrap();
    let (a, b) = socket_pair().unwrap();
    let (c, d) = socket_pair().unwrap();
    p.attach(a).unwrap();
    p.attach(c).unwrap();
    let fast = consumer(b, Duration::ZERO);
    let slow = consumer(d, Duration::from_millis(2));
    assert!(p.wait_for_consumers(2, Duration::from_secs(5)));
    let started = Instant::now();
    for i in 0..FRAMES {
        let mut s = p.acquire(Some(Duration::from_secs(20))).unwrap();
        let sum = {
            let mut w = s.mapping().begin_write().unwrap();
            fill(&mut w[..], i);
            checksum(&w[..])
        };
        s.submit(FrameMeta::new(16 << 10).meta(sum)).unwrap();
    }
    let elapsed = started.elapsed();
    let stats = p.stats();
    p.close();
    (elapsed, fast.join().unwrap(), slow.join().unwrap(), stats)
}

#[test]
fn slow_consumer_with_block_paces_the_producer_losslessly() {
    let (elapsed, fast, slow, stats) = run(Backpressure::Block);
    assert_eq!(fast, (FRAMES, 0, 0));
    assert_eq!(slow, (FRAMES, 0, 0));
    assert_eq!(stats.dropped, 0);
    // 2 ms per frame in the slow consumer, 3 buffers of slack.
    assert!(elapsed >= Duration::from_millis(2 * (FRAMES - 3)), "{elapsed:?}");
}

#[test]
fn slow_consumer_with_drop_oldest_loses_frames_producer_runs_free() {
    let (elapsed, fast, slow, stats) = run(Backpressure::DropOldest);
    assert_eq!(fast.1, 0, "torn frames in the fast consumer");
    assert_eq!(slow.1, 0, "torn frames in the slow consumer");
    assert_eq!(fast.0 + fast.2, FRAMES, "fast: every frame received or counted dropped");
    assert_eq!(slow.0 + slow.2, FRAMES, "slow: every frame received or counted dropped");
    assert!(slow.2 > 0, "the slow consumer should have lost frames");
    assert!(stats.dropped > 0);
    assert!(elapsed < Duration::from_millis(2 * (FRAMES - 3)), "the producer was held back: {elapsed:?}");
}
