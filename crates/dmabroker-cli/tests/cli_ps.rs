//! `dmabroker ps` run as a separate process: it must see the buffers this
//! test process holds.

use dmabroker::{AllocRequest, Heaps};
use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;
use std::time::Duration;

mod common;

fn dmabroker(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dmabroker")).args(args).output().expect("run dmabroker")
}

#[test]
fn ps_json_sees_our_buffers() {
    let me = std::process::id();
    let buffer =
        Heaps::discover().allocate("memfd", &AllocRequest::new(1 << 20).name("cli-pstest")).expect("memfd allocation");
    let _map = buffer.map_read_write().unwrap();
    let out = dmabroker(&["ps", "--json", "--pid", &me.to_string()]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");

    let b = v["buffers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["inode"] == buffer.inode() && b["kind"] == "memfd")
        .expect("our buffer is listed");
    assert_eq!(b["size"], 1 << 20);
    assert_eq!(b["name"], "dmabroker:cli-pstest");
    assert_eq!(b["dmabroker"], true);
    let holder = b["holders"].as_array().unwrap().iter().find(|h| h["pid"] == me).expect("we hold it");
    assert_eq!(holder["fds"], serde_json::json!([buffer.as_fd().as_raw_fd()]));
    assert_eq!(holder["mappings"], 1);

    let procs = v["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 1, "--pid filters processes");
    assert_eq!(procs[0]["pid"], me);
    assert!(procs[0]["bytes"].as_u64().unwrap() >= 1 << 20);
    assert!(v["users"].as_array().unwrap().len() == 1);
    assert!(v["totals"]["bytes"].as_u64().unwrap() >= 1 << 20);
    assert!(v["unreadable_processes"].is_u64());
}

#[test]
fn ps_tables_and_user_filter() {
    let me = std::process::id();
    let buffer =
        Heaps::discover().allocate("memfd", &AllocRequest::new(2 << 20).name("cli-pstable")).expect("memfd allocation");
    let uid = rustix::process::geteuid().as_raw().to_string();
    let out = dmabroker(&["ps", "--user", &uid]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for section in ["BUFFERS", "PROCESSES", "USERS", "TOTAL"] {
        assert!(text.contains(section), "no {section} in:\n{text}");
    }
    let line = text.lines().find(|l| l.contains("dmabroker:cli-pstable")).expect("our buffer has a row");
    assert!(line.contains("2 MiB") && line.contains(&buffer.inode().to_string()), "{line}");
    assert!(line.contains(&format!("{me}:")), "holder column names us: {line}");

    // A user name resolves through /etc/passwd; an unknown one is an error.
    if let Ok(passwd) = std::fs::read_to_string("/etc/passwd") {
        if let Some(name) =
            passwd.lines().find(|l| l.split(':').nth(2) == Some(uid.as_str())).and_then(|l| l.split(':').next())
        {
            let out = dmabroker(&["ps", "--json", "--user", name]);
            assert!(out.status.success());
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(v["processes"].as_array().unwrap().iter().any(|p| p["pid"] == me));
        }
    }
    let out = dmabroker(&["ps", "--user", "no-such-user-dmabroker"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-user-dmabroker"));
}

/// A buffer held only in the fd table of a thread that unshared its files
/// (the main thread closed its fd) is still listed as held by this process.
#[test]
fn ps_sees_a_buffer_held_only_by_a_threads_own_fd_table() {
    let me = std::process::id();
    let buffer = Heaps::discover()
        .allocate("memfd", &AllocRequest::new(1 << 20).name("cli-psthread"))
        .expect("memfd allocation");
    let inode = buffer.inode();
    let holder = match dmabroker_sys::kcmp::OwnTableHolder::hold(buffer.try_clone_fd().unwrap()) {
        Ok(h) => h,
        Err(e) => {
            common::skip("ps_sees_a_buffer_held_only_by_a_threads_own_fd_table", &format!("unshare: {e}"));
            return;
        }
    };
    drop(buffer);
    let out = dmabroker(&["ps", "--json", "--pid", &me.to_string()]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let b = v["buffers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["inode"] == inode)
        .unwrap_or_else(|| panic!("the buffer held by thread {} is not listed: {v}", holder.tid()));
    assert_eq!(b["name"], "dmabroker:cli-psthread");
    let h = b["holders"].as_array().unwrap().iter().find(|h| h["pid"] == me).expect("we hold it");
    // The thread's table is a copy of the process's at unshare time: it
    // holds the buffer's fd and its clone.
    assert!(h["fds"].as_array().is_some_and(|fds| !fds.is_empty()), "{h}");
    drop(holder);
}

/// A published memfd the broker adopted keeps its own name (not
/// `dmabroker:*`); the broker holds it, so it is a dmabroker buffer and
/// `ps` lists it.
#[test]
fn ps_lists_memfds_the_broker_adopted() {
    let daemon = common::broker::Daemon::start("dmabroker-cli-ps", "adopted", &[], Duration::from_secs(20));
    let flags = rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING;
    let memfd = rustix::fs::memfd_create("wayland-shm", flags).unwrap();
    rustix::fs::ftruncate(&memfd, 64 << 10).unwrap();
    rustix::fs::fcntl_add_seals(&memfd, rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW).unwrap();
    let inode = rustix::fs::fstat(&memfd).unwrap().st_ino;
    let mut client = dmabroker::client::Client::connect(&daemon.socket).unwrap();
    client.publish(&memfd, dmabroker::client::PublishOptions::named("ps-adopted")).unwrap();
    drop(memfd);
    let out = dmabroker(&["ps", "--json"]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let b = v["buffers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["inode"] == inode)
        .unwrap_or_else(|| panic!("the adopted memfd is listed: {v}"));
    assert_eq!(b["dmabroker"], true);
    assert_eq!(b["name"], "wayland-shm");
    assert!(b["holders"].as_array().unwrap().iter().any(|h| h["pid"] == daemon.child.id()), "{b}");
}

#[test]
fn ps_for_a_process_that_does_not_exist_fails() {
    let out = dmabroker(&["ps", "--pid", "999999999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such process"), "{out:?}");
}
