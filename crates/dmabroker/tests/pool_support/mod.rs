//! Shared by the pool_* integration tests: frame patterns, checksums, and
//! child processes (this test binary re-executed with a role in the env).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Env var naming the role a re-executed test binary plays.
pub const ROLE: &str = "DMABROKER_POOL_TEST_ROLE";
/// Env var with the pool's socket path for a child.
pub const SOCKET: &str = "DMABROKER_POOL_TEST_SOCKET";

/// A unique socket path in the temp dir.
pub fn socket_path(tag: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("dmabroker-test-{}-{tag}-{n}.sock", std::process::id()))
}

/// Fill `buf` with a pattern unique to `seq` (cheap: a few memsets plus a header).
pub fn fill(buf: &mut [u8], seq: u64) {
    let chunk = 4096;
    for (i, c) in buf.chunks_mut(chunk).enumerate() {
        c.fill((seq as usize).wrapping_mul(31).wrapping_add(i) as u8);
    }
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
}

/// 64-bit checksum (FNV-1a over 8-byte words, tail bytes folded in).
pub fn checksum(buf: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = buf.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(0x100_0000_01b3);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Re-execute this test binary running only `test_name` with `role`.
pub fn spawn_child(test_name: &str, role: &str, socket: &std::path::Path, extra_env: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(SOCKET, socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn child test process")
}

/// The role of this process, when it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// Count open fds and mapping lines of this process.
pub fn fds_and_maps() -> (usize, usize) {
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, std::iter::Iterator::count);
    // Buffer mappings only: thread stacks (closer threads come and go) are not leaks.
    let maps = std::fs::read_to_string("/proc/self/maps").map_or(0, |m| {
        m.lines().filter(|l| l.contains("/memfd:") || l.contains("dmabuf") || l.contains("/dev/")).count()
    });
    (fds, maps)
}
