//! `dmabroker ps` and `ps --leaks` on the VM's kernels: a system-heap
//! dma-buf imported into vgem and closed by its process is held by no
//! process, only by the driver. Where the kernel has the dma-buf BPF
//! iterator (Linux 6.16+, kernel 7 of the matrix) it is listed as a leak
//! candidate with its exporter, name and age, and leaves the list once vgem
//! lets go; where it has not (6.12) the same command says what it cannot
//! see. On a host without dma-heaps and vgem the test prints `SKIP` and
//! passes, unless `DMABROKER_VM=1` (inside the VM), where it fails.

use dmabroker::device::drm::DrmDevice;
use dmabroker::heap::AllocRequest;
use dmabroker::Heaps;
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

fn in_vm() -> bool {
    std::env::var("DMABROKER_VM").as_deref() == Ok("1")
}

fn skip_or_fail(test: &str, reason: &str) {
    assert!(!in_vm(), "{test}: needed in the VM but unavailable: {reason}");
    let _ = writeln!(std::io::stderr().lock(), "SKIP {test}: {reason}");
}

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

fn leaks_json() -> Value {
    let out = dmabroker(&["ps", "--leaks", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ps --leaks --json: not JSON ({e}):\n{out}"))
}

/// The leak candidate with this inode, if listed.
fn leak(l: &Value, inode: u64) -> Option<Value> {
    l["leaks"].as_array()?.iter().find(|c| c["inode"].as_u64() == Some(inode)).cloned()
}

/// (major, minor) of the running kernel.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
fn a_buffer_only_vgem_holds_is_a_leak_candidate_until_vgem_lets_go() {
    let test = "a_buffer_only_vgem_holds_is_a_leak_candidate_until_vgem_lets_go";
    let heaps = Heaps::discover();
    if heaps.get("system").is_none() {
        return skip_or_fail(test, "no system dma-heap (the test VM has it: vm/run.sh)");
    }
    let Some(vgem) = DrmDevice::find("vgem") else {
        return skip_or_fail(test, "no vgem node under /dev/dri (the test VM has it: vm/run.sh)");
    };
    let mut request = AllocRequest::new(1 << 20);
    request.name = Some("ledger-probe".into());
    let buffer = heaps.allocate("system", &request).expect("allocate 1 MiB from the system heap");
    let fd = buffer.into_fd().expect("sole owner of the buffer");
    let inode = std::fs::File::from(fd.try_clone().unwrap()).metadata().unwrap().ino();
    let handle = vgem.prime_import(&fd).expect("vgem imports the dma-buf");
    drop(fd);

    let l = leaks_json();
    if kernel_version() >= (6, 16) {
        assert!(l["unavailable"].is_null(), "the iterator should work on this kernel: {l}");
        let c = leak(&l, inode).unwrap_or_else(|| panic!("dma-buf {inode} held only by vgem is not listed: {l}"));
        assert_eq!(c["size"].as_u64(), Some(1 << 20), "{c}");
        assert_eq!(c["exporter"].as_str(), Some("system"), "{c}");
        assert!(c["name"].as_str().is_some_and(|n| n.contains("ledger-probe")), "{c}");
        assert!(c["age_sec"].as_u64().is_some_and(|a| a < 600), "{c}");
        let text = dmabroker(&["ps", "--leaks"]);
        assert!(text.contains(&inode.to_string()) && text.contains("system"), "{text}");
        // `top` counts it among the leaks too.
        let top: Value = serde_json::from_str(&dmabroker(&["top", "--json", "--once"])).unwrap();
        assert!(top["leaks"].as_u64().is_some_and(|n| n >= 1), "{top}");
        assert!(top["leak_bytes"].as_u64().is_some_and(|n| n >= 1 << 20), "{top}");
        vgem.gem_close(handle).expect("GEM_CLOSE");
        let l = leaks_json();
        assert!(leak(&l, inode).is_none(), "dma-buf {inode} still listed after vgem let go: {l}");
    } else {
        let why = l["unavailable"].as_str().unwrap_or_else(|| panic!("6.12 has no iterator, yet: {l}"));
        assert!(!why.is_empty());
        let text = dmabroker(&["ps", "--leaks"]);
        assert!(text.contains("cannot see dma-bufs that no process holds"), "{text}");
        let text = dmabroker(&["ps"]);
        assert!(text.contains("cannot see"), "ps should say what it cannot see:\n{text}");
        vgem.gem_close(handle).expect("GEM_CLOSE");
    }
}
