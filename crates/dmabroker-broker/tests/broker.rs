//! The broker in a thread of this process, driven by the library client.
//! Other users are played by threads that change their own uid (Linux
//! credentials are per thread, and `SO_PEERCRED` records the connecting
//! thread's): these tests need root and say so when skipped.

use dmabroker::client::{AllocateError, Client, ImportError, PublishOptions, UnpublishError};
use dmabroker::proto::{Access, Grant};
use std::os::unix::net::UnixStream;
use std::time::Duration;

mod common;

use common::{as_user, as_user_in_groups, eventually, memfd_policy, uid, TestBroker, NOBODY};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn allocate_publish_import_list_unpublish() {
    let broker = TestBroker::start("basic", None);
    let mut c = broker.client();
    assert_eq!(c.version(), dmabroker::proto::PROTOCOL_VERSION);
    let buffer = c.allocate("memfd", 10_000, Some("basic")).unwrap();
    assert_eq!(buffer.len(), 12288, "rounded to pages");
    assert!(buffer.is_size_sealed());
    buffer.map_read_write().unwrap().begin_write().unwrap().fill(7);
    let key = c.publish(&buffer, PublishOptions::named("cam/0")).unwrap();
    assert_eq!(key, "cam/0");
    assert!(matches!(
        c.publish(&buffer, PublishOptions::named("cam/0")),
        Err(dmabroker::client::PublishError::AlreadyExists(_))
    ));
    let token = c.publish(&buffer, PublishOptions::token()).unwrap();
    assert!(dmabroker::proto::validate_key(&token).is_ok() && token.starts_with('@'));
    let mut other = broker.client();
    let imported = other.import("cam/0").unwrap();
    assert_eq!(imported.access, Access::ReadWrite);
    assert_eq!(imported.buffer.inode(), buffer.inode());
    assert!(imported.buffer.map_read().unwrap().begin_read().unwrap().iter().all(|b| *b == 7));
    assert_eq!(other.import(&token).unwrap().buffer.inode(), buffer.inode());
    let (list, truncated) = c.list().unwrap();
    assert!(!truncated);
    assert_eq!(list.len(), 2, "the publisher sees its token too: {list:?}");
    let stats = c.stats().unwrap();
    assert_eq!((stats.used_buffers, stats.used_bytes, stats.publications), (1, 12288, 2));
    c.unpublish("cam/0").unwrap();
    assert!(matches!(other.import("cam/0"), Err(ImportError::NotFound(_))));
    assert!(matches!(other.unpublish("cam/0"), Err(UnpublishError::NotFound(_))));
    assert!(matches!(c.allocate("no-such-heap", 4096, None), Err(AllocateError::NoSuchHeap(_))));
}

#[test]
fn foreign_memfds_must_be_sealed_and_sockets_are_refused() {
    let broker = TestBroker::start("foreign", None);
    let mut c = broker.client();
    let unsealed = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&unsealed, 4096).unwrap();
    let e = c.publish(&unsealed, PublishOptions::named("unsealed")).unwrap_err();
    assert!(e.to_string().contains("F_SEAL_SHRINK"), "{e}");
    let (a, _b) = UnixStream::pair().unwrap();
    let e = c.publish(&a, PublishOptions::named("sock")).unwrap_err();
    assert!(e.to_string().contains("socket"), "{e}");
    let file = std::fs::File::open("/proc/self/status").unwrap();
    let e = c.publish(&file, PublishOptions::named("file")).unwrap_err();
    assert!(e.to_string().contains("not a buffer"), "{e}");
    // The session survives refusals.
    assert!(c.stats().is_ok());
}

#[test]
fn expiry_and_one_shot() {
    let broker = TestBroker::start("expiry", None);
    let mut c = broker.client();
    let b = c.allocate("memfd", 4096, None).unwrap();
    c.publish(&b, PublishOptions::named("once").one_shot(true).grant("any:rw".parse::<Grant>().unwrap())).unwrap();
    c.publish(&b, PublishOptions::named("brief").expires_in(Duration::from_secs(1))).unwrap();
    // The publisher's own imports do not consume a one-shot publication.
    c.import("once").unwrap();
    if is_root() {
        let path = broker.path.clone();
        let r = as_user(NOBODY, move || Client::connect(&path).unwrap().import("once").map(|i| i.access));
        assert_eq!(r.unwrap(), Access::ReadWrite);
        assert!(matches!(c.import("once"), Err(ImportError::NotFound(_))));
    }
    std::thread::sleep(Duration::from_millis(1300));
    assert!(matches!(c.import("brief"), Err(ImportError::NotFound(_))));
}

#[test]
fn quota_exhaustion_is_clear_and_frees_on_close() {
    let uid = uid();
    let policy =
        format!("[[user]]\nuid = {uid}\nheaps = [\"memfd\"]\nmax_bytes = \"64KiB\"\nmax_buffers = 2\npublish = true\n");
    let broker = TestBroker::start("quota", Some(&policy));
    let mut c = broker.client();
    let a = c.allocate("memfd", 4096, None).unwrap();
    let b = c.allocate("memfd", 4096, None).unwrap();
    let e = c.allocate("memfd", 4096, None).unwrap_err();
    assert!(matches!(e, AllocateError::QuotaExceeded(_)), "{e}");
    assert!(e.to_string().contains("quota of 64 KiB / 2 buffers"), "{e}");
    let e = c.allocate("memfd", 1 << 20, None).unwrap_err();
    assert!(matches!(e, AllocateError::QuotaExceeded(_)), "{e}");
    assert!(matches!(
        c.allocate("hugetlb", 4096, None),
        Err(AllocateError::NotAllowed(_) | AllocateError::NoSuchHeap(_))
    ));
    // Closing frees the charge, on the same connection.
    drop(b);
    let b = eventually("allocating after a close", || c.allocate("memfd", 4096, None));
    // Passing a buffer away does not free its charge: `kept` still holds one.
    let kept = a.try_clone_fd().unwrap();
    drop((a, b, c));
    let mut c = broker.client();
    // The close's sweep may wait for its budget (quota-pressure sweeps are
    // rationed, and the retries above may have spent it on a loaded machine).
    let _third = eventually("allocating after the connection closed", || c.allocate("memfd", 4096, None));
    let e = c.allocate("memfd", 4096, None).unwrap_err();
    assert!(matches!(e, AllocateError::QuotaExceeded(_)), "the passed-on fd still counts: {e}");
    drop(kept);
    eventually("allocating after the last holder closed", || c.allocate("memfd", 4096, None));
}

/// A grant to a supplementary group reaches exactly the members of that
/// group. The "other users" here are threads of this process with their own
/// credentials, so `/proc/PID/status` (the main thread's) would name the
/// wrong groups: only the groups the kernel recorded at connect time
/// (`SO_PEERGROUPS`) get this right.
#[test]
fn grants_to_a_supplementary_group_reach_its_members_only() {
    if !is_root() {
        common::skip("grants_to_a_supplementary_group_reach_its_members_only", "needs root to act as another uid");
        return;
    }
    const VIDEO_GROUP: u32 = 64_123;
    let broker = TestBroker::start("groups", None);
    let mut c = broker.client();
    let b = c.allocate("memfd", 4096, None).unwrap();
    c.publish(&b, PublishOptions::named("for-the-group").grant(format!("gid={VIDEO_GROUP}:ro").parse().unwrap()))
        .unwrap();
    let path = broker.path.clone();
    as_user_in_groups(NOBODY, &[VIDEO_GROUP], move || {
        let mut member = Client::connect(&path).unwrap();
        let imported = member.import("for-the-group").unwrap();
        assert_eq!(imported.access, Access::ReadOnly);
    });
    let path = broker.path.clone();
    as_user(NOBODY, move || {
        let mut outsider = Client::connect(&path).unwrap();
        assert!(matches!(outsider.import("for-the-group"), Err(ImportError::NotAllowed(_))));
    });
}

#[test]
fn other_users_get_nothing_but_what_is_granted() {
    if !is_root() {
        common::skip("other_users_get_nothing_but_what_is_granted", "needs root to act as another uid");
        return;
    }
    let broker = TestBroker::start("acl", None);
    let mut c = broker.client();
    let b = c.allocate("memfd", 8192, None).unwrap();
    b.map_read_write().unwrap().begin_write().unwrap().fill(0x5a);
    c.publish(&b, PublishOptions::named("private")).unwrap();
    c.publish(&b, PublishOptions::named("shared-ro").grant(format!("uid={NOBODY}:ro").parse().unwrap())).unwrap();
    c.publish(&b, PublishOptions::named("shared-rw").grant(format!("gid={NOBODY}:rw").parse().unwrap())).unwrap();
    let path = broker.path.clone();
    as_user(NOBODY, move || {
        let mut n = Client::connect(&path).unwrap();
        assert!(matches!(n.allocate("memfd", 4096, None), Err(AllocateError::NotAllowed(_))));
        assert!(matches!(n.import("private"), Err(ImportError::NotAllowed(_))));
        let (list, _) = n.list().unwrap();
        let keys: Vec<_> = list.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["shared-ro", "shared-rw"]);
        let ro = n.import("shared-ro").unwrap();
        assert_eq!(ro.access, Access::ReadOnly);
        assert!(ro.buffer.map_read().unwrap().begin_read().unwrap().iter().all(|x| *x == 0x5a));
        assert!(ro.buffer.map_read_write().is_err(), "read-only grant mapped writable");
        assert!(rustix::fs::ftruncate(&ro.buffer, 0).is_err(), "read-only grant truncated");
        assert!(rustix::io::write(&ro.buffer, b"x").is_err(), "read-only grant written");
        let reopen = rustix::fs::open(
            format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(&ro.buffer))),
            rustix::fs::OFlags::RDWR,
            rustix::fs::Mode::empty(),
        );
        assert!(reopen.is_err(), "read-only grant reopened read-write through /proc");
        let rw = n.import("shared-rw").unwrap();
        assert_eq!(rw.access, Access::ReadWrite);
        drop(rw.buffer.map_read_write().unwrap());
        assert!(matches!(n.unpublish("shared-rw"), Err(UnpublishError::NotAllowed(_))));
    });
}

#[test]
fn policy_can_let_another_user_allocate_within_quota() {
    if !is_root() {
        common::skip("policy_can_let_another_user_allocate_within_quota", "needs root to act as another uid");
        return;
    }
    let policy = memfd_policy(NOBODY, "1MiB", 1);
    let broker = TestBroker::start("policy", Some(&policy));
    let path = broker.path.clone();
    as_user(NOBODY, move || {
        let mut n = Client::connect(&path).unwrap();
        let b = n.allocate("memfd", 4096, None).unwrap();
        assert!(matches!(n.allocate("memfd", 4096, None), Err(AllocateError::QuotaExceeded(_))));
        let e = n.publish(&b, PublishOptions::named("nope")).unwrap_err();
        assert!(e.to_string().contains("may not publish"), "{e}");
        let stats = n.stats().unwrap();
        assert_eq!((stats.uid, stats.used_buffers, stats.max_buffers), (NOBODY, 1, 1));
    });
}

#[test]
fn unread_replies_stay_charged_until_received() {
    use dmabroker::proto::{self, wire, AllocateRequest, Request};
    use std::os::fd::AsFd;
    let policy = memfd_policy(uid(), "1MiB", 2);
    let broker = TestBroker::start("unread", Some(&policy));
    let s = broker.raw_socket();
    let send = |r: &Request| wire::send(s.as_fd(), &proto::encode_request(r).unwrap(), None, false).unwrap();
    let mut buf = vec![0; proto::MAX_RESPONSE_LEN];
    send(&Request::Hello { min_version: 1, max_version: 1 });
    wire::recv(s.as_fd(), &mut buf, false).unwrap().unwrap();
    let alloc =
        Request::Allocate(AllocateRequest { heap: "memfd".into(), len: 4096, align: 1, contiguous: false, name: None });
    send(&alloc);
    send(&alloc);
    // The two replies (and their memfds) sit unread: no process holds them,
    // yet they must stay charged, or a client could hide buffers there.
    std::thread::sleep(Duration::from_millis(400));
    let mut c = broker.client();
    assert!(matches!(c.allocate("memfd", 4096, None), Err(AllocateError::QuotaExceeded(_))));
    for _ in 0..2 {
        let r = wire::recv(s.as_fd(), &mut buf, false).unwrap().unwrap();
        assert_eq!(r.fds.len(), 1);
    } // received and closed
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while c.allocate("memfd", 4096, None).is_err() {
        assert!(std::time::Instant::now() < deadline, "charges did not end after the replies were received and closed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn clients_beyond_the_maximum_are_told_why() {
    let broker = TestBroker::start_with("max", None, 2);
    let _a = broker.client();
    let _b = broker.client();
    let e = Client::connect(&broker.path).unwrap_err();
    assert!(e.to_string().contains("maximum"), "{e}");
    drop(_a);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Client::connect(&broker.path).is_err() {
        assert!(std::time::Instant::now() < deadline, "a freed slot was not reused");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A raw client that sends `Hello` right after `connect` (before the broker
/// accepted it) must read the `Busy` refusal, not `ECONNRESET`: the broker
/// closes only after draining what the client sent.
#[test]
fn a_refused_raw_client_reads_why() {
    use dmabroker::proto::{self, wire, ErrorCode, Request, Response};
    use std::os::fd::AsFd;
    let broker = TestBroker::start_with("busy-raw", None, 1);
    let _a = broker.client();
    for _ in 0..20 {
        let s = broker.raw_socket();
        let hello = proto::encode_request(&Request::Hello { min_version: 1, max_version: 1 }).unwrap();
        wire::send(s.as_fd(), &hello, None, false).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut buf = vec![0; proto::MAX_RESPONSE_LEN];
        let r = wire::recv(s.as_fd(), &mut buf, false).expect("the refusal, not a reset").expect("a reply");
        match proto::decode_response(&buf[..r.len]).unwrap() {
            Response::Error { code: ErrorCode::Busy, message } => assert!(message.contains("maximum"), "{message}"),
            other => panic!("expected Busy, got {other:?}"),
        }
        assert!(wire::recv(s.as_fd(), &mut buf, false).unwrap().is_none(), "then the end of the session");
    }
}

/// A thread with a file descriptor table of its own (`unshare(CLONE_FILES)`)
/// that keeps a memfd after every other holder closed it keeps it charged.
/// (Clients in the broker's process: see also broker_cli.rs, where the
/// broker is another process.)
#[test]
fn a_memfd_held_in_a_threads_own_fd_table_stays_charged() {
    let policy = memfd_policy(uid(), "1MiB", 1);
    let broker = TestBroker::start("own-table", Some(&policy));
    let mut c = broker.client();
    let b = c.allocate("memfd", 4096, None).unwrap();
    let holder = match dmabroker_sys::kcmp::OwnTableHolder::hold(b.try_clone_fd().unwrap()) {
        Ok(h) => h,
        Err(e) => {
            common::skip("a_memfd_held_in_a_threads_own_fd_table_stays_charged", &format!("unshare(CLONE_FILES): {e}"));
            return;
        }
    };
    drop(b);
    std::thread::sleep(Duration::from_millis(400)); // several sweeps
    assert!(
        matches!(c.allocate("memfd", 4096, None), Err(AllocateError::QuotaExceeded(_))),
        "the charge of a buffer held by a thread's own fd table ended"
    );
    drop(holder);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while c.allocate("memfd", 4096, None).is_err() {
        assert!(std::time::Instant::now() < deadline, "the charge did not end once the thread let go");
        std::thread::sleep(Duration::from_millis(50));
    }
}
