//! A pool torn down leaves no fd and no mapping behind, on either side.
//! (One test in this binary: other tests' threads would move the counts.)

mod pool_support;

use dmabroker::pool::{socket_pair, Consumer, ConsumerOptions, FrameMeta, PoolError, PoolOptions, Producer};
use dmabroker::Heaps;
use pool_support::fds_and_maps;
use std::time::Duration;

fn cycle(heaps: &Heaps) {
    let mut p = Producer::allocate(heaps, "memfd", &PoolOptions::new(6, 256 << 10)).unwrap();
    let path = pool_support::socket_path("teardown");
    p.listen(&path).unwrap();
    let (a, b) = socket_pair().unwrap();
    p.attach(a).unwrap();
    let by_pair = std::thread::spawn(move || {
        let mut c = Consumer::attach(b, &ConsumerOptions::default()).unwrap();
        while c.recv(Some(Duration::from_secs(10))).is_ok() {}
    });
    let path2 = path.clone();
    let by_path = std::thread::spawn(move || {
        let mut c =
            Consumer::connect_with(&path2, &ConsumerOptions { want_sync_files: true, ..Default::default() }).unwrap();
        loop {
            match c.recv(Some(Duration::from_secs(10))) {
                Ok(_) => {}
                Err(PoolError::Closed) => break,
                Err(e) => panic!("{e}"),
            }
        }
    });
    assert!(p.wait_for_consumers(2, Duration::from_secs(5)));
    for _ in 0..50 {
        p.acquire(Some(Duration::from_secs(10))).unwrap().submit(FrameMeta::new(100).sync_file(true)).unwrap();
    }
    p.close();
    by_pair.join().unwrap();
    by_path.join().unwrap();
    drop(p);
    assert!(!path.exists(), "socket file left behind");
}

#[test]
fn teardown_leaks_no_fds_or_mappings() {
    let heaps = Heaps::discover();
    // Warm up: thread stacks and lazy statics allocate once.
    cycle(&heaps);
    // Sockets (and fds peers sent) are closed by closer threads.
    assert!(dmabroker::closer::wait_idle(Duration::from_secs(5)));
    let before = fds_and_maps();
    for _ in 0..3 {
        cycle(&heaps);
    }
    assert!(dmabroker::closer::wait_idle(Duration::from_secs(5)));
    let after = fds_and_maps();
    assert_eq!(before, after, "(fds, /proc/self/maps lines) before vs after three pool lifetimes");
}
