//! `dmabroker alloc --for /dev/dri/cardN` with a KMS card (vkms, on the
//! project's kernel `vm/run.sh --kernel proj`): the card's primary planes
//! (their IN_FORMATS blobs) and vivid's capture queue are merged into one
//! modifier (LINEAR), reported in text and JSON; a format no primary plane
//! scans out is refused naming the card and what it takes. Debian's
//! kernels build no vkms: there the test prints `SKIP <test>: <reason>`.
//!
//! `dmabroker demo --sink /dev/dri/cardN`: vivid's frames on vkms's primary
//! plane, one atomic commit per frame; every frame shown, the scanout rate
//! and commit latency reported.

#[path = "../../dmabroker/tests/vm_common/mod.rs"]
mod vm_common;

use dmabroker::device::kms::KmsDevice;
use serde_json::Value;
use std::process::Command;

/// One test at a time opens the card: a commit needs DRM master, which
/// only the first file opened while nobody holds it gets.
static CARD: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn dmabroker(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dmabroker")).args(args).output().expect("run dmabroker");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn alloc_for_a_kms_card_chooses_the_modifier_its_planes_take() {
    let test = "alloc_for_a_kms_card_chooses_the_modifier_its_planes_take";
    let _card = CARD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(kms) = KmsDevice::find("vkms") else {
        vm_common::skip_unless_proj(test, "no vkms card under /dev/dri (CONFIG_DRM_VKMS)");
        return;
    };
    let card = kms.path().display().to_string();
    drop(kms);
    let (cam, _) = vm_common::vivid(false).unwrap_or_else(|e| panic!("{test}: {e}"));
    let video = cam.path().display().to_string();
    drop(cam);

    let args = ["alloc", "--format", "XR24", "--size", "640x480", "--for", &video, "--for", &card, "--json"];
    let (ok, out, err) = dmabroker(&args);
    assert!(ok, "{args:?} failed:\n{out}\n{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
    let m = &v["modifier"];
    assert_eq!(m["modifier"].as_u64(), Some(0), "LINEAR: {m}");
    let from: Vec<&str> = m["from"].as_array().expect("from").iter().filter_map(Value::as_str).collect();
    assert!(from.iter().any(|d| d.contains(&card) && d.contains("vkms")), "{from:?}");
    assert!(from.iter().any(|d| d.contains("vivid")), "{from:?}");
    assert_eq!(v["layout"]["planes"][0]["bytesperline"].as_u64(), Some(2560), "{}", v["layout"]);

    let (ok, out, err) = dmabroker(&args[..args.len() - 1]);
    assert!(ok, "{err}");
    let line =
        out.lines().find(|l| l.contains("modifier LINEAR")).unwrap_or_else(|| panic!("no modifier line:\n{out}"));
    assert!(line.contains("LINEAR") && line.contains("vkms"), "{line}");
    eprintln!("{test}: {line}");

    // YUYV: vivid captures it, vkms's primary plane does not scan it out.
    let (ok, out, err) =
        dmabroker(&["alloc", "--format", "YUYV", "--size", "640x480", "--for", &video, "--for", &card]);
    assert!(!ok, "YUYV on vkms must be refused:\n{out}");
    assert!(err.contains(&card) && err.contains("primary planes do not scan out") && err.contains("XR24"), "{err}");
    eprintln!("{test}: YUYV refused: {}", err.lines().last().unwrap_or_default());
}

#[test]
fn demo_shows_vivid_frames_on_a_kms_sink() {
    let test = "demo_shows_vivid_frames_on_a_kms_sink";
    let _card = CARD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(kms) = KmsDevice::find("vkms") else {
        vm_common::skip_unless_proj(test, "no vkms card under /dev/dri (CONFIG_DRM_VKMS)");
        return;
    };
    let card = kms.path().display().to_string();
    // Closed before the demo runs: its sink consumer must become DRM master.
    drop(kms);
    let frames = 30u64;
    let n = frames.to_string();
    let args = ["demo", "--source", "v4l2", "--size", "640x480", "--sink", &card, "--frames", &n, "--json"];
    let (ok, out, err) = dmabroker(&args);
    assert!(ok, "{args:?} failed:\n{out}\n{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
    assert_eq!(v["result"], "ok", "{v}");
    assert_eq!(v["produced"].as_u64(), Some(frames), "{v}");
    let sink = &v["sink"];
    assert_eq!(sink["shown"].as_u64(), Some(frames), "every frame on screen: {sink}");
    let fps = sink["scanout_fps"].as_f64().expect("scanout_fps");
    assert!(fps > 0.0, "{sink}");
    assert!(
        sink["commit_max_ns"].as_u64().unwrap_or(0) >= sink["commit_p50_ns"].as_u64().unwrap_or(u64::MAX),
        "{sink}"
    );
    let target = sink["target"].as_str().unwrap_or_default();
    assert!(target.contains(&card) && target.contains("vkms") && target.contains("640x480"), "{target}");
    assert!(v["source"].as_str().is_some_and(|s| s.contains("V4L2_MEMORY_DMABUF")), "{}", v["source"]);
    eprintln!(
        "{test}: {} {}x{} frames from {}; sink {target}: {} shown, scanout {fps:.1} fps, commit p50 {} ns max {} ns; \
         capture {:.1} fps",
        v["format"],
        v["width"],
        v["height"],
        v["source"],
        sink["shown"],
        sink["commit_p50_ns"],
        sink["commit_max_ns"],
        v["fps"].as_f64().unwrap_or(0.0)
    );

    // The text summary says the same in a line of its own.
    let (ok, out, err) =
        dmabroker(&["demo", "--source", "v4l2", "--size", "640x480", "--sink", &card, "--frames", "4"]);
    assert!(ok, "{out}\n{err}");
    let line = out.lines().find(|l| l.starts_with("sink ")).unwrap_or_else(|| panic!("no sink line:\n{out}"));
    assert!(line.contains("4 frames shown") && line.contains("fps") && line.contains("commit latency p50"), "{line}");
    eprintln!("{test}: {line}");

    // The synthetic source has nothing a display imports: refused, saying why.
    let (ok, _, err) = dmabroker(&["demo", "--source", "synthetic", "--sink", &card, "--frames", "1"]);
    assert!(!ok && err.contains("needs a V4L2 source"), "{err}");
}
