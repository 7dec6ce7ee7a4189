//! The producer's fences on the host: what is not a sync_file is refused
//! with a typed error naming it, before it can reach a pool; a frame sent
//! without a fence has nothing to wait for. (Real sync_files need a
//! dma-buf or sw_sync: `vm_pool_fences` runs those in the VM.)

use dmabroker::fence::SyncFile;
use dmabroker::pool::{socket_pair, Consumer, ConsumerOptions, FrameMeta, PoolOptions, Producer};
use dmabroker::Heaps;
use std::time::Duration;

#[test]
fn a_memfd_is_refused_as_a_fence() {
    let memfd = rustix::fs::memfd_create("camera-frame", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let err = SyncFile::new(memfd).unwrap_err();
    assert!(err.what.starts_with("/memfd:camera-frame"), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("/memfd:camera-frame") && msg.contains("is not a sync_file"), "{msg}");
    eprintln!("memfd: {msg}");
}

#[test]
fn a_pipe_and_a_file_are_refused_as_fences() {
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let err = SyncFile::new(r).unwrap_err();
    assert!(err.what.starts_with("pipe:["), "{err:?}");
    let file = std::fs::File::open("/proc/self/status").unwrap();
    let err = SyncFile::new(file.into()).unwrap_err();
    assert!(err.what.ends_with("/status"), "{err:?}");
}

#[test]
fn a_frame_without_a_fence_waits_for_nothing() {
    let mut p = Producer::allocate(&Heaps::discover(), "memfd", &PoolOptions::new(2, 4096)).unwrap();
    let (ours, theirs) = socket_pair().unwrap();
    p.attach(ours).unwrap();
    let consumer = std::thread::spawn(move || {
        let options = ConsumerOptions { want_sync_files: true, ..Default::default() };
        let mut c = Consumer::attach(theirs, &options).unwrap();
        let f = c.recv(Some(Duration::from_secs(10))).unwrap();
        assert!(f.fence().is_none());
        f.wait_fence(Duration::from_secs(1)).unwrap()
    });
    assert!(p.wait_for_consumers(1, Duration::from_secs(10)));
    p.acquire(None).unwrap().submit(FrameMeta::new(1)).unwrap();
    assert_eq!(consumer.join().unwrap(), Duration::ZERO);
}
