//! Scanning `/proc`: every process's fd tables and mappings, bounded and
//! tolerant of processes that exit or deny access meanwhile.

use super::fd_tables::threads_with_own_fd_table;
use super::model::{BufferId, FdHolding, FileStat, ProcessHoldings};
use super::parse::{fd_holding, map_holdings};
use super::procfs::{self, classify_target, LinkTarget};
use super::snapshot::Snapshot;
use super::DMABROKER_PREFIX;
use crate::buffer::BufferKind;
use crate::fdinfo::FdInfo;
use std::io;
use std::os::unix::fs::MetadataExt;

/// Why a scan failed as a whole (`/proc` itself unreadable).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// `/proc` could not be listed (not mounted?).
    #[error("cannot list {path}: {source}")]
    Proc {
        /// The directory.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// What to scan and what to report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanOptions {
    /// Include every memfd, not only dmabroker's (`dmabroker:*`).
    pub all_memfds: bool,
    /// Report only this process (every process is still scanned, so holder
    /// lists and proportional shares stay complete).
    pub pid: Option<u32>,
    /// Report only processes of this (effective) uid.
    pub uid: Option<u32>,
    /// Broker processes besides those found by their command line
    /// (`dmabroker serve`): every memfd they hold is a dmabroker buffer
    /// (for a broker running inside another program, as in tests).
    pub broker_pids: Vec<u32>,
}

impl ScanOptions {
    pub(super) fn matches(&self, pid: u32, uid: u32) -> bool {
        self.pid.unwrap_or(pid) == pid && self.uid.unwrap_or(uid) == uid
    }
}

/// Scan `/proc` for every dma-buf and dmabroker buffer (see the module docs).
///
/// # Errors
/// [`ScanError::Proc`] only when `/proc` cannot be listed.
pub fn scan() -> Result<Snapshot, ScanError> {
    scan_with(&ScanOptions::default())
}

/// [`scan`] with options.
///
/// # Errors
/// As [`scan`].
pub fn scan_with(options: &ScanOptions) -> Result<Snapshot, ScanError> {
    let dir = std::fs::read_dir("/proc").map_err(|source| ScanError::Proc { path: "/proc".into(), source })?;
    let shmem = shmem_dev();
    let mut holdings = Vec::new();
    let mut brokers: std::collections::BTreeSet<u32> = options.broker_pids.iter().copied().collect();
    let (mut vanished, mut denied, mut partial) = (0u64, 0u64, 0u64);
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // Every memfd is read: which ones are dmabroker's is known only once
        // the broker's own are (below).
        match read_process(pid, shmem, true) {
            Ok(Some((p, complete))) => {
                if p.comm == "dmabroker" && is_broker_command(pid) {
                    brokers.insert(pid);
                }
                holdings.push(p);
                if !complete {
                    partial += 1;
                }
            }
            Ok(None) => {}
            Err(Skip::Denied) => denied += 1,
            Err(Skip::Vanished) => vanished += 1,
        }
    }
    // Whatever the broker holds is a dmabroker buffer, named or adopted.
    let broker_ids: std::collections::BTreeSet<BufferId> = holdings
        .iter()
        .filter(|p| brokers.contains(&p.pid))
        .flat_map(|p| p.fds.iter().map(|f| f.id).chain(p.maps.iter().map(|m| m.id)))
        .collect();
    let keep = |kind: BufferKind, name: Option<&str>, id: &BufferId| {
        options.all_memfds
            || kind == BufferKind::DmaBuf
            || name.is_some_and(|n| n.starts_with(DMABROKER_PREFIX))
            || broker_ids.contains(id)
    };
    for p in &mut holdings {
        p.fds.retain(|f| keep(f.kind, f.name.as_deref(), &f.id));
        p.maps.retain(|m| keep(m.kind, m.name.as_deref(), &m.id));
    }
    let mut snapshot = Snapshot::from_holdings(&holdings, options, &procfs::user_names(), &sysfs_dma_buf);
    for b in &mut snapshot.buffers {
        if b.id().is_some_and(|id| broker_ids.contains(&id)) {
            b.dmabroker = true;
        }
    }
    snapshot.scanned_processes += vanished + denied;
    snapshot.unreadable_processes = vanished + denied + partial;
    snapshot.denied_processes = denied + partial;
    Ok(snapshot)
}

/// Whether process `pid` runs `dmabroker serve` (its command line: the
/// program named `dmabroker`, with a `serve` argument).
pub(super) fn is_broker_command(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let mut args = cmdline.split(|&b| b == 0);
    let program = args.next().unwrap_or_default();
    let name = program.rsplit(|&b| b == b'/').next().unwrap_or_default();
    name == b"dmabroker" && args.any(|a| a == b"serve")
}

/// The device of the kernel's internal shmem mount, where every plain memfd
/// lives (learned from a probe memfd, closed at once).
pub(super) fn shmem_dev() -> Option<(u32, u32)> {
    let fd = rustix::fs::memfd_create("dmabroker-accounting-probe", rustix::fs::MemfdFlags::CLOEXEC).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    Some((rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev)))
}

/// `/sys/kernel/dmabuf/buffers/<inode>/{size,exporter_name}` (kernels with
/// `CONFIG_DMABUF_SYSFS_STATS`).
pub(super) fn sysfs_dma_buf(inode: u64) -> Option<(u64, String)> {
    let dir = format!("/sys/kernel/dmabuf/buffers/{inode}");
    let size = std::fs::read_to_string(format!("{dir}/size")).ok()?.trim().parse().ok()?;
    let exporter = std::fs::read_to_string(format!("{dir}/exporter_name")).ok()?.trim().to_owned();
    Some((size, exporter))
}

pub(super) enum Skip {
    Vanished,
    Denied,
}

pub(super) fn skip(e: &io::Error) -> Skip {
    match e.kind() {
        io::ErrorKind::PermissionDenied => Skip::Denied,
        _ if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => Skip::Denied,
        _ => Skip::Vanished,
    }
}

/// What one process holds, and whether all of it could be read (its maps may
/// be denied while its fds are not); `Ok(None)` for kernel threads.
pub(super) fn read_process(
    pid: u32,
    shmem: Option<(u32, u32)>,
    all_memfds: bool,
) -> Result<Option<(ProcessHoldings, bool)>, Skip> {
    let base = format!("/proc/{pid}");
    let stat = std::fs::read_to_string(format!("{base}/stat")).map_err(|e| skip(&e))?;
    let stat = procfs::parse_stat(&stat).ok_or(Skip::Vanished)?;
    if stat.is_kernel_thread() {
        return Ok(None);
    }
    let status = std::fs::read_to_string(format!("{base}/status")).map_err(|e| skip(&e))?;
    let uid = procfs::parse_status_euid(&status).ok_or(Skip::Vanished)?;

    let mut fds = read_fd_table(&base, shmem, all_memfds).map_err(|e| skip(&e))?;
    // Threads with a table of their own (unshare(CLONE_FILES)): a buffer
    // they hold after every other thread closed it is listed only there.
    let tables = threads_with_own_fd_table(pid, true);
    for &tid in &tables.tids {
        let Ok(more) = read_fd_table(&format!("{base}/task/{tid}"), shmem, all_memfds) else { continue };
        for h in more {
            if !fds.iter().any(|f: &FdHolding| f.fd == h.fd && f.id == h.id) {
                fds.push(h);
            }
        }
    }
    fds.sort_by_key(|f| f.fd);

    let (maps, complete) = match process_maps(pid) {
        // Fd tables past MAX_OWN_FD_TABLES were not read: seen in part.
        Ok(maps) => (maps, tables.complete),
        Err(e) => match skip(&e) {
            // Keep the fds already read; the process counts as unreadable.
            Skip::Denied => (String::new(), false),
            Skip::Vanished => return Err(Skip::Vanished),
        },
    };
    let mut maps = map_holdings(&maps, shmem, all_memfds);
    for m in &mut maps {
        if !fds.iter().any(|f| f.id == m.id) {
            // Only mapped here: the file's size through map_files (root
            // only), opened O_PATH and checked like an fd link for memfds.
            let path = format!("{base}/map_files/{:x}-{:x}", m.range.0, m.range.1);
            m.size = match m.kind {
                BufferKind::DmaBuf => std::fs::metadata(path).ok().map(|meta| meta.size()),
                _ => crate::fdinfo::open_memfd_path(path.as_ref())
                    .and_then(|fd| rustix::fs::fstat(fd).ok())
                    .map(|st| st.st_size as u64),
            };
        }
    }
    Ok(Some((ProcessHoldings { pid, comm: stat.comm, uid, fds, maps }, complete)))
}

/// The buffer fds of one fd table: `task` is `/proc/<pid>` or
/// `/proc/<pid>/task/<tid>`.
pub(super) fn read_fd_table(task: &str, shmem: Option<(u32, u32)>, all_memfds: bool) -> io::Result<Vec<FdHolding>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir(format!("{task}/fd"))?.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // Any error below: the fd was closed meanwhile; skip it.
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let link = link.to_string_lossy();
        let target = classify_target(&link);
        if target == LinkTarget::Other {
            continue;
        }
        // Never stat a link blindly: a FUSE file named `/memfd:...` or
        // `/dmabuf:...` would never answer. A dma-buf is stat'ed once its
        // fdinfo (answered by the VFS alone) shows an exporter; a memfd once
        // it is known to be on a memfd mount.
        let fdinfo = match target {
            LinkTarget::DmaBuf { .. } => {
                match std::fs::read_to_string(format!("{task}/fdinfo/{fd}")).map(|t| FdInfo::parse(&t)) {
                    Ok(info) if info.is_dma_buf() => Some(info),
                    _ => continue,
                }
            }
            _ => None,
        };
        let stat = match target {
            LinkTarget::DmaBuf { .. } => std::fs::metadata(entry.path()).ok().map(|m| FileStat::from_metadata(&m)),
            _ => crate::fdinfo::open_memfd_path(&entry.path())
                .and_then(|fd| rustix::fs::fstat(fd).ok())
                .map(|st| FileStat::from_stat(&st)),
        };
        if stat.is_none() {
            continue;
        }
        if let Some(h) = fd_holding(fd, &link, fdinfo.as_ref(), stat, shmem, all_memfds) {
            fds.push(h);
        }
    }
    Ok(fds)
}

/// The maps of process `pid` (`/proc/<pid>`): `/proc/<pid>/maps`, or, when
/// that is empty because the leader has exited (a zombie leader has no
/// memory map of its own while its other threads run on), the maps of the
/// first live thread (threads share one memory map).
///
/// # Errors
/// Reading `/proc/<pid>/maps` failed (the process is gone, or its maps are
/// denied to this user).
pub fn process_maps(pid: u32) -> io::Result<String> {
    let maps = read_maps(format!("/proc/{pid}/maps"))?;
    if !maps.is_empty() {
        return Ok(maps);
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Ok(maps) };
    for task in tasks.flatten() {
        if task.file_name().to_str() == Some(&pid.to_string()) {
            continue;
        }
        match read_maps(task.path().join("maps")) {
            Ok(m) if !m.is_empty() => return Ok(m),
            _ => {}
        }
    }
    Ok(maps)
}

/// A maps file read as bytes: a path field (a file name, a memfd name) may
/// hold any byte but `/`, and `read_to_string` would refuse the whole file
/// for one that is not UTF-8, hiding every mapping of the process (a quota
/// escape). Only the path can hold such bytes; the fields the accounting
/// reads (device, inode) are ASCII and survive the lossy conversion.
pub(super) fn read_maps(path: impl AsRef<std::path::Path>) -> io::Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}
