//! `dmabroker alloc --for /dev/dri/cardN` with a KMS card (vkms, on the
//! project's kernel `vm/run.sh --kernel proj`): the card's primary planes
//! (their IN_FORMATS blobs) and vivid's capture queue are merged into one
//! modifier (LINEAR), reported in text and JSON; a format no primary plane
//! scans out is refused naming the card and what it takes. Debian's
//! kernels build no vkms: there the test prints `SKIP <test>: <reason>`.

#[path = "../../dmabroker/tests/vm_common/mod.rs"]
mod vm_common;

use dmabroker::device::kms::KmsDevice;
use serde_json::Value;
use std::process::Command;

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
