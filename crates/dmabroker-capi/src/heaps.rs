//! Heap discovery: `dmabroker_heaps_*`.

use crate::error::{guard, guard_value, Error, Status};
use crate::{free_handle, handle, into_handle, DMABROKER_UNLIMITED};
use dmabroker_core::buffer::CacheMode;
use std::ffi::{c_char, CString};
use std::ptr;

/// The family an allocator belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum HeapKind {
    /// `/dev/dma_heap/<name>`: dma-bufs.
    DmaHeap = 0,
    /// `/dev/udmabuf`: sealed memfd pages turned into a dma-buf.
    Udmabuf = 1,
    /// A sealed shmem memfd (CPU/IPC memory; present everywhere).
    Memfd = 2,
    /// A hugetlbfs memfd (2 MiB or 1 GiB pages).
    Hugetlb = 3,
    /// A kind this version of the header does not know.
    Other = 255,
}

impl From<dmabroker_core::heap::HeapKind> for HeapKind {
    fn from(k: dmabroker_core::heap::HeapKind) -> Self {
        use dmabroker_core::heap::HeapKind as K;
        #[allow(unreachable_patterns)]
        match k {
            K::DmaHeap => Self::DmaHeap,
            K::Udmabuf => Self::Udmabuf,
            K::Memfd => Self::Memfd,
            K::Hugetlb => Self::Hugetlb,
            _ => Self::Other,
        }
    }
}

/// What a heap can do, as read by `dmabroker_heaps_discover`.
///
/// The strings belong to the `dmabroker_heaps` handle and stay valid until
/// it is freed.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct HeapInfo {
    /// The name to allocate from (`"memfd"`, `"dma-heap/system"`, ...).
    pub name: *const c_char,
    /// Why the heap is unusable, or anything else worth knowing; NULL if nothing.
    pub note: *const c_char,
    /// Its family.
    pub kind: HeapKind,
    /// Largest physically contiguous run it guarantees, in bytes;
    /// `DMABROKER_UNLIMITED`: the whole buffer, however large (CMA).
    pub contiguous_up_to: u64,
    /// Page size of its memory, in bytes.
    pub page_size: u64,
    /// Bytes it could still hand out at discovery; `DMABROKER_UNLIMITED` when unknown.
    pub free_bytes: u64,
    /// Largest single buffer; `DMABROKER_UNLIMITED` when not limited.
    pub max_buffer_size: u64,
    /// Its buffers are dma-bufs a device (V4L2, DRM, ...) can import.
    pub device_importable: bool,
    /// This process may allocate from it.
    pub usable: bool,
    /// It offers uncached (or write-combined) memory.
    pub uncached: bool,
}

struct Entry {
    info: dmabroker_core::heap::HeapInfo,
    name: CString,
    note: Option<CString>,
}

/// The heaps of this machine (opaque): made by `dmabroker_heaps_discover`,
/// released by `dmabroker_heaps_free`. Read-only after creation, so it may
/// be shared between threads.
pub struct Heaps {
    pub(crate) heaps: dmabroker_core::heap::Heaps,
    entries: Vec<Entry>,
}

fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "?")).unwrap_or_default()
}

impl Heaps {
    pub(crate) fn discover() -> Self {
        let heaps = dmabroker_core::heap::Heaps::discover();
        let entries = heaps
            .infos()
            .into_iter()
            .map(|info| Entry { name: c_string(&info.name), note: info.note.as_deref().map(c_string), info })
            .collect();
        Self { heaps, entries }
    }
}

/// Find the allocators this machine has (dma-heaps, udmabuf, memfd,
/// hugetlb) and their capabilities. Never fails for want of an allocator:
/// `memfd` is always there; missing or inaccessible ones are listed as
/// unusable with a note, or left out.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` when `out` is NULL.
///
/// # Safety
/// `out` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_heaps_discover(out: *mut *mut Heaps) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        *out = into_handle(Heaps::discover());
        Ok(())
    })
}

/// Release a `dmabroker_heaps`. NULL is ignored. Buffers allocated from it
/// stay valid.
///
/// # Safety
/// `heaps` is NULL or a handle from `dmabroker_heaps_discover` not freed
/// before; it is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_heaps_free(heaps: *mut Heaps) {
    // SAFETY: the caller passes NULL or a live handle it gives up.
    guard_value((), || unsafe { free_handle(heaps) });
}

/// The number of heaps (0 for NULL).
///
/// # Safety
/// `heaps` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_heaps_count(heaps: *const Heaps) -> usize {
    guard_value(0, || {
        // SAFETY: the caller passes NULL or a live handle.
        unsafe { handle(heaps, "heaps") }.map_or(0, |h| h.entries.len())
    })
}

/// The capabilities of heap number `index` (0 to count - 1, in discovery
/// order: dma-heaps, udmabuf, memfd, hugetlb).
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for a NULL pointer or an index out of range.
///
/// # Safety
/// `heaps` is NULL or a live handle; `out` is NULL or writable for one
/// `dmabroker_heap_info`.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_heaps_get_info(heaps: *const Heaps, index: usize, out: *mut HeapInfo) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable dmabroker_heap_info.
        let out = unsafe { crate::out(out, "out") }?;
        // SAFETY: the caller passes NULL or a live handle.
        let heaps = unsafe { handle(heaps, "heaps") }?;
        let entry = heaps.entries.get(index).ok_or_else(|| {
            Error::invalid(format!("heap index {index} is out of range: there are {} heaps", heaps.entries.len()))
        })?;
        let info = &entry.info;
        *out = HeapInfo {
            name: entry.name.as_ptr(),
            note: entry.note.as_ref().map_or(ptr::null(), |n| n.as_ptr()),
            kind: info.kind.into(),
            contiguous_up_to: info.contiguous_up_to.unwrap_or(DMABROKER_UNLIMITED),
            page_size: info.page_size,
            free_bytes: info.free_bytes.unwrap_or(DMABROKER_UNLIMITED),
            max_buffer_size: info.max_buffer_size.unwrap_or(DMABROKER_UNLIMITED),
            device_importable: info.device_importable,
            usable: info.usable,
            uncached: info.cache_modes.contains(&CacheMode::Uncached),
        };
        Ok(())
    })
}
