//! `dmabroker serve` with real dma-bufs, driven by the CLI verbs (the test
//! VM: `vm/run.sh --file <this crate's binary>` puts the binary where
//! `CARGO_BIN_EXE_dmabroker` points): `alloc --broker --heap dma-heap/system
//! --publish`, `import` as another uid, `ps --json` showing the dma-buf with
//! its exporter and holders, then its release once nobody holds it. On a
//! host each test prints `SKIP <test>: <reason>` and passes, unless
//! `DMABROKER_VM=1` (set inside the VM), where it runs and must pass.

use dmabroker::client::Client;
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

mod common;

use common::broker::{text, Daemon, NOBODY};

/// Whether this run is inside the test VM.
fn in_vm() -> bool {
    std::env::var("DMABROKER_VM").as_deref() == Ok("1")
}

/// Only in the VM (the host's broker tests are broker_cli.rs); there,
/// every device must be present.
fn can_run(test: &str, devices: &[&str]) -> bool {
    if !in_vm() {
        let _ =
            writeln!(std::io::stderr().lock(), "SKIP {test}: runs in the test VM only (vm/run.sh sets DMABROKER_VM=1)");
        return false;
    }
    for d in devices {
        assert!(Path::new(d).exists(), "{test}: needed in the VM but unavailable: {d}");
    }
    assert!(rustix::process::geteuid().is_root(), "{test}: the VM runs tests as root");
    true
}

/// Stdout as JSON; panics unless the command succeeded.
fn json(o: &Output, what: &str) -> Value {
    assert!(o.status.success(), "{what} failed ({}): {}", o.status, text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", text(o)))
}

/// The buffer with this inode in `dmabroker ps --json`, if listed.
fn ps_buffer(d: &Daemon, inode: u64) -> Option<Value> {
    let ps = json(&d.cli(&["ps", "--json"]), "ps --json");
    ps["buffers"]
        .as_array()
        .unwrap_or_else(|| panic!("no buffers in {ps}"))
        .iter()
        .find(|b| b["inode"] == inode)
        .cloned()
}

/// `ps_buffer` once the buffer's file count has settled at `count` (or after
/// 5 s): the broker may hold the dup it sent for a moment after the
/// receiver has it.
fn ps_buffer_settled(d: &Daemon, inode: u64, count: u64) -> Option<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let b = ps_buffer(d, inode);
        let settled = b.as_ref().is_some_and(|b| b["file_count"] == count);
        if settled || std::time::Instant::now() >= deadline {
            return b;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn holder_pids(b: &Value) -> Vec<u64> {
    b["holders"].as_array().unwrap().iter().map(|h| h["pid"].as_u64().unwrap()).collect()
}

/// Publish from one heap through the CLI, import as nobody, see it in `ps`.
fn publish_import_ps(test: &str, heap: &str, device: &str, exporter: &str, publish: &[&str]) {
    if !can_run(test, &["/dev/dma_heap/system", device]) {
        return;
    }
    let d = Daemon::start("dmabroker-vmcli", test, &[], Duration::from_secs(60));
    let broker_pid = u64::from(d.child.id());
    let allow = format!("uid={NOBODY}:rw");
    let mut args = vec!["alloc", "--broker", "--heap", heap, "--size", "1MiB"];
    args.extend_from_slice(publish);
    args.extend_from_slice(&["--allow", &allow, "--json"]);
    let v = json(&d.cli(&args), "alloc --broker");
    let key = v["published"].as_str().unwrap_or_else(|| panic!("not published: {v}")).to_owned();
    assert_eq!(v["buffer"]["len"], 1 << 20, "{v}");
    assert_eq!(v["buffer"]["kind"], "dma-buf", "{v}");
    let inode = v["buffer"]["inode"].as_u64().unwrap();

    // The publisher exited: the broker alone holds it now.
    let b = ps_buffer_settled(&d, inode, 1).unwrap_or_else(|| panic!("ps does not list inode {inode}"));
    assert_eq!(
        (b["kind"].as_str(), b["exporter"].as_str(), b["size"].as_u64()),
        (Some("dma-buf"), Some(exporter), Some(1 << 20)),
        "{b}"
    );
    assert_eq!(holder_pids(&b), [broker_pid], "{b}");
    assert_eq!(b["file_count"], 1, "{b}");

    // Read-only grants are refused for dma-bufs.
    let ro = format!("uid={NOBODY}:ro");
    let o = d.cli(&["alloc", "--broker", "--heap", heap, "--size", "64K", "--publish", "ro", "--allow", &ro]);
    assert!(!o.status.success() && text(&o).contains("read-only grants are refused for dma-bufs"), "{}", text(&o));

    // Another uid imports it and may map it writable.
    let v = json(&d.cli_as(NOBODY, &["import", &key, "--check-write", "--json"]), "import as nobody");
    assert_eq!((v["access"].as_str(), v["publisher_uid"].as_u64()), (Some("rw"), Some(0)), "{v}");
    assert_eq!((v["buffer"]["kind"].as_str(), v["buffer"]["inode"].as_u64()), (Some("dma-buf"), Some(inode)), "{v}");
    assert_eq!((v["buffer"]["heap"].as_str(), v["buffer"]["len"].as_u64()), (Some(heap), Some(1 << 20)), "{v}");
    assert_eq!(v["writable_mapping"], "allowed", "{v}");
    let o = d.cli_as(NOBODY, &["alloc", "--broker", "--heap", heap, "--size", "4K"]);
    assert!(!o.status.success() && text(&o).contains("may not allocate"), "{}", text(&o));

    // A second holder (this process) shows up in ps next to the broker.
    let mine = Client::connect(&d.socket).unwrap().import(&key).unwrap();
    let b = ps_buffer_settled(&d, inode, 2).unwrap();
    let mut pids = holder_pids(&b);
    pids.sort_unstable();
    let mut want = vec![broker_pid, u64::from(std::process::id())];
    want.sort_unstable();
    assert_eq!(pids, want, "{b}");
    assert_eq!(b["file_count"], 2, "{b}");
    let broker = b["holders"].as_array().unwrap().iter().find(|h| h["pid"] == broker_pid).unwrap();
    assert_eq!((broker["comm"].as_str(), broker["uid"].as_u64()), (Some("dmabroker"), Some(0)), "{b}");

    // Withdrawn and closed everywhere: the broker lets go of it.
    let o = d.cli(&["unpublish", &key]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(ps_buffer(&d, inode).is_some(), "released while this process still holds it");
    drop(mine);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ps_buffer(&d, inode).is_some() {
        assert!(Instant::now() < deadline, "the broker kept a dma-buf nobody else holds");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn broker_cli_dma_heap_system_publish_import_ps() {
    publish_import_ps(
        "broker_cli_dma_heap_system_publish_import_ps",
        "dma-heap/system",
        "/dev/dma_heap/system",
        "system",
        &["--publish", "frame"],
    );
}

#[test]
fn broker_cli_udmabuf_token_import_ps() {
    publish_import_ps("broker_cli_udmabuf_token_import_ps", "udmabuf", "/dev/udmabuf", "udmabuf", &["--token"]);
}
