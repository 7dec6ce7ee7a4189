//! `dmabroker serve` as a separate process, driven by the CLI verbs (some
//! run as another uid) and by hostile clients.

use dmabroker::client::Client;
use dmabroker::proto::{self, wire};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::broker::{bin, text, Daemon, NOBODY};

/// A broker for one test, given 20 s to start.
fn daemon(name: &str, extra: &[&str]) -> Daemon {
    Daemon::start("dmabroker-cli", name, extra, Duration::from_secs(20))
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn raw_connect(path: &Path) -> OwnedFd {
    let s = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap();
    rustix::net::connect(&s, &SocketAddrUnix::new(path).unwrap()).unwrap();
    s
}

fn hello(s: &OwnedFd) {
    let bytes = proto::encode_request(&proto::Request::Hello { min_version: 1, max_version: 1 }).unwrap();
    wire::send(s.as_fd(), &bytes, None, false).unwrap();
    let mut buf = vec![0; proto::MAX_RESPONSE_LEN];
    wire::recv(s.as_fd(), &mut buf, false).unwrap().unwrap();
}

/// The reply to whatever was sent, then the connection must end.
fn expect_error_then_close(s: &OwnedFd) -> String {
    let mut buf = vec![0; proto::MAX_RESPONSE_LEN];
    let r = wire::recv(s.as_fd(), &mut buf, false).unwrap().expect("an error reply");
    let response = proto::decode_response(&buf[..r.len]).unwrap();
    let proto::Response::Error { code, message } = response else { panic!("expected an error, got {response:?}") };
    assert_eq!(code, proto::ErrorCode::BadRequest);
    assert!(wire::recv(s.as_fd(), &mut buf, false).unwrap().is_none(), "session should end");
    message
}

#[test]
fn broker_cli_alloc_publish_import_unpublish() {
    let d = daemon("verbs", &[]);
    let o = d.cli(&[
        "alloc",
        "--heap",
        "memfd",
        "--size",
        "1MiB",
        "--publish",
        "frames",
        "--allow",
        &format!("uid={NOBODY}:ro"),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["published"], "frames");
    assert_eq!(v["buffer"]["len"], 1 << 20);
    // The publisher exited; the broker keeps the buffer.
    let o = d.cli(&["import", "frames", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["access"].as_str(), v["buffer"]["kind"].as_str()), (Some("rw"), Some("memfd")));
    let o = d.cli(&["alloc", "--size", "4K", "--token"]);
    assert!(o.status.success() && text(&o).contains("published as @"), "{}", text(&o));
    let o = d.cli(&["import", "--list"]);
    assert!(text(&o).contains("frames"), "{}", text(&o));
    // Stats: the published buffers are charged to this user, within its quota.
    let o = d.cli(&["stats", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["used_buffers"].as_u64().unwrap() >= 2, "{v}");
    assert!(v["used_bytes"].as_u64().unwrap() >= (1 << 20) + 4096, "{v}");
    assert!(v["publications"].as_u64().unwrap() >= 2, "{v}");
    assert!(v["max_bytes"].as_u64().unwrap() >= v["used_bytes"].as_u64().unwrap(), "{v}");
    assert!(["on", "off", "absent"].contains(&v["dma_heap_mem_accounting"].as_str().unwrap_or("")), "{v}");
    let o = d.cli(&["stats"]);
    assert!(o.status.success() && text(&o).contains("publication(s)"), "{}", text(&o));
    assert!(text(&o).contains("\ncharging: dma-heap memory is charged to"), "{}", text(&o));
    let o = d.cli(&["unpublish", "frames"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = d.cli(&["import", "frames"]);
    assert!(!o.status.success() && text(&o).contains("nothing published as `frames`"), "{}", text(&o));
    // In-process alloc is unchanged.
    let o = d.cli(&["alloc", "--heap", "memfd", "--size", "4K", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new(bin()).args(["import", "x", "--socket", "/nonexistent/b.sock"]).output().unwrap();
    assert!(!o.status.success() && text(&o).contains("no broker at /nonexistent/b.sock"), "{}", text(&o));
}

#[test]
fn broker_cross_user_denied_and_allowed() {
    if !is_root() {
        common::skip("broker_cross_user_denied_and_allowed", &format!("needs root to run a client as uid {NOBODY}"));
        return;
    }
    let d = daemon("users", &[]);
    assert!(d.cli(&["alloc", "--size", "8K", "--publish", "mine"]).status.success());
    assert!(d
        .cli(&["alloc", "--size", "8K", "--publish", "theirs", "--allow", &format!("uid={NOBODY}:ro")])
        .status
        .success());
    let o = d.cli_as(NOBODY, &["import", "mine"]);
    assert!(!o.status.success() && text(&o).contains("not granted to uid 65534"), "{}", text(&o));
    let o = d.cli_as(NOBODY, &["import", "theirs", "--check-write", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["access"], "ro");
    assert!(v["writable_mapping"].as_str().unwrap().starts_with("refused"), "{v}");
    let o = d.cli_as(NOBODY, &["alloc", "--broker", "--size", "4K"]);
    assert!(!o.status.success() && text(&o).contains("may not allocate"), "{}", text(&o));
    let o = d.cli_as(NOBODY, &["unpublish", "theirs"]);
    assert!(!o.status.success() && text(&o).contains("may withdraw it"), "{}", text(&o));

    // A policy file can let that user allocate.
    let policy = d.dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!("[[user]]\nuid = {NOBODY}\nheaps = [\"memfd\"]\nmax_bytes = \"1MiB\"\nmax_buffers = 4\n"),
    )
    .unwrap();
    let p = daemon("users-policy", &["--policy", policy.to_str().unwrap()]);
    let o = p.cli_as(NOBODY, &["alloc", "--broker", "--size", "4K"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = p.cli_as(NOBODY, &["alloc", "--broker", "--size", "2M"]);
    assert!(!o.status.success() && text(&o).contains("quota"), "{}", text(&o));
}

#[test]
fn broker_survives_hostile_clients() {
    let mut d = daemon("hostile", &[]);
    // Baseline with one idle client connected (it has been seen by now).
    let idle = Client::connect(&d.socket).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let baseline = d.fd_count();

    // Garbage, oversized and truncated-looking messages; data before hello.
    let s = raw_connect(&d.socket);
    wire::send(s.as_fd(), &[0xff; 64], None, false).unwrap();
    assert!(expect_error_then_close(&s).contains("malformed"));
    let s = raw_connect(&d.socket);
    wire::send(s.as_fd(), &vec![0u8; proto::MAX_REQUEST_LEN + 100], None, false).unwrap();
    assert!(expect_error_then_close(&s).contains("longer than"));
    let s = raw_connect(&d.socket);
    let stats = proto::encode_request(&proto::Request::Stats).unwrap();
    wire::send(s.as_fd(), &stats, None, false).unwrap();
    assert!(expect_error_then_close(&s).contains("Hello"));
    // An empty datagram gets its error too (not a silent close).
    let s = raw_connect(&d.socket);
    hello(&s);
    wire::send(s.as_fd(), &[], None, false).unwrap();
    assert!(expect_error_then_close(&s).contains("empty datagram"));
    let s = raw_connect(&d.socket);
    hello(&s);
    let valid = proto::encode_request(&proto::Request::Import { key: "abc".into() }).unwrap();
    wire::send(s.as_fd(), &valid[..valid.len() - 1], None, false).unwrap();
    expect_error_then_close(&s);

    // fd floods: an fd where none is expected; more fds than allowed.
    let s = raw_connect(&d.socket);
    hello(&s);
    let memfd = rustix::fs::memfd_create("flood", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    wire::send(s.as_fd(), &stats, Some(memfd.as_fd()), false).unwrap();
    assert!(expect_error_then_close(&s).contains("takes no fd"));
    let s = raw_connect(&d.socket);
    hello(&s);
    let fds: Vec<_> = (0..200).map(|_| memfd.as_fd()).collect();
    let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(200))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(&s, &[std::io::IoSlice::new(&stats)], &mut control, rustix::net::SendFlags::empty()).unwrap();
    assert!(expect_error_then_close(&s).contains("fd per message"));
    drop(memfd);

    // 10,000 rapid connects and disconnects, half of them mid-hello.
    for i in 0..10_000 {
        let s = raw_connect(&d.socket);
        if i % 2 == 0 {
            let hello = proto::encode_request(&proto::Request::Hello { min_version: 1, max_version: 1 }).unwrap();
            let _ = wire::send(s.as_fd(), &hello, None, false);
        }
    }

    // A client that sends requests and never reads the replies.
    let s = raw_connect(&d.socket);
    hello(&s);
    rustix::io::ioctl_fionbio(&s, true).unwrap();
    let mut sent = 0;
    while sent < 100_000 && wire::send(s.as_fd(), &stats, None, true).is_ok() {
        sent += 1;
    }
    // Others are served meanwhile.
    let mut c = Client::connect(&d.socket).unwrap();
    c.stats().unwrap();
    let b = c.allocate("memfd", 4096, None).unwrap();
    drop((b, c, s));
    assert!(d.alive(), "the broker died");

    // Everything it opened for those clients is closed again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = d.fd_count();
        if now <= baseline {
            break;
        }
        assert!(Instant::now() < deadline, "fd count {now} did not return to baseline {baseline}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(idle);
}

#[test]
fn broker_serves_thousands_of_connected_clients() {
    let mut d = daemon("many", &[]);
    let mut clients: Vec<Client> = (0..2000).map(|_| Client::connect(&d.socket).unwrap()).collect();
    for c in clients.iter_mut().step_by(7) {
        let b = c.allocate("memfd", 4096, None).unwrap();
        assert_eq!(b.len(), 4096);
    }
    let stats = clients[0].stats().unwrap();
    assert_eq!(stats.clients, 2000);
    drop(clients);
    assert!(d.alive());
}

/// A client process whose only remaining holder of a memfd is a thread with
/// a file descriptor table of its own (`unshare(CLONE_FILES)`, then the main
/// thread closed its fd): the broker, another process, must find it in
/// `/proc/PID/task/TID/fd` and keep it charged, so the quota holds.
#[test]
fn broker_keeps_charging_a_memfd_held_by_a_threads_own_fd_table() {
    let uid = rustix::process::getuid().as_raw();
    let policy = std::env::temp_dir().join(format!("dmabroker-cli-own-table-{}.toml", std::process::id()));
    std::fs::write(
        &policy,
        format!("[[user]]\nuid = {uid}\nheaps = [\"memfd\"]\nmax_bytes = \"1MiB\"\nmax_buffers = 1\n"),
    )
    .unwrap();
    let d = daemon("own-table", &["--policy", policy.to_str().unwrap()]);
    let _ = std::fs::remove_file(&policy);
    let mut c = Client::connect(&d.socket).unwrap();
    let b = c.allocate("memfd", 4096, None).unwrap();
    let holder = match dmabroker_sys::kcmp::OwnTableHolder::hold(b.try_clone_fd().unwrap()) {
        Ok(h) => h,
        Err(e) => {
            common::skip("broker_keeps_charging_a_memfd_held_by_a_threads_own_fd_table", &format!("unshare: {e}"));
            return;
        }
    };
    drop(b);
    let inode_held_by_thread = std::fs::read_dir(format!("/proc/self/task/{}/fd", holder.tid()))
        .unwrap()
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:dmabroker")));
    assert!(inode_held_by_thread, "the thread holds the memfd");
    std::thread::sleep(Duration::from_millis(600)); // several sweeps (every 100 ms)
    let e = c.allocate("memfd", 4096, None).unwrap_err();
    assert!(e.to_string().contains("quota"), "the quota escaped through a thread's own fd table: {e}");
    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.allocate("memfd", 4096, None).is_err() {
        assert!(Instant::now() < deadline, "the charge did not end once the thread let go");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `serve --socket PATH` never removes what is at PATH unless it is a
/// stale socket; and a broker without XDG_RUNTIME_DIR needs --socket.
#[test]
fn serve_refuses_a_path_that_is_not_a_stale_socket() {
    let dir = std::env::temp_dir().join(format!("dmabroker-cli-serve-path-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("precious.txt");
    std::fs::write(&file, b"keep me").unwrap();
    let o = output_within(Command::new(bin()).args(["serve", "--socket"]).arg(&file).env_remove("NOTIFY_SOCKET"));
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("is a regular file, not a socket"), "{}", text(&o));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me", "serve removed a regular file");

    // No XDG_RUNTIME_DIR, not root, no --socket: an error, not /tmp.
    let mut cmd = Command::new(bin());
    cmd.arg("serve").env_remove("XDG_RUNTIME_DIR").env_remove("NOTIFY_SOCKET").env_remove("LISTEN_FDS");
    if is_root() {
        use std::os::unix::process::CommandExt;
        cmd.uid(NOBODY).gid(NOBODY).current_dir("/");
    }
    let o = output_within(&mut cmd);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("XDG_RUNTIME_DIR") && text(&o).contains("--socket"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Run a command that must exit by itself (a `serve` that should refuse to
/// start); killed after 20 s so that a regression fails instead of hanging.
fn output_within(cmd: &mut Command) -> std::process::Output {
    use std::process::Stdio;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("still running after 20 s: {}", text(&o));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `alloc --broker` with device options: constraints merged here, the heap
/// chosen by the broker, the same kind of report as in-process.
#[test]
fn broker_cli_alloc_by_constraints() {
    let d = daemon("alloc-for", &[]);
    // An `…M` format: one buffer per plane, each through the broker.
    let o = d.cli(&["alloc", "--broker", "--format", "NV12M", "--size", "64x48", "--stride-align", "64", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["via"], "broker");
    assert_eq!(v["layout"]["planes"].as_array().unwrap().len(), 2, "{v}");
    let buffers = v["buffers"].as_array().unwrap();
    assert_eq!(buffers.len(), 2, "{v}");
    for (i, b) in buffers.iter().enumerate() {
        assert_eq!(b["index"], i);
        assert_eq!(b["heap"], "memfd", "{v}");
        assert_eq!(b["planes"][0], i);
        assert!(b["choice"]["reasons"].as_array().is_some_and(|r| !r.is_empty()), "{v}");
    }
    // Human report: constraints, layout, heap and why; then publish it.
    let o = d.cli(&["alloc", "--broker", "--format", "NV12", "--size", "64x48", "--align", "4K", "--publish", "nv12"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for says in [
        "command line needs a start aligned to 4 KiB",
        "layout: NV12 64x48",
        "heap: memfd",
        "chosen by the broker",
        "  because ",
        "through the broker as a memfd",
        "published as nv12",
    ] {
        assert!(t.contains(says), "`{says}` in:\n{t}");
    }
    let o = d.cli(&["import", "nv12", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    // What no heap meets: the broker's explanation, requirement by requirement.
    let o = d.cli(&["alloc", "--broker", "--size", "64K", "--align", "64K"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("command line needs a start aligned to 64 KiB") && t.contains("memfd: aligns only to 4 KiB"),
        "{t}"
    );
    // A bad value never leaves this process.
    let o = d.cli(&["alloc", "--broker", "--size", "64K", "--max-address", "0x12345"]);
    assert!(!o.status.success() && text(&o).contains("--max-address"), "{}", text(&o));
}

/// A broker in a child pid namespace sees its clients outside with pid 0 in
/// `SO_PEERCRED`: it serves them by uid and groups, without a pidfd.
#[test]
fn broker_in_a_child_pid_namespace_serves_clients_outside() {
    if !is_root() {
        common::skip("broker_in_a_child_pid_namespace_serves_clients_outside", "needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("dmabroker-cli-pidns-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("b.sock");
    let Ok(mut child) = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", bin(), "serve", "--socket"])
        .arg(&socket)
        .env_remove("NOTIFY_SOCKET")
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        common::skip_for_tool(
            "broker_in_a_child_pid_namespace_serves_clients_outside",
            "unshare(1)",
            "to start the broker in a new pid namespace",
        );
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = loop {
        if let Ok(c) = Client::connect(&socket) {
            break Some(c);
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let allocated = client.as_mut().map(|c| c.allocate("memfd", 4096, None).map(|b| b.len()));
    let listening = socket.exists();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    match allocated {
        None => {
            assert!(!listening, "the broker listens but does not serve a client outside its pid namespace");
            common::skip("broker_in_a_child_pid_namespace_serves_clients_outside", "no pid namespace here");
        }
        Some(r) => assert_eq!(r.unwrap(), 4096),
    }
}
