//! CPU cache maintenance by cache line, for memory the CPU shares with a
//! device that does not snoop its caches.
//!
//! - x86_64: `clflushopt` (or `clflush` on CPUs without it) on every line,
//!   then `sfence`/`mfence`. x86 DMA is cache coherent on nearly all
//!   platforms, so this is only needed for non-coherent devices (some
//!   integrated GPUs' write-combined paths, PCIe devices with no-snoop).
//! - aarch64: `dc civac` (clean and invalidate to the point of coherency) on
//!   every line, the line size read from `CTR_EL0`, then `dsb sy`. User space
//!   may issue it when `SCTLR_EL1.UCI` is set, which Linux does.
//! - elsewhere: [`CacheMaintenance::Unsupported`].
//!
//! dma-bufs never need this: `DMA_BUF_IOCTL_SYNC` makes the exporter do it.

use crate::mmap::Mapping;

/// Which instruction this CPU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMaintenance {
    /// x86 `clflushopt`.
    ClflushOpt,
    /// x86 `clflush`.
    Clflush,
    /// aarch64 `dc civac`.
    DcCivac,
    /// No user-space cache maintenance on this architecture.
    Unsupported,
}

/// The instruction [`clean_invalidate`] uses on this CPU.
pub fn method() -> CacheMaintenance {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 7, subleaf 0, EBX bit 23: CLFLUSHOPT (std's feature
        // detection macro does not know this one). Leaf 7 is only meaningful
        // when leaf 0 reports it: above the maximum leaf, Intel CPUs answer
        // with the highest leaf's data, whose bit 23 means something else.
        #[allow(unused_unsafe)]
        // SAFETY: cpuid is available on every x86_64 CPU and only reads ids.
        let max_leaf = unsafe { std::arch::x86_64::__cpuid(0) }.eax;
        #[allow(unused_unsafe)]
        // SAFETY: as above.
        let leaf7 = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        if max_leaf >= 7 && leaf7.ebx & (1 << 23) != 0 {
            CacheMaintenance::ClflushOpt
        } else {
            CacheMaintenance::Clflush
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        CacheMaintenance::DcCivac
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        CacheMaintenance::Unsupported
    }
}

/// Size of a cache line in bytes, as the maintenance instructions see it.
pub fn line_size() -> usize {
    #[cfg(target_arch = "aarch64")]
    {
        let ctr: u64;
        // SAFETY: reading CTR_EL0 is permitted at EL0 on Linux and has no side effects.
        unsafe { std::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
        // DminLine, bits 19:16: log2 of the number of 4-byte words.
        4 << ((ctr >> 16) & 0xf)
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        64
    }
}

/// Write back and invalidate the CPU cache lines covering
/// `mapping[offset..offset + len]`. Returns false when this architecture has
/// no user-space cache maintenance (nothing was done).
///
/// # Panics
/// Never; ranges past the end of the mapping are clamped.
pub fn clean_invalidate(mapping: &Mapping, offset: usize, len: usize) -> bool {
    let start = offset.min(mapping.len());
    let end = offset.saturating_add(len).min(mapping.len());
    if start >= end {
        return method() != CacheMaintenance::Unsupported;
    }
    let line = line_size();
    let base = mapping.as_ptr() as usize;
    let first = (base + start) & !(line - 1);
    let last = base + end;
    match method() {
        #[cfg(target_arch = "x86_64")]
        CacheMaintenance::ClflushOpt => {
            let mut addr = first;
            while addr < last {
                // SAFETY: `addr` lies within a cache line that overlaps the live
                // mapping (it was rounded down to a line boundary only, and
                // mappings are page aligned); clflushopt does not change memory.
                unsafe { std::arch::asm!("clflushopt [{}]", in(reg) addr, options(nostack)) };
                addr += line;
            }
            // SAFETY: a store fence orders the flushes; no memory operands.
            unsafe { std::arch::asm!("sfence", options(nostack)) };
            true
        }
        #[cfg(target_arch = "x86_64")]
        CacheMaintenance::Clflush => {
            let mut addr = first;
            while addr < last {
                // SAFETY: as above, for the older clflush instruction.
                unsafe { std::arch::asm!("clflush [{}]", in(reg) addr, options(nostack)) };
                addr += line;
            }
            // SAFETY: a full fence; no memory operands.
            unsafe { std::arch::asm!("mfence", options(nostack)) };
            true
        }
        #[cfg(target_arch = "aarch64")]
        CacheMaintenance::DcCivac => {
            let mut addr = first;
            while addr < last {
                // SAFETY: `addr` is inside the live mapping's lines; dc civac
                // writes back and invalidates without changing memory contents.
                unsafe { std::arch::asm!("dc civac, {}", in(reg) addr, options(nostack)) };
                addr += line;
            }
            // SAFETY: a barrier completing the maintenance; no operands.
            unsafe { std::arch::asm!("dsb sy", options(nostack)) };
            true
        }
        _ => false,
    }
}
