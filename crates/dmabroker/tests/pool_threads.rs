//! Pools between threads of one process over a socket pair: handoff,
//! fan-out, orderly close, timeout, errors on bad input; the listening
//! socket's path (what it may replace and remove), attaching after close,
//! and consumers' read-only buffers.

mod pool_support;

use dmabroker::buffer::MapError;
use dmabroker::pool::{
    socket_pair, AcquireError, AttachError, Consumer, ConsumerOptions, FrameFlags, FrameMeta, ListenError, PoolError,
    PoolOptions, Producer, SubmitError, WaitMode,
};
use dmabroker::Heaps;
use pool_support::{checksum, fill, socket_path};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Removes a test's socket path (or whatever the test put there) at the
/// end, also when the test fails.
struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

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

fn listen_error(path: &Path) -> ListenError {
    producer(1, 4096).listen(path).map(|_| ()).expect_err("listen should fail")
}

#[test]
fn listen_never_replaces_a_file_that_is_not_a_socket() {
    // A regular file, a FIFO and a symbolic link at the path: refused, named,
    // and still there (unchanged) after the producer is gone.
    let file = socket_path("file");
    let _c1 = Cleanup(file.clone());
    std::fs::write(&file, b"precious").unwrap();
    let err = listen_error(&file);
    assert!(matches!(&err, ListenError::NotASocket { path, what: "a regular file" } if *path == file), "{err:?}");
    assert!(err.to_string().contains(&file.display().to_string()), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");

    let fifo = socket_path("fifo");
    let _c2 = Cleanup(fifo.clone());
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from(0o600), 0).unwrap();
    let err = listen_error(&fifo);
    assert!(matches!(err, ListenError::NotASocket { what: "a FIFO", .. }), "{err:?}");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&std::fs::symlink_metadata(&fifo).unwrap().file_type()));

    let link = socket_path("link");
    let _c3 = Cleanup(link.clone());
    std::os::unix::fs::symlink("/nonexistent/dmabroker-target", &link).unwrap();
    let err = listen_error(&link);
    assert!(matches!(err, ListenError::NotASocket { what: "a symbolic link", .. }), "{err:?}");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
}

#[test]
fn listen_on_a_directory_says_it_is_a_directory() {
    let dir = std::env::temp_dir();
    let err = listen_error(&dir);
    assert!(matches!(err, ListenError::NotASocket { what: "a directory", .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("is a directory") && !text.contains("running process"), "{text}");
    assert!(dir.is_dir());
}

#[test]
fn listen_on_an_empty_path_is_an_invalid_argument() {
    let err = listen_error(Path::new(""));
    assert!(matches!(err, ListenError::InvalidPath { .. }), "{err:?}");
}

#[test]
fn listen_replaces_only_a_stale_socket_and_refuses_a_live_one() {
    let path = socket_path("stale");
    let _c = Cleanup(path.clone());
    // A socket file nobody listens on any more (std does not unlink it).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let mut p = producer(1, 4096);
    p.listen(&path).expect("a stale socket is replaced");
    // A second producer on the same path: the first one is alive.
    let err = listen_error(&path);
    assert!(matches!(err, ListenError::AddressInUse(_)), "{err:?}");
    drop(p);
    assert!(!path.exists(), "the producer's own socket is removed on drop");
}

#[test]
fn drop_removes_the_socket_only_while_it_is_still_ours() {
    let path = socket_path("replaced");
    let _c = Cleanup(path.clone());
    let mut p = producer(1, 4096);
    p.listen(&path).unwrap();
    // Someone removes the socket and puts a file of their own there.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"theirs").unwrap();
    drop(p);
    assert_eq!(std::fs::read(&path).unwrap(), b"theirs");
    // Also a socket of someone else (another inode) survives.
    std::fs::remove_file(&path).unwrap();
    let mut p = producer(1, 4096);
    p.listen(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(p);
    assert!(path.exists(), "another process's socket was removed");
}

#[test]
fn connecting_after_close_is_closed_not_a_timeout() {
    let path = socket_path("closed");
    let _c = Cleanup(path.clone());
    let mut p = producer(2, 4096);
    p.listen(&path).unwrap();
    let options = ConsumerOptions { attach_timeout: Duration::from_secs(3), ..Default::default() };
    let connect = |path: &Path| {
        let (path, options) = (path.to_path_buf(), options.clone());
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            (Consumer::connect_with(&path, &options).map(|_| ()), started.elapsed())
        })
    };
    // One consumer is already waiting in the backlog when the producer closes:
    // close() answers it.
    let early = connect(&path);
    std::thread::sleep(Duration::from_millis(100));
    p.close();
    let (result, _) = early.join().unwrap();
    assert!(matches!(result, Err(AttachError::Closed)), "{result:?}");
    // Later ones, while the producer keeps calling (acquire fails with Closed).
    let later = connect(&path);
    while !later.is_finished() {
        assert!(matches!(p.acquire(Some(Duration::from_millis(10))), Err(AcquireError::Closed)));
        std::thread::sleep(Duration::from_millis(5));
    }
    let (result, took) = later.join().unwrap();
    assert!(matches!(result, Err(AttachError::Closed)), "{result:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    // A socket handed over after close is told at once (same thread).
    let (a, b) = socket_pair().unwrap();
    p.attach(a).unwrap();
    let err = Consumer::attach(b, &options).unwrap_err();
    assert!(matches!(err, AttachError::Closed), "{err:?}");
    assert!(!p.wait_for_consumers(1, Duration::from_secs(5)), "closed pools attach nobody");
    // One connecting while the producer makes no call is answered when it is dropped.
    let last = connect(&path);
    std::thread::sleep(Duration::from_millis(100));
    drop(p);
    let (result, _) = last.join().unwrap();
    assert!(matches!(result, Err(AttachError::Closed)), "{result:?}");
    assert!(!path.exists());
    let err = Consumer::connect_with(&path, &options).unwrap_err();
    assert!(matches!(err, AttachError::NoProducer { .. }), "{err:?}");
}

#[test]
fn handshake_timeout_says_the_producer_did_not_service_it() {
    let path = socket_path("busy");
    let _c = Cleanup(path.clone());
    let mut p = producer(1, 4096);
    p.listen(&path).unwrap();
    // The producer makes no call: nobody services the handshake.
    let options = ConsumerOptions { attach_timeout: Duration::from_millis(200), ..Default::default() };
    let err = Consumer::connect_with(&path, &options).unwrap_err();
    assert!(matches!(err, AttachError::Timeout(_)), "{err:?}");
    assert!(err.to_string().contains("did not service the attach handshake"), "{err}");
    drop(p);
}

#[test]
fn consumers_of_memfd_pools_get_read_only_buffers() {
    let mut p = producer(2, 4096);
    let (a, b) = socket_pair().unwrap();
    p.attach(a).unwrap();
    let t = std::thread::spawn(move || {
        let mut c = Consumer::attach(b, &ConsumerOptions::default()).unwrap();
        let mut f = c.recv(Some(Duration::from_secs(10))).unwrap();
        let buffer = f.buffer().clone();
        let mode = rustix::fs::fcntl_getfl(&buffer).unwrap() & rustix::fs::OFlags::ACCMODE;
        assert_eq!(mode, rustix::fs::OFlags::RDONLY, "the consumer's fd is not O_RDONLY");
        assert!(matches!(buffer.map_read_write(), Err(MapError::ReadOnly)), "a consumer mapped a pool buffer writable");
        assert!(rustix::io::write(&buffer, b"x").is_err(), "a consumer wrote through its fd");
        let first = f.read().unwrap()[0];
        assert!(buffer.is_size_sealed());
        first
    });
    assert!(p.wait_for_consumers(1, Duration::from_secs(5)));
    let mut slot = p.acquire(None).unwrap();
    slot.mapping().begin_write().unwrap()[0] = 42;
    slot.submit(FrameMeta::new(1)).unwrap();
    assert_eq!(t.join().unwrap(), 42);
    // The producer's own buffers stay writable.
    let slot = p.acquire(Some(Duration::from_secs(5))).unwrap();
    let mode = rustix::fs::fcntl_getfl(slot.buffer()).unwrap() & rustix::fs::OFlags::ACCMODE;
    assert_eq!(mode, rustix::fs::OFlags::RDWR);
}

#[test]
fn listen_keeps_a_live_socket_of_another_type() {
    use std::os::unix::net::{UnixDatagram, UnixListener};
    let path = socket_path("stream");
    let _c = Cleanup(path.clone());
    let _stream = UnixListener::bind(&path).unwrap();
    let err = listen_error(&path);
    assert!(matches!(err, ListenError::AddressInUse(_)), "{err:?}");
    assert!(path.exists());
    let path = socket_path("dgram");
    let _c = Cleanup(path.clone());
    let _dgram = UnixDatagram::bind(&path).unwrap();
    let err = listen_error(&path);
    assert!(matches!(err, ListenError::AddressInUse(_)), "{err:?}");
    assert!(path.exists());
}

#[test]
fn a_producer_between_bind_and_listen_keeps_its_path() {
    // Another producer holds the path's lock file (as it does from before
    // its bind until it is dropped), its socket not listening yet.
    let path = socket_path("racing");
    let _c = Cleanup(path.clone());
    let mut lock_path = path.clone().into_os_string();
    lock_path.push(".lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let bound =
        rustix::net::socket(rustix::net::AddressFamily::UNIX, rustix::net::SocketType::SEQPACKET, None).unwrap();
    rustix::net::bind(&bound, &rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
    let err = listen_error(&path);
    assert!(matches!(err, ListenError::AddressInUse(_)), "{err:?}");
    assert!(path.exists());
    // Once it is gone (lock released, socket stale), the path is taken over.
    drop(bound);
    drop(lock);
    let mut p = producer(1, 4096);
    p.listen(&path).unwrap();
    drop(p);
    assert!(!path.exists());
    assert!(!std::path::Path::new(&lock_path).exists(), "the lock file is removed on drop");
    let _ = std::fs::remove_file(&lock_path);
}
