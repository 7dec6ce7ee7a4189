//! Pools between threads of one process over a socket pair: handoff,
//! fan-out, orderly close, timeout, errors on bad input.

mod pool_support;

use dmabroker::pool::{
    socket_pair, AcquireError, Consumer, ConsumerOptions, FrameFlags, FrameMeta, PoolError, PoolOptions, Producer,
    SubmitError, WaitMode,
};
use dmabroker::Heaps;
use pool_support::{checksum, fill};
use std::time::Duration;

fn producer(buffers: usize, len: u64) -> Producer {
    Producer::allocate(&Heaps::discover(), "memfd", &PoolOptions::new(buffers, len)).unwrap()
}

fn consume_all(mut c: Consumer) -> (u64, u64) {
    let (mut n, mut bad) = (0, 0);
    let mut last = None;
    loop {
        match c.recv(Some(Duration::from_secs(10))) {
            Ok(mut f) => {
                let info = *f.info();
                if let Some(prev) = last {
                    assert!(info.seq > prev, "sequence went backwards");
                }
                last = Some(info.seq);
                let data = f.read().unwrap();
                if checksum(&data[..info.bytes_used as usize]) != info.meta {
                    bad += 1;
                }
                n += 1;
            }
            Err(PoolError::Closed) => return (n, bad),
            Err(e) => panic!("consumer: {e}"),
        }
    }
}

#[test]
fn handoff_fan_out_and_orderly_close() {
    let mut p = producer(4, 64 << 10);
    let mut consumers = Vec::new();
    for wait in [WaitMode::default(), WaitMode::BusyPoll] {
        let (a, b) = socket_pair().unwrap();
        p.attach(a).unwrap();
        consumers.push(std::thread::spawn(move || {
            consume_all(Consumer::attach(b, &ConsumerOptions { wait, ..Default::default() }).unwrap())
        }));
    }
    assert!(p.wait_for_consumers(2, Duration::from_secs(5)));
    for i in 0..500u64 {
        let mut slot = p.acquire(Some(Duration::from_secs(10))).unwrap();
        let used = 1000 + (i * 97) % (60 << 10);
        let sum = {
            let mut w = slot.mapping().begin_write().unwrap();
            fill(&mut w[..used as usize], i);
            checksum(&w[..used as usize])
        };
        slot.submit(FrameMeta::new(used).meta(sum)).unwrap();
    }
    p.close();
    for c in consumers {
        assert_eq!(c.join().unwrap(), (500, 0));
    }
    let stats = p.stats();
    assert_eq!(stats.produced, 500);
    assert!(stats.consumers.iter().all(|c| c.delivered == 500 && c.dropped == 0));
}

#[test]
fn timeout_then_frame_then_close() {
    let mut p = producer(2, 4096);
    let (a, b) = socket_pair().unwrap();
    p.attach(a).unwrap();
    let t = std::thread::spawn(move || {
        let mut c = Consumer::attach(b, &ConsumerOptions::default()).unwrap();
        assert!(matches!(c.recv(Some(Duration::from_millis(50))), Err(PoolError::Timeout(_))));
        let seq = c.recv(Some(Duration::from_secs(10))).unwrap().info().seq;
        assert_eq!(seq, 0);
        assert!(matches!(c.recv(Some(Duration::from_secs(10))), Err(PoolError::Closed)));
    });
    assert!(p.wait_for_consumers(1, Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(100));
    p.acquire(None).unwrap().submit(FrameMeta::new(1)).unwrap();
    drop(p);
    t.join().unwrap();
}

#[test]
fn bad_input_is_refused_not_panicking() {
    let mut p = producer(2, 4096);
    let slot = p.acquire(None).unwrap();
    assert!(matches!(slot.submit(FrameMeta::new(1 << 20)), Err(SubmitError::TooLong { .. })));
    let slot = p.acquire(None).unwrap();
    assert!(matches!(slot.submit(FrameMeta::new(1).flags(FrameFlags::SYNC_FILE)), Err(SubmitError::ReservedFlags(_))));
    // Frames without consumers are free again at once.
    for _ in 0..10 {
        p.acquire(Some(Duration::from_millis(10))).unwrap().submit(FrameMeta::new(1)).unwrap();
    }
    p.close();
    assert!(matches!(p.acquire(None), Err(AcquireError::Closed)));
    assert!(Producer::allocate(&Heaps::discover(), "memfd", &PoolOptions::new(0, 4096)).is_err());
    assert!(Producer::allocate(&Heaps::discover(), "memfd", &PoolOptions::new(65, 4096)).is_err());
    assert!(Producer::allocate(&Heaps::discover(), "memfd", &PoolOptions::new(2, 0)).is_err());
    assert!(Producer::allocate(&Heaps::discover(), "no-such-heap", &PoolOptions::new(2, 4096)).is_err());
    // A socket that is not a pool producer.
    let (a, b) = socket_pair().unwrap();
    let t = std::thread::spawn(move || {
        let _ = rustix::net::send(&a, b"nonsense", rustix::net::SendFlags::empty());
        std::thread::sleep(Duration::from_millis(100));
    });
    let err = Consumer::attach(b, &ConsumerOptions::default()).unwrap_err();
    assert!(err.to_string().contains("not a dmabroker pool"), "{err}");
    t.join().unwrap();
}
