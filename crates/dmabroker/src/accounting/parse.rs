//! Parsing `/proc` records (fdinfo, maps) into holdings.

use super::model::{BufferId, FdHolding, FileStat, MapHolding, SizeSource};
use super::procfs::{classify_target, parse_maps, LinkTarget};
use super::DMABROKER_PREFIX;
use crate::buffer::BufferKind;
use crate::fdinfo::FdInfo;
use std::collections::BTreeMap;

pub(super) fn memfd_kind(dev: (u32, u32), shmem_dev: Option<(u32, u32)>) -> BufferKind {
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
