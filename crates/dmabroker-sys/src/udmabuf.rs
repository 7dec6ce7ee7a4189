//! `/dev/udmabuf`: turn pages of a sealed memfd into a dma-buf.
//!
//! The memfd must carry `F_SEAL_SHRINK` and must not carry `F_SEAL_WRITE`;
//! offsets and sizes must be page aligned; each buffer is limited by the
//! module parameters `size_limit_mb` (default 64) and `list_limit` (1024).
//!
//! # References
//! `include/uapi/linux/udmabuf.h`, `drivers/dma-buf/udmabuf.c`

use crate::fd_ioctl::FdReturning;
use rustix::ioctl::{ioctl, opcode, Opcode};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// `UDMABUF_FLAGS_CLOEXEC`.
pub const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;

/// `struct udmabuf_create`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UdmabufCreate {
    /// The memfd.
    pub memfd: u32,
    /// `UDMABUF_FLAGS_*`.
    pub flags: u32,
    /// Page-aligned offset into the memfd.
    pub offset: u64,
    /// Page-aligned size.
    pub size: u64,
}

/// `struct udmabuf_create_item`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UdmabufCreateItem {
    /// The memfd.
    pub memfd: u32,
    /// Padding, must be zero.
    pub pad: u32,
    /// Page-aligned offset into the memfd.
    pub offset: u64,
    /// Page-aligned size.
    pub size: u64,
}

/// `struct udmabuf_create_list` (header; `count` items follow it).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UdmabufCreateList {
    /// `UDMABUF_FLAGS_*`.
    pub flags: u32,
    /// Number of items that follow.
    pub count: u32,
}

/// `UDMABUF_CREATE = _IOW('u', 0x42, struct udmabuf_create)`.
pub const UDMABUF_CREATE: Opcode = opcode::write::<UdmabufCreate>(b'u', 0x42);
/// `UDMABUF_CREATE_LIST = _IOW('u', 0x43, struct udmabuf_create_list)`.
pub const UDMABUF_CREATE_LIST: Opcode = opcode::write::<UdmabufCreateList>(b'u', 0x43);

/// `ioctl(/dev/udmabuf, UDMABUF_CREATE)`: a close-on-exec dma-buf over
/// `size` bytes of `memfd` starting at `offset`.
///
/// # Errors
/// `EINVAL` for a memfd without `F_SEAL_SHRINK`, with `F_SEAL_WRITE`, or
/// misaligned ranges; `E2BIG`/`EINVAL` above `size_limit_mb`.
pub fn create(udmabuf_dev: impl AsFd, memfd: impl AsFd, offset: u64, size: u64) -> rustix::io::Result<OwnedFd> {
    let mut arg = UdmabufCreate { memfd: memfd.as_fd().as_raw_fd() as u32, flags: UDMABUF_FLAGS_CLOEXEC, offset, size };
    // SAFETY: UDMABUF_CREATE reads one `udmabuf_create` and returns a new fd.
    unsafe { ioctl(udmabuf_dev, FdReturning::<UDMABUF_CREATE, _>::new(&mut arg)) }
}

/// `ioctl(/dev/udmabuf, UDMABUF_CREATE_LIST)`: one dma-buf over several
/// (memfd, offset, size) ranges, in order.
///
/// # Errors
/// As [`create`]; `EINVAL` for an empty list or more than `list_limit` items.
pub fn create_list(
    udmabuf_dev: impl AsFd,
    items: &[(std::os::fd::BorrowedFd<'_>, u64, u64)],
) -> rustix::io::Result<OwnedFd> {
    const HEAD_WORDS: usize = size_of::<UdmabufCreateList>() / 8;
    const ITEM_WORDS: usize = size_of::<UdmabufCreateItem>() / 8;
    let count = u32::try_from(items.len()).map_err(|_| rustix::io::Errno::INVAL)?;
    // The kernel reads the header and then `count` items right behind it, so
    // both live in one u64-aligned allocation.
    let mut raw = vec![0u64; HEAD_WORDS + items.len() * ITEM_WORDS];
    let base = raw.as_mut_ptr();
    // SAFETY: `raw` holds HEAD_WORDS + count * ITEM_WORDS u64 words, 8-byte
    // aligned, which is exactly the room and alignment of one
    // `UdmabufCreateList` followed by `count` `UdmabufCreateItem`s (both
    // 8-byte aligned, sizes multiples of 8). Each write stays in bounds.
    unsafe {
        base.cast::<UdmabufCreateList>().write(UdmabufCreateList { flags: UDMABUF_FLAGS_CLOEXEC, count });
        for (i, (fd, offset, size)) in items.iter().enumerate() {
            base.add(HEAD_WORDS + i * ITEM_WORDS).cast::<UdmabufCreateItem>().write(UdmabufCreateItem {
                memfd: fd.as_raw_fd() as u32,
                pad: 0,
                offset: *offset,
                size: *size,
            });
        }
    }
    // SAFETY: UDMABUF_CREATE_LIST reads the header and the `count` items laid
    // out contiguously after it, all inside `raw` (written above); the
    // pointer passed comes from the whole of `raw`, so its provenance covers
    // every byte the kernel reads. It borrows the memfds for the call and
    // returns a new fd.
    unsafe { ioctl(udmabuf_dev, FdReturning::<UDMABUF_CREATE_LIST, UdmabufCreateList>::words(&mut raw)) }
}
