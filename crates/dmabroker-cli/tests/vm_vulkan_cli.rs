//! `dmabroker alloc --for vulkan:N` as a user runs it, in the VM's trixie
//! userland with Mesa's lavapipe and vivid: the Vulkan device's modifier
//! offer merged with vivid's, the layout carrying the modifier they share
//! (LINEAR), and the refusals naming the device (a modifier lavapipe lacks,
//! a format it cannot import); and `demo --through vulkan:0`: vivid's
//! frames imported into Vulkan and flipped on the device into the pool's
//! buffers, each frame's checksum (the flipped capture's) verified by every
//! consumer after it waited on the frame's sync_file. Needs the binary built with the `vulkan`
//! feature, dynamically linked (scripts/vulkan-vm-tests.sh builds it in the
//! userland root); elsewhere each test prints `SKIP`, and in the VM
//! (`DMABROKER_VM=1`) that is a failure.

#[path = "../../dmabroker/tests/vm_common/mod.rs"]
mod vm_common;

use serde_json::Value;
use std::process::{Command, Output};

/// `I915_FORMAT_MOD_X_TILED`: a modifier lavapipe does not have.
const X_TILED: &str = "0x0100000000000001";

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmabroker")).args(args).output().expect("run dmabroker")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The vivid capture node and whether Vulkan is here at all; `None` (after
/// a skip) when something is missing.
fn setup(test: &str) -> Option<String> {
    if !cfg!(feature = "vulkan") {
        vm_common::skip(
            test,
            "dmabroker built without the `vulkan` feature (scripts/vulkan-vm-tests.sh builds it with)",
        );
        return None;
    }
    match vm_common::vivid(false) {
        Ok((dev, _)) => Some(dev.path().display().to_string()),
        Err(why) => {
            vm_common::skip(test, &why);
            None
        }
    }
}

#[test]
fn alloc_for_vivid_and_vulkan_carries_the_shared_modifier() {
    let test = "alloc_for_vivid_and_vulkan_carries_the_shared_modifier";
    let Some(video) = setup(test) else { return };
    let args = ["alloc", "--for", &video, "--for", "vulkan:0", "--format", "XR24", "--size", "640x480", "--json"];
    let out = run(&args);
    assert!(out.status.success(), "dmabroker {args:?}: {}\n{}", text(&out.stdout), text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let devices: Vec<&str> =
        v["constraints"]["devices"].as_array().expect("devices").iter().filter_map(Value::as_str).collect();
    assert!(devices.iter().any(|d| d.starts_with("vulkan:0")), "{devices:?}");
    assert!(devices.iter().any(|d| d.contains("vivid")), "{devices:?}");
    assert_eq!(v["modifier"]["modifier"], 0, "{}", v["modifier"]);
    let from: Vec<&str> = v["modifier"]["from"].as_array().expect("from").iter().filter_map(Value::as_str).collect();
    assert!(from.iter().any(|d| d.starts_with("vulkan:0")) && from.iter().any(|d| d.contains("vivid")), "{from:?}");
    assert_eq!(v["layout"]["modifier"], 0, "{}", v["layout"]);
    assert_eq!(v["layout"]["planes"][0]["bytesperline"], 2560, "{}", v["layout"]);
    // A Vulkan import needs a real dma-buf: not a memfd.
    assert_eq!(v["buffer"]["kind"], "dma-buf", "{}", v["buffer"]);
    eprintln!("{test}: {} from {}, modifier {}", v["buffer"]["heap"], devices.join(" + "), v["modifier"]);

    // The same in words.
    let out = run(&args[..args.len() - 1]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("modifier LINEAR"), "{stdout}");
    assert!(stdout.contains("vulkan:0") && stdout.contains("imports LINEAR"), "{stdout}");
}

#[test]
fn a_modifier_lavapipe_lacks_is_refused_naming_it() {
    let test = "a_modifier_lavapipe_lacks_is_refused_naming_it";
    let Some(video) = setup(test) else { return };
    let out = run(&[
        "alloc",
        "--for",
        &video,
        "--for",
        "vulkan:0",
        "--format",
        "XR24",
        "--size",
        "640x480",
        "--modifier",
        X_TILED,
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "X_TILED was accepted: {}", text(&out.stdout));
    assert!(stderr.contains("I915_X_TILED") || stderr.contains("0x0100000000000001"), "{stderr}");
    assert!(stderr.contains("vulkan:0") && stderr.contains("refuses it"), "{stderr}");
    assert!(stderr.contains("vivid") && stderr.contains("offers LINEAR"), "{stderr}");
    eprintln!("{test}: {}", stderr.trim());
}

#[test]
fn a_format_lavapipe_cannot_import_is_refused_naming_it() {
    let test = "a_format_lavapipe_cannot_import_is_refused_naming_it";
    if setup(test).is_none() {
        return;
    }
    // lavapipe offers no dma-buf import of NV12 (two planes, sampled).
    let out = run(&["alloc", "--for", "vulkan:0", "--format", "NV12", "--size", "640x480"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "NV12 was accepted: {}", text(&out.stdout));
    assert!(stderr.contains("vulkan:0") && stderr.contains("refuses it") && stderr.contains("offers none"), "{stderr}");
    eprintln!("{test}: {}", stderr.trim());
}

#[test]
fn a_missing_vulkan_device_is_a_typed_error() {
    let test = "a_missing_vulkan_device_is_a_typed_error";
    if setup(test).is_none() {
        return;
    }
    let out = run(&["alloc", "--for", "vulkan:7", "--format", "XR24", "--size", "64x64"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no Vulkan device 7") && stderr.contains("the loader lists"), "{stderr}");
}

#[test]
fn demo_through_vulkan_consumers_verify_each_frame_after_its_sync_file() {
    let test = "demo_through_vulkan_consumers_verify_each_frame_after_its_sync_file";
    let Some(video) = setup(test) else { return };
    let frames = 30u64;
    let n = frames.to_string();
    let args = [
        "demo",
        "--source",
        "v4l2",
        "--device",
        &video,
        "--through",
        "vulkan:0",
        "--frames",
        &n,
        "--size",
        "640x360",
        "--consumers",
        "2",
        "--json",
    ];
    let out = run(&args);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "dmabroker {args:?}: {}\n{stderr}", text(&out.stdout));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["result"], "ok", "{v}");
    assert_eq!(v["produced"], frames, "{v}");
    // XR24 (DRM XRGB8888): the one format the flip copies as B8G8R8A8.
    assert!(v["format"] == "XBGR32" || v["format"] == "XR24", "{v}");
    let source = v["source"].as_str().unwrap_or_default();
    assert!(source.contains("vivid") && source.contains("VkImage"), "{source}");
    let vk = &v["vulkan"];
    assert!(vk["device"].as_str().is_some_and(|d| d.starts_with("vulkan:0 (")), "{vk}");
    assert_eq!(vk["frames"], frames, "{vk}");
    // The fence path: every frame went on with the submission's sync_file.
    assert_eq!(vk["fenced"], frames, "the producer waited for the device: {vk}");
    assert!(vk["no_sync_file"].is_null(), "{vk}");
    assert!(vk["gpu_p50_ns"].as_u64().is_some_and(|t| t > 0), "{vk}");
    assert!(vk["gpu_fps"].as_f64().is_some_and(|f| f > 0.0), "{vk}");
    let consumers = v["consumers"].as_array().expect("consumers");
    assert_eq!(consumers.len(), 2, "{v}");
    for c in consumers {
        // Each frame's checksum is the flipped capture's: a match means the
        // device wrote the transform before the consumer read it.
        assert_eq!(c["frames"], frames, "{c}");
        assert_eq!(c["bad"], 0, "{c}");
        assert_eq!(c["fenced"], frames, "consumer did not wait on each sync_file: {c}");
    }
    assert!(vk["sync_file"].is_string(), "{vk}");
    eprintln!(
        "{test}: {frames} frames 640x360 XR24 {:.1} fps through {}: submit {} ns (export {} ns), sync_file {}, {} of {frames} signalled at hand-off, device p50 {} ns p99 {} ns, {:.1} frames/s; consumers waited {} / {} ns on sync_files",
        v["fps"].as_f64().unwrap_or(0.0),
        vk["device"],
        vk["submit_p50_ns"],
        vk["export_p50_ns"],
        vk["sync_file"],
        vk["signalled_at_handoff"],
        vk["gpu_p50_ns"],
        vk["gpu_p99_ns"],
        vk["gpu_fps"].as_f64().unwrap_or(0.0),
        consumers[0]["fence_waited_ns"],
        consumers[1]["fence_waited_ns"]
    );

    // The same in words.
    let out = run(&args[..args.len() - 1]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("vulkan vulkan:0 (") && stdout.contains("handed on with the submission's sync_file"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("waited on {frames} sync_files")), "{stdout}");
    assert!(stdout.contains("result: ok"), "{stdout}");
}

#[test]
fn demo_through_vulkan_needs_a_camera_source() {
    let test = "demo_through_vulkan_needs_a_camera_source";
    if setup(test).is_none() {
        return;
    }
    let out = run(&["demo", "--source", "synthetic", "--through", "vulkan", "--frames", "1"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("needs a V4L2 source"), "{stderr}");
    let out = run(&["demo", "--source", "v4l2", "--through", "vulkan:7", "--frames", "1"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--through vulkan:7") && stderr.contains("no Vulkan device 7"), "{stderr}");
}
