//! Shared by the integration tests: visible skips, fd counting, child roles.
#![allow(dead_code)]

#[path = "skip.rs"]
mod skip_rule;
#[allow(unused_imports)]
pub use skip_rule::{in_vm, skip, skip_for_tool};

/// Open fds of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, std::iter::Iterator::count)
}

/// Mappings of buffer files in this process: memfds (hugetlb ones too),
/// dma-bufs and device nodes. Anonymous mappings are left out on purpose:
/// the test harness runs other tests on threads whose stacks and malloc
/// arenas come and go, and a leak check must not count those.
pub fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().filter(|line| is_buffer_mapping(line)).count())
}

fn is_buffer_mapping(maps_line: &str) -> bool {
    // The pathname is the sixth field and may contain spaces ("(deleted)").
    let path = maps_line.split_whitespace().nth(5).unwrap_or("");
    path.starts_with("/memfd:")
        || path.starts_with("/dmabuf")
        || path.starts_with("anon_inode:dmabuf")
        || path.starts_with("/dev/")
}

/// Running as root?
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Run test `name` of this same test binary in a child process, with
/// `env` added; returns whether it passed. The child sees
/// DMABROKER_CHILD=1 and should act as the second process.
pub fn run_child(name: &str, env: &[(&str, String)]) -> std::process::Output {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = std::process::Command::new(exe);
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"]).env("DMABROKER_CHILD", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("spawning the child test process")
}

/// True in a child started by [`run_child`].
pub fn is_child() -> bool {
    std::env::var_os("DMABROKER_CHILD").is_some()
}
