//! `dmabroker demo` end to end: producer + two consumer processes.

use std::process::Command;

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
