//! The blocking broker client never hangs on a broker that does not answer:
//! connecting to a socket that accepts nothing, and one whose backlog is
//! full, fails with a typed timeout within the bound.

use dmabroker::client::{Client, ConnectError, DEFAULT_TIMEOUT};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A `SOCK_SEQPACKET` listener that never accepts nor answers, with `backlog`.
fn silent_listener(name: &str, backlog: i32) -> (OwnedFd, PathBuf) {
    let dir = std::env::temp_dir().join(format!("dmabroker-timeout-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("silent.sock");
    let s = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap();
    rustix::net::bind(&s, &SocketAddrUnix::new(&path).unwrap()).unwrap();
    rustix::net::listen(&s, backlog).unwrap();
    (s, path)
}

const BOUND: Duration = Duration::from_millis(300);

#[test]
fn a_listener_that_never_answers_times_out_at_hello() {
    let (_listener, path) = silent_listener("hello", 16);
    let start = Instant::now();
    let err = Client::connect_with_timeout(&path, Some(BOUND)).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, ConnectError::TimedOut { after, .. } if after == BOUND), "{err:?}");
    assert!(took >= BOUND && took < BOUND + Duration::from_secs(2), "{took:?}");
    let message = err.to_string();
    assert!(message.contains("did not answer within 300 ms") && message.contains("silent.sock"), "{message}");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn a_full_backlog_times_out_at_connect() {
    // backlog 0: the first connection fills the queue (nothing accepts it),
    // the second waits in connect() itself, bounded by SO_SNDTIMEO.
    let (_listener, path) = silent_listener("backlog", 0);
    let first =
        rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap();
    rustix::net::connect(&first, &SocketAddrUnix::new(&path).unwrap()).unwrap();
    let start = Instant::now();
    let err = Client::connect_with_timeout(&path, Some(BOUND)).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, ConnectError::TimedOut { .. }), "{err:?}");
    assert!(took >= BOUND && took < BOUND + Duration::from_secs(2), "{took:?}");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn the_default_bound_is_five_seconds() {
    assert_eq!(DEFAULT_TIMEOUT, Duration::from_secs(5));
    let (_listener, path) = silent_listener("default", 16);
    let start = Instant::now();
    let err = Client::connect(&path).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, ConnectError::TimedOut { after, .. } if after == DEFAULT_TIMEOUT), "{err:?}");
    assert!(took >= DEFAULT_TIMEOUT && took < DEFAULT_TIMEOUT + Duration::from_secs(3), "{took:?}");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
