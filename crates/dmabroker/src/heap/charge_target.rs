//! The kernel's own charge target for dma-heap allocations: the unmerged
//! RFC "dma-heap: charge dma-buf memory via explicit memcg" (Albert
//! Esteve, 2026-05) adds a `charge_fd` (first `charge_pid_fd`) to
//! `DMA_HEAP_IOCTL_ALLOC`, so that an allocator can charge a client's
//! memory cgroup itself, with a `MEMCG_DMABUF` line in `memory.stat`; a
//! later part adds `DMA_BUF_IOCTL_XFER_CHARGE`. None of it is in a released
//! kernel (Dec 2026), so nothing is assumed: it is probed.
//!
//! The probe cannot be "does the larger ioctl succeed": dma-heap.c copies
//! a larger struct in, zeroes nothing and ignores what follows
//! `heap_flags`, so a released kernel allocates (charged to the caller) and
//! says nothing. Instead it passes a charge target that no kernel reading
//! the field could accept (the heap's own fd, neither a pidfd nor a
//! cgroup): refused means the field is read, allocated means it is not.
//! `memory.stat`'s `dmabuf` line is read alongside, as evidence only.

use serde::Serialize;
use std::os::fd::AsFd;

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum ChargeTarget {
    /// The kernel read the charge target (refused a bogus one).
    Available {
        /// The heap probed.
        heap: String,
    },
    /// The kernel ignored it: no charge target.
    Absent {
        /// What was probed and what the kernel did.
        probed: String,
    },
    /// Could not be probed (no dma-heap this process may open).
    Unknown {
        /// Why.
        why: String,
    },
}

impl ChargeTarget {
    /// Probe the first dma-heap this process can open (one page allocated
    /// and freed, or refused).
    pub fn probe() -> Self {
        // The system heap first: the one charged with mem_accounting.
        let mut names: Vec<String> = std::fs::read_dir(super::dma_heap::DIRECTORY)
            .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.sort_by_key(|n| (n != "system", n.clone()));
        let stat = memory_stat_has_dmabuf();
        let mut last = String::from("no /dev/dma_heap/* heap");
        for name in names {
            let path = format!("{}/{name}", super::dma_heap::DIRECTORY);
            let heap = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    last = format!("cannot open {path}: {e}");
                    continue;
                }
            };
            return match dmabroker_sys::dma_heap::probe_charge_fd(heap.as_fd()) {
                dmabroker_sys::dma_heap::ChargeFdProbe::Read(_) => Self::Available { heap: format!("dma-heap/{name}") },
                dmabroker_sys::dma_heap::ChargeFdProbe::Ignored => Self::Absent {
                    probed: format!(
                        "DMA_HEAP_IOCTL_ALLOC on {path} with a 32-byte struct whose charge_fd is not a process or \
                         cgroup was served, so the field is ignored; memory.stat {}",
                        if stat { "has a dmabuf line" } else { "has no dmabuf line" }
                    ),
                },
                dmabroker_sys::dma_heap::ChargeFdProbe::Failed(e) => {
                    last = format!("the probe allocation on {path} failed: {e}");
                    continue;
                }
            };
        }
        Self::Unknown { why: last }
    }

    /// Whether the kernel charges a target given with the allocation.
    pub fn available(&self) -> bool {
        matches!(self, Self::Available { .. })
    }

    /// One line for `dmabroker heaps` and `stats`.
    pub fn describe(&self) -> String {
        match self {
            Self::Available { heap } => {
                format!("present (DMA_HEAP_IOCTL_ALLOC reads charge_fd: probed on {heap})")
            }
            Self::Absent { probed } => format!("absent ({probed})"),
            Self::Unknown { why } => format!("not probed ({why})"),
        }
    }
}

/// Whether this process's memory cgroup's `memory.stat` has the RFC's
/// `dmabuf` line.
fn memory_stat_has_dmabuf() -> bool {
    let Some(path) = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("0::").map(str::to_owned)))
    else {
        return false;
    };
    let file = format!("/sys/fs/cgroup{}/memory.stat", path.trim_end_matches('/'));
    std::fs::read_to_string(file).is_ok_and(|s| s.lines().any(|l| l.starts_with("dmabuf ")))
}

/// Which mechanism a `dmabroker serve` broker on this kernel charges a
/// client's dma-heap memory with (it has workers whenever cgroup2 is
/// mounted): the kernel's target where probed present, else a worker in the
/// client's cgroup, and none without `mem_accounting`.
pub fn mechanism(accounting: super::mem_accounting::MemAccounting, target: &ChargeTarget) -> &'static str {
    use super::mem_accounting::MemAccounting;
    match accounting {
        MemAccounting::On if target.available() => "the kernel's charge target (charge_fd = the client's cgroup)",
        MemAccounting::On => "a worker process in each client's cgroup allocates (clone3 CLONE_INTO_CGROUP)",
        MemAccounting::Off | MemAccounting::Absent => "none: dma-heap memory is charged to no cgroup",
    }
}

/// The `charging` lines of `dmabroker heaps` and `stats`: the kernel's
/// switch, its charge target, and the mechanism used.
pub fn report() -> String {
    let accounting = super::mem_accounting::MemAccounting::detect();
    let target = ChargeTarget::probe();
    format!(
        "charging: {}\nkernel charge target: {}\ncharging mechanism: {}\n",
        accounting.describe(),
        target.describe(),
        mechanism(accounting, &target)
    )
}
