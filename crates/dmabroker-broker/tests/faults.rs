//! Fault injection (issue 12, item 4): a full machine or a crashing peer
//! gives a clear error to the affected client only, and the system recovers
//! without a restart.

#[path = "common/child_broker.rs"]
mod child_broker;
mod common;

use child_broker::ChildBroker;
use common::TestBroker;
use dmabroker::client::{AllocateError, Client, TransportError};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;

const FD_LIMIT_TEST: &str = "a_client_at_its_fd_limit_gets_a_clear_error_and_recovers";
const FD_LIMIT_CLIENT: &str = "DMABROKER_TEST_FD_LIMIT_CLIENT";

/// The client side: fill this process's fd table to its (lowered) limit,
/// allocate (the reply's fd cannot be received), then free one fd and
/// allocate again on the same connection.
fn fd_limited_client(socket: &Path) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let mut client = Client::connect(socket).unwrap();
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let hard = getrlimit(Resource::Nofile).maximum;
    setrlimit(Resource::Nofile, Rlimit { current: Some(open + 32), maximum: hard }).unwrap();
    let mut fill: Vec<OwnedFd> = Vec::new();
    let stdout = std::io::stdout();
    loop {
        match rustix::io::fcntl_dupfd_cloexec(&stdout, 0) {
            Ok(fd) => fill.push(fd),
            Err(rustix::io::Errno::MFILE) => break,
            Err(e) => panic!("dup: {e}"),
        }
    }
    match client.allocate("memfd", 4096, None) {
        Err(AllocateError::Transport(e @ TransportError::FdLimit { .. })) => {
            let message = e.to_string();
            assert!(message.contains("file descriptor limit") && message.contains("RLIMIT_NOFILE"), "{message}");
        }
        other => panic!("a reply whose fd could not be received: {other:?}"),
    }
    drop(fill.pop());
    let buffer = client.allocate("memfd", 4096, None).expect("the same connection works once an fd is free");
    assert_eq!(buffer.len(), 4096);
}

/// A client at its fd limit (RLIMIT_NOFILE) lost the reply's fd in the
/// kernel and reported "reply without its file descriptor" as if the broker
/// broke the protocol. Now it says what happened and what to do; the broker
/// serves on, the lost buffer's charge ends, and the client recovers on the
/// same connection once it has a free fd. The client is this test binary
/// again, in a child process: the limit is per process, and the broker runs
/// in this one.
#[test]
fn a_client_at_its_fd_limit_gets_a_clear_error_and_recovers() {
    if let Some(socket) = std::env::var_os(FD_LIMIT_CLIENT) {
        return fd_limited_client(Path::new(&socket));
    }
    let broker = TestBroker::start("fd-limit", None);
    let output = Command::new(std::env::current_exe().unwrap())
        .args([FD_LIMIT_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(FD_LIMIT_CLIENT, &broker.path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the fd-limited client failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The broker serves on, and charges nothing once the client is gone.
    let mut other = broker.client();
    common::eventually("the fd-limited client's buffers are released", || {
        let used = other.stats().map_err(|e| e.to_string())?.used_buffers;
        if used == 0 {
            Ok(())
        } else {
            Err(format!("{used} buffer(s) still charged"))
        }
    });
    drop(other.allocate("memfd", 4096, None).expect("another client is served"));
}

/// Not a test: the broker process of [`ChildBroker`].
#[test]
#[ignore = "the broker process of other tests"]
fn broker_process() {
    child_broker::serve_if_asked();
}

/// The broker at its own fd limit (RLIMIT_NOFILE, lowered under it with
/// `prlimit`): the client whose allocation needs one more fd gets a clear
/// refusal, the broker keeps serving what needs no new fd, and once that
/// client lets go of its buffers the broker allocates again, without a
/// restart.
#[test]
fn a_broker_at_its_fd_limit_refuses_clearly_and_recovers() {
    use rustix::process::{prlimit, Pid, Resource, Rlimit};
    let broker = ChildBroker::start("fd-limit");
    let mut client = Client::connect(&broker.path).unwrap();
    let pid = Pid::from_child(&broker.child);
    let open = std::fs::read_dir(format!("/proc/{}/fd", broker.child.id())).unwrap().count() as u64;
    let hard = rustix::process::getrlimit(Resource::Nofile).maximum;
    prlimit(Some(pid), Resource::Nofile, Rlimit { current: Some(open + 16), maximum: hard }).unwrap();
    let mut held = Vec::new();
    let refusal = loop {
        match client.allocate("memfd", 4096, None) {
            Ok(b) => held.push(b),
            Err(e) => break e,
        }
        assert!(held.len() < 64, "the broker's fd limit was never reached");
    };
    let message = refusal.to_string();
    eprintln!("at the broker's fd limit after {} buffers: {message}", held.len());
    assert!(message.contains("file descriptor limit"), "{message}");
    client.stats().expect("requests that need no fd are still served");
    drop(held);
    let again = common::eventually("the broker allocates again once the buffers are let go", || {
        client.allocate("memfd", 4096, None).map_err(|e| e.to_string())
    });
    assert_eq!(again.len(), 4096);
}
