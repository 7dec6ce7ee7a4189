//! What the kernel and this process know of a CMA heap's area: free and
//! total pages, the largest free run, the kernel's allocation counts, and
//! the largest contiguous allocation this process has seen succeed.
//!
//! `CmaFree`/`CmaTotal` in /proc/meminfo sum every CMA area and say nothing
//! of fragmentation: 100 MiB free may hold no 32 MiB run. The kernel tells
//! more where it is built to:
//! - `/sys/kernel/mm/cma/<area>/` (`CONFIG_CMA_SYSFS`): `total_pages`,
//!   `available_pages`, `alloc_pages_success`, `alloc_pages_fail`;
//! - `/sys/kernel/debug/cma/<area>/maxchunk` (`CONFIG_CMA_DEBUGFS`, root):
//!   the largest run of free pages in the area's bitmap, which is the
//!   largest allocation the area can still satisfy (pages CMA lent to
//!   movable allocations count as free: they are migrated out on demand).
//!
//! Where neither exists, the largest allocation seen (and the smallest
//! refused) by this process is what is known; a long-lived process (the
//! broker) sees many. Every value says where it came from.

use crate::size::format_size;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where the kernel lists CMA areas (`CONFIG_CMA_SYSFS`).
pub const SYSFS_DIR: &str = "/sys/kernel/mm/cma";
/// Where debugfs lists them (`CONFIG_CMA_DEBUGFS`, debugfs mounted).
pub const DEBUGFS_DIR: &str = "/sys/kernel/debug/cma";
/// The dma-heap name of the default CMA area since 6.17 (whose area itself
/// is called `reserved` when it comes from `cma=` or CONFIG_CMA_SIZE_MBYTES).
const DEFAULT_HEAP: &str = "default_cma_region";

/// A CMA heap's area as far as it can be known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CmaState {
    /// The area's name in sysfs/debugfs (`reserved`, a device-tree node).
    pub area: Option<String>,
    /// Free bytes of this area (sysfs `available_pages`), else `CmaFree`.
    pub free_bytes: Option<u64>,
    /// Size of this area (sysfs `total_pages`), else `CmaTotal`.
    pub total_bytes: Option<u64>,
    /// Whether free/total are this area's own (`false`: all areas summed,
    /// /proc/meminfo).
    pub per_area: bool,
    /// The largest free contiguous run now (debugfs `maxchunk`).
    pub largest_free_run: Option<u64>,
    /// Pages the kernel allocated from the area and failed to since boot
    /// (sysfs `alloc_pages_success`/`alloc_pages_fail`).
    pub kernel_allocs: Option<(u64, u64)>,
    /// The largest allocation this process has seen succeed on the heap.
    pub largest_seen: Option<u64>,
    /// The smallest this process has seen refused for want of a run.
    pub smallest_refused: Option<u64>,
}

/// Allocations seen by this process, by heap name.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    largest_ok: Option<u64>,
    smallest_refused: Option<u64>,
}

static SEEN: Mutex<BTreeMap<String, Seen>> = Mutex::new(BTreeMap::new());

fn with_seen<R>(heap: &str, f: impl FnOnce(&mut Seen) -> R) -> R {
    // A poisoned lock only means a panic elsewhere while updating two
    // integers: the values are still usable.
    let mut map = SEEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f(map.entry(heap.to_owned()).or_default())
}

/// Note a successful contiguous allocation of `len` bytes on `heap`.
pub fn record_success(heap: &str, len: u64) {
    with_seen(heap, |s| s.largest_ok = Some(s.largest_ok.map_or(len, |l| l.max(len))));
}

/// Note a contiguous allocation of `len` bytes that `heap` refused.
pub fn record_refusal(heap: &str, len: u64) {
    with_seen(heap, |s| s.smallest_refused = Some(s.smallest_refused.map_or(len, |l| l.min(len))));
}

/// The state of the CMA area behind the dma-heap `heap_name`
/// (`/dev/dma_heap/<heap_name>`), recorded under `heap` (`dma-heap/<name>`).
pub fn state(heap: &str, heap_name: &str) -> CmaState {
    state_in(Path::new(SYSFS_DIR), Path::new(DEBUGFS_DIR), heap, heap_name)
}

fn state_in(sysfs: &Path, debugfs: &Path, heap: &str, heap_name: &str) -> CmaState {
    let page = rustix::param::page_size() as u64;
    let area = area_for(sysfs, heap_name).or_else(|| area_for(debugfs, heap_name));
    let pages = |dir: &Path, file: &str| -> Option<u64> {
        let name = area.as_deref()?;
        read_u64(&dir.join(name).join(file))?.checked_mul(page)
    };
    let sys_free = pages(sysfs, "available_pages");
    let sys_total = pages(sysfs, "total_pages");
    let per_area = sys_free.is_some() && sys_total.is_some();
    let (free_bytes, total_bytes) =
        if per_area { (sys_free, sys_total) } else { (super::meminfo("CmaFree"), super::meminfo("CmaTotal")) };
    let kernel_allocs = area.as_deref().and_then(|name| {
        let d = sysfs.join(name);
        Some((read_u64(&d.join("alloc_pages_success"))?, read_u64(&d.join("alloc_pages_fail"))?))
    });
    let seen = with_seen(heap, |s| *s);
    CmaState {
        largest_free_run: pages(debugfs, "maxchunk"),
        area,
        free_bytes,
        total_bytes,
        per_area,
        kernel_allocs,
        largest_seen: seen.largest_ok,
        smallest_refused: seen.smallest_refused,
    }
}

/// The area a CMA heap allocates from: the one of the same name, the
/// default area (`reserved`) for `default_cma_region`, or the only one.
fn area_for(dir: &Path, heap_name: &str) -> Option<String> {
    let areas: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| dir.join(n).is_dir())
        .collect();
    let pick = |want: &str| areas.iter().find(|a| a.as_str() == want).cloned();
    pick(heap_name).or_else(|| if heap_name == DEFAULT_HEAP { pick("reserved") } else { None }).or_else(|| {
        if areas.len() == 1 {
            areas.first().cloned()
        } else {
            None
        }
    })
}

fn read_u64(path: &PathBuf) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl CmaState {
    /// One line for `dmabroker heaps` and refusals: every value with its
    /// source, `?` for what cannot be known here and why.
    pub fn describe(&self) -> String {
        let fmt = |v: Option<u64>| v.map_or("?".to_owned(), format_size);
        let mut parts = vec![format!(
            "{} free of {} ({})",
            fmt(self.free_bytes),
            fmt(self.total_bytes),
            match (&self.area, self.per_area) {
                (Some(a), true) => format!("area {a}, {SYSFS_DIR}/{a}"),
                _ => "CmaFree/CmaTotal in /proc/meminfo, all areas".to_owned(),
            }
        )];
        parts.push(match (self.largest_free_run, &self.area) {
            (Some(run), Some(a)) => format!("largest free run {} ({DEBUGFS_DIR}/{a}/maxchunk)", format_size(run)),
            _ => "largest free run unknown (needs CONFIG_CMA_DEBUGFS, debugfs mounted, root)".to_owned(),
        });
        parts.push(match (self.largest_seen, self.smallest_refused) {
            (None, None) => "no contiguous allocation seen by this process".to_owned(),
            (ok, refused) => {
                let mut s = format!("largest allocation seen {}", fmt(ok));
                if let Some(r) = refused {
                    s.push_str(&format!(", smallest refused {}", format_size(r)));
                }
                s.push_str(" (this process)");
                s
            }
        });
        if let Some((ok, failed)) = self.kernel_allocs {
            parts.push(format!("kernel: {ok} pages allocated, {failed} failed since boot"));
        }
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(root: &Path, name: &str, files: &[(&str, &str)]) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (f, v) in files {
            std::fs::write(d.join(f), v).unwrap();
        }
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dmabroker-cma-area-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn default_heap_reads_the_reserved_area_from_sysfs_and_debugfs() {
        let root = tmp("default");
        let (sys, dbg) = (root.join("sys"), root.join("dbg"));
        let page = rustix::param::page_size() as u64;
        area(
            &sys,
            "reserved",
            &[
                ("total_pages", "49152\n"),
                ("available_pages", "40000\n"),
                ("alloc_pages_success", "9152\n"),
                ("alloc_pages_fail", "3\n"),
            ],
        );
        area(&sys, "other", &[("total_pages", "10\n"), ("available_pages", "10\n")]);
        area(&dbg, "reserved", &[("maxchunk", "30000\n")]);
        let s = state_in(&sys, &dbg, "dma-heap/test-default", DEFAULT_HEAP);
        assert_eq!(s.area.as_deref(), Some("reserved"));
        assert!(s.per_area);
        assert_eq!(s.total_bytes, Some(49152 * page));
        assert_eq!(s.free_bytes, Some(40000 * page));
        assert_eq!(s.largest_free_run, Some(30000 * page));
        assert_eq!(s.kernel_allocs, Some((9152, 3)));
        let text = s.describe();
        assert!(text.contains("area reserved") && text.contains("maxchunk") && text.contains("3 failed"), "{text}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn seen_keeps_the_largest_success_and_smallest_refusal() {
        let heap = "dma-heap/test-seen";
        record_success(heap, 8 << 20);
        record_success(heap, 32 << 20);
        record_success(heap, 16 << 20);
        record_refusal(heap, 128 << 20);
        record_refusal(heap, 96 << 20);
        let root = tmp("seen");
        let s = state_in(&root.join("none"), &root.join("none"), heap, "linux,cma");
        assert_eq!((s.largest_seen, s.smallest_refused), (Some(32 << 20), Some(96 << 20)));
        assert_eq!(s.area, None);
        let text = s.describe();
        assert!(text.contains("largest allocation seen 32 MiB, smallest refused 96 MiB"), "{text}");
        assert!(text.contains("needs CONFIG_CMA_DEBUGFS"), "{text}");
    }

    #[test]
    fn an_area_of_the_heaps_name_wins_and_ambiguity_gives_none() {
        let root = tmp("names");
        area(&root, "linux,cma", &[]);
        area(&root, "camera", &[]);
        assert_eq!(area_for(&root, "camera").as_deref(), Some("camera"));
        assert_eq!(area_for(&root, "default_cma_region"), None);
        let _ = std::fs::remove_dir_all(&root);
    }
}
