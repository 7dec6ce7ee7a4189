//! `dmabroker demo` end to end: producer + two consumer processes; the
//! `--json` summary; stopping on a signal or when every consumer is gone.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn demo(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dmabroker")).arg("demo").args(args).output().expect("run dmabroker");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_streams_and_verifies_every_frame() {
    let (ok, stdout, stderr) = demo(&["--frames", "120", "--size", "320x240", "--source", "synthetic"]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("result: ok"), "{stdout}");
    assert!(stdout.contains("consumer 0: 120 frames, 0 checksum mismatches"), "{stdout}");
    assert!(stdout.contains("consumer 1: 120 frames, 0 checksum mismatches"), "{stdout}");
    assert!(stdout.contains("bytes not copied"), "{stdout}");
    // Says where frames come from, and that a broker allocated the buffers.
    assert!(stderr.contains("synthetic"), "{stderr}");
    assert!(stdout.contains("buffers allocated through the embedded dmabroker broker"), "{stdout}");
}

#[test]
fn demo_with_drop_oldest_and_pacing() {
    let (ok, stdout, stderr) = demo(&[
        "--frames",
        "40",
        "--size",
        "64x64",
        "--source",
        "synthetic",
        "--backpressure",
        "drop-oldest",
        "--buffers",
        "4",
        "--fps",
        "200",
    ]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("0 checksum mismatches"), "{stdout}");
}

#[test]
fn demo_rejects_bad_sizes_without_panicking() {
    for bad in ["--size=641x480", "--size=0x0", "--size=abc", "--buffers=0", "--buffers=65"] {
        let (ok, _, stderr) = demo(&[bad]);
        assert!(!ok, "{bad} accepted");
        assert!(!stderr.contains("panicked"), "{bad}: {stderr}");
    }
    let (ok, _, stderr) = demo(&["--heap", "no-such-heap", "--frames", "1", "--source", "synthetic"]);
    assert!(!ok);
    assert!(stderr.contains("no heap named"), "{stderr}");
}

/// `--sink` shows camera frames: the synthetic source (NV12 in memfd) is
/// refused naming the card, in text and as a --json document; a node that
/// is no DRM card is refused naming it (when a camera is there to try).
#[test]
fn demo_sink_refuses_what_no_display_can_show() {
    let (ok, stdout, stderr) = demo(&["--source", "synthetic", "--sink", "/dev/dri/card9", "--frames", "1", "--json"]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("--sink /dev/dri/card9 needs a V4L2 source"), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"));
    assert_eq!(v["result"], "FAILED", "{v}");
    let (ok, _, stderr) = demo(&["--source", "v4l2", "--sink", "/dev/null", "--frames", "1"]);
    assert!(!ok);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("/dev/null") || stderr.contains("no V4L2 capture device"), "{stderr}");
}

#[test]
fn drop_oldest_summary_accounts_for_every_frame_of_each_consumer() {
    // The dropped counts belong to the right consumer (matched by pid, not
    // by slot), so received + dropped is what was produced, run after run.
    for run in 0..4 {
        let (ok, stdout, stderr) = demo(&[
            "--frames",
            "300",
            "--size",
            "64x64",
            "--source",
            "synthetic",
            "--backpressure",
            "drop-oldest",
            "--json",
        ]);
        assert!(ok, "run {run}: stdout:\n{stdout}\nstderr:\n{stderr}");
        let summary: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints one JSON document");
        assert_eq!(summary["result"], "ok", "{summary}");
        assert_eq!(summary["produced"], 300, "{summary}");
        let consumers = summary["consumers"].as_array().expect("consumers");
        assert_eq!(consumers.len(), 2, "{summary}");
        let mut dropped_total = 0;
        for c in consumers {
            let (frames, dropped) = (c["frames"].as_u64().unwrap(), c["dropped"].as_u64().unwrap());
            assert_eq!(frames + dropped, 300, "run {run}: consumer {c}");
            assert_eq!(c["delivered"], 300, "{c}");
            assert_eq!(c["bad"], 0, "{c}");
            assert_eq!(c["end"], "closed", "{c}");
            dropped_total += dropped;
        }
        assert!(summary["dropped"].as_u64().unwrap() <= dropped_total, "{summary}");
    }
}

/// A demo streaming (practically) forever in the background, its sockets in `dir`.
fn endless_demo(dir: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_dmabroker"))
        .args(["demo", "--frames", "18446744073709551615", "--size", "64x64", "--source", "synthetic"])
        .env("XDG_RUNTIME_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dmabroker")
}

fn wait_with_limit(child: std::process::Child, limit: Duration) -> std::process::Output {
    let pid = child.id();
    let started = Instant::now();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if started.elapsed() > limit {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
            panic!("the demo did not stop within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().unwrap()
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dmabroker-cli-demo-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn huge_frame_count_streams_in_bounded_memory_and_sigterm_stops_it_cleanly() {
    let dir = scratch_dir("sigterm");
    let child = endless_demo(&dir);
    let pid = child.id();
    let socket = dir.join(format!("dmabroker-demo-{pid}.sock"));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(socket.exists(), "the demo is not streaming on {}", socket.display());
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), rustix::process::Signal::TERM)
        .unwrap();
    let out = wait_with_limit(child, Duration::from_secs(20));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!stderr.contains("panicked") && !stderr.contains("capacity overflow"), "{stderr}");
    assert_eq!(out.status.code(), Some(128 + 15), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("result: interrupted"), "{stdout}");
    assert!(stdout.contains("end: closed"), "the consumers saw an orderly end: {stdout}");
    assert!(!socket.exists(), "socket left behind after SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_fails_instead_of_streaming_to_nobody() {
    let dir = scratch_dir("orphan");
    let mut child = endless_demo(&dir);
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(1500));
    let Ok(list) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) else {
        let _ = child.kill();
        let _ = child.wait();
        common::skip("demo_fails_instead_of_streaming_to_nobody", "no /proc/PID/task/PID/children");
        return;
    };
    for kid in list.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        let _ =
            rustix::process::kill_process(rustix::process::Pid::from_raw(kid).unwrap(), rustix::process::Signal::KILL);
    }
    let out = wait_with_limit(child, Duration::from_secs(40));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("result: FAILED"), "{stdout}");
    assert!(stderr.contains("every consumer is gone"), "{stderr}");
    assert!(!dir.join(format!("dmabroker-demo-{pid}.sock")).exists());
    let _ = std::fs::remove_dir_all(&dir);
}
