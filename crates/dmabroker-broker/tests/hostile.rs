//! What a hostile local client can send the broker (issue 12's findings):
//! each test fails on the code before its fix.

use dmabroker::proto::{self, wire, ErrorCode, PublishRequest, Request, Response};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

#[path = "common/child_broker.rs"]
mod child_broker;
mod common;

use child_broker::ChildBroker;

use common::TestBroker;

/// A loopback TCP socket whose close lingers for `linger` (SO_LINGER) because
/// it has unsent data the peer never reads. Returns it with the peer (keep
/// the peer open: its receive window stays closed).
fn lingering_socket(linger: Duration) -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (peer, _) = listener.accept().unwrap();
    c.set_nonblocking(true).unwrap();
    let chunk = vec![0u8; 1 << 16];
    loop {
        match (&c).write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    rustix::net::sockopt::set_socket_linger(&c, Some(linger)).unwrap();
    (c, peer)
}

fn request(s: &OwnedFd, r: &Request, fd: Option<std::os::fd::BorrowedFd<'_>>) {
    let bytes = proto::encode_request(r).unwrap();
    wire::send(s.as_fd(), &bytes, fd, false).unwrap();
}

fn response(s: &OwnedFd) -> Response {
    let mut buf = vec![0; proto::MAX_RESPONSE_LEN];
    let r = wire::recv(s.as_fd(), &mut buf, false).unwrap().expect("a reply");
    proto::decode_response(&buf[..r.len]).unwrap()
}

impl ChildBroker {
    fn raw_socket(&self) -> OwnedFd {
        let s = rustix::net::socket_with(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::connect(&s, &rustix::net::SocketAddrUnix::new(&self.path).unwrap()).unwrap();
        s
    }
}

/// Not a test: the broker process of [`ChildBroker`].
#[test]
#[ignore = "the broker process of other tests"]
fn broker_process() {
    child_broker::serve_if_asked();
}

/// Finding 1: a socket with `SO_LINGER` and unsent data, attached to a
/// request and closed by its sender, makes the broker's close of it wait for
/// the linger time. That close must not happen on the event loop: another
/// client is served meanwhile. (The broker is stopped while the request
/// travels, so that the sender's copy is closed first, and the broker's
/// close is the last, the one that lingers.)
#[test]
fn a_lingering_socket_sent_to_the_broker_does_not_freeze_it() {
    const LINGER: Duration = Duration::from_secs(6);
    let broker = ChildBroker::start("linger");
    let mut other = dmabroker::client::Client::connect(&broker.path).unwrap();
    let (sock, _peer) = lingering_socket(LINGER);
    let raw = broker.raw_socket();
    request(&raw, &Request::Hello { min_version: 1, max_version: 1 }, None);
    assert!(matches!(response(&raw), Response::Hello { .. }));
    let publish = Request::Publish(PublishRequest {
        name: Some("linger".into()),
        grants: Vec::new(),
        one_shot: false,
        expires_in_secs: None,
    });
    broker.signal(rustix::process::Signal::STOP);
    request(&raw, &publish, Some(sock.as_fd()));
    drop(sock);
    broker.signal(rustix::process::Signal::CONT);
    // The broker now refuses the fd and closes it (a close that lingers).
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    other.stats().expect("served");
    let served = start.elapsed();
    assert!(
        served < Duration::from_secs(2),
        "another client waited {served:?} while the broker closed a lingering socket"
    );
    match response(&raw) {
        Response::Error { code: ErrorCode::NotABuffer, .. } => {}
        r => panic!("{r:?}"),
    }
}

/// A broker stopped with SIGSTOP: a connected client's call and a new
/// connection each fail with a typed timeout within the client's bound,
/// and the connection that timed out refuses further calls (a late reply
/// would answer the wrong request) while a new one works once it runs again.
#[test]
fn a_stopped_broker_gives_a_timeout_not_a_hang() {
    use dmabroker::client::{Client, ConnectError, TransportError};
    const BOUND: Duration = Duration::from_millis(400);
    let broker = ChildBroker::start("sigstop");
    let mut client = Client::connect_with_timeout(&broker.path, Some(BOUND)).unwrap();
    assert_eq!(client.timeout(), Some(BOUND));
    client.stats().expect("served while running");
    broker.signal(rustix::process::Signal::STOP);
    let start = Instant::now();
    let err = client.stats().unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(err, dmabroker::client::QueryError::Transport(TransportError::TimedOut { after }) if after == BOUND),
        "{err:?}"
    );
    assert!(took >= BOUND && took < BOUND + Duration::from_secs(2), "{took:?}");
    assert!(err.to_string().contains("stopped"), "{err}");
    let start = Instant::now();
    let err = Client::connect_with_timeout(&broker.path, Some(BOUND)).unwrap_err();
    assert!(matches!(err, ConnectError::TimedOut { .. }), "{err:?}");
    assert!(start.elapsed() < BOUND + Duration::from_secs(2), "{:?}", start.elapsed());
    broker.signal(rustix::process::Signal::CONT);
    assert!(matches!(client.stats(), Err(dmabroker::client::QueryError::Transport(TransportError::TimedOut { .. }))));
    Client::connect(&broker.path).expect("a new connection once the broker runs").stats().expect("served");
}

/// Finding 1: more fds in one message than the broker's control space would
/// be closed by the kernel in the broker's thread (inside `recvmsg`). The
/// broker reserves room for the most a message can carry.
#[test]
fn many_fds_in_one_message_are_refused_without_blocking() {
    let broker = TestBroker::start("many-fds", None);
    let mut other = broker.client();
    let raw = broker.raw_socket();
    request(&raw, &Request::Hello { min_version: 1, max_version: 1 }, None);
    assert!(matches!(response(&raw), Response::Hello { .. }));
    let (sock, _peer) = lingering_socket(Duration::from_secs(6));
    let fds: Vec<_> = (0..32).map(|_| sock.as_fd()).collect();
    let bytes = proto::encode_request(&Request::Stats).unwrap();
    let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(32))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(&raw, &[std::io::IoSlice::new(&bytes)], &mut control, rustix::net::SendFlags::empty())
        .unwrap();
    drop(sock);
    match response(&raw) {
        Response::Error { code: ErrorCode::BadRequest, message } => assert!(message.contains("fd"), "{message}"),
        r => panic!("{r:?}"),
    }
    let start = Instant::now();
    other.stats().expect("served");
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
}

/// Connect as `uid` (a thread of that uid) and keep connections that got
/// `Hello` answered, until the broker refuses one (at most `max`).
fn hold_connections(broker: &TestBroker, uid: u32, max: usize) -> Vec<OwnedFd> {
    let path = broker.path.clone();
    common::as_user(uid, move || {
        let mut kept = Vec::new();
        for _ in 0..max {
            let s = rustix::net::socket_with(
                rustix::net::AddressFamily::UNIX,
                rustix::net::SocketType::SEQPACKET,
                rustix::net::SocketFlags::CLOEXEC,
                None,
            )
            .unwrap();
            rustix::net::connect(&s, &rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
            request(&s, &Request::Hello { min_version: 1, max_version: 1 }, None);
            match response(&s) {
                Response::Hello { .. } => kept.push(s),
                Response::Error { code: ErrorCode::Busy, .. } => break,
                r => panic!("{r:?}"),
            }
        }
        kept
    })
}

/// Finding 3: with the per-user cap at half the table, two users that hold
/// connections locked everyone out, root included. Caps now cannot add up
/// to the table, and root has a reserve.
#[test]
fn two_users_cannot_lock_root_out() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP two_users_cannot_lock_root_out: needs root (threads of other uids)");
        return;
    }
    let broker = TestBroker::start_with("lockout", None, 8);
    // The per-user cap asked is the library's default (4096, more than the table).
    let a = hold_connections(&broker, common::NOBODY, 8);
    let b = hold_connections(&broker, common::NOBODY - 1, 8);
    assert!(a.len() + b.len() < 8, "two users hold the whole table: {} + {}", a.len(), b.len());
    let mut root = broker.client();
    root.stats().expect("root is served");
}

/// Finding 3: a connection that never sends `Hello` held its slot for good.
#[test]
fn a_connection_without_hello_is_closed() {
    let broker = TestBroker::start_with_config("no-hello", |c| c.handshake_timeout = Duration::from_millis(300));
    let raw = broker.raw_socket();
    rustix::net::sockopt::set_socket_timeout(&raw, rustix::net::sockopt::Timeout::Recv, Some(Duration::from_secs(5)))
        .unwrap();
    let start = Instant::now();
    match response(&raw) {
        Response::Error { code: ErrorCode::BadRequest, message } => assert!(message.contains("Hello"), "{message}"),
        r => panic!("{r:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(3));
}
