//! The `dmabroker` command on the real kernel interfaces of the test VM
//! (`vm/run.sh --file <this crate's binary>` puts the binary where
//! `CARGO_BIN_EXE_dmabroker` points): device-aware `alloc --for` with vivid
//! (`/dev/video0`) and vgem (`/dev/dri/card0`), `heaps`, and `alloc --heap`
//! from the dma-buf heaps. On a host without those devices each test prints
//! `SKIP <test>: <reason>` and passes, unless `DMABROKER_VM=1` (set inside
//! the VM), where it fails instead.

use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::Command;

const VIDEO: &str = "/dev/video0";
const CARD: &str = "/dev/dri/card0";

/// Whether this run is inside the test VM, where skipping is a failure.
fn in_vm() -> bool {
    std::env::var("DMABROKER_VM").as_deref() == Ok("1")
}

/// `false` (after printing `SKIP`) when a node is missing on a host; a panic
/// in the VM.
fn have(test: &str, nodes: &[&str]) -> bool {
    let missing: Vec<&str> = nodes.iter().copied().filter(|n| !Path::new(n).exists()).collect();
    if missing.is_empty() {
        return true;
    }
    let reason = format!("no {} (the test VM has it: vm/run.sh)", missing.join(", "));
    assert!(!in_vm(), "{test}: needed in the VM but unavailable: {reason}");
    let _ = writeln!(std::io::stderr().lock(), "SKIP {test}: {reason}");
    false
}

/// Run `dmabroker ARGS`; panics unless it succeeds. Returns stdout.
fn dmabroker(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dmabroker")).args(args).output().expect("run dmabroker");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dmabroker {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn json(args: &[&str]) -> Value {
    let stdout = dmabroker(args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("dmabroker {args:?}: not JSON ({e}):\n{stdout}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap_or_else(|| panic!("not a string: {s}")))
        .collect()
}

const NV12_FOR_BOTH: [&str; 10] =
    ["alloc", "--format", "NV12", "--size", "1920x1080", "--for", VIDEO, "--for", CARD, "--json"];

#[test]
fn alloc_for_vivid_and_vgem_json() {
    let test = "alloc_for_vivid_and_vgem_json";
    if !have(test, &[VIDEO, CARD]) {
        return;
    }
    let v = json(&NV12_FOR_BOTH);

    // Constraints, each with the devices behind it.
    // The devices: both nodes, by sysfs name (vivid's driver is bound, vgem's
    // platform device has none), plus the command line's own (here empty)
    // constraints.
    let c = &v["constraints"];
    let devices = strings(&c["devices"]);
    let video = devices.iter().find(|d| d.starts_with("video0")).unwrap_or_else(|| panic!("{c}"));
    let card = devices.iter().find(|d| d.starts_with("card0")).unwrap_or_else(|| panic!("{c}"));
    assert_eq!(*video, "video0 (vivid)", "{c}");
    assert!(devices.iter().all(|d| d == video || d == card || *d == "command line"), "{c}");
    assert_eq!(c["dma_buf"]["value"], true, "{c}");
    let mut both = vec![*card, *video];
    both.sort_unstable();
    assert_eq!(strings(&c["dma_buf"]["from"]), both, "both import: {c}");
    let notes = strings(&c["notes"]);
    assert!(notes.iter().any(|n| n.starts_with("video0 (vivid): no IOMMU")), "{notes:?}");
    let requirements = strings(&v["requirements"]);
    assert!(
        requirements.iter().any(|r| r.contains("video0") && r.contains("card0") && r.contains("dma-buf")),
        "{requirements:?}"
    );

    // The NV12 layout: Y then interleaved UV, both 1920 bytes per line.
    let l = &v["layout"];
    assert_eq!(l["format"], "NV12", "{l}");
    assert_eq!((l["width"].as_u64(), l["height"].as_u64()), (Some(1920), Some(1080)));
    let planes = l["planes"].as_array().expect("planes");
    assert_eq!(planes.len(), 2, "{l}");
    let pitches: Vec<u64> = planes.iter().map(|p| p["bytesperline"].as_u64().unwrap()).collect();
    assert_eq!(pitches, [1920, 1920], "{l}");
    assert_eq!(planes[1]["offset"], 1920 * 1080, "{l}");
    assert_eq!(planes[1]["lines"], 540, "{l}");
    assert_eq!(l["total_size"], 3_110_400, "{l}");

    // A dma-buf heap, a dma-buf buffer.
    let choice = &v["choice"];
    let heap = choice["heap"].as_str().expect("choice.heap");
    assert!(heap.starts_with("dma-heap/") || heap == "udmabuf", "not a dma-buf heap: {choice}");
    assert!(matches!(choice["kind"].as_str(), Some("dma-heap" | "udmabuf")), "{choice}");
    assert!(strings(&choice["candidates"]).contains(&"dma-heap/system"), "{choice}");
    assert!(!strings(&choice["reasons"]).is_empty(), "{choice}");
    let b = &v["buffer"];
    assert_eq!(b["kind"], "dma-buf", "{b}");
    assert!(b["len"].as_u64().unwrap() >= 3_110_400, "{b}");
    assert_eq!(b["properties"]["device_importable"], true, "{b}");
}

#[test]
fn alloc_for_vivid_and_vgem_text() {
    let test = "alloc_for_vivid_and_vgem_text";
    if !have(test, &[VIDEO, CARD]) {
        return;
    }
    let text = dmabroker(&NV12_FOR_BOTH[..NV12_FOR_BOTH.len() - 1]);
    let line = |needle: &str| {
        text.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
    };
    assert!(text.starts_with("constraints:\n"), "{text}");
    let dma = line("a dma-buf to import");
    assert!(dma.contains("video0") && dma.contains("card0"), "{text}");
    assert!(line("layout: ").contains("NV12 1920x1080"), "{text}");
    assert!(line("plane 0:").contains("offset 0, bytesperline 1920, 1080 lines"), "{text}");
    assert!(line("plane 1:").contains("offset 2073600, bytesperline 1920, 540 lines"), "{text}");
    let heap = line("heap: ");
    assert!(heap.contains("dma-heap/") || heap.contains("udmabuf"), "{text}");
    assert!(line("because ").contains("heap"), "the choice is explained: {text}");
    assert!(line("allocated ").contains("as a dma-buf from"), "{text}");
}

#[test]
fn heaps_lists_the_dma_buf_heaps() {
    let test = "heaps_lists_the_dma_buf_heaps";
    if !have(test, &["/dev/dma_heap/system", "/dev/udmabuf"]) {
        return;
    }
    let v = json(&["heaps", "--json"]);
    let heaps = v.as_array().expect("an array of heaps");
    for (name, kind) in [("dma-heap/system", "dma-heap"), ("udmabuf", "udmabuf")] {
        let h = heaps.iter().find(|h| h["name"] == name).unwrap_or_else(|| panic!("{name} not listed: {v}"));
        assert_eq!(h["kind"], kind, "{h}");
        assert_eq!(h["device_importable"], true, "{h}");
        assert_eq!(h["usable"], true, "{h}");
    }
    assert!(heaps.iter().any(|h| h["name"] == "memfd" && h["device_importable"] == false));
    // The table names them too.
    let table = dmabroker(&["heaps"]);
    assert!(table.contains("dma-heap/system") && table.contains("udmabuf"), "{table}");
}

fn alloc_from(test: &str, heap: &str, node: &str) {
    if !have(test, &[node]) {
        return;
    }
    let v = json(&["alloc", "--heap", heap, "--size", "1M", "--json"]);
    let b = &v["buffer"];
    assert_eq!(b["len"], 1 << 20, "{v}");
    assert_eq!(b["kind"], "dma-buf", "{v}");
    let from = b["heap"].as_str().unwrap();
    assert!(
        from == heap || from.contains(heap.trim_start_matches("dma-heap/")),
        "allocated from {from}, not {heap}: {v}"
    );
    assert!(v["fd"].as_i64().unwrap() >= 0, "{v}");
    assert_eq!(b["properties"]["device_importable"], true, "{v}");
    let text = dmabroker(&["alloc", "--heap", heap, "--size", "1M"]);
    assert!(text.contains("allocated 1 MiB (1048576 bytes)") && text.contains("as a dma-buf"), "{text}");
}

#[test]
fn alloc_from_dma_heap_system() {
    alloc_from("alloc_from_dma_heap_system", "dma-heap/system", "/dev/dma_heap/system");
}

#[test]
fn alloc_from_udmabuf() {
    alloc_from("alloc_from_udmabuf", "udmabuf", "/dev/udmabuf");
}
