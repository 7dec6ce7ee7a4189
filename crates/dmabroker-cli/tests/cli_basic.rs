//! `dmabroker heaps`, `alloc` and `inspect` end to end, through the binary.

use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;

fn dmabroker(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dmabroker")).args(args).output().expect("running dmabroker")
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

#[test]
fn heaps_lists_memfd_and_hugetlb() {
    let v = json(&dmabroker(&["heaps", "--json"]));
    let names: Vec<&str> = v.as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"memfd"), "{names:?}");
    if std::path::Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists() {
        assert!(names.contains(&"hugetlb"), "{names:?}");
    }
    let memfd = v.as_array().unwrap().iter().find(|h| h["name"] == "memfd").unwrap();
    assert_eq!(memfd["device_importable"], false);
    assert_eq!(memfd["usable"], true);
    let table = dmabroker(&["heaps"]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("HEAP"), "{text}");
    assert!(text.contains("memfd"), "{text}");
    // Whether dma-heap memory is charged to cgroups (this host: no dma-heaps).
    assert!(text.contains("\ncharging: dma-heap memory is charged to"), "{text}");
}

#[test]
fn alloc_prints_what_it_got() {
    let v = json(&dmabroker(&["alloc", "--heap", "memfd", "--size", "12MiB", "--name", "clitest", "--json"]));
    assert_eq!(v["buffer"]["len"], 12 << 20);
    assert_eq!(v["buffer"]["kind"], "memfd");
    assert_eq!(v["buffer"]["name"], "clitest");
    assert_eq!(v["buffer"]["seals"], serde_json::json!(["shrink", "grow", "seal"]));
    // Segments as root; the reason otherwise.
    if rustix::process::geteuid().is_root() {
        assert!(v["segments"].as_array().is_some_and(|s| !s.is_empty()), "{v}");
    } else {
        assert!(v["segments_error"].as_str().unwrap().contains("CAP_SYS_ADMIN"), "{v}");
    }
    let text = dmabroker(&["alloc", "--size", "4K"]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("allocated 4 KiB"));
}

#[test]
fn alloc_errors_name_the_cause() {
    for (args, needle) in [
        (&["alloc", "--size", "0"][..], "size 0"),
        (&["alloc", "--heap", "nope", "--size", "1M"][..], "no heap named `nope`"),
        (&["alloc", "--size", "1M", "--align", "3"][..], "not a power of two"),
        (&["alloc", "--size", "8M", "--contiguous"][..], "contiguous"),
        (&["alloc", "--size", "12 parsecs"][..], "unknown unit"),
        (&["alloc", "--size", "1920x1080"][..], "--format"),
    ] {
        let out = dmabroker(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn alloc_with_a_format_prints_the_layout() {
    let v = json(&dmabroker(&["alloc", "--format", "NV12", "--size", "1920x1080", "--json"]));
    assert_eq!(v["layout"]["total_size"], 3_110_400);
    assert_eq!(v["layout"]["planes"][1]["offset"], 1920 * 1080);
    assert_eq!(v["choice"]["heap"], "memfd");
    assert!(v["buffer"]["len"].as_u64().unwrap() >= 3_110_400);
}

#[test]
fn inspect_tells_what_an_fd_is() {
    let heaps = dmabroker::Heaps::discover();
    let buffer = heaps.allocate("memfd", &dmabroker::AllocRequest::new(1 << 20).name("inspected")).unwrap();
    let fd = buffer.as_fd().as_raw_fd().to_string();
    let pid = std::process::id().to_string();
    let v = json(&dmabroker(&["inspect", "--pid", &pid, "--fd", &fd, "--json"]));
    assert_eq!(v["buffer"]["kind"], "memfd");
    assert_eq!(v["buffer"]["len"], 1 << 20);
    assert_eq!(v["buffer"]["name"], "inspected");
    assert_eq!(v["buffer"]["inode"], buffer.inode());
    assert!(v["link"].as_str().unwrap().contains("dmabroker:inspected"));

    // A socket is not a buffer: exit status 3 and the reason.
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let out = dmabroker(&["inspect", "--pid", &pid, "--fd", &a.as_raw_fd().to_string()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("socket"));

    // No such fd: an error naming it.
    let out = dmabroker(&["inspect", "--pid", &pid, "--fd", "99999"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no fd 99999"));
}

#[test]
fn zero_pixel_size_is_a_usage_error() {
    let out = dmabroker(&["alloc", "--format", "NV12", "--size", "0x0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("hexadecimal"), "{out:?}");
}

#[test]
fn a_profile_entry_matching_no_device_is_warned_about() {
    let file = std::env::temp_dir().join(format!("dmabroker-cli-profile-{}.toml", std::process::id()));
    std::fs::write(&file, "[[device]]\ndriver = \"no-such-driver\"\naddress_bits = 32\n").unwrap();
    let out = dmabroker(&["alloc", "--size", "64K", "--profile", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("warning: profile") && stdout.contains("no-such-driver"), "{stdout}");
    assert!(stdout.contains("matches none of the --for devices"), "{stdout}");
}

#[test]
fn alloc_prints_coherency_as_a_word() {
    let out = dmabroker(&["alloc", "--size", "4K"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("cached, coherent"), "{stdout}");
}

#[test]
fn contiguous_and_align_without_heap_go_through_the_chooser() {
    // Without --heap the chooser explains heap by heap (memfd cannot, and
    // why); with --heap memfd the heap's own refusal stands.
    let out = dmabroker(&["alloc", "--size", "1M", "--align", "2M"]);
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        assert!(!String::from_utf8_lossy(&out.stdout).contains("from memfd"), "{out:?}");
    } else {
        assert!(err.contains("memfd: aligns only to"), "{err}");
    }
    let out = dmabroker(&["alloc", "--size", "1M", "--align", "2M", "--heap", "memfd"]);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("constraints:"), "{out:?}");
}
