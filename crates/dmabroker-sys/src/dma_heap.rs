//! `/dev/dma_heap/*`: `DMA_HEAP_IOCTL_ALLOC`.
//!
//! # References
//! `include/uapi/linux/dma-heap.h`, `drivers/dma-buf/dma-heap.c`

use rustix::fs::OFlags;
use rustix::ioctl::{ioctl, opcode, Opcode, Updater};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

/// `struct dma_heap_allocation_data`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct DmaHeapAllocationData {
    /// Size of the allocation in bytes.
    pub len: u64,
    /// Returned dma-buf fd.
    pub fd: u32,
    /// File descriptor flags for the returned fd (`O_CLOEXEC | O_RDWR`).
    pub fd_flags: u32,
    /// Heap flags: none are defined yet; the kernel rejects any bit.
    pub heap_flags: u64,
}

/// `DMA_HEAP_IOCTL_ALLOC = _IOWR('H', 0x0, struct dma_heap_allocation_data)`.
pub const DMA_HEAP_IOCTL_ALLOC: Opcode = opcode::read_write::<DmaHeapAllocationData>(b'H', 0);

/// The flags dma-heap.c accepts for the new fd (`DMA_HEAP_VALID_FD_FLAGS`).
pub const DMA_HEAP_VALID_FD_FLAGS: u32 = OFlags::CLOEXEC.bits() | OFlags::ACCMODE.bits();

/// `ioctl(heap, DMA_HEAP_IOCTL_ALLOC)`: allocate `len` bytes from an open heap
/// device and return the new dma-buf, opened read-write and close-on-exec.
///
/// # Errors
/// The kernel's errno: `ENOMEM` when the heap is exhausted, `EINVAL` for a
/// zero or page-misaligned length on some heaps.
pub fn alloc(heap: impl AsFd, len: u64) -> rustix::io::Result<OwnedFd> {
    let mut data =
        DmaHeapAllocationData { len, fd: 0, fd_flags: OFlags::CLOEXEC.bits() | OFlags::RDWR.bits(), heap_flags: 0 };
    // SAFETY: DMA_HEAP_IOCTL_ALLOC reads and writes exactly a
    // `dma_heap_allocation_data`, which `DmaHeapAllocationData` mirrors.
    unsafe { ioctl(heap, Updater::<DMA_HEAP_IOCTL_ALLOC, _>::new(&mut data))? };
    // SAFETY: on success the kernel installed a new fd in `data.fd` that
    // nobody else owns; it is adopted in this statement.
    Ok(unsafe { OwnedFd::from_raw_fd(data.fd as i32) })
}

/// `struct dma_heap_allocation_data` with the charge target proposed in the
/// unmerged RFC "dma-heap: charge dma-buf memory via explicit memcg"
/// (Albert Esteve, linaro-mm-sig, 2026-05: `charge_pid_fd`, since renamed
/// `charge_fd`, a pidfd or a cgroup fd), as a `__u32` after `heap_flags`,
/// padded to 8 bytes. No merged kernel has it; the layout is the RFC's
/// proposal, so it is used only where [`probe_charge_fd`] saw the kernel
/// read the field.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct DmaHeapAllocationDataCharge {
    /// As [`DmaHeapAllocationData`].
    pub len: u64,
    /// Returned dma-buf fd.
    pub fd: u32,
    /// File descriptor flags for the returned fd.
    pub fd_flags: u32,
    /// Heap flags.
    pub heap_flags: u64,
    /// The process (pidfd) or cgroup (directory fd) to charge.
    pub charge_fd: u32,
    /// Zero.
    pub reserved: u32,
}

/// `DMA_HEAP_IOCTL_ALLOC` with the larger struct (the ioctl number encodes
/// the size; dma-heap.c dispatches on the number alone).
pub const DMA_HEAP_IOCTL_ALLOC_CHARGE: Opcode = opcode::read_write::<DmaHeapAllocationDataCharge>(b'H', 0);

/// `DMA_HEAP_IOCTL_ALLOC` with a charge target: `len` bytes from `heap`,
/// charged to `charge` (a pidfd or a cgroup directory fd).
///
/// A kernel without the field (every released one) copies the larger
/// struct in, ignores what follows `heap_flags` and allocates charged to
/// the caller: success proves nothing, see [`probe_charge_fd`].
///
/// # Errors
/// The kernel's errno.
pub fn alloc_charged(heap: impl AsFd, len: u64, charge: impl AsFd) -> rustix::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let mut data = DmaHeapAllocationDataCharge {
        len,
        fd_flags: OFlags::CLOEXEC.bits() | OFlags::RDWR.bits(),
        charge_fd: charge.as_fd().as_raw_fd() as u32,
        ..DmaHeapAllocationDataCharge::default()
    };
    // SAFETY: the kernel reads and writes at most the size encoded in the
    // opcode, that of `DmaHeapAllocationDataCharge`, which `data` is.
    unsafe { ioctl(heap, Updater::<DMA_HEAP_IOCTL_ALLOC_CHARGE, _>::new(&mut data))? };
    // SAFETY: on success the kernel installed a new fd in `data.fd` that
    // nobody else owns; it is adopted in this statement.
    Ok(unsafe { OwnedFd::from_raw_fd(data.fd as i32) })
}

/// What [`probe_charge_fd`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeFdProbe {
    /// The kernel refused a charge target that is neither a pidfd nor a
    /// cgroup (this errno): it reads the field.
    Read(rustix::io::Errno),
    /// The kernel allocated anyway: it ignores the field (no charge target).
    Ignored,
    /// The probe allocation itself failed (this errno): unknown.
    Failed(rustix::io::Errno),
}

/// Whether the kernel reads the RFC's charge target: one page allocated
/// from `heap` with `charge_fd` set to `heap` itself, which no kernel
/// implementing the field can accept as a process or a cgroup. The page,
/// if allocated, is freed at once (charged, for that moment, to the caller).
pub fn probe_charge_fd(heap: impl AsFd) -> ChargeFdProbe {
    let page = rustix::param::page_size() as u64;
    match alloc_charged(heap.as_fd(), page, heap.as_fd()) {
        Ok(_buffer) => ChargeFdProbe::Ignored,
        Err(e @ (rustix::io::Errno::BADF | rustix::io::Errno::INVAL | rustix::io::Errno::NOTSUP)) => {
            ChargeFdProbe::Read(e)
        }
        Err(e) => ChargeFdProbe::Failed(e),
    }
}
