//! `/proc/<pid>/fdinfo/<fd>` and `/proc/<pid>/fd/<fd>`: what the kernel says
//! about an open file. dma-bufs report `size:`, `count:` (file references),
//! `exp_name:` (the exporter: `system`, `udmabuf`, `vb2_...`, a DRM driver)
//! and `name:` (set with `DMA_BUF_SET_NAME`); every file reports `pos:`,
//! `flags:` (octal open flags) and `ino:`.

use std::collections::BTreeMap;
use std::io;

/// Parsed fdinfo: `key: value` lines, keys without the colon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FdInfo {
    fields: BTreeMap<String, String>,
}

impl FdInfo {
    /// Read `/proc/<pid>/fdinfo/<fd>` (`pid` None: this process).
    ///
    /// # Errors
    /// `NotFound` when the process or fd does not exist; `PermissionDenied`
    /// for another user's process without `CAP_SYS_PTRACE`.
    pub fn read(pid: Option<u32>, fd: i32) -> io::Result<Self> {
        let path = match pid {
            Some(pid) => format!("/proc/{pid}/fdinfo/{fd}"),
            None => format!("/proc/self/fdinfo/{fd}"),
        };
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }

    /// Parse fdinfo text. The first occurrence of a key wins: a dma-buf's
    /// `name:` is printed last and unescaped, so a name such as
    /// `"x\nexp_name:\tcma"` (set by whoever held the buffer) must not
    /// override the kernel's own `size:`, `exp_name:` or `count:` lines.
    pub fn parse(text: &str) -> Self {
        let mut fields = BTreeMap::new();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once(':') {
                fields.entry(k.trim().to_owned()).or_insert_with(|| v.trim().to_owned());
            }
        }
        Self { fields }
    }

    /// A raw field.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// A decimal field.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.parse().ok()
    }

    /// The open flags (`flags:`, octal).
    pub fn flags(&self) -> Option<u32> {
        u32::from_str_radix(self.get("flags")?, 8).ok()
    }

    /// The inode number (`ino:`).
    pub fn inode(&self) -> Option<u64> {
        self.get_u64("ino")
    }

    /// True when this is a dma-buf (it has `exp_name:`).
    pub fn is_dma_buf(&self) -> bool {
        self.fields.contains_key("exp_name")
    }

    /// dma-buf size (`size:`).
    pub fn dma_buf_size(&self) -> Option<u64> {
        self.get_u64("size")
    }

    /// dma-buf exporter name (`exp_name:`).
    pub fn exporter(&self) -> Option<&str> {
        self.get("exp_name")
    }

    /// dma-buf name set with `DMA_BUF_SET_NAME` (`name:`), if any.
    pub fn dma_buf_name(&self) -> Option<&str> {
        self.get("name").filter(|n| !n.is_empty() && *n != "<none>")
    }

    /// dma-buf file reference count (`count:`).
    pub fn file_count(&self) -> Option<u64> {
        self.get_u64("count")
    }
}

/// Mount ids of the kernel's internal memfd mounts (shmem, one hugetlbfs
/// mount per huge page size) with their device numbers (major, minor),
/// found once by creating an empty memfd of each kind.
pub fn memfd_mounts() -> &'static std::collections::HashMap<u64, (u32, u32)> {
    use std::os::fd::AsRawFd;
    static MOUNTS: std::sync::OnceLock<std::collections::HashMap<u64, (u32, u32)>> = std::sync::OnceLock::new();
    MOUNTS.get_or_init(|| {
        use rustix::fs::MemfdFlags as M;
        [M::empty(), M::HUGETLB, M::HUGETLB | M::HUGE_2MB, M::HUGETLB | M::HUGE_1GB]
            .into_iter()
            .filter_map(|extra| rustix::fs::memfd_create("dmabroker-probe", M::CLOEXEC | extra).ok())
            .filter_map(|fd| {
                let mnt = FdInfo::read(None, fd.as_raw_fd()).ok()?.get_u64("mnt_id")?;
                let st = rustix::fs::fstat(&fd).ok()?;
                Some((mnt, (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev))))
            })
            .collect()
    })
}

/// Open another process's fd link (`/proc/<pid>/fd/<n>`) `O_PATH` and return
/// it only when the file lies on a memfd mount, so that `fstat` on it is
/// answered by shmem/hugetlbfs. Never `stat` such a link blindly: that
/// reaches the file's file system, and anyone can mount a FUSE file whose
/// path starts with `/memfd:` and never answer. An `O_PATH` open calls no
/// file system code.
pub fn open_memfd_path(link: &std::path::Path) -> Option<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    use std::os::fd::AsRawFd;
    let fd = rustix::fs::open(link, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let own = FdInfo::read(None, fd.as_raw_fd()).ok()?;
    own.get_u64("mnt_id").is_some_and(|m| memfd_mounts().contains_key(&m)).then_some(fd)
}

/// The target of `/proc/<pid>/fd/<fd>`: `/memfd:name (deleted)`,
/// `/dmabuf:name`, `anon_inode:dmabuf`, `socket:[123]`, a path...
///
/// # Errors
/// As [`FdInfo::read`].
pub fn fd_link(pid: Option<u32>, fd: i32) -> io::Result<String> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/fd/{fd}"),
        None => format!("/proc/self/fd/{fd}"),
    };
    Ok(std::fs::read_link(path)?.to_string_lossy().into_owned())
}

/// Whether an fd of this process is a dma-buf or a memfd, told without a
/// call into the file's own file system (`/proc/self/fdinfo` and
/// `F_GET_SEALS` are answered by the VFS and shmem). Call it before `fstat`, `fcntl` locks or
/// anything else that reaches a file another process sent: `fstat` of a
/// FUSE file waits for its (perhaps hostile) server.
///
/// A memfd is told by `F_GET_SEALS`, which only shmem and hugetlbfs answer
/// (any other file gets `EINVAL` from the VFS, without a call into its file
/// system); a tmpfs file passes too, and is as harmless.
pub fn is_buffer_fd(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    rustix::fs::fcntl_get_seals(fd).is_ok() || FdInfo::read(None, fd.as_raw_fd()).is_ok_and(|info| info.is_dma_buf())
}

/// Whether an fd of this process is a sync_file (`anon_inode:sync_file`),
/// from its `/proc/self/fd` link (no file system call).
pub fn is_sync_file(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    fd_link(None, fd.as_raw_fd()).is_ok_and(|l| l == "anon_inode:sync_file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dma_buf_fdinfo() {
        let info = FdInfo::parse(
            "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1234\nsize:\t4096\ncount:\t2\nexp_name:\tsystem\nname:\tcam0\n",
        );
        assert!(info.is_dma_buf());
        assert_eq!(info.dma_buf_size(), Some(4096));
        assert_eq!(info.exporter(), Some("system"));
        assert_eq!(info.dma_buf_name(), Some("cam0"));
        assert_eq!(info.file_count(), Some(2));
        assert_eq!(info.flags(), Some(0o2000002));
        assert_eq!(info.inode(), Some(1234));
    }

    #[test]
    fn a_dma_buf_name_cannot_override_kernel_fields() {
        // DMA_BUF_SET_NAME accepts newlines and fdinfo prints the name last.
        let info = FdInfo::parse(
            "pos:\t0\nflags:\t02\nino:\t7\nsize:\t4096\ncount:\t1\nexp_name:\tsystem\nname:\tx\nsize:\t99999999\nexp_name:\tcma\n",
        );
        assert_eq!(info.dma_buf_size(), Some(4096));
        assert_eq!(info.exporter(), Some("system"));
        assert_eq!(info.dma_buf_name(), Some("x"));
    }
}
