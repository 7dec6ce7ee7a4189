//! `dmabroker top` run as a separate process, as a user runs it: the
//! buffers this test process holds appear in its process, user and cgroup
//! rows, in the `--json` stream (one object per refresh) and on screen.

use dmabroker::{AllocRequest, Heaps};
use std::process::Command;

fn dmabroker(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dmabroker")).args(args).output().expect("run dmabroker")
}

#[test]
fn top_json_streams_one_refresh_per_line_with_our_buffers() {
    let me = u64::from(std::process::id());
    let buffer =
        Heaps::discover().allocate("memfd", &AllocRequest::new(3 << 20).name("cli-toptest")).expect("memfd allocation");
    let _map = buffer.map_read_write().unwrap();
    let out = dmabroker(&["top", "--json", "--iterations", "3", "--interval-ms", "50", "--sort", "pid"]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let frames: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert_eq!(frames.len(), 3, "{text}");
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f["iteration"], (i + 1) as u64);
        let p = f["processes"].as_array().unwrap().iter().find(|p| p["id"] == me).expect("our process is listed");
        assert!(p["bytes"].as_u64().unwrap() >= 3 << 20, "{p}");
        assert!(p["buffers"].as_u64().unwrap() >= 1);
        let cgroup = p["cgroup"].as_str().expect("our cgroup");
        let c = f["cgroups"].as_array().unwrap().iter().find(|c| c["name"] == cgroup).expect("our cgroup's row");
        assert!(c["bytes"].as_u64().unwrap() >= 3 << 20, "{c}");
        assert!(f["users"].as_array().unwrap().iter().any(|u| u["bytes"].as_u64().unwrap() >= 3 << 20));
        assert!(f["total_bytes"].as_u64().unwrap() >= 3 << 20);
        // Either a leak count, or the reason there is none.
        assert!(f["leaks"].is_u64() || f["ledger_note"].is_string(), "{f}");
        let ids: Vec<u64> = f["processes"].as_array().unwrap().iter().map(|p| p["id"].as_u64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] <= w[1]), "--sort pid: {ids:?}");
    }
}

#[test]
fn top_once_prints_the_tables_with_totals() {
    let buffer = Heaps::discover()
        .allocate("memfd", &AllocRequest::new(1 << 20).name("cli-topscreen"))
        .expect("memfd allocation");
    let out = dmabroker(&["top", "--once"]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for heading in ["dmabroker top:", "PROCESSES", "USERS", "CGROUPS", "sorted by bytes"] {
        assert!(text.contains(heading), "no {heading:?} in:\n{text}");
    }
    assert!(text.contains(&std::process::id().to_string()), "our pid is not listed:\n{text}");
    drop(buffer);
}

#[test]
fn top_refuses_bad_arguments_with_the_reason() {
    let out = dmabroker(&["top", "--interval-ms", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("interval-ms"));
    let out = dmabroker(&["top", "--once", "--iterations", "2"]);
    assert_eq!(out.status.code(), Some(2));
}
