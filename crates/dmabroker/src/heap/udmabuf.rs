//! The `udmabuf` heap: a sealed memfd turned into a real dma-buf by
//! `/dev/udmabuf`.
//!
//! No privilege is needed beyond access to `/dev/udmabuf` (systemd tags it
//! `uaccess`), and the memory is ordinary shmem charged to the allocating
//! process's cgroup. Limits: `size_limit_mb` per buffer (module parameter,
//! default 64 MiB). The memfd must carry `F_SEAL_SHRINK` and not
//! `F_SEAL_WRITE`; dmabroker's memfds have exactly what is needed.
//! Caveat: udmabuf's `DMA_BUF_IOCTL_SYNC` does nothing while no device is
//! attached.

use super::memfd::create_sealed;
use super::{
    check_available, check_request, meminfo, open_error, ram_end, AllocError, AllocRequest, Heap, HeapInfo, HeapKind,
    Limits,
};
use crate::buffer::{Buffer, BufferKind, CacheMode, PhysicalProperties};
use rustix::fs::{Mode, OFlags};
use std::os::fd::OwnedFd;

/// Path of the udmabuf device.
pub const DEVICE: &str = "/dev/udmabuf";

/// The udmabuf heap.
#[derive(Debug)]
pub struct Udmabuf {
    device: Result<OwnedFd, rustix::io::Errno>,
    page_size: u64,
    size_limit: u64,
}

/// `/sys/module/udmabuf/parameters/size_limit_mb` in bytes.
pub fn size_limit() -> Option<u64> {
    let mb: u64 = std::fs::read_to_string("/sys/module/udmabuf/parameters/size_limit_mb").ok()?.trim().parse().ok()?;
    mb.checked_mul(1 << 20)
}

impl Udmabuf {
    /// The udmabuf heap, when `/dev/udmabuf` exists.
    pub fn discover() -> Option<Self> {
        if std::fs::metadata(DEVICE).is_err() {
            return None;
        }
        let device = rustix::fs::open(DEVICE, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty());
        Some(Self {
            device,
            page_size: rustix::param::page_size() as u64,
            size_limit: size_limit().unwrap_or(64 << 20),
        })
    }
}

impl Udmabuf {
    fn limits(&self) -> Limits<'_> {
        Limits {
            name: "udmabuf",
            kind: HeapKind::Udmabuf,
            page_size: self.page_size,
            contiguous_up_to: Some(self.page_size),
            max_buffer_size: Some(self.size_limit),
        }
    }
}

impl Heap for Udmabuf {
    fn name(&self) -> &'static str {
        "udmabuf"
    }

    fn info(&self) -> HeapInfo {
        HeapInfo {
            name: "udmabuf".into(),
            kind: HeapKind::Udmabuf,
            contiguous_up_to: Some(self.page_size),
            page_size: self.page_size,
            cache_modes: vec![CacheMode::Cached],
            device_importable: true,
            free_bytes: meminfo("MemAvailable"),
            max_buffer_size: Some(self.size_limit),
            usable: self.device.is_ok(),
            note: self.device.as_ref().err().map(|e| format!("cannot open {DEVICE}: {e}")),
            pool_pages: None,
            ram_end: ram_end(),
            cma: None,
        }
    }

    fn allocate(&self, request: &AllocRequest) -> Result<Buffer, AllocError> {
        let len = check_request(&self.limits(), request)?;
        let device = self.device.as_ref().map_err(|e| {
            open_error(
                DEVICE,
                *e,
                "add this user to the group owning /dev/udmabuf (or a udev rule), or allocate through the broker: \
                 `dmabroker alloc --broker ...` (with `dmabroker serve` running)",
            )
        })?;
        // udmabuf pins the memfd's pages: refuse a large request that the
        // memory available now cannot hold before the kernel tries.
        check_available("udmabuf", len)?;
        let memfd = create_sealed("udmabuf", request.name.as_deref(), len, rustix::fs::MemfdFlags::empty())?;
        let fd = dmabroker_sys::udmabuf::create(device, &memfd, 0, len).map_err(|e| match e {
            rustix::io::Errno::NOMEM => AllocError::OutOfMemory { heap: "udmabuf".into(), len, available: None },
            source => AllocError::Os { op: "UDMABUF_CREATE", source },
        })?;
        // The dma-buf holds the memfd's pages; the memfd itself can go.
        drop(memfd);
        if let Some(name) = &request.name {
            super::dma_heap::set_dma_buf_name(&fd, name);
        }
        let properties = PhysicalProperties {
            contiguous_up_to: self.page_size,
            page_size: self.page_size,
            cache: CacheMode::Cached,
            coherency: request.coherency,
            device_importable: true,
        };
        Ok(Buffer::new(fd, len, BufferKind::DmaBuf, "udmabuf", request.name.clone(), properties))
    }
}
