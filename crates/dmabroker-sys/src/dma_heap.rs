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
