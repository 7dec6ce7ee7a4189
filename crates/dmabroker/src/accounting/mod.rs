//! Accounting: who holds which buffers on this machine, per process and per
//! user, like Android's `dmabuf_dump`.
//!
//! [`scan`] walks `/proc`, not the broker: it sees every dma-buf (whoever
//! exported it) and every dmabroker memfd (named `dmabroker:<name>`, see
//! [`crate::heap::memfd`]), held through a file descriptor
//! (`/proc/<pid>/fd`, `/proc/<pid>/fdinfo`; for threads with a file
//! descriptor table of their own, `unshare(CLONE_FILES)`, also
//! `/proc/<pid>/task/<tid>/fd`, listed under the process with the fd numbers
//! of that table) or only through a mapping (`/proc/<pid>/maps`). Other memfds are included with
//! [`ScanOptions::all_memfds`], except that every memfd a broker process
//! holds (`dmabroker serve`, or [`ScanOptions::broker_pids`]) is a dmabroker
//! buffer whatever its name (the broker adopts published memfds as they
//! are), and so is listed, with all its holders.
//!
//! Buffers are identified by filesystem device and inode ([`BufferId`]), so a
//! buffer held by several fds and mappings in several processes is counted
//! once in the totals. A process's `bytes` counts each buffer it holds in
//! full; its `proportional_bytes` charges a buffer held by `n` processes
//! `size / n` to each (like PSS).
//!
//! Processes that exit during the scan, or whose files this user may not read
//! (another user's process without `CAP_SYS_PTRACE`), are skipped and counted
//! in [`Snapshot::unreadable_processes`]; they never fail the scan.
//!
//! Not visible from `/proc`: dma-bufs referenced only by drivers (a V4L2 queue,
//! a DRM framebuffer) once every process has closed them, and CPU mappings
//! that an exporter redirects to another file (some DRM drivers' mmap).
//! Where the kernel has `/sys/kernel/dmabuf/buffers` it fills in the size and
//! exporter of dma-bufs that are only mapped.
//!
//! ```no_run
//! let snapshot = dmabroker::accounting::scan().unwrap();
//! for p in &snapshot.processes {
//!     println!("{} {} {} bytes", p.pid, p.comm, p.bytes);
//! }
//! ```

pub mod bpf_iter;
pub mod ledger;
pub mod procfs;

use crate::buffer::BufferKind;
use crate::fdinfo::FdInfo;
use procfs::{classify_target, parse_maps, LinkTarget};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;

/// The prefix of every memfd name the library creates.
pub const DMABROKER_PREFIX: &str = "dmabroker:";

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
    fn matches(&self, pid: u32, uid: u32) -> bool {
        self.pid.unwrap_or(pid) == pid && self.uid.unwrap_or(uid) == uid
    }
}

/// The identity of a buffer: the device of its filesystem and its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct BufferId {
    /// Device major number.
    pub dev_major: u32,
    /// Device minor number.
    pub dev_minor: u32,
    /// Inode number.
    pub inode: u64,
}

/// Where a buffer's size came from, most to least exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SizeSource {
    /// dma-buf `size:` in `/proc/<pid>/fdinfo`.
    Fdinfo,
    /// `stat` of the file (a memfd's fd, or `/proc/<pid>/map_files` as root).
    Stat,
    /// `/sys/kernel/dmabuf/buffers/<inode>/size`.
    Sysfs,
    /// The extent of its mappings (a lower bound: only mapped, size unknown).
    Mapping,
}

/// `stat` of a file behind an fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    /// Device major number.
    pub dev_major: u32,
    /// Device minor number.
    pub dev_minor: u32,
    /// Inode number.
    pub inode: u64,
    /// File size.
    pub size: u64,
}

impl FileStat {
    fn from_stat(st: &rustix::fs::Stat) -> Self {
        Self {
            dev_major: rustix::fs::major(st.st_dev),
            dev_minor: rustix::fs::minor(st.st_dev),
            inode: st.st_ino,
            size: st.st_size as u64,
        }
    }

    fn from_metadata(m: &std::fs::Metadata) -> Self {
        Self {
            dev_major: rustix::fs::major(m.dev()),
            dev_minor: rustix::fs::minor(m.dev()),
            inode: m.ino(),
            size: m.size(),
        }
    }

    fn id(&self) -> BufferId {
        BufferId { dev_major: self.dev_major, dev_minor: self.dev_minor, inode: self.inode }
    }
}

/// One fd of a process that refers to a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdHolding {
    /// The fd number.
    pub fd: i32,
    /// The buffer.
    pub id: BufferId,
    /// Its kind.
    pub kind: BufferKind,
    /// Its size.
    pub size: u64,
    /// Where the size came from ([`SizeSource::Fdinfo`] or [`SizeSource::Stat`]).
    pub size_source: SizeSource,
    /// dma-buf exporter (`exp_name:`).
    pub exporter: Option<String>,
    /// dma-buf name or memfd name.
    pub name: Option<String>,
    /// dma-buf file reference count (`count:`).
    pub file_count: Option<u64>,
}

/// The mappings of one buffer in one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapHolding {
    /// The buffer.
    pub id: BufferId,
    /// Its kind.
    pub kind: BufferKind,
    /// dma-buf name or memfd name.
    pub name: Option<String>,
    /// Number of mappings (VMAs).
    pub mappings: u32,
    /// Bytes mapped, over all its mappings.
    pub mapped_bytes: u64,
    /// The highest file offset mapped (a lower bound of the size).
    pub extent: u64,
    /// The file size when it could be read (`/proc/<pid>/map_files`, root only).
    pub size: Option<u64>,
    /// One mapped range (`start`, `end`), to look the file up in `map_files`.
    pub range: (u64, u64),
}

/// Everything one process holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessHoldings {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Effective uid.
    pub uid: u32,
    /// Buffer fds.
    pub fds: Vec<FdHolding>,
    /// Buffer mappings, one entry per buffer.
    pub maps: Vec<MapHolding>,
}

fn memfd_kind(dev: (u32, u32), shmem_dev: Option<(u32, u32)>) -> BufferKind {
    // A memfd lives on the kernel's internal shmem mount or on hugetlbfs.
    match shmem_dev {
        Some(shmem) if shmem != dev => BufferKind::HugetlbMemfd,
        _ => BufferKind::Memfd,
    }
}

/// Decide what an fd is from its link target, fdinfo and stat. `None` when
/// it is no buffer, a memfd excluded by `all_memfds`, or information is missing.
///
/// `shmem_dev` is the device of the kernel's shmem mount (every plain memfd
/// lives there; a memfd elsewhere is on hugetlbfs).
pub fn fd_holding(
    fd: i32,
    link: &str,
    fdinfo: Option<&FdInfo>,
    stat: Option<FileStat>,
    shmem_dev: Option<(u32, u32)>,
    all_memfds: bool,
) -> Option<FdHolding> {
    match classify_target(link) {
        LinkTarget::Other => None,
        LinkTarget::Memfd { name } => {
            if !all_memfds && !name.starts_with(DMABROKER_PREFIX) {
                return None;
            }
            let stat = stat?;
            Some(FdHolding {
                fd,
                id: stat.id(),
                kind: memfd_kind((stat.dev_major, stat.dev_minor), shmem_dev),
                size: stat.size,
                size_source: SizeSource::Stat,
                exporter: None,
                name: Some(name),
                file_count: None,
            })
        }
        LinkTarget::DmaBuf { name } => {
            let stat = stat?;
            let (size, size_source) = match fdinfo.and_then(FdInfo::dma_buf_size) {
                Some(size) => (size, SizeSource::Fdinfo),
                None => (stat.size, SizeSource::Stat),
            };
            Some(FdHolding {
                fd,
                id: stat.id(),
                kind: BufferKind::DmaBuf,
                size,
                size_source,
                exporter: fdinfo.and_then(FdInfo::exporter).map(str::to_owned),
                name: fdinfo.and_then(FdInfo::dma_buf_name).map(str::to_owned).or(name),
                file_count: fdinfo.and_then(FdInfo::file_count),
            })
        }
    }
}

/// The buffers mapped in a `/proc/<pid>/maps` text, one entry per buffer.
pub fn map_holdings(maps: &str, shmem_dev: Option<(u32, u32)>, all_memfds: bool) -> Vec<MapHolding> {
    let mut by_id: BTreeMap<BufferId, MapHolding> = BTreeMap::new();
    for entry in parse_maps(maps) {
        let (kind, name) = match classify_target(&entry.path) {
            LinkTarget::Other => continue,
            LinkTarget::DmaBuf { name } => (BufferKind::DmaBuf, name),
            LinkTarget::Memfd { name } => {
                if !all_memfds && !name.starts_with(DMABROKER_PREFIX) {
                    continue;
                }
                (memfd_kind((entry.dev_major, entry.dev_minor), shmem_dev), Some(name))
            }
        };
        let id = BufferId { dev_major: entry.dev_major, dev_minor: entry.dev_minor, inode: entry.inode };
        let len = entry.len();
        let h = by_id.entry(id).or_insert_with(|| MapHolding {
            id,
            kind,
            name,
            mappings: 0,
            mapped_bytes: 0,
            extent: 0,
            size: None,
            range: (entry.start, entry.end),
        });
        h.mappings += 1;
        h.mapped_bytes += len;
        h.extent = h.extent.max(entry.offset.saturating_add(len));
    }
    by_id.into_values().collect()
}

/// A process that holds a buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Effective uid.
    pub uid: u32,
    /// The fds that refer to the buffer (empty: held only by mapping).
    pub fds: Vec<i32>,
    /// Number of mappings (VMAs) of the buffer.
    pub mappings: u32,
    /// Bytes mapped.
    pub mapped_bytes: u64,
}

/// One buffer and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BufferRecord {
    /// Inode number.
    pub inode: u64,
    /// Filesystem device, decimal `major:minor` (with the inode, the buffer's identity).
    pub device: String,
    /// Kind of buffer.
    pub kind: BufferKind,
    /// True for a dmabroker buffer (named `dmabroker:...`, or held by the
    /// broker process).
    pub dmabroker: bool,
    /// Size in bytes.
    pub size: u64,
    /// Where the size came from.
    pub size_source: SizeSource,
    /// dma-buf exporter (`system`, `udmabuf`, a driver), if known.
    pub exporter: Option<String>,
    /// dma-buf name or memfd name.
    pub name: Option<String>,
    /// dma-buf file reference count (`count:` in fdinfo).
    pub file_count: Option<u64>,
    /// `size / number of holding processes`.
    pub proportional_size: u64,
    /// The processes that hold it, by pid.
    pub holders: Vec<Holder>,
}

impl BufferRecord {
    /// The buffer's identity.
    pub fn id(&self) -> Option<BufferId> {
        let (major, minor) = self.device.split_once(':')?;
        Some(BufferId { dev_major: major.parse().ok()?, dev_minor: minor.parse().ok()?, inode: self.inode })
    }
}

/// What one process holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessTotals {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Effective uid.
    pub uid: u32,
    /// User name from `/etc/passwd`.
    pub user: Option<String>,
    /// Distinct buffers held.
    pub buffers: u64,
    /// Buffer fds open.
    pub fds: u64,
    /// Buffer mappings.
    pub mappings: u64,
    /// Sum of the sizes of the buffers it holds (each counted in full).
    pub bytes: u64,
    /// Its share: each buffer's size divided by the number of its holders.
    pub proportional_bytes: u64,
}

/// What one user's processes hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserTotals {
    /// uid.
    pub uid: u32,
    /// User name from `/etc/passwd`.
    pub user: Option<String>,
    /// Processes holding buffers.
    pub processes: u64,
    /// Distinct buffers held by any of its processes.
    pub buffers: u64,
    /// Sum of the sizes of those distinct buffers.
    pub bytes: u64,
    /// Sum of its processes' proportional shares.
    pub proportional_bytes: u64,
}

/// Totals for one kind of buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KindTotals {
    /// Kind.
    pub kind: BufferKind,
    /// Distinct buffers.
    pub buffers: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Grand totals, deduplicated by buffer identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Distinct buffers.
    pub buffers: u64,
    /// Sum of their sizes.
    pub bytes: u64,
    /// Per kind (only kinds present).
    pub by_kind: Vec<KindTotals>,
}

/// The result of a scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Buffers, largest first.
    pub buffers: Vec<BufferRecord>,
    /// Processes holding buffers, most bytes first.
    pub processes: Vec<ProcessTotals>,
    /// Users, most bytes first.
    pub users: Vec<UserTotals>,
    /// Totals over `buffers`.
    pub totals: Totals,
    /// User-space processes found in `/proc`.
    pub scanned_processes: u64,
    /// Processes skipped or seen only in part: exited during the scan, or
    /// (some of) their files not readable.
    pub unreadable_processes: u64,
    /// Of those, the ones denied to this user (another user's process without
    /// `CAP_SYS_PTRACE`, or a sandbox's restriction); the fds of a process
    /// whose maps alone are denied are still counted.
    pub denied_processes: u64,
}

struct Acc {
    kind: BufferKind,
    size: u64,
    size_source: SizeSource,
    exporter: Option<String>,
    name: Option<String>,
    file_count: Option<u64>,
    holders: BTreeMap<u32, Holder>,
}

impl Acc {
    fn offer_size(&mut self, size: u64, source: SizeSource) {
        if source < self.size_source || (source == self.size_source && size > self.size) {
            self.size = size;
            self.size_source = source;
        }
    }
}

fn acc_entry<'a>(
    accs: &'a mut BTreeMap<BufferId, Acc>,
    id: BufferId,
    kind: BufferKind,
    name: &Option<String>,
) -> &'a mut Acc {
    accs.entry(id).or_insert_with(|| Acc {
        kind,
        size: 0,
        size_source: SizeSource::Mapping,
        exporter: None,
        name: name.clone(),
        file_count: None,
        holders: BTreeMap::new(),
    })
}

fn holder_entry<'a>(acc: &'a mut Acc, p: &ProcessHoldings) -> &'a mut Holder {
    acc.holders.entry(p.pid).or_insert_with(|| Holder {
        pid: p.pid,
        comm: p.comm.clone(),
        uid: p.uid,
        fds: Vec::new(),
        mappings: 0,
        mapped_bytes: 0,
    })
}

impl Snapshot {
    /// Build a snapshot from what each process holds. `names` maps uids to
    /// user names; `sysfs` gives `(size, exporter)` of a dma-buf inode when
    /// only mappings of it were seen.
    pub fn from_holdings(
        holdings: &[ProcessHoldings],
        options: &ScanOptions,
        names: &BTreeMap<u32, String>,
        sysfs: &dyn Fn(u64) -> Option<(u64, String)>,
    ) -> Self {
        let mut accs: BTreeMap<BufferId, Acc> = BTreeMap::new();
        for p in holdings {
            for f in &p.fds {
                let acc = acc_entry(&mut accs, f.id, f.kind, &f.name);
                holder_entry(acc, p).fds.push(f.fd);
                acc.offer_size(f.size, f.size_source);
                if acc.exporter.is_none() {
                    acc.exporter.clone_from(&f.exporter);
                }
                acc.file_count = acc.file_count.or(f.file_count);
                if f.name.is_some() {
                    acc.name.clone_from(&f.name);
                }
            }
            for m in &p.maps {
                let acc = acc_entry(&mut accs, m.id, m.kind, &m.name);
                let h = holder_entry(acc, p);
                h.mappings += m.mappings;
                h.mapped_bytes += m.mapped_bytes;
                match m.size {
                    Some(size) => acc.offer_size(size, SizeSource::Stat),
                    None => acc.offer_size(m.extent, SizeSource::Mapping),
                }
            }
        }
        for (id, acc) in &mut accs {
            if acc.kind == BufferKind::DmaBuf && (acc.size_source == SizeSource::Mapping || acc.exporter.is_none()) {
                if let Some((size, exporter)) = sysfs(id.inode) {
                    acc.offer_size(size, SizeSource::Sysfs);
                    acc.exporter.get_or_insert(exporter);
                }
            }
        }

        let mut buffers = Vec::new();
        let mut procs: BTreeMap<u32, ProcessTotals> = BTreeMap::new();
        let mut user_buffers: BTreeMap<u32, BTreeMap<BufferId, u64>> = BTreeMap::new();
        let mut totals = Totals { buffers: 0, bytes: 0, by_kind: Vec::new() };
        for (id, acc) in accs {
            if !acc.holders.values().any(|h| options.matches(h.pid, h.uid)) {
                continue;
            }
            let proportional_size = acc.size / acc.holders.len() as u64;
            for h in acc.holders.values().filter(|h| options.matches(h.pid, h.uid)) {
                let t = procs.entry(h.pid).or_insert_with(|| ProcessTotals {
                    pid: h.pid,
                    comm: h.comm.clone(),
                    uid: h.uid,
                    user: names.get(&h.uid).cloned(),
                    buffers: 0,
                    fds: 0,
                    mappings: 0,
                    bytes: 0,
                    proportional_bytes: 0,
                });
                t.buffers += 1;
                t.fds += h.fds.len() as u64;
                t.mappings += u64::from(h.mappings);
                t.bytes += acc.size;
                t.proportional_bytes += proportional_size;
                user_buffers.entry(h.uid).or_default().insert(id, acc.size);
            }
            totals.buffers += 1;
            totals.bytes += acc.size;
            match totals.by_kind.iter_mut().find(|k| k.kind == acc.kind) {
                Some(k) => {
                    k.buffers += 1;
                    k.bytes += acc.size;
                }
                None => totals.by_kind.push(KindTotals { kind: acc.kind, buffers: 1, bytes: acc.size }),
            }
            let dmabroker = acc.name.as_deref().is_some_and(|n| n.starts_with(DMABROKER_PREFIX));
            buffers.push(BufferRecord {
                inode: id.inode,
                device: format!("{}:{}", id.dev_major, id.dev_minor),
                kind: acc.kind,
                dmabroker,
                size: acc.size,
                size_source: acc.size_source,
                exporter: acc.exporter,
                name: acc.name,
                file_count: acc.file_count,
                proportional_size,
                holders: acc.holders.into_values().collect(),
            });
        }
        let mut users: BTreeMap<u32, UserTotals> = BTreeMap::new();
        for p in procs.values() {
            let u = users.entry(p.uid).or_insert_with(|| UserTotals {
                uid: p.uid,
                user: p.user.clone(),
                processes: 0,
                buffers: 0,
                bytes: 0,
                proportional_bytes: 0,
            });
            u.processes += 1;
            u.proportional_bytes += p.proportional_bytes;
        }
        for (uid, bufs) in user_buffers {
            if let Some(u) = users.get_mut(&uid) {
                u.buffers = bufs.len() as u64;
                u.bytes = bufs.values().sum();
            }
        }
        buffers.sort_by(|a, b| b.size.cmp(&a.size).then(a.inode.cmp(&b.inode)));
        let mut processes: Vec<_> = procs.into_values().collect();
        processes.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.pid.cmp(&b.pid)));
        let mut users: Vec<_> = users.into_values().collect();
        users.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.uid.cmp(&b.uid)));
        Self {
            buffers,
            processes,
            users,
            totals,
            scanned_processes: holdings.len() as u64,
            unreadable_processes: 0,
            denied_processes: 0,
        }
    }

    /// The record of a buffer by inode (first match on any device).
    pub fn buffer_by_inode(&self, inode: u64) -> Option<&BufferRecord> {
        self.buffers.iter().find(|b| b.inode == inode)
    }

    /// The totals of a process.
    pub fn process(&self, pid: u32) -> Option<&ProcessTotals> {
        self.processes.iter().find(|p| p.pid == pid)
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
fn is_broker_command(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let mut args = cmdline.split(|&b| b == 0);
    let program = args.next().unwrap_or_default();
    let name = program.rsplit(|&b| b == b'/').next().unwrap_or_default();
    name == b"dmabroker" && args.any(|a| a == b"serve")
}

/// The device of the kernel's internal shmem mount, where every plain memfd
/// lives (learned from a probe memfd, closed at once).
fn shmem_dev() -> Option<(u32, u32)> {
    let fd = rustix::fs::memfd_create("dmabroker-accounting-probe", rustix::fs::MemfdFlags::CLOEXEC).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    Some((rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev)))
}

/// `/sys/kernel/dmabuf/buffers/<inode>/{size,exporter_name}` (kernels with
/// `CONFIG_DMABUF_SYSFS_STATS`).
fn sysfs_dma_buf(inode: u64) -> Option<(u64, String)> {
    let dir = format!("/sys/kernel/dmabuf/buffers/{inode}");
    let size = std::fs::read_to_string(format!("{dir}/size")).ok()?.trim().parse().ok()?;
    let exporter = std::fs::read_to_string(format!("{dir}/exporter_name")).ok()?.trim().to_owned();
    Some((size, exporter))
}

enum Skip {
    Vanished,
    Denied,
}

fn skip(e: &io::Error) -> Skip {
    match e.kind() {
        io::ErrorKind::PermissionDenied => Skip::Denied,
        _ if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => Skip::Denied,
        _ => Skip::Vanished,
    }
}

/// What one process holds, and whether all of it could be read (its maps may
/// be denied while its fds are not); `Ok(None)` for kernel threads.
fn read_process(
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
fn read_fd_table(task: &str, shmem: Option<(u32, u32)>, all_memfds: bool) -> io::Result<Vec<FdHolding>> {
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

/// The most fd tables besides the process's own that one scan reads in one
/// process. Threads that called `unshare(CLONE_FILES)` cost the scanner one
/// table read each; beyond this many distinct tables the process is reported
/// as scanned in part ([`OwnFdTables::complete`] false), so a process cannot
/// make every sweep slow by creating thousands of them.
pub const MAX_OWN_FD_TABLES: usize = 64;

/// The fd tables of a process other than its leader's (`/proc/<pid>/fd`),
/// as found by [`threads_with_own_fd_table`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnFdTables {
    /// One thread per distinct table (plus, when kcmp could not tell and the
    /// caller asked for it, threads whose table may be a duplicate).
    pub tids: Vec<u32>,
    /// False when more than [`MAX_OWN_FD_TABLES`] tables were found: the
    /// tables of the threads not listed were not looked at, and a caller
    /// must treat whatever they might hold as held.
    pub complete: bool,
}

/// Threads of process `pid` whose file descriptor table is not the
/// process's own (`/proc/<pid>/fd`): threads that called
/// `unshare(CLONE_FILES)`, one per distinct table (a zombie leader has no
/// table: then every live thread's table is "own", deduplicated among
/// themselves).
///
/// Each thread is compared with the leader (`kcmp(KCMP_FILES)`, one system
/// call); the others are kept sorted by kcmp's order of the tables and
/// deduplicated by binary search, so the cost is `O(threads + t log t)`
/// calls for `t` distinct tables, and at most [`MAX_OWN_FD_TABLES`]
/// distinct tables are collected (then `complete` is false). When kcmp
/// cannot tell (`ENOSYS`: a kernel without `CONFIG_KCMP`; `EPERM`), the
/// thread is included if `when_unsure` (its table is read as well: callers
/// that collect buffers in a set lose nothing by reading a table twice; the
/// cap applies to those too) and left out otherwise.
pub fn threads_with_own_fd_table(pid: u32, when_unsure: bool) -> OwnFdTables {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return OwnFdTables { tids: Vec::new(), complete: true };
    };
    let tids = tasks.flatten().filter_map(|t| t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()));
    distinct_fd_tables(pid, tids, when_unsure, MAX_OWN_FD_TABLES, &mut dmabroker_sys::kcmp::compare_files)
}

/// [`threads_with_own_fd_table`] over given thread ids, with `compare` in
/// place of kcmp (tests count its calls).
fn distinct_fd_tables(
    leader: u32,
    tids: impl Iterator<Item = u32>,
    when_unsure: bool,
    max: usize,
    compare: &mut dyn FnMut(u32, u32) -> io::Result<std::cmp::Ordering>,
) -> OwnFdTables {
    use std::cmp::Ordering;
    let gone = |e: &io::Error| e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error());
    // Representatives of distinct tables, in kcmp's order of their tables.
    let mut sorted: Vec<u32> = Vec::new();
    // Threads kcmp could not place (read as well when `when_unsure`).
    let mut unsure: Vec<u32> = Vec::new();
    for tid in tids {
        if tid == leader {
            continue;
        }
        match compare(leader, tid) {
            Ok(Ordering::Equal) => continue,
            Ok(_) => {}
            // The thread (or the whole process) exited meanwhile.
            Err(e) if gone(&e) => continue,
            Err(_) => {
                if when_unsure {
                    unsure.push(tid);
                }
                if sorted.len() + unsure.len() > max {
                    return OwnFdTables { tids: capped(sorted, unsure, max), complete: false };
                }
                continue;
            }
        }
        let (mut lo, mut hi) = (0, sorted.len());
        let mut new_table = true;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match compare(sorted[mid], tid) {
                Ok(Ordering::Equal) => {
                    new_table = false;
                    break;
                }
                Ok(Ordering::Less) => lo = mid + 1,
                Ok(Ordering::Greater) => hi = mid,
                Err(_) => {
                    // Either thread may have exited: its table cannot be
                    // placed, so it is read on its own when `when_unsure`.
                    new_table = false;
                    if when_unsure {
                        unsure.push(tid);
                    }
                    break;
                }
            }
        }
        if new_table {
            sorted.insert(lo, tid);
        }
        if sorted.len() + unsure.len() > max {
            return OwnFdTables { tids: capped(sorted, unsure, max), complete: false };
        }
    }
    sorted.extend(unsure);
    OwnFdTables { tids: sorted, complete: true }
}

fn capped(mut sorted: Vec<u32>, unsure: Vec<u32>, max: usize) -> Vec<u32> {
    sorted.extend(unsure);
    sorted.truncate(max);
    sorted
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
fn read_maps(path: impl AsRef<std::path::Path>) -> io::Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHMEM: Option<(u32, u32)> = Some((0, 1));
    const DMABUF_DEV: (u32, u32) = (0, 13);

    // Real fdinfo of a system-heap dma-buf named with DMA_BUF_SET_NAME (Linux 6.12).
    const CAM_FDINFO: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t52731\nsize:\t4194304\ncount:\t3\nexp_name:\tsystem\nname:\tcam0\n";
    // A udmabuf without a name.
    const UDMABUF_FDINFO: &str =
        "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t52740\nsize:\t1048576\ncount:\t1\nexp_name:\tudmabuf\n";

    fn stat(dev: (u32, u32), inode: u64, size: u64) -> Option<FileStat> {
        Some(FileStat { dev_major: dev.0, dev_minor: dev.1, inode, size })
    }

    fn camera() -> ProcessHoldings {
        let cam = FdInfo::parse(CAM_FDINFO);
        let udma = FdInfo::parse(UDMABUF_FDINFO);
        let fds = vec![
            fd_holding(7, "/dmabuf:cam0", Some(&cam), stat(DMABUF_DEV, 52731, 4194304), SHMEM, false).unwrap(),
            // The same dma-buf through a second fd.
            fd_holding(9, "/dmabuf:cam0", Some(&cam), stat(DMABUF_DEV, 52731, 4194304), SHMEM, false).unwrap(),
            fd_holding(10, "anon_inode:dmabuf", Some(&udma), stat(DMABUF_DEV, 52740, 1048576), SHMEM, false).unwrap(),
            fd_holding(11, "/memfd:dmabroker:frames (deleted)", None, stat((0, 1), 1029, 2 << 20), SHMEM, false)
                .unwrap(),
        ];
        // Foreign memfds, sockets and files are not buffers by default.
        assert!(fd_holding(12, "/memfd:wayland-shm (deleted)", None, stat((0, 1), 1030, 4096), SHMEM, false).is_none());
        assert!(fd_holding(13, "socket:[991]", None, stat((0, 8), 991, 0), SHMEM, true).is_none());
        let maps = map_holdings(
            "7fad5b800000-7fad5bc00000 rw-s 00000000 00:0d 52731                      /dmabuf:cam0\n\
             7fad5c000000-7fad5c100000 r--s 00000000 00:0d 52731                      /dmabuf:cam0\n\
             55d0c4a00000-55d0c4a28000 r--p 00000000 fd:01 1311742                    /usr/bin/cam\n",
            SHMEM,
            false,
        );
        ProcessHoldings { pid: 100, comm: "cam".into(), uid: 1000, fds, maps }
    }

    fn display() -> ProcessHoldings {
        // Holds cam0 only by mapping, and a hugetlb memfd (not on the shmem device) by fd.
        let maps = map_holdings(
            "7f0000000000-7f0000400000 rw-s 00000000 00:0d 52731                      /dmabuf:cam0\n\
             7f1000000000-7f1000200000 rw-s 00000000 00:0e 77                         /memfd:dmabroker:huge (deleted)\n\
             7f2000000000-7f2000001000 rw-s 00000000 00:01 1030                       /memfd:wayland-shm (deleted)\n",
            SHMEM,
            false,
        );
        assert_eq!(maps.len(), 2);
        ProcessHoldings { pid: 200, comm: "display".into(), uid: 0, fds: Vec::new(), maps }
    }

    fn snapshot(options: &ScanOptions) -> Snapshot {
        let names = procfs::parse_passwd("root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n");
        Snapshot::from_holdings(&[camera(), display()], options, &names, &|_| None)
    }

    #[test]
    fn fd_holdings_from_fixtures() {
        let p = camera();
        let cam = &p.fds[0];
        assert_eq!(cam.kind, BufferKind::DmaBuf);
        assert_eq!((cam.size, cam.size_source), (4 << 20, SizeSource::Fdinfo));
        assert_eq!(cam.exporter.as_deref(), Some("system"));
        assert_eq!(cam.name.as_deref(), Some("cam0"));
        assert_eq!(cam.file_count, Some(3));
        assert_eq!(p.fds[2].name, None);
        assert_eq!(p.fds[2].exporter.as_deref(), Some("udmabuf"));
        assert_eq!(p.fds[3].kind, BufferKind::Memfd);
        assert_eq!((p.fds[3].size, p.fds[3].size_source), (2 << 20, SizeSource::Stat));
        assert_eq!(p.maps.len(), 1);
        assert_eq!((p.maps[0].mappings, p.maps[0].mapped_bytes, p.maps[0].extent), (2, 5 << 20, 4 << 20));
        assert_eq!(display().maps[1].kind, BufferKind::HugetlbMemfd);
        // --all-memfd includes foreign memfds.
        assert!(fd_holding(12, "/memfd:wayland-shm (deleted)", None, stat((0, 1), 1030, 4096), SHMEM, true).is_some());
    }

    #[test]
    fn aggregates_dedups_and_shares() {
        let s = snapshot(&ScanOptions::default());
        assert_eq!(s.buffers.len(), 4);
        assert_eq!(s.totals.buffers, 4);
        assert_eq!(s.totals.bytes, (4 << 20) + (1 << 20) + (2 << 20) + (2 << 20));
        let cam = s.buffer_by_inode(52731).unwrap();
        assert_eq!(cam.device, "0:13");
        assert_eq!(cam.holders.len(), 2);
        assert_eq!(cam.holders[0].fds, vec![7, 9]);
        assert_eq!(cam.holders[0].mappings, 2);
        assert_eq!(cam.holders[1].pid, 200);
        assert!(cam.holders[1].fds.is_empty());
        assert_eq!(cam.holders[1].mappings, 1);
        assert_eq!(cam.proportional_size, 2 << 20);
        assert_eq!(cam.size_source, SizeSource::Fdinfo);
        assert!(!cam.dmabroker);
        // Held only by mapping: size from the mapping extent.
        let huge = s.buffer_by_inode(77).unwrap();
        assert_eq!((huge.kind, huge.size, huge.size_source), (BufferKind::HugetlbMemfd, 2 << 20, SizeSource::Mapping));
        assert!(huge.dmabroker);
        assert_eq!(s.buffers[0].inode, 52731, "largest first");

        let cam_p = s.process(100).unwrap();
        assert_eq!((cam_p.buffers, cam_p.fds, cam_p.mappings), (3, 4, 2));
        assert_eq!(cam_p.bytes, 7 << 20);
        assert_eq!(cam_p.proportional_bytes, (2 << 20) + (1 << 20) + (2 << 20));
        assert_eq!(cam_p.user.as_deref(), Some("alice"));
        let disp = s.process(200).unwrap();
        assert_eq!((disp.bytes, disp.proportional_bytes), (6 << 20, 4 << 20));
        assert_eq!(s.users.len(), 2);
        assert_eq!(s.users[0].user.as_deref(), Some("alice"));
        assert_eq!(s.users[0].bytes, 7 << 20);
        // Proportional shares add up to the deduplicated total.
        let pss: u64 = s.processes.iter().map(|p| p.proportional_bytes).sum();
        assert_eq!(pss, s.totals.bytes);
        let dma = s.totals.by_kind.iter().find(|k| k.kind == BufferKind::DmaBuf).unwrap();
        assert_eq!((dma.buffers, dma.bytes), (2, 5 << 20));
    }

    #[test]
    fn filters_keep_full_holder_lists() {
        let s = snapshot(&ScanOptions { pid: Some(200), ..ScanOptions::default() });
        assert_eq!(s.processes.len(), 1);
        assert_eq!(s.buffers.len(), 2);
        assert_eq!(s.buffer_by_inode(52731).unwrap().holders.len(), 2);
        assert_eq!(s.buffer_by_inode(52731).unwrap().proportional_size, 2 << 20);
        assert_eq!(s.totals.bytes, 6 << 20);
        let s = snapshot(&ScanOptions { uid: Some(1000), ..ScanOptions::default() });
        assert_eq!(s.processes.iter().map(|p| p.pid).collect::<Vec<_>>(), vec![100]);
        assert_eq!(s.users.len(), 1);
        let s = snapshot(&ScanOptions { uid: Some(4242), ..ScanOptions::default() });
        assert!(s.buffers.is_empty() && s.processes.is_empty() && s.users.is_empty());
    }

    #[test]
    fn sysfs_fills_mapping_only_dma_bufs() {
        let names = BTreeMap::new();
        let s = Snapshot::from_holdings(&[display()], &ScanOptions::default(), &names, &|ino| {
            (ino == 52731).then(|| (8 << 20, "system".to_owned()))
        });
        let cam = s.buffer_by_inode(52731).unwrap();
        assert_eq!((cam.size, cam.size_source, cam.exporter.as_deref()), (8 << 20, SizeSource::Sysfs, Some("system")));
    }

    #[test]
    fn buffer_id_round_trips() {
        let s = snapshot(&ScanOptions::default());
        assert_eq!(
            s.buffer_by_inode(52731).unwrap().id(),
            Some(BufferId { dev_major: 0, dev_minor: 13, inode: 52731 })
        );
    }
    #[test]
    fn own_fd_tables_cost_linear_calls_and_are_capped() {
        let leader = 1;
        // 3,000 threads, each with a table of its own (unshare(CLONE_FILES)).
        let tables: BTreeMap<u32, u32> = (1..=3001).map(|t| (t, t * 7919 % 10007)).collect();
        let mut calls = 0usize;
        let mut cmp = |a: u32, b: u32| {
            calls += 1;
            Ok(tables[&a].cmp(&tables[&b]))
        };
        let found = distinct_fd_tables(leader, 1..=3001, true, MAX_OWN_FD_TABLES, &mut cmp);
        assert!(!found.complete, "more than the cap: scanned in part");
        assert_eq!(found.tids.len(), MAX_OWN_FD_TABLES);
        // The search stopped at the cap: about (cap + 1) * (1 + log2(cap)) calls.
        assert!(calls <= (MAX_OWN_FD_TABLES + 1) * 8, "{calls} kcmp calls");

        // 3,000 threads sharing 8 tables besides the leader's, the leader
        // among them: complete, one thread per table, O(n log t) calls.
        let tables: BTreeMap<u32, u32> = (1..=3001).map(|t| (t, t % 9)).collect();
        let mut calls = 0usize;
        let mut cmp = |a: u32, b: u32| {
            calls += 1;
            Ok(tables[&a].cmp(&tables[&b]))
        };
        let found = distinct_fd_tables(leader, 1..=3001, true, MAX_OWN_FD_TABLES, &mut cmp);
        assert!(found.complete);
        let mut seen: Vec<u32> = found.tids.iter().map(|t| tables[t]).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..9).filter(|&t| t != tables[&leader]).collect::<Vec<_>>());
        assert!(calls <= 3000 * 5, "{calls} kcmp calls");
    }

    #[test]
    fn own_fd_tables_when_kcmp_cannot_tell() {
        let mut denied = |_: u32, _: u32| Err(io::Error::from_raw_os_error(rustix::io::Errno::PERM.raw_os_error()));
        let found = distinct_fd_tables(1, 1..=10, true, MAX_OWN_FD_TABLES, &mut denied);
        assert_eq!((found.tids.len(), found.complete), (9, true), "every other thread is read");
        let found = distinct_fd_tables(1, 1..=10, false, MAX_OWN_FD_TABLES, &mut denied);
        assert_eq!((found.tids.len(), found.complete), (0, true));
        let found = distinct_fd_tables(1, 1..=1000, true, MAX_OWN_FD_TABLES, &mut denied);
        assert_eq!((found.tids.len(), found.complete), (MAX_OWN_FD_TABLES, false), "the cap holds");
        // Threads that exit during the search are skipped.
        let mut gone = |_: u32, _: u32| Err(io::Error::from_raw_os_error(rustix::io::Errno::SRCH.raw_os_error()));
        assert_eq!(distinct_fd_tables(1, 1..=10, true, 4, &mut gone), OwnFdTables { tids: vec![], complete: true });
    }

    /// A C program with `threads` threads, each in a file descriptor table
    /// of its own (`unshare(CLONE_FILES)`), started and ready (a child
    /// process: threads of the test process itself would copy other tests'
    /// fds). `None` without a C compiler.
    fn own_tables_child(threads: usize) -> Option<std::process::Child> {
        const SRC: &str = include_str!("../../tests/data/own_fd_tables.c");
        let dir = std::env::temp_dir().join(format!("dmabroker-own-tables-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let (src, exe) = (dir.join("own.c"), dir.join("own"));
        std::fs::write(&src, SRC).ok()?;
        let compiled = std::process::Command::new("cc").arg("-pthread").arg("-o").arg(&exe).arg(&src).status();
        if !compiled.is_ok_and(|s| s.success()) {
            return None;
        }
        let mut child = std::process::Command::new(&exe)
            .arg(threads.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take()?), &mut line).ok()?;
        assert_eq!(line, "ready\n");
        Some(child)
    }

    #[test]
    fn hundreds_of_own_fd_tables_are_capped() {
        let me = std::process::id();
        if dmabroker_sys::kcmp::same_files(me, me).is_err() {
            crate::test_skip::skip("hundreds_of_own_fd_tables_are_capped", "kcmp unavailable");
            return;
        }
        let Some(mut child) = own_tables_child(300) else {
            crate::test_skip::skip_for_tool(
                "hundreds_of_own_fd_tables_are_capped",
                "cc",
                "to build the helper program",
            );
            return;
        };
        let found = threads_with_own_fd_table(child.id(), true);
        let s = scan_with(&ScanOptions { pid: Some(child.id()), ..ScanOptions::default() });
        let _ = child.kill();
        let _ = child.wait();
        assert!(!found.complete, "300 tables are more than the cap");
        assert_eq!(found.tids.len(), MAX_OWN_FD_TABLES);
        assert!(s.unwrap().unreadable_processes >= 1, "a capped process counts as seen in part");
    }

    /// A C program whose main thread exits (raw `SYS_exit`, the process
    /// lives on as a zombie leader) while another thread keeps a mapping of
    /// a memfd named `dmabroker:zombie-leader` whose fd is closed. `None`
    /// without a C compiler.
    pub(crate) fn zombie_leader_child() -> Option<std::process::Child> {
        const SRC: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
static void *hold(void *p) { (void)p; for (;;) pause(); return 0; }
int main(void) {
    int fd = memfd_create("dmabroker:zombie-leader", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, 65536) < 0) return 1;
    char *m = mmap(0, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) return 1;
    m[0] = 1;
    close(fd);
    pthread_t t;
    if (pthread_create(&t, 0, hold, 0)) return 1;
    syscall(SYS_exit, 0);
    return 0;
}
"#;
        let dir = std::env::temp_dir().join(format!(
            "dmabroker-zombie-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).ok()?;
        let src = dir.join("zombie.c");
        let exe = dir.join("zombie");
        std::fs::write(&src, SRC).ok()?;
        let ok =
            std::process::Command::new("cc").arg("-pthread").arg("-o").arg(&exe).arg(&src).status().ok()?.success();
        if !ok {
            return None;
        }
        let child = std::process::Command::new(&exe).spawn().ok()?;
        let status = format!("/proc/{}/status", child.id());
        for _ in 0..500 {
            let zombie = std::fs::read_to_string(&status).is_ok_and(|s| s.lines().any(|l| l.starts_with("State:\tZ")));
            let mapped = std::fs::read_dir(format!("/proc/{}/task", child.id())).map(|d| d.count()).unwrap_or(0) == 2;
            if zombie && mapped {
                return Some(child);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the zombie-leader child did not get ready");
    }

    #[test]
    fn mappings_of_a_process_whose_leader_exited_are_seen() {
        let Some(mut child) = zombie_leader_child() else {
            crate::test_skip::skip_for_tool(
                "mappings_of_a_process_whose_leader_exited_are_seen",
                "cc",
                "to build the helper program",
            );
            return;
        };
        let pid = child.id();
        assert_eq!(std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap(), "", "a zombie leader has no maps");
        let maps = process_maps(pid).unwrap();
        let s = scan_with(&ScanOptions { pid: Some(pid), ..ScanOptions::default() }).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(maps.contains("/memfd:dmabroker:zombie-leader"), "{maps}");
        let b = s.buffers.iter().find(|b| b.name.as_deref() == Some("dmabroker:zombie-leader")).expect("buffer listed");
        assert_eq!(b.holders[0].pid, pid);
        assert_eq!(b.holders[0].mappings, 1);
    }

    #[test]
    fn memfds_held_by_the_broker_are_listed_whatever_their_name() {
        let me = std::process::id();
        let foreign = rustix::fs::memfd_create("wayland-shm-adopted", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&foreign, 8192).unwrap();
        let inode = rustix::fs::fstat(&foreign).unwrap().st_ino;
        let plain = scan_with(&ScanOptions { pid: Some(me), ..ScanOptions::default() }).unwrap();
        assert!(plain.buffer_by_inode(inode).is_none(), "a foreign memfd is no dmabroker buffer");
        let options = ScanOptions { pid: Some(me), broker_pids: vec![me], ..ScanOptions::default() };
        let s = scan_with(&options).unwrap();
        let b = s.buffer_by_inode(inode).expect("held by the broker: listed");
        assert!(b.dmabroker);
        assert_eq!((b.size, b.name.as_deref()), (8192, Some("wayland-shm-adopted")));
        assert_eq!(b.holders[0].pid, me);
    }
}
