//! Smoke tests of every `dmabroker bench`: tiny iteration counts, the table
//! and the `--json` report each parse, the floors are there. No timing is
//! asserted (the machines are shared and noisy; docs/BENCHMARKS.md holds the
//! measured figures).

use std::process::{Command, Output};

fn dmabroker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmabroker")).args(args).output().expect("running dmabroker")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The report's rows (`--json` prints one object on one line).
fn rows(out: &Output) -> Vec<serde_json::Value> {
    let text = ok(out);
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON report");
    v["rows"].as_array().expect("rows").clone()
}

fn key_of(rows: &[serde_json::Value], key: &str) -> serde_json::Value {
    rows.iter().find(|r| r["key"] == key).unwrap_or_else(|| panic!("no row {key} in {rows:?}")).clone()
}

const POOL: &[&str] = &[
    "bench",
    "pool",
    "--sizes",
    "4K",
    "--latency-frames",
    "20",
    "--gap-us",
    "100",
    "--seconds",
    "0.01",
    "--rounds",
    "1",
];

#[test]
fn bench_pool_measures_its_floors() {
    let table = ok(&dmabroker(POOL));
    for label in ["pool, blocking consumer", "floor: bare futex wake", "floor: bare eventfd", "copy through Unix"] {
        assert!(table.contains(label), "{label} missing:\n{table}");
    }
    let rows = rows(&dmabroker(&[POOL, &["--json"]].concat()));
    let blocking = key_of(&rows, "pool/blocking/4 KiB");
    assert_eq!(blocking["floor"], "pool/futex/4 KiB");
    assert!(blocking["ratio"]["median"].as_f64().is_some(), "{blocking}");
    assert!(key_of(&rows, "pool/futex/4 KiB")["value"]["median"].as_f64().unwrap() > 0.0);
    key_of(&rows, "pool/eventfd/4 KiB");
    assert_eq!(key_of(&rows, "pool/polling/4 KiB")["floor"], "pool/spin/4 KiB");
}

#[test]
fn bench_broker_measures_the_fd_round_trip_floor() {
    let args = [
        "bench",
        "broker",
        "--sizes",
        "4K",
        "--iterations",
        "20",
        "--rounds",
        "1",
        "--clients",
        "1",
        "--seconds",
        "0.05",
        "--live",
        "10",
    ];
    let table = ok(&dmabroker(&args));
    assert!(table.contains("bare SCM_RIGHTS round trip"), "{table}");
    assert!(table.contains("live buffers in the broker"), "{table}");
    let rows = rows(&dmabroker(&[&args[..], &["--json"]].concat()));
    let through = key_of(&rows, "broker/through-broker/4 KiB");
    assert_eq!(through["floor"], "broker/fd-round-trip/4 KiB");
    assert!(key_of(&rows, "broker/fd-round-trip/4 KiB")["value"]["median"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_sync_quick_compares_guards_with_the_bare_instructions() {
    let table = ok(&dmabroker(&["bench", "sync", "--quick", "--heaps", "memfd"]));
    assert!(table.contains("dmabroker guard"), "{table}");
    assert!(table.contains("Ranged maintenance against a whole-cache equivalent"), "{table}");
    let rows = rows(&dmabroker(&["bench", "sync", "--quick", "--heaps", "memfd", "--json"]));
    for pattern in ["write-once", "read-once", "read-many", "partial-read"] {
        let guard = key_of(&rows, &format!("sync/memfd/{pattern}/guard/4 KiB"));
        if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            assert_eq!(guard["floor"], format!("sync/memfd/{pattern}/bare/4 KiB"));
        }
        key_of(&rows, &format!("sync/memfd/{pattern}/access/64 KiB"));
    }
}

#[test]
fn bench_alloc_json_and_compare() {
    let dir = std::env::temp_dir().join(format!("dmabroker-cli-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for i in 0..2 {
        let out = dmabroker(&["bench", "alloc", "--heaps", "memfd", "--sizes", "4K", "--scale", "0.01", "--json"]);
        let text = ok(&out);
        let rows: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(rows["rows"][1]["floor"], "alloc/memfd/4 KiB/raw", "{rows}");
        let f = dir.join(format!("{i}.json"));
        std::fs::write(&f, text).unwrap();
        files.push(f.display().to_string());
    }
    let table = ok(&dmabroker(&["bench", "compare", "--a", &files[0], "--b", &files[1]]));
    assert!(table.contains("| alloc/memfd/4 KiB/dmabroker | p50_ns |"), "{table}");
    // Unpaired runs are refused with the reason.
    let out = dmabroker(&["bench", "compare", "--a", &files.join(","), "--b", &files[1]]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("paired"), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_ledger_needs_a_dma_heap_and_says_so() {
    if std::path::Path::new("/dev/dma_heap/system").exists() {
        // Runs for real in the VM: vm_bench_ledger.
        return;
    }
    let out = dmabroker(&["bench", "ledger", "--buffers", "2", "--rounds", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no heap named `dma-heap/system`") && err.contains("dmabroker heaps"), "{err}");
    let out = dmabroker(&["bench", "ledger", "--buffers", "2", "--heap", "memfd"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not a dma-buf"), "{err}");
}
