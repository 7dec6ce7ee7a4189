//! `dma-heap/<name>` heaps: every entry of `/dev/dma_heap`.
//!
//! The kernel exports no properties for a heap. Whether it is a CMA heap
//! (physically contiguous for the whole buffer, free capacity `CmaFree` in
//! /proc/meminfo) is found by property: [`cma_probe`](super::cma_probe)
//! allocates a probe buffer and watches `CmaFree`, whatever the heap is called
//! (`linux,cma`, `reserved`, `default_cma_region` since 6.17, vendor names).
//! Only where the heap cannot be opened is the name used (`*cma*`,
//! `reserved`), and the heap's note says so. `system-uncached` (vendor
//! kernels) is told uncached by its name.

use super::cma_area;
use super::cma_probe::{self, CmaProbe};
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
    /// Whether it is CMA, and how that was found: probed once, lazily.
    cma: std::sync::OnceLock<(bool, String)>,
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
            cma: std::sync::OnceLock::new(),
        }
    }

    fn contiguous(&self) -> bool {
        self.cma_probe().0
    }

    /// (is CMA, how it was found), probed on first use.
    fn cma_probe(&self) -> &(bool, String) {
        self.cma.get_or_init(|| {
            let by_name = is_contiguous_exporter(&self.heap_name);
            match &self.device {
                Ok(fd) => match cma_probe::probe(fd) {
                    CmaProbe::Cma => (true, "CMA: a probe allocation took its pages from CmaFree".into()),
                    CmaProbe::NotCma => (false, String::new()),
                    CmaProbe::Unknown(why) => (by_name, format!("CMA probe inconclusive ({why}); told by its name")),
                },
                Err(_) if by_name => (true, "CMA told by its name (the heap cannot be opened to probe)".into()),
                Err(_) => (false, String::new()),
            }
        })
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
        let cma = contiguous.then(|| cma_area::state(&self.name, &self.heap_name));
        HeapInfo {
            name: self.name.clone(),
            kind: HeapKind::DmaHeap,
            contiguous_up_to: if contiguous { None } else { Some(self.page_size) },
            page_size: self.page_size,
            cache_modes: vec![if self.uncached() { CacheMode::Uncached } else { CacheMode::Cached }],
            device_importable: true,
            free_bytes: match &cma {
                Some(c) => c.free_bytes,
                None => meminfo("MemAvailable"),
            },
            max_buffer_size: None,
            usable: self.device.is_ok(),
            note: {
                let open = self.device.as_ref().err().map(|e| {
                    format!(
                        "cannot open {}: {e} (heaps are root-only on most distributions: use the broker)",
                        self.path
                    )
                });
                let cma = cma.as_ref().map(|c| format!("{}; CMA {}", self.cma_probe().1, c.describe()));
                match (open, cma) {
                    (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                    (a, b) => a.or(b),
                }
            },
            pool_pages: None,
            ram_end: ram_end(),
            cma,
        }
    }

    fn allocate(&self, request: &AllocRequest) -> Result<Buffer, AllocError> {
        self.allocate_with(request, None)
    }

    fn allocate_charged(
        &self,
        request: &AllocRequest,
        target: std::os::fd::BorrowedFd<'_>,
    ) -> Option<Result<Buffer, AllocError>> {
        Some(self.allocate_with(request, Some(target)))
    }
}

impl DmaHeap {
    /// Allocate, charged to `charge` (the kernel's charge target, see
    /// [`super::charge_target`]) or to this process.
    fn allocate_with(
        &self,
        request: &AllocRequest,
        charge: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<Buffer, AllocError> {
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
        let fd = match charge {
            None => dmabroker_sys::dma_heap::alloc(device, len),
            Some(target) => dmabroker_sys::dma_heap::alloc_charged(device, len, target),
        };
        let fd = fd.map_err(|e| match e {
            rustix::io::Errno::NOMEM if self.contiguous() => {
                cma_area::record_refusal(&self.name, len);
                AllocError::CmaShort {
                    heap: self.name.clone(),
                    len,
                    free: meminfo("CmaFree"),
                    total: meminfo("CmaTotal"),
                    area: Some(Box::new(cma_area::state(&self.name, &self.heap_name))),
                }
            }
            rustix::io::Errno::NOMEM => AllocError::OutOfMemory { heap: self.name.clone(), len, available: None },
            source => AllocError::Os { op: "DMA_HEAP_IOCTL_ALLOC", source },
        })?;
        if self.contiguous() {
            cma_area::record_success(&self.name, len);
        }
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
