//! `dma-heap/<name>` heaps: every entry of `/dev/dma_heap`.
//!
//! Properties are told from the name, since the kernel exports nothing else:
//! `system` is cached page-granular memory; `system-uncached` (vendor kernels)
//! uncached; CMA heaps (`linux,cma`, or `reserved` when the CMA area comes
//! from the device tree or `cma=` on some boards, vendor names containing
//! `cma`) are physically contiguous for the whole buffer, and their free
//! capacity is `CmaFree` in /proc/meminfo.

use super::{
    check_available, check_request, meminfo, open_error, ram_end, AllocError, AllocRequest, Heap, HeapInfo, HeapKind,
    Limits,
};
use crate::buffer::adopt::is_contiguous_exporter;
use crate::buffer::{Buffer, BufferKind, CacheMode, PhysicalProperties};
use rustix::fs::{Mode, OFlags};
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};

/// Directory of the heap device nodes.
pub const DIRECTORY: &str = "/dev/dma_heap";

/// One dma-heap.
#[derive(Debug)]
pub struct DmaHeap {
    name: String,
    heap_name: String,
    path: String,
    device: Result<OwnedFd, rustix::io::Errno>,
    page_size: u64,
}

/// Name a dma-buf (`DMA_BUF_SET_NAME`, at most 31 bytes); failures only log:
/// a name is a debugging aid.
pub(crate) fn set_dma_buf_name(fd: impl AsFd, name: &str) {
    let mut cut = name.len().min(dmabroker_sys::dma_buf::DMA_BUF_NAME_LEN - 1);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    if let Ok(c) = CString::new(&name[..cut]) {
        if let Err(e) = dmabroker_sys::dma_buf::set_name(fd, &c) {
            tracing::debug!("DMA_BUF_SET_NAME {name:?}: {e}");
        }
    }
}

impl DmaHeap {
    /// Every heap in /dev/dma_heap, sorted by name.
    pub fn discover() -> Vec<Self> {
        let Ok(entries) = std::fs::read_dir(DIRECTORY) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
        names.sort();
        names.into_iter().map(Self::open).collect()
    }

    /// Open `/dev/dma_heap/<heap_name>`.
    pub fn open(heap_name: String) -> Self {
        let path = format!("{DIRECTORY}/{heap_name}");
        let device = rustix::fs::open(path.as_str(), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty());
        Self {
            name: format!("dma-heap/{heap_name}"),
            heap_name,
            path,
            device,
            page_size: rustix::param::page_size() as u64,
        }
    }

    fn contiguous(&self) -> bool {
        is_contiguous_exporter(&self.heap_name)
    }

    fn uncached(&self) -> bool {
        self.heap_name.contains("uncached")
    }
}

impl DmaHeap {
    fn limits(&self) -> Limits<'_> {
        Limits {
            name: &self.name,
            kind: HeapKind::DmaHeap,
            page_size: self.page_size,
            contiguous_up_to: if self.contiguous() { None } else { Some(self.page_size) },
            max_buffer_size: None,
        }
    }
}

impl Heap for DmaHeap {
    fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> HeapInfo {
        let contiguous = self.contiguous();
        HeapInfo {
            name: self.name.clone(),
            kind: HeapKind::DmaHeap,
            contiguous_up_to: if contiguous { None } else { Some(self.page_size) },
            page_size: self.page_size,
            cache_modes: vec![if self.uncached() { CacheMode::Uncached } else { CacheMode::Cached }],
            device_importable: true,
            free_bytes: if contiguous { meminfo("CmaFree") } else { meminfo("MemAvailable") },
            max_buffer_size: None,
            usable: self.device.is_ok(),
            note: self.device.as_ref().err().map(|e| {
                format!("cannot open {}: {e} (heaps are root-only on most distributions: use the broker)", self.path)
            }),
            pool_pages: None,
            ram_end: ram_end(),
        }
    }

    fn allocate(&self, request: &AllocRequest) -> Result<Buffer, AllocError> {
        let len = check_request(&self.limits(), request)?;
        let device = self.device.as_ref().map_err(|e| {
            open_error(
                &self.path,
                *e,
                "grant this user access to it (a udev rule), or allocate through the broker: \
                 `dmabroker alloc --broker ...` (with `dmabroker serve` running)",
            )
        })?;
        // CMA heaps fail cleanly when the area is short; other heaps pin
        // pages until the OOM killer steps in, so a large request is checked
        // against the memory available first.
        if !self.contiguous() {
            check_available(&self.name, len)?;
        }
        let fd = dmabroker_sys::dma_heap::alloc(device, len).map_err(|e| match e {
            rustix::io::Errno::NOMEM => AllocError::OutOfMemory { heap: self.name.clone(), len, available: None },
            source => AllocError::Os { op: "DMA_HEAP_IOCTL_ALLOC", source },
        })?;
        if let Some(name) = &request.name {
            set_dma_buf_name(&fd, name);
        }
        let properties = PhysicalProperties {
            contiguous_up_to: if self.contiguous() { len } else { self.page_size },
            page_size: self.page_size,
            cache: if self.uncached() { CacheMode::Uncached } else { CacheMode::Cached },
            coherency: request.coherency,
            device_importable: true,
        };
        Ok(Buffer::new(fd, len, BufferKind::DmaBuf, self.name.clone(), request.name.clone(), properties))
    }
}
