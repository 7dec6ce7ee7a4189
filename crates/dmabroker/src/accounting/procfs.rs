//! Parsers for the `/proc` and `/etc` text that accounting reads: fd link
//! targets, `/proc/<pid>/maps` lines, `/proc/<pid>/stat`, the `Uid:` line of
//! `/proc/<pid>/status` and `/etc/passwd`. Pure functions, unit-tested on
//! fixtures of real kernel output.

use std::collections::BTreeMap;

/// What an fd link target or a maps path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkTarget {
    /// A dma-buf: `/dmabuf:<name>` (kernels since 5.3) or `anon_inode:dmabuf`.
    DmaBuf {
        /// The name set with `DMA_BUF_SET_NAME`, if any.
        name: Option<String>,
    },
    /// A memfd: `/memfd:<name> (deleted)` (shmem or hugetlbfs).
    Memfd {
        /// The name given to `memfd_create` (`dmabroker:<name>` for dmabroker buffers).
        name: String,
    },
    /// Anything else (files, sockets, pipes, other anonymous inodes).
    Other,
}

/// Classify the target of `/proc/<pid>/fd/<n>` or the path column of
/// `/proc/<pid>/maps`.
pub fn classify_target(target: &str) -> LinkTarget {
    if let Some(name) = target.strip_prefix("/dmabuf:") {
        let name = name.strip_suffix(" (deleted)").unwrap_or(name);
        return LinkTarget::DmaBuf { name: (!name.is_empty()).then(|| name.to_owned()) };
    }
    if target == "anon_inode:dmabuf" {
        return LinkTarget::DmaBuf { name: None };
    }
    if let Some(name) = target.strip_prefix("/memfd:") {
        let name = name.strip_suffix(" (deleted)").unwrap_or(name);
        return LinkTarget::Memfd { name: name.to_owned() };
    }
    LinkTarget::Other
}

/// One line of `/proc/<pid>/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Permissions (`rw-s`, `r--p`, ...).
    pub perms: String,
    /// Offset in the file.
    pub offset: u64,
    /// Device major number of the file's filesystem.
    pub dev_major: u32,
    /// Device minor number.
    pub dev_minor: u32,
    /// Inode number (0 for anonymous memory).
    pub inode: u64,
    /// The path column (may be empty, may contain spaces).
    pub path: String,
}

impl MapsEntry {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// True for an empty range (never produced by the kernel).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True for a shared mapping (`s` in the permissions).
    pub fn is_shared(&self) -> bool {
        self.perms.ends_with('s')
    }
}

/// Parse one line of `/proc/<pid>/maps`; `None` for a malformed line.
pub fn parse_maps_line(line: &str) -> Option<MapsEntry> {
    let mut rest = line;
    let mut field = || -> Option<&str> {
        let trimmed = rest.trim_start();
        let end = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
        let (f, r) = trimmed.split_at(end);
        rest = r;
        (!f.is_empty()).then_some(f)
    };
    let range = field()?;
    let perms = field()?.to_owned();
    let offset = u64::from_str_radix(field()?, 16).ok()?;
    let dev = field()?;
    let inode = field()?.parse().ok()?;
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    Some(MapsEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        dev_major: u32::from_str_radix(major, 16).ok()?,
        dev_minor: u32::from_str_radix(minor, 16).ok()?,
        inode,
        path: rest.trim().to_owned(),
    })
}

/// Parse a whole `/proc/<pid>/maps`, skipping malformed lines.
pub fn parse_maps(text: &str) -> Vec<MapsEntry> {
    text.lines().filter_map(parse_maps_line).collect()
}

/// What accounting needs from `/proc/<pid>/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// The command name (`comm`, up to 15 bytes, may contain spaces and parentheses).
    pub comm: String,
    /// Parent pid.
    pub ppid: u32,
    /// `PF_*` flags.
    pub flags: u64,
}

/// `PF_KTHREAD`: a kernel thread (it holds no user-space files).
pub const PF_KTHREAD: u64 = 0x0020_0000;

impl ProcStat {
    /// True for a kernel thread.
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// Parse `/proc/<pid>/stat`: `pid (comm) state ppid pgrp session tty tpgid flags ...`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let mut fields = text.get(close + 1..)?.split_whitespace();
    let _state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let flags = fields.nth(4)?.parse().ok()?;
    Some(ProcStat { comm, ppid, flags })
}

/// The effective uid from `/proc/<pid>/status` (`Uid: real effective saved fs`).
pub fn parse_status_euid(text: &str) -> Option<u32> {
    let line = text.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `/etc/passwd` as uid -> user name (the first entry wins for a uid).
pub fn parse_passwd(text: &str) -> BTreeMap<u32, String> {
    let mut users = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split(':');
        let (Some(name), Some(_pw), Some(uid)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if let Ok(uid) = uid.parse() {
            users.entry(uid).or_insert_with(|| name.to_owned());
        }
    }
    users
}

/// uid -> name from `/etc/passwd` (empty when it cannot be read).
pub fn user_names() -> BTreeMap<u32, String> {
    std::fs::read_to_string("/etc/passwd").map(|t| parse_passwd(&t)).unwrap_or_default()
}

/// Resolve a `--user` argument: a decimal uid, or a name from `/etc/passwd`.
pub fn resolve_user(user: &str, names: &BTreeMap<u32, String>) -> Option<u32> {
    if let Ok(uid) = user.parse() {
        return Some(uid);
    }
    names.iter().find(|(_, n)| n.as_str() == user).map(|(uid, _)| *uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_link_targets() {
        assert_eq!(classify_target("/dmabuf:cam0"), LinkTarget::DmaBuf { name: Some("cam0".into()) });
        assert_eq!(classify_target("/dmabuf:"), LinkTarget::DmaBuf { name: None });
        assert_eq!(classify_target("anon_inode:dmabuf"), LinkTarget::DmaBuf { name: None });
        assert_eq!(
            classify_target("/memfd:dmabroker:frame 0 (deleted)"),
            LinkTarget::Memfd { name: "dmabroker:frame 0".into() }
        );
        assert_eq!(classify_target("/memfd:wayland-shm (deleted)"), LinkTarget::Memfd { name: "wayland-shm".into() });
        assert_eq!(classify_target("socket:[12345]"), LinkTarget::Other);
        assert_eq!(classify_target("anon_inode:[eventfd]"), LinkTarget::Other);
        assert_eq!(classify_target("/dev/dri/renderD128"), LinkTarget::Other);
        assert_eq!(classify_target("/usr/lib/libc.so.6"), LinkTarget::Other);
    }

    // Real lines (x86-64, Linux 6.x): a memfd, a named dma-buf, an unnamed
    // dma-buf on an older kernel, anonymous memory, a library path.
    const MAPS: &str = "\
55d0c4a00000-55d0c4a28000 r--p 00000000 fd:01 1311742                    /usr/bin/cat
7fad5b676000-7fad5b776000 rw-s 00000000 00:01 1029                       /memfd:dmabroker:x (deleted)
7fad5b800000-7fad5bc00000 rw-s 00000000 00:0d 52731                      /dmabuf:cam0
7fad5c000000-7fad5c100000 r--s 00100000 00:0d 52731                      /dmabuf:cam0
7fad5d000000-7fad5d021000 rw-p 00000000 00:00 0 
7fad5e000000-7fad5e400000 rw-s 00000000 00:0f 8812                       anon_inode:dmabuf
7ffd1a3f0000-7ffd1a411000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn parses_maps_fixture() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 7);
        let memfd = &maps[1];
        assert_eq!((memfd.start, memfd.end, memfd.len()), (0x7fad5b676000, 0x7fad5b776000, 1 << 20));
        assert_eq!((memfd.dev_major, memfd.dev_minor, memfd.inode), (0, 1, 1029));
        assert!(memfd.is_shared());
        assert_eq!(classify_target(&memfd.path), LinkTarget::Memfd { name: "dmabroker:x".into() });
        assert_eq!(maps[3].offset, 0x100000);
        assert_eq!((maps[3].dev_major, maps[3].dev_minor), (0, 0xd));
        assert_eq!(maps[4].path, "");
        assert_eq!(maps[0].dev_major, 0xfd);
        assert_eq!(classify_target(&maps[5].path), LinkTarget::DmaBuf { name: None });
        assert_eq!(maps[6].path, "[stack]");
        assert!(parse_maps_line("garbage").is_none());
    }

    #[test]
    fn parses_stat_and_status() {
        let st = parse_stat("1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 44153 372149 0 195").unwrap();
        assert_eq!(st.comm, "my (odd) prog");
        assert_eq!(st.ppid, 1);
        assert_eq!(st.flags, 4194560);
        assert!(!st.is_kernel_thread());
        let kthread = parse_stat("2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0").unwrap();
        assert!(kthread.is_kernel_thread());
        let status =
            "Name:\tcat\nUmask:\t0022\nState:\tR (running)\nUid:\t1000\t1001\t1000\t1000\nGid:\t100\t100\t100\t100\n";
        assert_eq!(parse_status_euid(status), Some(1001));
    }

    #[test]
    fn parses_passwd() {
        let users = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\n# comment\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\nbad line\nalias:x:1000:1000::/:/bin/sh\n",
        );
        assert_eq!(users.get(&0).map(String::as_str), Some("root"));
        assert_eq!(users.get(&1000).map(String::as_str), Some("alice"));
        assert_eq!(resolve_user("alice", &users), Some(1000));
        assert_eq!(resolve_user("42", &users), Some(42));
        assert_eq!(resolve_user("nobody-here", &users), None);
    }
}
