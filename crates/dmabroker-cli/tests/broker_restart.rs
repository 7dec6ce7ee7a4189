//! Published buffers survive a broker restart through the service manager's
//! fd store. This test plays systemd: it owns `$NOTIFY_SOCKET`, keeps the fds
//! sent with `FDSTORE=1`, honours `FDSTOREREMOVE=1`, and starts the second
//! broker with them as `LISTEN_FDS` (at fd 3 and up, `LISTEN_PID` = the
//! broker's pid, set by a `bash` that then `exec`s the broker). In a test
//! binary of its own, because it clears close-on-exec on fds it passes down;
//! the tests here that pass fds take turns (`PASSING_FDS`). Also: a socket
//! of the wrong kind passed by the manager is refused with the fix.

mod common;

use common::fdstore::{spawn_broker, spawn_broker_with, stop, Manager, Shared, PASSING_FDS};

use dmabroker::client::{Client, PublishOptions};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn broker_publications_survive_restart_through_the_fd_store() {
    let _one_at_a_time = PASSING_FDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if Command::new("bash").arg("-c").arg("true").status().is_err() {
        common::skip_for_tool("broker_publications_survive_restart_through_the_fd_store", "bash", "to set LISTEN_PID");
        return;
    }
    let dir = std::env::temp_dir().join(format!("dmabroker-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let notify = dir.join("notify.sock");
    let socket = rustix::net::socket_with(AddressFamily::UNIX, SocketType::DGRAM, SocketFlags::CLOEXEC, None).unwrap();
    rustix::net::bind(&socket, &SocketAddrUnix::new(&notify).unwrap()).unwrap();
    let manager = Shared::spawn(Manager { socket, store: BTreeMap::new(), ready: 0, stored: Vec::new() });

    let mut first = spawn_broker(&dir, &notify, &[]);
    manager.wait_ready(1);
    let mut c = Client::connect(dir.join("b.sock")).unwrap();
    let b = c.allocate("memfd", 64 << 10, Some("kept")).unwrap();
    b.map_read_write().unwrap().begin_write().unwrap().fill(0xa5);
    c.publish(&b, PublishOptions::named("kept").grant("uid=65534:ro".parse().unwrap())).unwrap();
    let token = c.publish(&b, PublishOptions::token()).unwrap();
    let gone = c.allocate("memfd", 4096, None).unwrap();
    c.publish(&gone, PublishOptions::named("gone")).unwrap();
    c.unpublish("gone").unwrap();
    drop((b, gone, c));
    std::thread::sleep(Duration::from_millis(300));
    stop(&mut first);
    std::thread::sleep(Duration::from_millis(100));
    let mut inherited: Vec<(String, OwnedFd)> =
        std::mem::take(&mut manager.0.lock().unwrap().store).into_iter().collect();
    let names: Vec<&str> = inherited.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 2, "one buffer and the state: {names:?}");
    assert!(names.contains(&"state"), "{names:?}");
    // Socket activation too: the manager binds the socket and passes it.
    assert!(!dir.join("b.sock").exists(), "the first broker removes its socket at exit");
    let listener =
        rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap();
    rustix::net::bind(&listener, &SocketAddrUnix::new(dir.join("b.sock")).unwrap()).unwrap();
    rustix::net::listen(&listener, 16).unwrap();
    inherited.insert(0, ("dmabroker.socket".to_owned(), listener));
    let mut second = spawn_broker(&dir, &notify, &inherited);
    drop(inherited);
    manager.wait_ready(2);
    let mut c = Client::connect(dir.join("b.sock")).unwrap();
    let kept = c.import("kept").unwrap();
    assert_eq!(kept.buffer.len(), 64 << 10);
    assert!(kept.buffer.map_read().unwrap().begin_read().unwrap().iter().all(|x| *x == 0xa5));
    assert_eq!(c.import(&token).unwrap().buffer.inode(), kept.buffer.inode());
    assert!(c.import("gone").is_err());
    let (list, _) = c.list().unwrap();
    assert_eq!(
        list.iter().find(|e| e.key == "kept").map(|e| e.publisher_uid),
        Some(rustix::process::getuid().as_raw())
    );
    assert_eq!(c.stats().unwrap().used_buffers, 1, "the owner is charged again");
    drop(c);
    stop(&mut second);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A service manager that stops reading its notify socket (its queue holds
/// only `net.unix.max_dgram_qlen` datagrams, 10 by default) must not slow
/// the broker down: notifications wait in the broker, and once the manager
/// reads, every `FDSTORE=1` arrives, in order, with the newest state.
#[test]
fn broker_answers_promptly_while_the_manager_does_not_read() {
    let dir = std::env::temp_dir().join(format!("dmabroker-notify-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let notify = dir.join("notify.sock");
    let socket = rustix::net::socket_with(AddressFamily::UNIX, SocketType::DGRAM, SocketFlags::CLOEXEC, None).unwrap();
    rustix::net::bind(&socket, &SocketAddrUnix::new(&notify).unwrap()).unwrap();
    let mut manager = Manager { socket, store: BTreeMap::new(), ready: 0, stored: Vec::new() };
    let mut broker = spawn_broker(&dir, &notify, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while manager.ready == 0 {
        assert!(Instant::now() < deadline, "broker never sent READY=1");
        manager.drain();
        std::thread::sleep(Duration::from_millis(10));
    }

    // From here on the manager reads nothing.
    let mut c = Client::connect(dir.join("b.sock")).unwrap();
    let mut slowest = (Duration::ZERO, String::new());
    let mut time = |what: String, since: Instant| {
        if since.elapsed() > slowest.0 {
            slowest = (since.elapsed(), what);
        }
    };
    const N: usize = 60;
    const WITHDRAWN: usize = 5;
    let mut buffers = Vec::new();
    for i in 0..N {
        let t = Instant::now();
        let b = c.allocate("memfd", 4096, None).unwrap();
        c.publish(&b, PublishOptions::named(format!("k{i}"))).unwrap();
        time(format!("publish k{i}"), t);
        buffers.push(b);
        if i % 20 == 0 {
            // Let a few state saves (every 50 ms) queue up as well.
            std::thread::sleep(Duration::from_millis(70));
        }
    }
    for i in 0..WITHDRAWN {
        let t = Instant::now();
        c.unpublish(&format!("k{i}")).unwrap();
        time(format!("unpublish k{i}"), t);
    }
    // The retry timer runs meanwhile; the broker still answers at once.
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    c.stats().unwrap();
    time("stats".to_owned(), t);
    assert!(slowest.0 < Duration::from_millis(100), "{} took {:?}", slowest.1, slowest.0);
    assert!(manager.stored.len() < N, "the manager's queue never filled: the test proves nothing");

    // The manager reads again.
    let manager = Shared::spawn(manager);
    let inodes: Vec<u64> = buffers.iter().map(dmabroker::Buffer::inode).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = manager.0.lock().unwrap();
        let buffers = m.store.keys().filter(|n| n.starts_with('b')).count();
        let publications = m.store.get("state").map_or(0, |fd| {
            let mut text = vec![0; 1 << 20];
            let n = rustix::io::pread(fd, &mut text, 0).unwrap();
            String::from_utf8_lossy(&text[..n]).matches("\"key\":").count()
        });
        if buffers == N - WITHDRAWN && publications == N - WITHDRAWN {
            // In publication order; the withdrawn ones only if they were
            // sent before their withdrawal.
            let order: Vec<usize> =
                m.stored.iter().map(|(_, ino)| inodes.iter().position(|i| i == ino).expect("unknown buffer")).collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "FDSTORE=1 out of order: {order:?}");
            let kept: Vec<usize> = order.iter().copied().filter(|&i| i >= WITHDRAWN).collect();
            assert_eq!(kept, (WITHDRAWN..N).collect::<Vec<_>>());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the manager read: {buffers} buffer(s) and {publications} publication(s) in the state stored"
        );
        drop(m);
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(c);
    stop(&mut broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `.socket` unit with `ListenStream=` (or `Accept=yes`) passes a socket
/// the protocol cannot use: the broker must refuse to start and say which
/// setting to use, not serve a stream socket silently.
#[test]
fn broker_refuses_a_socket_activation_socket_of_the_wrong_kind() {
    if Command::new("bash").arg("-c").arg("true").status().is_err() {
        common::skip_for_tool(
            "broker_refuses_a_socket_activation_socket_of_the_wrong_kind",
            "bash",
            "to set LISTEN_PID",
        );
        return;
    }
    let _one_at_a_time = PASSING_FDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = std::env::temp_dir().join(format!("dmabroker-activation-kind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let notify = dir.join("notify.sock"); // nobody listens: notifications are dropped
    let stream: OwnedFd = std::os::unix::net::UnixListener::bind(dir.join("stream.sock")).unwrap().into();
    let (connected, _peer) =
        rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap();
    for (socket, expected) in [(stream, "ListenSequentialPacket="), (connected, "Accept=no")] {
        let child = spawn_broker_with(&dir, &notify, &[("dmabroker.socket".to_owned(), socket)], Stdio::piped());
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut child = child;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the broker serves a socket of the wrong kind");
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(expected), "{expected} not in: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
