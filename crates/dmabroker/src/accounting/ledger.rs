//! The ledger: every dma-buf the kernel has ([`super::bpf_iter`]) joined with
//! the holders a `/proc` scan finds ([`super::scan_with`]). A dma-buf that no
//! process holds by fd or by mapping is a **leak candidate**: only a driver
//! still references it (imported into a GPU or a V4L2 queue, then closed by
//! its process). Its importing device (the first dma-buf attachment) is
//! matched against the `drm-driver:` / `drm-pdev:` keys of the DRM fds in
//! `/proc/<pid>/fdinfo`, which names the processes whose DRM file (GEM
//! handles) most likely keeps it.
//!
//! Without the iterator (kernel < 6.16, no BTF, not root, built without the
//! `bpf-ledger` feature) the ledger is the `/proc` scan alone and says why
//! ([`Ledger::unavailable`]): buffers only drivers hold are then invisible.

use super::bpf_iter::{self, DmabufEntry};
use super::Snapshot;
use crate::buffer::BufferKind;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

/// A process holding a DRM device fd, with its `drm-*` fdinfo keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrmClient {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// The fd (`/dev/dri/cardN` or `renderDN`).
    pub fd: i32,
    /// `drm-driver:` (`vgem`, `amdgpu`, ...).
    pub driver: Option<String>,
    /// `drm-pdev:` (the PCI address), if the device has one.
    pub pdev: Option<String>,
    /// `drm-client-id:`.
    pub client_id: Option<u64>,
    /// The other `drm-*` keys (memory: `drm-total-*`, `drm-shared-*`, ...).
    pub keys: BTreeMap<String, String>,
}

/// A dma-buf no process holds: only drivers do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeakCandidate {
    /// The buffer as the kernel lists it.
    #[serde(flatten)]
    pub buffer: DmabufEntry,
    /// Seconds since it was created (`None`: the kernel did not tell).
    pub age_sec: Option<u64>,
    /// DRM clients of the importing device (by `drm-driver` or `drm-pdev`).
    pub drm_holders: Vec<DrmClient>,
}

/// Where the list of buffers came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LedgerSource {
    /// The dma-buf BPF iterator: every dma-buf, held by a process or not.
    BpfIterator,
    /// Only `/proc`: dma-bufs held by no process are not seen.
    ProcScan,
}

/// The ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ledger {
    /// Where the buffer list came from.
    pub source: LedgerSource,
    /// Why the iterator could not be used (with [`LedgerSource::ProcScan`]).
    pub unavailable: Option<String>,
    /// Every dma-buf from the iterator (empty without it).
    pub dmabufs: u64,
    /// Their total size.
    pub dmabuf_bytes: u64,
    /// Dma-bufs no process holds, largest first.
    pub leaks: Vec<LeakCandidate>,
    /// Processes holding DRM fds.
    pub drm_clients: Vec<DrmClient>,
    /// Processes the scan could not read wholly: a leak candidate may be
    /// held by one of them.
    pub unreadable_processes: u64,
}

impl Ledger {
    /// Joins the iterator's list with a (whole-machine) `/proc` scan.
    pub fn join(
        snapshot: &Snapshot,
        iter: Result<Vec<DmabufEntry>, bpf_iter::Unavailable>,
        drm_clients: Vec<DrmClient>,
        now_sec: i64,
    ) -> Ledger {
        let entries = match iter {
            Ok(entries) => entries,
            Err(why) => {
                return Ledger {
                    source: LedgerSource::ProcScan,
                    unavailable: Some(why.0),
                    dmabufs: 0,
                    dmabuf_bytes: 0,
                    leaks: Vec::new(),
                    drm_clients,
                    unreadable_processes: snapshot.unreadable_processes,
                }
            }
        };
        let held: HashSet<u64> =
            snapshot.buffers.iter().filter(|b| b.kind == BufferKind::DmaBuf).map(|b| b.inode).collect();
        let mut leaks: Vec<LeakCandidate> = entries
            .iter()
            .filter(|e| !held.contains(&e.inode))
            .map(|e| LeakCandidate {
                age_sec: (e.created_sec > 0).then(|| now_sec.saturating_sub(e.created_sec).max(0) as u64),
                drm_holders: match &e.importer {
                    Some(dev) => drm_clients
                        .iter()
                        .filter(|c| c.driver.as_deref() == Some(dev) || c.pdev.as_deref() == Some(dev))
                        .cloned()
                        .collect(),
                    None => Vec::new(),
                },
                buffer: e.clone(),
            })
            .collect();
        leaks.sort_by(|a, b| b.buffer.size.cmp(&a.buffer.size).then(a.buffer.inode.cmp(&b.buffer.inode)));
        Ledger {
            source: LedgerSource::BpfIterator,
            unavailable: None,
            dmabufs: entries.len() as u64,
            dmabuf_bytes: entries.iter().map(|e| e.size).sum(),
            leaks,
            drm_clients,
            unreadable_processes: snapshot.unreadable_processes,
        }
    }
}

/// Parses the `drm-*` keys of one fdinfo; `None` if it is not a DRM file.
pub fn parse_drm_fdinfo(pid: u32, comm: &str, fd: i32, fdinfo: &str) -> Option<DrmClient> {
    let mut client =
        DrmClient { pid, comm: comm.to_string(), fd, driver: None, pdev: None, client_id: None, keys: BTreeMap::new() };
    let mut drm = false;
    for line in fdinfo.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        if !key.starts_with("drm-") {
            continue;
        }
        drm = true;
        let value = value.trim().to_string();
        match key {
            "drm-driver" => client.driver = Some(value),
            "drm-pdev" => client.pdev = Some(value),
            "drm-client-id" => client.client_id = value.parse().ok(),
            _ => {
                client.keys.insert(key.to_string(), value);
            }
        }
    }
    drm.then_some(client)
}

/// Every DRM fd on the machine that this user may read (`/dev/dri/*` fds
/// and their `drm-*` fdinfo keys).
pub fn scan_drm_clients() -> Vec<DrmClient> {
    let mut clients = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return clients };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
        for fd in fds.flatten() {
            let Some(n) = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            if !target.starts_with("/dev/dri/") {
                continue;
            }
            let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{n}")) else { continue };
            if let Some(c) = parse_drm_fdinfo(pid, &comm, n, &info) {
                clients.push(c);
            }
        }
    }
    clients.sort_by_key(|c| (c.pid, c.fd));
    clients
}

/// The whole ledger of this machine now: iterator, `/proc`, DRM clients.
pub fn ledger(snapshot: &Snapshot) -> Ledger {
    ledger_from(snapshot, bpf_iter::read())
}

/// [`ledger`] with the iterator's listing given: from a
/// [`bpf_iter::Loaded`] kept across refreshes (`dmabroker top`), which
/// spares loading and verifying the program each time (most of a listing's
/// cost below a few thousand dma-bufs: docs/BENCHMARKS.md, "Ledger").
pub fn ledger_from(snapshot: &Snapshot, iter: Result<Vec<DmabufEntry>, bpf_iter::Unavailable>) -> Ledger {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    Ledger::join(snapshot, iter, scan_drm_clients(), now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::{BufferRecord, SizeSource, Totals};

    fn entry(inode: u64, size: u64, importer: Option<&str>) -> DmabufEntry {
        DmabufEntry {
            inode,
            size,
            exporter: "system".into(),
            name: None,
            created_sec: 100,
            attachments: u64::from(importer.is_some()),
            importer: importer.map(String::from),
        }
    }

    fn snapshot_holding(inodes: &[u64]) -> Snapshot {
        Snapshot {
            buffers: inodes
                .iter()
                .map(|&inode| BufferRecord {
                    inode,
                    device: "0:14".into(),
                    kind: BufferKind::DmaBuf,
                    dmabroker: false,
                    size: 4096,
                    size_source: SizeSource::Fdinfo,
                    exporter: None,
                    name: None,
                    file_count: None,
                    proportional_size: 4096,
                    holders: Vec::new(),
                })
                .collect(),
            processes: Vec::new(),
            users: Vec::new(),
            totals: Totals { buffers: 0, bytes: 0, by_kind: Vec::new() },
            scanned_processes: 1,
            unreadable_processes: 0,
            denied_processes: 0,
        }
    }

    #[test]
    fn buffers_no_process_holds_are_leak_candidates_with_their_drm_holder() {
        let vgem = "drm-driver:\tvgem\ndrm-client-id:\t3\ndrm-total-memory:\t0\n";
        let clients = vec![
            parse_drm_fdinfo(10, "app", 5, vgem).unwrap(),
            parse_drm_fdinfo(11, "other", 4, "drm-driver:\tamdgpu\ndrm-pdev:\t0000:03:00.0\n").unwrap(),
        ];
        assert_eq!(clients[0].client_id, Some(3));
        assert_eq!(clients[0].keys.get("drm-total-memory").map(String::as_str), Some("0"));
        let snap = snapshot_holding(&[1]);
        let l = Ledger::join(
            &snap,
            Ok(vec![entry(1, 4096, None), entry(2, 8192, Some("vgem")), entry(3, 4096, Some("0000:03:00.0"))]),
            clients,
            160,
        );
        assert_eq!(l.source, LedgerSource::BpfIterator);
        assert_eq!((l.dmabufs, l.dmabuf_bytes), (3, 16384));
        assert_eq!(l.leaks.iter().map(|c| c.buffer.inode).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(l.leaks[0].age_sec, Some(60));
        assert_eq!(l.leaks[0].drm_holders.iter().map(|c| c.pid).collect::<Vec<_>>(), vec![10]);
        assert_eq!(l.leaks[1].drm_holders.iter().map(|c| c.pid).collect::<Vec<_>>(), vec![11]);
    }

    #[test]
    fn without_the_iterator_it_says_why() {
        let l = Ledger::join(&snapshot_holding(&[]), Err(bpf_iter::Unavailable("kernel 6.12".into())), Vec::new(), 0);
        assert_eq!(l.source, LedgerSource::ProcScan);
        assert_eq!(l.unavailable.as_deref(), Some("kernel 6.12"));
        assert!(l.leaks.is_empty());
    }

    #[test]
    fn a_file_without_drm_keys_is_not_a_drm_client() {
        assert!(parse_drm_fdinfo(1, "x", 3, "pos:\t0\nflags:\t02\n").is_none());
    }
}
