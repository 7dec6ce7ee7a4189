//! `dmabroker alloc`, `bench alloc` and `inspect` on awkward input, through
//! the binary: every failure names its cause, exits non-zero, never panics.

mod common;

use std::process::{Command, Output};

fn dmabroker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmabroker")).args(args).output().expect("running dmabroker")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = dmabroker(args);
    assert!(
        out.status.success(),
        "{args:?}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

/// Runs `args`, which must fail with `needle` in stderr and no panic.
fn fails_with(args: &[&str], needle: &str) -> Output {
    let out = dmabroker(args);
    let err = stderr(&out);
    assert!(!out.status.success(), "{args:?} succeeded: {}", stdout(&out));
    assert!(err.contains(needle), "{args:?}: no {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    out
}

fn heap_names() -> Vec<String> {
    let v = json(&["heaps", "--json"]);
    v.as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn multi_planar_formats_get_one_buffer_per_plane() {
    let v = json(&["alloc", "--format", "YUV420M", "--size", "64x64", "--json"]);
    let layout = &v["layout"];
    let sizes: Vec<u64> = layout["buffer_sizes"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()).collect();
    assert_eq!(sizes, [4096, 1024, 1024], "{layout}");
    let buffers = v["buffers"].as_array().expect("buffers");
    assert_eq!(buffers.len(), 3, "{v}");
    let planes = layout["planes"].as_array().unwrap();
    let mut inodes = Vec::new();
    let mut fds = Vec::new();
    for (i, plane) in planes.iter().enumerate() {
        assert_eq!((plane["buffer"].as_u64(), plane["offset"].as_u64()), (Some(i as u64), Some(0)), "{layout}");
        let b = &buffers[i];
        assert_eq!(b["index"], i, "{b}");
        assert_eq!(b["planes"], serde_json::json!([i]), "{b}");
        assert_eq!(b["size"], sizes[i], "{b}");
        assert!(b["len"].as_u64().unwrap() >= sizes[i], "buffer {i} too small: {b}");
        assert_eq!(b["len"], b["buffer"]["len"], "{b}");
        assert_eq!(b["heap"], "memfd", "{b}");
        inodes.push(b["buffer"]["inode"].as_u64().unwrap());
        fds.push(b["fd"].as_i64().unwrap());
    }
    inodes.dedup();
    fds.dedup();
    assert_eq!((inodes.len(), fds.len()), (3, 3), "three separate buffers: {v}");
    // Buffer 0 stays where scripts found it.
    assert_eq!(v["buffer"], buffers[0]["buffer"], "{v}");

    let text = stdout(&dmabroker(&["alloc", "--format", "NV12M", "--size", "64x64"]));
    assert!(text.contains("plane 1: buffer 1, offset 0"), "{text}");
    let allocated: Vec<&str> = text.lines().filter(|l| l.starts_with("allocated buffer")).collect();
    assert_eq!(allocated.len(), 2, "{text}");
    assert!(allocated[1].contains("buffer 1:") && allocated[1].contains("plane 1)"), "{text}");

    // A single-buffer format: one buffer holding every plane at its offset.
    let v = json(&["alloc", "--format", "NV12", "--size", "64x64", "--json"]);
    let buffers = v["buffers"].as_array().unwrap();
    assert_eq!(buffers.len(), 1, "{v}");
    assert_eq!(buffers[0]["planes"], serde_json::json!([0, 1]), "{v}");
    assert_eq!(v["layout"]["planes"][1]["offset"], 4096, "{v}");
}

#[test]
fn heap_is_honoured_with_device_options() {
    // An unknown heap is an error listing the heaps, device options or not.
    let out = fails_with(&["alloc", "--heap", "nope", "--size", "4K", "--max-address", "0xffffffffffffffff"], "nope");
    assert!(stderr(&out).contains("memfd"), "lists the heaps: {}", stderr(&out));
    fails_with(&["alloc", "--heap", "nope", "--format", "NV12", "--size", "64x64"], "no heap named `nope`");

    // The heap given, if it meets the constraints.
    let v = json(&["alloc", "--heap", "memfd", "--format", "NV12", "--size", "64x64", "--json"]);
    assert_eq!((v["choice"]["heap"].as_str(), v["buffer"]["heap"].as_str()), (Some("memfd"), Some("memfd")), "{v}");

    // Otherwise the reason, for that heap, and no fallback elsewhere.
    let out = fails_with(&["alloc", "--heap", "memfd", "--size", "4K", "--max-address", "0xfffff"], "heap memfd");
    let err = stderr(&out);
    assert!(err.contains("below 1 MiB") && err.contains("memfd: may place pages anywhere"), "{err}");

    // hugetlb: from hugetlb or an error, never memfd.
    let out = dmabroker(&["alloc", "--heap", "hugetlb", "--format", "NV12", "--size", "64x64", "--json"]);
    if out.status.success() {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["buffer"]["heap"], "hugetlb", "{v}");
    } else {
        let err = stderr(&out);
        let named = if heap_names().iter().any(|h| h == "hugetlb") { "heap hugetlb" } else { "no heap named" };
        assert!(err.contains(named) && !err.contains("panicked"), "{err}");
        assert!(out.stdout.is_empty(), "{}", stdout(&out));
    }
}

#[test]
fn bench_alloc_checks_its_arguments_first() {
    for (args, needle) in [
        (&["bench", "alloc", "--sizes", "0"][..], "size 0"),
        (&["bench", "alloc", "--sizes", "4K,0"][..], "size 0"),
        (&["bench", "alloc", "--sizes", "18446744073709551615", "--heaps", "memfd"][..], "overflows"),
        (&["bench", "alloc", "--scale", "0"][..], "above 0"),
        (&["bench", "alloc", "--scale=-1"][..], "above 0"),
        (&["bench", "alloc", "--scale", "NaN"][..], "finite"),
        (&["bench", "alloc", "--scale", "inf"][..], "finite"),
        (&["bench", "alloc", "--scale", "lots"][..], "not a number"),
    ] {
        let out = fails_with(args, needle);
        assert!(out.stdout.is_empty(), "{args:?}: nothing before the error: {}", stdout(&out));
    }
    // More than the machine has: a skipped row, not an allocation.
    let out = dmabroker(&["bench", "alloc", "--sizes", "64T", "--heaps", "memfd"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    let row = text.lines().find(|l| l.starts_with("| memfd | 64 TiB")).unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("skipped: more than"), "{text}");
}

#[test]
fn bench_seconds_are_checked_not_panicked_on() {
    for verb in ["broker", "pool"] {
        for bad in ["--seconds=-1", "--seconds=NaN", "--seconds=1e300", "--seconds=0"] {
            let out = fails_with(&["bench", verb, bad], "seconds");
            assert!(!stderr(&out).contains("panicked"), "{verb} {bad}: {}", stderr(&out));
        }
    }
}

#[test]
fn errors_do_not_repeat_their_cause() {
    let out = fails_with(&["alloc", "--size", "4K", "--profile", "/nonexistent.toml"], "/nonexistent.toml");
    let err = stderr(&out);
    let cause = std::io::Error::from_raw_os_error(2).to_string();
    assert_eq!(err.matches(&cause).count(), 1, "{err}");
    assert!(err.starts_with("dmabroker: error: "), "{err}");
}

#[test]
fn sizes_take_hex_and_name_the_zero_side() {
    let v = json(&["alloc", "--size", "0x1000", "--json"]);
    assert_eq!(v["buffer"]["len"], 4096, "{v}");
    let v = json(&["alloc", "--size", "0x2000", "--max-address", "0xffffffffffffffff", "--json"]);
    assert_eq!(v["buffer"]["len"], 0x2000, "{v}");
    fails_with(&["alloc", "--format", "NV12", "--size", "1920x0"], "height is 0");
    fails_with(&["alloc", "--format", "NV12", "--size", "00x1080"], "width is 0");
    fails_with(&["alloc", "--size", "0x"], "hexadecimal");
    fails_with(&["alloc", "--size", "0xfffffffffffffffff"], "64 bits");
    fails_with(&["alloc", "--format", "NV12", "--size", "0x1000"], "WIDTHxHEIGHT");
}

#[test]
fn alignments_are_checked_the_same_everywhere() {
    for args in [
        &["alloc", "--size", "4K", "--align", "0"][..],
        &["alloc", "--size", "4K", "--align", "0", "--uncached"][..],
        &["alloc", "--size", "4K", "--align", "3", "--max-address", "0xffffffffffffffff"][..],
        &["alloc", "--format", "NV12", "--size", "64x64", "--stride-align", "0"][..],
        &["alloc", "--format", "NV12", "--size", "64x64", "--stride-align", "3"][..],
    ] {
        fails_with(args, "not a power of two");
    }
    fails_with(&["alloc", "--size", "4K", "--stride-align", "64"], "--stride-align 64 needs --format");
    let v = json(&["alloc", "--format", "NV12", "--size", "100x10", "--stride-align", "64", "--json"]);
    assert_eq!(v["layout"]["planes"][0]["bytesperline"], 128, "{v}");
}

#[test]
fn inspect_names_a_missing_process_and_documents_its_exit_status() {
    let pid = (999_999..u32::MAX).find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()).unwrap();
    let out = fails_with(&["inspect", "--pid", &pid.to_string(), "--fd", "0"], &format!("no such process {pid}"));
    assert_eq!(out.status.code(), Some(1));
    fails_with(&["inspect", "--pid", "0", "--fd", "0"], "no such process 0");
    let help = stdout(&dmabroker(&["inspect", "--help"]));
    assert!(help.contains("Exit status") && help.contains("3  the fd exists but is not a buffer"), "{help}");
}

#[test]
fn logs_are_plain_text_when_stderr_is_not_a_terminal() {
    let out = dmabroker(&["-v", "alloc", "--format", "YUV420M", "--size", "64x64"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("INFO"), "{err}");
    assert!(!err.contains('\x1b'), "ANSI codes in a pipe: {err:?}");
}

#[test]
fn each_passed_over_heap_is_printed_once() {
    // memfd has 4 KiB pages: a 2 MiB page size passes it over (for hugetlb
    // when huge pages are reserved; otherwise no heap qualifies).
    let out = dmabroker(&["alloc", "--size", "2M", "--page-size", "2M"]);
    let text = stdout(&out);
    if !out.status.success() {
        common::skip("each_passed_over_heap_is_printed_once", &format!("no free huge page: {}", stderr(&out)));
        return;
    }
    let passed: Vec<&str> = text.lines().filter(|l| l.contains("passed over")).collect();
    assert_eq!(passed.iter().filter(|l| l.contains("memfd")).count(), 1, "{text}");
    let mut heaps: Vec<&str> =
        passed.iter().map(|l| l.trim().trim_start_matches("passed over ").split(':').next().unwrap()).collect();
    let all = heaps.len();
    heaps.sort_unstable();
    heaps.dedup();
    assert_eq!(heaps.len(), all, "a heap printed twice: {text}");
}

/// `--for vulkan:N` is parsed whatever the build; without the `vulkan`
/// feature (the default, static build) it says how to get it.
#[test]
fn vulkan_devices_are_parsed_and_a_build_without_vulkan_says_so() {
    fails_with(&["alloc", "--for", "vulkan:x", "--format", "XR24", "--size", "64x64"], "vulkan:N with N its index");
    fails_with(&["alloc", "--for", "vulkan:0:sampeld", "--format", "XR24", "--size", "64x64"], "unknown Vulkan usage");
    fails_with(
        &["alloc", "--for", "vulkan:0", "--size", "64"],
        "needs --format: modifiers are offered per pixel format",
    );
    fails_with(
        &["alloc", "--modifier", "tiled", "--format", "XR24", "--size", "64x64"],
        "a DRM format modifier is LINEAR",
    );
    if !cfg!(feature = "vulkan") {
        fails_with(&["alloc", "--for", "vulkan:0", "--format", "XR24", "--size", "64x64"], "--features vulkan");
        fails_with(&["demo", "--through", "vulkan", "--frames", "1"], "--features vulkan");
    }
    fails_with(&["demo", "--through", "vulkan:x", "--frames", "1"], "vulkan:N with N its index");
    fails_with(&["demo", "--through", "opencl", "--frames", "1"], "vulkan or vulkan:N");
    // --modifier alone is recorded in the layout, and said to be unchecked.
    let v = json(&["alloc", "--modifier", "LINEAR", "--format", "XR24", "--size", "64x64", "--json"]);
    assert_eq!(v["layout"]["modifier"], 0, "{v}");
    assert_eq!(v["modifier"]["modifier"], 0, "{v}");
    let notes = v["layout_notes"].as_array().expect("notes");
    assert!(notes.iter().any(|n| n.as_str().is_some_and(|n| n.contains("no --for device offers modifiers"))), "{v}");
}
