//! Memory cgroups (v2) as the broker needs them: where cgroup2 is mounted,
//! which cgroup a client is in, and how much room its `memory.max` leaves.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Where the cgroup2 hierarchy is mounted (`/proc/self/mountinfo`), the
/// first mount of type `cgroup2`.
pub fn mount_point() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(|p| PathBuf::from(unescape(p)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path (`0::/a/b` in `/proc/PID/cgroup`, relative to the
/// broker's cgroup namespace) of the process `pid`, read while its pidfd
/// says it is alive (so a recycled pid cannot answer for it).
///
/// # Errors
/// A sentence: no pidfd, the process is gone, no v2 entry.
pub fn of_process(pid: u32, pidfd: Option<&impl AsFd>) -> Result<String, String> {
    let Some(pidfd) = pidfd else {
        return Err(format!("no pidfd of the client (pid {pid}): its cgroup cannot be known safely"));
    };
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("cannot read /proc/{pid}/cgroup: {e}"))?;
    if !alive(pidfd) {
        return Err(format!("the client (pid {pid}) has exited"));
    }
    parse(&text).ok_or_else(|| format!("pid {pid} has no cgroup v2 entry (\"0::\") in /proc/{pid}/cgroup"))
}

/// The `0::PATH` line of a `/proc/PID/cgroup` text.
pub fn parse(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix("0::")).map(|p| p.trim_end().to_owned()).filter(|p| p.starts_with('/'))
}

/// Whether the process of a pidfd still runs (a pidfd polls readable once it exited).
fn alive(pidfd: &impl AsFd) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    matches!(poll(&mut fds, Some(&rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(0))
}

/// The cgroup directory of `path` under the mount `root`.
pub fn dir(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The tightest `memory.max` on the way from `path` up to the root: the
/// level whose limit leaves the least room, as (level, max, current).
/// `None` when no level has a limit (or nothing can be read).
pub fn tightest_limit(root: &Path, path: &str) -> Option<(String, u64, u64)> {
    let mut best: Option<(String, u64, u64)> = None;
    let mut level = path.trim_end_matches('/').to_owned();
    loop {
        if level.is_empty() {
            break; // the root cgroup has no memory.max
        }
        let d = dir(root, &level);
        let max = std::fs::read_to_string(d.join("memory.max")).ok();
        let current = std::fs::read_to_string(d.join("memory.current")).ok();
        if let (Some(max), Some(current)) = (max, current) {
            if let (Ok(max), Ok(current)) = (max.trim().parse::<u64>(), current.trim().parse::<u64>()) {
                let room = max.saturating_sub(current);
                if best.as_ref().is_none_or(|(_, m, c)| room < m.saturating_sub(*c)) {
                    best = Some((if level.is_empty() { "/".into() } else { level.clone() }, max, current));
                }
            }
        }
        match level.rfind('/') {
            Some(i) => level.truncate(i),
            None => break,
        }
    }
    best
}

/// The `memory.max` and `memory.current` files of a cgroup and its
/// ancestors, opened once and re-read with `pread` for each request (a
/// worker checks them before every allocation: opening and closing two
/// kernfs files per level cost more than reading them).
#[derive(Debug)]
pub struct LimitFiles {
    levels: Vec<(String, std::fs::File, std::fs::File)>,
}

impl LimitFiles {
    /// Open the files of `path` and each ancestor that has them.
    pub fn open(root: &Path, path: &str) -> Self {
        let mut levels = Vec::new();
        let mut level = path.trim_end_matches('/').to_owned();
        while !level.is_empty() {
            let d = dir(root, &level);
            if let (Ok(max), Ok(current)) =
                (std::fs::File::open(d.join("memory.max")), std::fs::File::open(d.join("memory.current")))
            {
                levels.push((level.clone(), max, current));
            }
            match level.rfind('/') {
                Some(i) => level.truncate(i),
                None => break,
            }
        }
        Self { levels }
    }

    /// As [`tightest_limit`], from the open files.
    pub fn tightest(&self) -> Option<(String, u64, u64)> {
        let mut best: Option<(String, u64, u64)> = None;
        for (level, max, current) in &self.levels {
            let (Some(max), Some(current)) = (read_u64(max), read_u64(current)) else { continue };
            if best.as_ref().is_none_or(|(_, m, c)| max.saturating_sub(current) < m.saturating_sub(*c)) {
                best = Some((level.clone(), max, current));
            }
        }
        best
    }
}

/// A cgroup file's number from its start (`max` and errors: `None`).
fn read_u64(f: &std::fs::File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 32];
    let n = f.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_line_is_found() {
        assert_eq!(parse("12:memory:/x\n0::/user.slice/app-1.scope\n").as_deref(), Some("/user.slice/app-1.scope"));
        assert_eq!(parse("0::/\n").as_deref(), Some("/"));
        assert_eq!(parse("3:cpu:/a\n"), None);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/sys/fs/cgroup\040x"), "/sys/fs/cgroup x");
        assert_eq!(unescape("/a"), "/a");
    }

    #[test]
    fn the_tightest_level_wins() {
        let root = std::env::temp_dir().join(format!("dmabroker-cgroup-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (p, max, cur) in [("a", "100", "10"), ("a/b", "max", "5"), ("a/b/c", "1000", "5")] {
            let d = root.join(p);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("memory.max"), max).unwrap();
            std::fs::write(d.join("memory.current"), cur).unwrap();
        }
        assert_eq!(tightest_limit(&root, "/a/b/c"), Some(("/a".into(), 100, 10)));
        let files = LimitFiles::open(&root, "/a/b/c");
        assert_eq!(files.tightest(), Some(("/a".into(), 100, 10)));
        // Re-read, not cached: the worker sees each allocation's charge.
        std::fs::write(root.join("a/b/c/memory.current"), "999").unwrap();
        assert_eq!(files.tightest(), Some(("/a/b/c".into(), 1000, 999)));
        let _ = std::fs::remove_dir_all(&root);
    }
}
