//! The producer's unit tests.

use super::identity::{watch_consumer, PeerCred};
use super::*;
use crate::pool::{transport, AcquireError, Backpressure, FrameMeta};
use rustix::io::Errno;
use std::os::fd::{AsFd, OwnedFd};

#[test]
fn lent_buffers_stay_out_of_the_pool_until_reclaimed() {
    let heaps = Heaps::discover();
    let mut p = Producer::allocate(&heaps, "memfd", &PoolOptions::new(2, 4096)).unwrap();
    let lent = p.acquire(Some(Duration::ZERO)).unwrap().lend();
    // Not lent: the other buffer is free, an index out of range is nothing.
    assert!(p.reclaim(1 - lent).is_none());
    assert!(p.reclaim(7).is_none());
    // acquire only ever finds the other one.
    for _ in 0..3 {
        let slot = p.acquire(Some(Duration::ZERO)).unwrap();
        assert_eq!(slot.index(), 1 - lent);
    }
    let other = p.acquire(Some(Duration::ZERO)).unwrap().lend();
    assert!(matches!(p.acquire(Some(Duration::ZERO)), Err(AcquireError::Timeout(_))));
    // Reclaimed and submitted (no consumers): free again.
    let slot = p.reclaim(lent).expect("lent");
    assert_eq!(slot.index(), lent);
    slot.submit(FrameMeta::new(1)).unwrap();
    assert_eq!(p.acquire(Some(Duration::ZERO)).unwrap().index(), lent);
    // Reclaimed and dropped unsubmitted: back in the pool too.
    drop(p.reclaim(other).expect("lent"));
    assert!(p.reclaim(other).is_none());
    assert_eq!(p.stats().produced, 1);
}

/// A producer and `n` consumers attached over socket pairs (in-process).
fn pool(options: &PoolOptions, n: usize) -> (Producer, Vec<crate::pool::Consumer>) {
    let mut p = Producer::allocate(&Heaps::discover(), "memfd", options).unwrap();
    let consumers = (0..n)
        .map(|_| {
            let (a, b) = crate::pool::socket_pair().unwrap();
            p.attach(a).unwrap();
            let t = std::thread::spawn(move || crate::pool::Consumer::attach(b, &Default::default()).unwrap());
            assert!(p.wait_for_consumers(p.attached() + 1, Duration::from_secs(5)));
            t.join().unwrap()
        })
        .collect();
    (p, consumers)
}

/// Finding 7: memfd pool buffers were left mode 0777, so a consumer of
/// another uid could reopen its read-only fd read-write.
#[test]
fn memfd_pool_buffers_are_private_before_read_only_fds_go_out() {
    let p = Producer::allocate(&Heaps::discover(), "memfd", &PoolOptions::new(2, 4096)).unwrap();
    for ro in p.shared.iter().flatten() {
        assert_eq!(rustix::fs::fstat(ro).unwrap().st_mode & 0o777, 0o600);
    }
    assert_eq!(p.shared.iter().flatten().count(), 2);
}

/// Finding 7: bit 63 (the producer's) set by a consumer on every buffer
/// stopped the producer for good (no buffer looked free or droppable).
#[test]
fn a_forged_producer_bit_cannot_stop_the_producer() {
    let mut p = Producer::allocate(&Heaps::discover(), "memfd", &PoolOptions::new(2, 4096)).unwrap();
    for i in 0..2 {
        p.ctl.buf_mask(i).store(PRODUCER_BIT, Ordering::Relaxed);
    }
    assert!(p.reclaim(1).is_none(), "a forged bit is not a lent buffer");
    p.maintain_now();
    let slot = p.acquire(Some(Duration::from_millis(500))).expect("the forged bits were cleared");
    drop(slot);
}

#[test]
fn garbage_holder_bits_neither_panic_nor_pin_buffers() {
    // Bits a peer wrote into the shared masks: a slot beyond the pool's
    // consumer count, and an existing slot nobody is attached to.
    for (policy, timeout) in [
        (Backpressure::DropOldest, None),
        (Backpressure::DropOldest, Some(Duration::from_millis(1))),
        (Backpressure::Block, Some(Duration::from_millis(1))),
        (Backpressure::Block, None),
    ] {
        let opts = PoolOptions::new(2, 4096).max_consumers(2).backpressure(policy).release_timeout(timeout);
        let mut p = Producer::allocate(&Heaps::discover(), "memfd", &opts).unwrap();
        p.ctl.buf_mask(0).store(1 << 40 | 1 << 1, Ordering::Relaxed);
        p.ctl.buf_mask(1).store(1 << 62, Ordering::Relaxed);
        // Directly: drop-oldest must not index slot 40 or 62.
        assert_eq!(p.drop_oldest(), None);
        // Maintenance clears them, so the buffers come back.
        let a = p.acquire(Some(Duration::from_secs(1))).unwrap().lend();
        let b = p.acquire(Some(Duration::from_secs(1))).unwrap().lend();
        assert_ne!(a, b);
    }
}

#[test]
fn huge_release_timeout_does_not_wrap_to_a_short_one() {
    // 18446744074 s is 2^64 ns plus about 0.29 s: `as u64` made it 0.29 s.
    let opts = PoolOptions::new(1, 4096).release_timeout(Some(Duration::from_secs(18_446_744_074)));
    let (mut p, mut c) = pool(&opts, 1);
    p.acquire(None).unwrap().submit(FrameMeta::new(1)).unwrap();
    let _frame = c[0].recv(Some(Duration::from_secs(1))).unwrap();
    p.ctl.buf_published_ns(0).store(now_ns() - 1_000_000_000, Ordering::Relaxed);
    p.maintain_now();
    assert_eq!(p.attached(), 1, "evicted after 1 s with a timeout of centuries");
}

#[test]
fn consumer_whose_slot_was_given_to_another_does_not_read_its_ring() {
    let opts = PoolOptions::new(2, 4096).max_consumers(1);
    let (mut p, mut old) = pool(&opts, 1);
    // The producer thinks the first consumer dead (e.g. its pidfd fired)
    // and gives slot 0 to a new one while the first still runs.
    p.lose(0, false);
    let (a, b) = crate::pool::socket_pair().unwrap();
    p.attach(a).unwrap();
    let t = std::thread::spawn(move || crate::pool::Consumer::attach(b, &Default::default()).unwrap());
    assert!(p.wait_for_consumers(1, Duration::from_secs(5)));
    let mut new = t.join().unwrap();
    assert_eq!(new.slot(), 0);
    p.acquire(None).unwrap().submit(FrameMeta::new(1)).unwrap();
    assert!(matches!(old[0].recv(Some(Duration::ZERO)), Err(crate::pool::PoolError::Evicted)));
    let frame = new.recv(Some(Duration::from_secs(1))).unwrap();
    assert_eq!(frame.info().seq, 0);
    // The old one going away must not release the new one's claim.
    drop(old);
    assert_eq!(p.ctl.buf_mask(frame.info().index).load(Ordering::Relaxed), 1);
}

/// A process of ours that lives until killed: stands for a consumer
/// started by a launcher.
fn child() -> std::process::Child {
    std::process::Command::new("sleep").arg("60").spawn().expect("spawn sleep")
}

fn me() -> PeerCred {
    PeerCred { pid: std::process::id(), uid: rustix::process::geteuid().as_raw() }
}

#[test]
fn consumer_identity_rules() {
    let mut kid = child();
    let kid_pid = kid.id();
    // Connected itself (or an old HELLO without a pid): SO_PEERCRED's pid.
    for hello in [Some(me().pid), None] {
        let (pid, fd) = watch_consumer(Some(me()), hello);
        assert_eq!(pid, me().pid);
        assert!(fd.is_some());
    }
    // A launcher's socketpair: the HELLO pid, same user.
    let (pid, fd) = watch_consumer(Some(me()), Some(kid_pid));
    assert_eq!(pid, kid_pid);
    assert!(fd.is_some());
    // Another user's process: socket only.
    let stranger = PeerCred { uid: me().uid.wrapping_add(1), ..me() };
    let (pid, fd) = watch_consumer(Some(stranger), Some(kid_pid));
    assert_eq!(pid, me().pid);
    assert!(fd.is_none());
    // A pid that names nothing (pid_max is at most 2^22): socket only.
    let (pid, fd) = watch_consumer(Some(me()), Some(u32::MAX >> 1));
    assert_eq!(pid, me().pid);
    assert!(fd.is_none());
    // Not even a pid_t (regression: debug builds panicked on these).
    for claimed in [1 << 31, u32::MAX] {
        let (pid, fd) = watch_consumer(Some(me()), Some(claimed));
        assert_eq!(pid, me().pid);
        assert!(fd.is_none());
    }
    // No credentials at all.
    assert_eq!(watch_consumer(None, Some(kid_pid)).0, 0);
    kid.kill().unwrap();
    kid.wait().unwrap();
    // Exited and reaped: nothing to open.
    assert!(watch_consumer(Some(me()), Some(kid_pid)).1.is_none());
}

#[test]
fn socketpair_consumer_is_watched_by_its_hello_pid() {
    let mut p = Producer::allocate(&Heaps::discover(), "memfd", &PoolOptions::new(2, 4096)).unwrap();
    // We made the pair (the launcher); the consumer is another process
    // that says so in its HELLO. Its socket end stays open here.
    let mut kid = child();
    let (a, b) = crate::pool::socket_pair().unwrap();
    p.attach(a).unwrap();
    let hello = transport::encode(&[0, u64::from(kid.id())], transport::MSG_HELLO);
    transport::send(b.as_fd(), &hello, &[], false).unwrap();
    assert!(p.wait_for_consumers(1, Duration::from_secs(5)));
    assert_eq!(p.stats().consumers[0].pid, kid.id());
    let (welcome, fds) = transport::recv(b.as_fd(), false).unwrap().unwrap();
    let welcome = transport::decode(&welcome, fds).unwrap();
    assert_eq!(welcome.kind, transport::MSG_WELCOME);
    assert_eq!(welcome.words[6], p.ctl.len() as u64, "the WELCOME advertises the control length");
    // The launcher (us) lives on and the socket is open: only the
    // consumer's pidfd can tell that it died.
    kid.kill().unwrap();
    kid.wait().unwrap();
    p.maintain_now();
    assert_eq!(p.attached(), 0);
    assert_eq!(p.stats().lost_consumers, 1);
    drop(b);
}

#[test]
fn corrupt_entry_flags_release_the_buffer() {
    let opts = PoolOptions::new(2, 4096);
    let (mut p, mut c) = pool(&opts, 1);
    p.acquire(None).unwrap().submit(FrameMeta::new(1)).unwrap();
    let mut e = p.ctl.read_entry(0, 0);
    e.flags = 1 << 20;
    p.ctl.write_entry(0, 0, &e);
    assert!(matches!(c[0].recv(Some(Duration::from_secs(1))), Err(crate::pool::PoolError::Corrupt(_))));
    assert_eq!(p.ctl.buf_mask(e.index).load(Ordering::Relaxed), 0, "claim kept after a corrupt entry");
}

/// A directory and a pool socket path in it that other uids may reach
/// (the consumers of other users in the door tests).
fn shared_socket_path(test: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("dmabroker-door-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join("pool.sock");
    (dir, path)
}

fn open_to_all(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
}

/// Run `f` in a thread whose uid and gid are `uid` (root only).
fn as_user<T: Send + 'static>(uid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        rustix::thread::set_thread_groups(&[]).unwrap();
        rustix::thread::set_thread_res_gid(
            rustix::process::Gid::from_raw(uid),
            rustix::process::Gid::from_raw(uid),
            rustix::process::Gid::from_raw(uid),
        )
        .unwrap();
        let u = rustix::process::Uid::from_raw(uid);
        rustix::thread::set_thread_res_uid(u, u, u).unwrap();
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A connection that never says HELLO. Non-blocking connect, retried for
/// a moment while the listen backlog is full: a producer that accepts only
/// inside its calls (as before the door) must not hang the test.
fn idle_connection(path: &std::path::Path) -> Option<OwnedFd> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let addr = SocketAddrUnix::new(path).unwrap();
    for _ in 0..50 {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => return Some(fd),
            Err(Errno::AGAIN) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("connect: {e}"),
        }
    }
    None
}

/// The REFUSED reason waiting on a connection, if any.
fn refusal(socket: &OwnedFd) -> Option<u64> {
    match transport::recv(socket.as_fd(), true) {
        Ok(Some((bytes, fds))) => {
            let m = transport::decode(&bytes, fds).ok()?;
            (m.kind == transport::MSG_REFUSED).then(|| m.words.first().copied()).flatten()
        }
        _ => None,
    }
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Finding 8: connections that never said HELLO were all kept (until the
/// HELLO timeout) with no bound but the fd limit. Now a uid has at most
/// `PENDING_PER_UID` waiting; the rest are refused "busy" at once, by the
/// door, without the producer being called; other users still attach.
#[test]
fn idle_connections_are_bounded_per_uid() {
    use crate::pool::{AttachError, Consumer, WaitMode};
    let (dir, path) = shared_socket_path("bounded");
    let mut p = Producer::allocate(&Heaps::discover(), "memfd", &PoolOptions::new(2, 4096)).unwrap();
    p.listen(&path).unwrap();
    open_to_all(&path);
    let flood: Vec<OwnedFd> = (0..32).map(|_| idle_connection(&path).expect("connect")).collect();
    let mut busy = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut seen = vec![false; flood.len()];
    while busy < flood.len() - door::PENDING_PER_UID && std::time::Instant::now() < deadline {
        for (s, seen) in flood.iter().zip(&mut seen).filter(|(_, seen)| !**seen) {
            if let Some(reason) = refusal(s) {
                assert_eq!(reason, u64::from(transport::REFUSED_BUSY));
                *seen = true;
                busy += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(busy, flood.len() - door::PENDING_PER_UID, "idle connections of one uid beyond the bound were kept");
    // The same user's consumer is refused with a clear error...
    match Consumer::connect(&path, WaitMode::Block { spin: Duration::ZERO }) {
        Err(AttachError::Busy) => {}
        other => panic!("a consumer of the flooding uid: {other:?}"),
    }
    // ...another user's attaches all the same.
    if !rustix::process::geteuid().is_root() {
        crate::test_skip::skip(
            "idle_connections_are_bounded_per_uid (another uid)",
            "needs root (threads of other uids)",
        );
    } else {
        let other = path.clone();
        let t = std::thread::spawn(move || {
            as_user(65534, move || Consumer::connect(&other, WaitMode::Block { spin: Duration::ZERO }).map(|_| ()))
        });
        assert!(p.wait_for_consumers(1, Duration::from_secs(5)), "another user could not attach during the flood");
        t.join().unwrap().expect("another user's consumer");
    }
    drop(flood);
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Finding 8: a flood of idle connections slowed the producer's frames:
/// every maintenance pass (each starved `acquire`) called accept4 and one
/// recvmsg per connection that had not said HELLO. Measured as the
/// producer thread's CPU time per frame (robust to a busy machine, unlike
/// wall time), with a consumer that holds each frame a moment so that the
/// producer starves every frame: with 256 idle connections from 32 users
/// (root; 8 of this uid otherwise) it must stay within 2x (+20 us) of the
/// same run without them, measured in this test.
#[test]
fn idle_connections_cost_the_frame_path_nothing() {
    use crate::pool::{Consumer, WaitMode};
    let (dir, path) = shared_socket_path("frame-path");
    let mut p = Producer::allocate(&Heaps::discover(), "memfd", &PoolOptions::new(1, 4096)).unwrap();
    p.listen(&path).unwrap();
    open_to_all(&path);
    let consumer_path = path.clone();
    let consumer = std::thread::spawn(move || {
        let mut c = Consumer::connect(&consumer_path, WaitMode::Block { spin: Duration::ZERO }).unwrap();
        let mut n = 0u64;
        while let Ok(frame) = c.recv(Some(Duration::from_secs(10))) {
            std::thread::sleep(Duration::from_micros(200));
            drop(frame);
            n += 1;
        }
        n
    });
    assert!(p.wait_for_consumers(1, Duration::from_secs(5)));
    let per_frame = |p: &mut Producer| {
        const FRAMES: u32 = 300;
        let start = thread_cpu();
        for _ in 0..FRAMES {
            p.acquire(Some(Duration::from_secs(5))).unwrap().submit(FrameMeta::new(1)).unwrap();
        }
        (thread_cpu() - start) / FRAMES
    };
    let quiet = per_frame(&mut p);
    let users: Vec<u32> = if rustix::process::geteuid().is_root() {
        (0..32).map(|k| 60000 + k).collect()
    } else {
        crate::test_skip::skip(
            "idle_connections_cost_the_frame_path_nothing (32 users)",
            "needs root (threads of other uids): flooding from this uid only",
        );
        vec![rustix::process::geteuid().as_raw()]
    };
    let me = rustix::process::geteuid().as_raw();
    let mut flood: Vec<OwnedFd> = Vec::new();
    for &uid in &users {
        let path = path.clone();
        let connect = move || (0..door::PENDING_PER_UID).filter_map(|_| idle_connection(&path)).collect::<Vec<_>>();
        flood.extend(if uid == me { connect() } else { as_user(uid, connect) });
        // (A producer that accepts only inside its calls empties its backlog here.)
        p.maintain_now();
    }
    let flooded = per_frame(&mut p);
    eprintln!(
        "producer CPU per frame: {quiet:?} quiet, {flooded:?} with {} idle connections of {} users",
        flood.len(),
        users.len()
    );
    assert!(
        flooded <= quiet * 2 + Duration::from_micros(20),
        "idle connections slow the frame path: {flooded:?} per frame, {quiet:?} without them"
    );
    drop(flood);
    p.close();
    drop(p);
    assert!(consumer.join().unwrap() >= 600);
    let _ = std::fs::remove_dir_all(&dir);
}
