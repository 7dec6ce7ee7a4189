//! Whether the kernel charges dma-heap memory to a memory cgroup:
//! `dma_heap.mem_accounting` (Linux 7.0; off by default, set only on the
//! kernel command line: the parameter is read-only, mode 0444, at
//! `/sys/module/dma_heap/parameters/mem_accounting`). When it is on, the
//! system heap allocates with `__GFP_ACCOUNT`: pages are charged to the
//! memory cgroup of the task that calls `DMA_HEAP_IOCTL_ALLOC`.

use serde::Serialize;

/// The parameter's file.
pub const PARAMETER: &str = "/sys/module/dma_heap/parameters/mem_accounting";

/// What the running kernel does with dma-heap memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemAccounting {
    /// `dma_heap.mem_accounting=1`: charged to the allocating task's cgroup.
    On,
    /// The kernel has the parameter, switched off (the default).
    Off,
    /// The kernel has no such parameter (before 7.0, or no dma-heaps).
    Absent,
}

impl MemAccounting {
    /// Read the parameter (one small sysfs read).
    pub fn detect() -> Self {
        match std::fs::read_to_string(PARAMETER) {
            Ok(v) if matches!(v.trim(), "Y" | "y" | "1") => Self::On,
            Ok(_) => Self::Off,
            Err(_) => Self::Absent,
        }
    }

    /// One line for `dmabroker heaps` and `stats`: who dma-heap memory is
    /// charged to, and what to do about it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::On => {
                "dma-heap memory is charged to memory cgroups (dma_heap.mem_accounting=1): the broker charges \
                 each client's cgroup, so memory.max applies to what a client asks for"
            }
            Self::Off => {
                "dma-heap memory is charged to no cgroup: dma_heap.mem_accounting is off (boot with \
                 dma_heap.mem_accounting=1 to charge clients' cgroups); only the broker's own quotas apply"
            }
            Self::Absent => {
                "dma-heap memory is charged to no cgroup: this kernel has no dma_heap.mem_accounting (Linux >= 7.0, \
                 booted with dma_heap.mem_accounting=1); only the broker's own quotas apply"
            }
        }
    }
}
