//! `dmabroker demo` with a real V4L2 source in the test VM: vivid
//! (`/dev/video0`, single-planar capture) fills the pool's dma-bufs through
//! `V4L2_MEMORY_DMABUF`, two consumer processes verify every frame's
//! checksum. (`vm/run.sh --file <this crate's binary>` puts the binary where
//! `CARGO_BIN_EXE_dmabroker` points.) On a host without a capture device the
//! test prints `SKIP <test>: <reason>` and passes, unless `DMABROKER_VM=1`,
//! where it fails instead. vivid under the VM's emulation is slow: few frames.

use std::io::Write;
use std::path::Path;
use std::process::Command;

fn in_vm() -> bool {
    std::env::var("DMABROKER_VM").as_deref() == Ok("1")
}

fn skip(test: &str, reason: &str) {
    assert!(!in_vm(), "{test}: needed in the VM but unavailable: {reason}");
    let _ = writeln!(std::io::stderr().lock(), "SKIP {test}: {reason}");
}

fn demo(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dmabroker")).arg("demo").args(args).output().expect("run dmabroker");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_v4l2_run(test: &str, args: &[&str], frames: u64) {
    let (ok, stdout, stderr) = demo(args);
    // Shown in the VM log: the demo's own summary.
    let banner = stderr.lines().find(|l| l.starts_with("dmabroker demo: ")).unwrap_or("");
    show(format_args!("{test}: dmabroker demo {}\n{banner}\n{stdout}", args.join(" ")));
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("source: V4L2 capture /dev/video"), "{stdout}");
    assert!(stdout.contains("V4L2_MEMORY_DMABUF"), "{stdout}");
    assert!(stdout.starts_with(&format!("{frames} frames of 640x480 ")), "{stdout}");
    for id in 0..2 {
        assert!(stdout.contains(&format!("consumer {id}: {frames} frames, 0 checksum mismatches")), "{stdout}");
    }
    assert!(stdout.contains("result: ok"), "{stdout}");
    assert!(!stdout.contains("synthetic") && !stderr.contains("synthetic"), "{stdout}\n{stderr}");
}

#[test]
fn demo_streams_from_vivid() {
    const T: &str = "demo_streams_from_vivid";
    if !Path::new("/dev/video0").exists() {
        return skip(T, "no /dev/video0 (the test VM has vivid: vm/run.sh)");
    }
    check_v4l2_run(T, &["--frames", "30", "--size", "640x480", "--source", "v4l2"], 30);
}

/// The multi-planar node (vivid `/dev/video1`) through `--device`, with
/// drop-oldest backpressure and one consumer asking nothing special.
#[test]
fn demo_streams_from_multiplanar_vivid_with_drop_oldest() {
    const T: &str = "demo_streams_from_multiplanar_vivid_with_drop_oldest";
    if !Path::new("/dev/video1").exists() {
        return skip(T, "no /dev/video1 (the test VM has a multi-planar vivid node: vm/run.sh)");
    }
    let (ok, stdout, stderr) = demo(&[
        "--frames",
        "12",
        "--size",
        "640x480",
        "--source",
        "v4l2",
        "--device",
        "/dev/video1",
        "--backpressure",
        "drop-oldest",
        "--buffers",
        "4",
    ]);
    show(format_args!("{T}:\n{stdout}"));
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("source: V4L2 capture /dev/video1"), "{stdout}");
    assert!(stdout.contains("multi-planar"), "{stdout}");
    assert!(stdout.contains("0 checksum mismatches"), "{stdout}");
    assert!(
        stdout.lines().filter(|l| l.starts_with("consumer ")).all(|l| l.contains(" 0 checksum mismatches")),
        "{stdout}"
    );
    assert!(stdout.contains("result: ok"), "{stdout}");
}

/// `--source auto` takes the capture device when there is one.
#[test]
fn demo_auto_prefers_the_capture_device() {
    const T: &str = "demo_auto_prefers_the_capture_device";
    if !Path::new("/dev/video0").exists() {
        return skip(T, "no /dev/video0 (the test VM has vivid: vm/run.sh)");
    }
    check_v4l2_run(T, &["--frames", "8", "--size", "640x480"], 8);
}

/// The synthetic source with dma-bufs allocated through the embedded broker.
#[test]
fn demo_synthetic_dma_bufs_through_the_embedded_broker() {
    const T: &str = "demo_synthetic_dma_bufs_through_the_embedded_broker";
    if !Path::new("/dev/dma_heap/system").exists() {
        return skip(T, "no /dev/dma_heap/system (the test VM has it: vm/run.sh)");
    }
    let args = ["--frames", "30", "--size", "640x480", "--source", "synthetic", "--heap", "dma-heap/system"];
    let (ok, stdout, stderr) = demo(&args);
    show(format_args!("{T}: dmabroker demo {}\n{stdout}", args.join(" ")));
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("source: synthetic NV12 test pattern, buffers allocated through the embedded dmabroker broker"),
        "{stdout}"
    );
    for id in 0..2 {
        assert!(stdout.contains(&format!("consumer {id}: 30 frames, 0 checksum mismatches")), "{stdout}");
    }
    assert!(stdout.contains("result: ok"), "{stdout}");
}

/// Print past libtest's capture (shown for passing tests too: the VM log
/// keeps what ran).
fn show(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}
