//! The service's unit tests: ACLs, republication, quotas, one-shots.

use super::publication::writable;
use super::*;
use dmabroker::proto::{Access, AllocateRequest, Grant, Grantee, PublishRequest};
use std::os::fd::AsRawFd;

const OWNER: u32 = 4242;
const OTHER: u32 = 4343;

fn session(service: &mut Service, uid: u32) -> Session {
    let peer = Peer { uid, gid: uid, pid: std::process::id(), groups: vec![uid], pidfd: None };
    let mut s = Session::new(peer, &service.policy);
    let hello = service.handle(&mut s, Request::Hello { min_version: 1, max_version: 1 }, None);
    assert!(matches!(hello.response, Response::Hello { .. }));
    s
}

fn service() -> Service {
    let policy = Policy::parse(&format!("[[user]]\nuid = {OTHER}\npublish = true\n"), OWNER).unwrap();
    Service::new(policy, Heaps::discover(), None, SweepTiming::default())
}

fn publish(service: &mut Service, s: &mut Session, name: &str, grants: Vec<Grant>, fd: OwnedFd) -> Response {
    let p = PublishRequest { name: Some(name.into()), grants, one_shot: false, expires_in_secs: None };
    service.handle(s, Request::Publish(p), Some(fd)).response
}

#[test]
fn a_read_only_import_cannot_be_republished_to_gain_write_access() {
    let mut service = service();
    let mut owner = session(&mut service, OWNER);
    let alloc = AllocateRequest { heap: "memfd".into(), len: 4096, align: 1, contiguous: false, name: None };
    let reply = service.handle(&mut owner, Request::Allocate(alloc), None);
    let fd = reply.fd.expect("allocated");
    let ro = vec![Grant { who: Grantee::Uid(OTHER), access: Access::ReadOnly }];
    assert_eq!(publish(&mut service, &mut owner, "ro", ro, fd), Response::Published { key: "ro".into() });

    let mut other = session(&mut service, OTHER);
    let reply = service.handle(&mut other, Request::Import { key: "ro".into() }, None);
    assert!(matches!(reply.response, Response::Imported { access: Access::ReadOnly, .. }), "{:?}", reply.response);
    let ro_fd = reply.fd.unwrap();
    assert!(!writable(&ro_fd));
    // Re-publishing the read-only fd (or an O_PATH reopen of it) would
    // make OTHER the publisher of a publication it imports read-write.
    let path = rustix::fs::open(
        format!("/proc/self/fd/{}", ro_fd.as_raw_fd()),
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    for fd in [ro_fd, path] {
        match publish(&mut service, &mut other, "mine", Vec::new(), fd) {
            Response::Error { code: ErrorCode::NotAllowed | ErrorCode::NotABuffer, .. } => {}
            r => panic!("a read-only holder republished the buffer: {r:?}"),
        }
    }
    assert!(service.registry.publication("mine").is_none());
}

/// OTHER imports OWNER's buffer and republishes it as a token: OWNER
/// must see that publication (marked as OTHER's) and may withdraw it,
/// or OTHER could keep OWNER charged for good.
#[test]
fn the_owner_sees_and_withdraws_republications_of_its_buffer() {
    let mut service = service();
    let mut owner = session(&mut service, OWNER);
    let alloc = AllocateRequest { heap: "memfd".into(), len: 4096, align: 1, contiguous: false, name: None };
    let fd = service.handle(&mut owner, Request::Allocate(alloc), None).fd.expect("allocated");
    let rw = vec![Grant { who: Grantee::Uid(OTHER), access: Access::ReadWrite }];
    assert_eq!(publish(&mut service, &mut owner, "a", rw, fd), Response::Published { key: "a".into() });

    let mut other = session(&mut service, OTHER);
    let imported = service.handle(&mut other, Request::Import { key: "a".into() }, None).fd.expect("imported");
    let p = PublishRequest { name: None, grants: Vec::new(), one_shot: false, expires_in_secs: None };
    let Response::Published { key: token } = service.handle(&mut other, Request::Publish(p), Some(imported)).response
    else {
        panic!("republishing a rw import is allowed");
    };
    assert!(matches!(
        service.handle(&mut owner, Request::Unpublish { key: "a".into() }, None).response,
        Response::Unpublished
    ));
    assert_eq!(service.registry.usage(OWNER).buffers, 1, "OTHER's token keeps OWNER's buffer");

    // The owner sees the token, marked as OTHER's.
    let Response::List { entries, .. } = service.handle(&mut owner, Request::List, None).response else {
        panic!("list")
    };
    let entry = entries.iter().find(|e| e.key == token).expect("the owner sees publications of its buffer");
    assert_eq!((entry.publisher_uid, entry.access), (OTHER, Access::ReadWrite));
    // A third user neither sees nor withdraws it.
    let mut third = session(&mut service, OTHER + 1);
    let Response::List { entries, .. } = service.handle(&mut third, Request::List, None).response else {
        panic!("list")
    };
    assert!(entries.is_empty(), "{entries:?}");
    match service.handle(&mut third, Request::Unpublish { key: token.clone() }, None).response {
        Response::Error { code: ErrorCode::NotAllowed, message } => {
            assert!(message.contains(&format!("owner (uid {OWNER})")), "{message}");
        }
        r => panic!("a third user withdrew it: {r:?}"),
    }
    // The owner withdraws it; nothing holds the buffer any more.
    assert!(matches!(
        service.handle(&mut owner, Request::Unpublish { key: token }, None).response,
        Response::Unpublished
    ));
    assert_eq!(service.registry.get(1).map(|e| e.publications), Some(0));
}

#[test]
fn an_o_path_fd_is_not_a_buffer() {
    let mut service = service();
    let mut owner = session(&mut service, OWNER);
    let memfd = rustix::fs::memfd_create("opath", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let path = rustix::fs::open(
        format!("/proc/self/fd/{}", memfd.as_raw_fd()),
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    match publish(&mut service, &mut owner, "opath", Vec::new(), path) {
        Response::Error { code: ErrorCode::NotABuffer, message } => {
            assert!(message.contains("O_PATH") && message.contains("reopen"), "{message}");
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn expiry_beyond_the_bound_is_refused() {
    let mut service = service();
    let mut owner = session(&mut service, OWNER);
    let memfd = rustix::fs::memfd_create("expiry", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let p = PublishRequest { name: None, grants: Vec::new(), one_shot: false, expires_in_secs: Some(u64::MAX) };
    match service.handle(&mut owner, Request::Publish(p), Some(memfd)).response {
        Response::Error { code: ErrorCode::BadRequest, message } => {
            assert!(message.contains("at most"), "{message}");
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(service.registry.len(), 0, "nothing was adopted");
}

#[test]
fn quota_pressure_sweeps_are_rationed() {
    let mut service = service();
    assert!(service.pressure_sweep_allowed(), "a burst is allowed at once");
    service.pressure_credit = -1.0;
    assert!(!service.pressure_sweep_allowed(), "an overdrawn budget waits for its refill");
}

/// [`service`] with a quota for OTHER (publishing a foreign fd charges it).
fn service_with_quota() -> Service {
    let policy = Policy::parse(
        &format!("[[user]]\nuid = {OTHER}\npublish = true\nmax_bytes = \"1MiB\"\nmax_buffers = 8\n"),
        OWNER,
    )
    .unwrap();
    Service::new(policy, Heaps::discover(), None, SweepTiming::default())
}

/// A sealed memfd of this test, opened again with `flags`.
fn foreign_memfd(flags: rustix::fs::OFlags) -> (OwnedFd, OwnedFd) {
    let memfd =
        rustix::fs::memfd_create("foreign", rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING)
            .unwrap();
    rustix::fs::ftruncate(&memfd, 4096).unwrap();
    rustix::fs::fcntl_add_seals(&memfd, rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW).unwrap();
    let again = rustix::fs::open(
        format!("/proc/self/fd/{}", memfd.as_raw_fd()),
        flags | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    (memfd, again)
}

#[test]
fn an_rw_grant_on_a_buffer_published_read_only_is_refused() {
    let mut service = service_with_quota();
    let mut other = session(&mut service, OTHER);
    let (_memfd, ro) = foreign_memfd(rustix::fs::OFlags::RDONLY);
    let rw = vec![Grant { who: Grantee::Uid(OWNER), access: Access::ReadWrite }];
    match publish(&mut service, &mut other, "rw", rw, ro) {
        Response::Error { code: ErrorCode::NotAllowed, message } => {
            assert!(message.contains("read-only"), "{message}");
        }
        r => panic!("an rw grant on an O_RDONLY fd was accepted: {r:?}"),
    }
    let (_memfd, ro) = foreign_memfd(rustix::fs::OFlags::RDONLY);
    assert_eq!(publish(&mut service, &mut other, "ro", Vec::new(), ro), Response::Published { key: "ro".into() });
    // The publisher itself gets what the broker holds: ro, and says so.
    let reply = service.handle(&mut other, Request::Import { key: "ro".into() }, None);
    assert!(matches!(reply.response, Response::Imported { access: Access::ReadOnly, .. }), "{:?}", reply.response);
}

#[test]
fn the_mode_of_another_users_memfd_is_left_alone() {
    if !rustix::process::geteuid().is_root() {
        crate::test_skip::skip("the_mode_of_another_users_memfd_is_left_alone", "needs root (fchown)");
        return;
    }
    let mut service = service_with_quota();
    let mut other = session(&mut service, OTHER);
    let (memfd, rw) = foreign_memfd(rustix::fs::OFlags::RDWR);
    // Owned by a third uid, writable by everyone.
    rustix::fs::fchown(&memfd, Some(rustix::process::Uid::from_raw(4444)), None).unwrap();
    rustix::fs::fchmod(&memfd, rustix::fs::Mode::from_raw_mode(0o777)).unwrap();
    let ro = vec![Grant { who: Grantee::Uid(OWNER), access: Access::ReadOnly }];
    match publish(&mut service, &mut other, "ro", ro, rw) {
        Response::Error { code: ErrorCode::ReadOnlyUnsupported, message } => {
            assert!(message.contains("does not own"), "{message}");
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(rustix::fs::fstat(&memfd).unwrap().st_mode & 0o777, 0o777, "the broker changed the mode");
    // Owned by the publisher: made private as before.
    let (memfd, rw) = foreign_memfd(rustix::fs::OFlags::RDWR);
    rustix::fs::fchown(&memfd, Some(rustix::process::Uid::from_raw(OTHER)), None).unwrap();
    let ro = vec![Grant { who: Grantee::Uid(OWNER), access: Access::ReadOnly }];
    assert_eq!(publish(&mut service, &mut other, "ro2", ro, rw), Response::Published { key: "ro2".into() });
    assert_eq!(rustix::fs::fstat(&memfd).unwrap().st_mode & 0o777, 0o600);
}

/// A consumed one-shot is saved before the import's reply: no
/// `STATE_SAVE_DELAY` window in which a crash would bring it back.
#[test]
fn a_consumed_one_shot_is_saved_at_once() {
    let dir = std::env::temp_dir().join(format!("dmabroker-service-save-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify");
    let manager = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    manager.set_nonblocking(true).unwrap();
    let notifier = Notifier::new(rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
    let policy = Policy::parse(&format!("[[user]]\nuid = {OTHER}\npublish = true\n"), OWNER).unwrap();
    let mut service = Service::new(policy, Heaps::discover(), Some(notifier), SweepTiming::default());
    let mut owner = session(&mut service, OWNER);
    let alloc = AllocateRequest { heap: "memfd".into(), len: 4096, align: 1, contiguous: false, name: None };
    let fd = service.handle(&mut owner, Request::Allocate(alloc), None).fd.expect("allocated");
    let rw = vec![Grant { who: Grantee::Uid(OTHER), access: Access::ReadWrite }];
    let p = PublishRequest { name: Some("once".into()), grants: rw, one_shot: true, expires_in_secs: None };
    assert!(matches!(service.handle(&mut owner, Request::Publish(p), Some(fd)).response, Response::Published { .. }));
    let mut buf = vec![0u8; 4096];
    let drain = |buf: &mut [u8]| {
        let mut texts = Vec::new();
        while let Ok(n) = manager.recv(buf) {
            texts.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        texts
    };
    drain(&mut buf);
    let mut other = session(&mut service, OTHER);
    let reply = service.handle(&mut other, Request::Import { key: "once".into() }, None);
    assert!(matches!(reply.response, Response::Imported { .. }));
    assert!(service.registry.publication("once").is_none(), "consumed");
    let sent = drain(&mut buf);
    let _ = std::fs::remove_dir_all(&dir);
    let state = format!("FDNAME={}", crate::persist::STATE_NAME);
    assert!(
        sent.iter().any(|t| t.contains("FDSTORE=1") && t.contains(&state)),
        "no state saved before the reply: {sent:?}"
    );
}

/// A client whose cgroup cannot be read (here: no pidfd) under a policy with
/// `[[cgroup]]` rules is refused allocating and publishing with the reason,
/// and may still import; `cgroup_unknown = "allow"` serves it by its uid;
/// a version-4 Stats reply says why its cgroup is unknown.
#[test]
fn an_unknown_cgroup_is_refused_by_default_once_cgroup_rules_exist() {
    let rules = format!("[[user]]\nuid = {OTHER}\npublish = true\nheaps = [\"memfd\"]\nmax_bytes = \"1MiB\"\nmax_buffers = 4\n[[cgroup]]\npath = \"app-*.scope\"\nmax_bytes = 4096\n");
    for (prefix, refused) in [("", true), ("cgroup_unknown = \"allow\"\n", false)] {
        let policy = Policy::parse(&format!("{prefix}{rules}"), OWNER).unwrap();
        let mut service = Service::new(policy, Heaps::discover(), None, SweepTiming::default());
        let mut s = session(&mut service, OTHER);
        let alloc = AllocateRequest { heap: "memfd".into(), len: 8192, align: 1, contiguous: false, name: None };
        match (service.handle(&mut s, Request::Allocate(alloc), None).response, refused) {
            (Response::Error { code: ErrorCode::NotAllowed, message }, true) => {
                assert!(message.contains("cgroup_unknown") && message.contains("no pidfd"), "{message}");
            }
            (Response::WithProperties { .. } | Response::Allocated { .. }, false) => {}
            (other, _) => panic!("cgroup_unknown refused={refused}: {other:?}"),
        }
        if refused {
            let fd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
            match publish(&mut service, &mut s, "p", Vec::new(), fd) {
                Response::Error { code: ErrorCode::NotAllowed, message } => {
                    assert!(message.contains("cgroup_unknown"), "{message}");
                }
                other => panic!("publishing from an unknown cgroup: {other:?}"),
            }
        }
        let mut v4 = Session::new(
            Peer { uid: OTHER, gid: OTHER, pid: std::process::id(), groups: vec![OTHER], pidfd: None },
            &service.policy,
        );
        service.handle(&mut v4, Request::Hello { min_version: 1, max_version: 4 }, None);
        let Response::StatsWithCgroup { cgroup, .. } = service.handle(&mut v4, Request::Stats, None).response else {
            panic!("a version-4 session gets StatsWithCgroup")
        };
        assert_eq!((cgroup.path, cgroup.refused), (None, refused));
        assert!(cgroup.unknown.unwrap().contains("no pidfd"));
    }
}
