//! A snapshot: holdings of every process, merged per buffer and totalled.

use super::model::{
    BufferId, BufferRecord, Holder, KindTotals, ProcessHoldings, ProcessTotals, SizeSource, Totals, UserTotals,
};
use super::scan::ScanOptions;
use super::DMABROKER_PREFIX;
use crate::buffer::BufferKind;
use serde::Serialize;
use std::collections::BTreeMap;

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

pub(super) struct Acc {
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

pub(super) fn acc_entry<'a>(
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

pub(super) fn holder_entry<'a>(acc: &'a mut Acc, p: &ProcessHoldings) -> &'a mut Holder {
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
