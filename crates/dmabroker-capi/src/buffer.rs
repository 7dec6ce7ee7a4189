//! Buffers: allocation, import from an fd, information, fds, segments.

use crate::error::{guard, guard_value, Error, Result, Status};
use crate::heaps::Heaps;
use crate::{c_str, free_handle, handle, into_handle, out};
use dmabroker_core::buffer::{CacheMode, Coherency};
use dmabroker_core::heap::AllocRequest;
use std::ffi::{c_char, c_int, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::ptr;

/// A buffer (opaque): an fd for memory plus what is known about it. Made by
/// `dmabroker_alloc`, `dmabroker_buffer_from_fd` or `dmabroker_buffer_clone`;
/// released by `dmabroker_buffer_free`. Read-only after creation, so it may
/// be shared between threads.
pub struct Buffer {
    pub(crate) buffer: dmabroker_core::Buffer,
    heap: CString,
    name: Option<CString>,
}

impl Buffer {
    pub(crate) fn new(buffer: dmabroker_core::Buffer) -> Self {
        let heap = CString::new(buffer.heap().replace('\0', "?")).unwrap_or_default();
        let name = buffer.name().map(|n| CString::new(n.replace('\0', "?")).unwrap_or_default());
        Self { buffer, heap, name }
    }
}

/// What kind of file backs a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum BufferKind {
    /// A dma-buf: importable by devices.
    DmaBuf = 0,
    /// A shmem memfd (CPU and IPC memory).
    Memfd = 1,
    /// A memfd on hugetlbfs.
    HugetlbMemfd = 2,
    /// A kind this version of the header does not know.
    Other = 255,
}

impl From<dmabroker_core::BufferKind> for BufferKind {
    fn from(k: dmabroker_core::BufferKind) -> Self {
        use dmabroker_core::BufferKind as K;
        #[allow(unreachable_patterns)]
        match k {
            K::DmaBuf => Self::DmaBuf,
            K::Memfd => Self::Memfd,
            K::HugetlbMemfd => Self::HugetlbMemfd,
            _ => Self::Other,
        }
    }
}

/// Optional requirements of an allocation. All-zero (`{0}`) means none.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct AllocOptions {
    /// Required start alignment in bytes, a power of two; 0 or 1: none.
    pub align: u64,
    /// A name shown in `/proc/PID/fdinfo` (dma-bufs) or `/proc/PID/fd` (memfds);
    /// NULL: none. Copied; need not outlive the call.
    pub name: *const c_char,
    /// The whole buffer must be physically contiguous.
    pub contiguous: bool,
    /// The devices that will use it do not snoop CPU caches: CPU access
    /// then does cache maintenance (`dmabroker_mapping_begin`/`_end`).
    pub non_coherent: bool,
}

/// Everything about a buffer. The strings belong to the buffer handle and
/// stay valid until it is freed.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BufferInfo {
    /// Length in bytes (the requested size rounded up to whole pages).
    pub len: u64,
    /// Inode number: equal for every fd of the same buffer, in any process.
    pub inode: u64,
    /// Every physically contiguous run is at least this many bytes.
    pub contiguous_up_to: u64,
    /// Size of the pages backing it.
    pub page_size: u64,
    /// The file behind it.
    pub kind: BufferKind,
    /// The heap it came from, or the dma-buf exporter's name for an import.
    pub heap: *const c_char,
    /// Its name; NULL if it has none.
    pub name: *const c_char,
    /// A device can import it (it is a dma-buf).
    pub device_importable: bool,
    /// Its CPU mappings are uncached (or write-combined).
    pub uncached: bool,
    /// Nobody can change its size (sealed memfd, or a dma-buf).
    pub size_sealed: bool,
}

/// One physically contiguous run of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Segment {
    /// Physical start address.
    pub phys_addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// What `dmabroker_buffer_from_fd` does with the fd it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum FdOwnership {
    /// The library takes the fd: from the call on it is the library's, on
    /// success and on failure alike (a failed call closes it). The caller
    /// must not close or use it afterwards. (A negative or closed fd number
    /// is refused and nothing is closed.)
    Take = 0,
    /// The library duplicates the fd (`F_DUPFD_CLOEXEC`); the caller keeps
    /// its own and closes it when it wants.
    Dup = 1,
}

/// A `dmabroker_fd_ownership` as C passes it (read as an integer, since any
/// value may arrive).
pub type FdOwnershipArg = u32;

fn request(len: u64, options: Option<&AllocOptions>) -> Result<AllocRequest> {
    let mut request = AllocRequest::new(len);
    if let Some(o) = options {
        request = request.align(o.align.max(1)).contiguous(o.contiguous).coherency(if o.non_coherent {
            Coherency::NonCoherent
        } else {
            Coherency::Coherent
        });
        if !o.name.is_null() {
            // SAFETY: the caller promises options->name is NULL or a valid C
            // string for the duration of the call (non-NULL checked above).
            request = request.name(unsafe { c_str(o.name, "options->name") }?);
        }
    }
    Ok(request)
}

/// Allocate `len` bytes (rounded up to whole pages) from the heap named
/// `heap` (`"memfd"`, `"udmabuf"`, `"dma-heap/system"` or just `"system"`,
/// `"hugetlb"`, ...).
///
/// `heaps` may be NULL: the heaps are then discovered for this call
/// (slower; keep a `dmabroker_heaps` to allocate often). `options` may be
/// NULL: no requirement beyond the size.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` (NULL `heap` or `out`, size 0,
/// alignment not a power of two), `DMABROKER_ERROR_NO_SUCH_HEAP`,
/// `DMABROKER_ERROR_UNSUPPORTED` (the heap cannot be that contiguous,
/// aligned or large), `DMABROKER_ERROR_OUT_OF_MEMORY`,
/// `DMABROKER_ERROR_PERMISSION_DENIED`, `DMABROKER_ERROR_IO`.
///
/// # Safety
/// `heaps` is NULL or a live handle; `heap` is NULL or a C string;
/// `options` is NULL or points to a `dmabroker_alloc_options`; `out` is
/// NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_alloc(
    heaps: *const Heaps,
    heap: *const c_char,
    len: u64,
    options: *const AllocOptions,
    out: *mut *mut Buffer,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        // SAFETY: the caller's promises are allocate's contract.
        let buffer = unsafe { allocate(heaps, heap, len, options) }?;
        *out = into_handle(Buffer::new(buffer));
        Ok(())
    })
}

/// The body of `dmabroker_alloc`, shared with `dmabroker_alloc_format`.
///
/// # Safety
/// `heaps` is NULL or a live handle; `heap` is NULL or a C string;
/// `options` is NULL or points to a `dmabroker_alloc_options`.
pub(crate) unsafe fn allocate(
    heaps: *const Heaps,
    heap: *const c_char,
    len: u64,
    options: *const AllocOptions,
) -> Result<dmabroker_core::Buffer> {
    // SAFETY: the caller passes NULL or a C string valid for the call.
    let heap = unsafe { c_str(heap, "heap") }?;
    // SAFETY: the caller passes NULL or a readable dmabroker_alloc_options.
    let options = unsafe { options.as_ref() };
    let request = request(len, options)?;
    let buffer = if heaps.is_null() {
        Heaps::discover().heaps.allocate(heap, &request)?
    } else {
        // SAFETY: non-NULL, and the caller passes a live handle.
        unsafe { handle(heaps, "heaps") }?.heaps.allocate(heap, &request)?
    };
    Ok(buffer)
}

/// Release a buffer handle. NULL is ignored. The memory lives on while
/// other handles, mappings or fds (in any process) still refer to it.
///
/// # Safety
/// `buffer` is NULL or a live handle not freed before; it is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_buffer_free(buffer: *mut Buffer) {
    // SAFETY: the caller passes NULL or a live handle it gives up.
    guard_value((), || unsafe { free_handle(buffer) });
}

/// A second handle to the same buffer (same fd, no new memory), freed
/// separately.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL pointers.
///
/// # Safety
/// `buffer` is NULL or a live handle; `out` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_buffer_clone(buffer: *const Buffer, out: *mut *mut Buffer) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        // SAFETY: the caller passes NULL or a live handle.
        let buffer = unsafe { handle(buffer, "buffer") }?;
        *out = into_handle(Buffer::new(buffer.buffer.clone()));
        Ok(())
    })
}

/// Length in bytes (0 for NULL).
///
/// # Safety
/// `buffer` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_buffer_len(buffer: *const Buffer) -> u64 {
    guard_value(0, || {
        // SAFETY: the caller passes NULL or a live handle.
        unsafe { handle(buffer, "buffer") }.map_or(0, |b| b.buffer.len())
    })
}

/// Everything about a buffer.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL pointers.
///
/// # Safety
/// `buffer` is NULL or a live handle; `out` is NULL or writable for one
/// `dmabroker_buffer_info`.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_buffer_get_info(buffer: *const Buffer, out: *mut BufferInfo) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable dmabroker_buffer_info.
        let out = unsafe { crate::out(out, "out") }?;
        // SAFETY: the caller passes NULL or a live handle.
        let b = unsafe { handle(buffer, "buffer") }?;
        let p = b.buffer.properties();
        *out = BufferInfo {
            len: b.buffer.len(),
            inode: b.buffer.inode(),
            contiguous_up_to: p.contiguous_up_to,
            page_size: p.page_size,
            kind: b.buffer.kind().into(),
            heap: b.heap.as_ptr(),
            name: b.name.as_ref().map_or(ptr::null(), |n| n.as_ptr()),
            device_importable: p.device_importable,
            uncached: p.cache == CacheMode::Uncached,
            size_sealed: b.buffer.is_size_sealed(),
        };
        Ok(())
    })
}

/// The buffer's own fd, **borrowed**: valid while the handle lives; do not
/// close it (use `dmabroker_buffer_dup_fd` for an fd to keep or hand on).
/// For `poll`, `ioctl` (V4L2 `QBUF`, DRM PRIME import) and `SCM_RIGHTS`,
/// which do not take ownership. -1 for NULL.
///
/// # Safety
/// `buffer` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_buffer_fd(buffer: *const Buffer) -> c_int {
    guard_value(-1, || {
        // SAFETY: the caller passes NULL or a live handle.
        unsafe { handle(buffer, "buffer") }.map_or(-1, |b| b.buffer.as_fd().as_raw_fd())
    })
}

/// A new fd for the buffer (close-on-exec), **owned by the caller**, who
/// must `close()` it. The buffer handle is unaffected.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL pointers; `DMABROKER_ERROR_IO`
/// when the process is out of fds (`EMFILE`). `*fd_out` is -1 on failure.
///
/// # Safety
/// `buffer` is NULL or a live handle; `fd_out` is NULL or writable for one `int`.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_buffer_dup_fd(buffer: *const Buffer, fd_out: *mut c_int) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable int.
        let fd_out = unsafe { out(fd_out, "fd_out") }?;
        *fd_out = -1;
        // SAFETY: the caller passes NULL or a live handle.
        let b = unsafe { handle(buffer, "buffer") }?;
        let fd = b
            .buffer
            .try_clone_fd()
            .map_err(|e| Error::new(Status::DMABROKER_ERROR_IO, format!("duplicating the buffer's fd: {e}")))?;
        *fd_out = fd.into_raw_fd();
        Ok(())
    })
}

/// Check that `fd` is an open descriptor of this process.
fn check_open(fd: RawFd) -> Result<()> {
    if fd < 0 {
        return Err(Error::invalid(format!("fd {fd} is negative: pass an open file descriptor")));
    }
    // SAFETY: the borrow is only used for fcntl(F_GETFD), which on a number
    // that is not open just fails with EBADF; it touches no Rust-owned fd.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    match rustix::io::fcntl_getfd(borrowed) {
        Ok(_) => Ok(()),
        Err(rustix::io::Errno::BADF) => Err(Error::invalid(format!("fd {fd} is not an open file descriptor"))),
        Err(e) => Err(Error::new(Status::DMABROKER_ERROR_IO, format!("fcntl(F_GETFD) on fd {fd}: {e}"))),
    }
}

/// Wrap a foreign fd (a dma-buf from V4L2 `EXPBUF` or DRM PRIME, a memfd,
/// an fd received over a socket) in a buffer handle, finding out what it is
/// from `fstat`, `fstatfs` and `/proc/self/fdinfo`.
///
/// `ownership` (a `dmabroker_fd_ownership`) says who owns `fd` afterwards:
/// - `DMABROKER_FD_OWNERSHIP_TAKE`: the library, on success **and on
///   failure** (a failed call closes it); the caller must not close it.
/// - `DMABROKER_FD_OWNERSHIP_DUP`: the caller keeps `fd`; the library
///   works on a duplicate.
///
/// A negative or closed fd number is refused with
/// `DMABROKER_ERROR_INVALID_ARGUMENT` and nothing is closed.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT`, `DMABROKER_ERROR_NOT_A_BUFFER` (a
/// pipe, socket, regular file, empty memfd), `DMABROKER_ERROR_IO`.
///
/// # Safety
/// With `TAKE`, `fd` is an fd the caller owns and gives up (no other code
/// will close or use it). `out` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_buffer_from_fd(
    fd: c_int,
    ownership: FdOwnershipArg,
    out: *mut *mut Buffer,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot. A NULL
        // `out` is reported after the fd is taken, so TAKE always takes.
        let out = unsafe { out.as_mut() };
        let out = out.map(|o| {
            *o = ptr::null_mut();
            o
        });
        let owned: OwnedFd = if ownership == FdOwnership::Take as u32 {
            check_open(fd)?;
            // SAFETY: fd is open (checked just above) and the caller gives
            // its ownership to us (TAKE); nothing else will close it.
            unsafe { OwnedFd::from_raw_fd(fd) }
        } else if ownership == FdOwnership::Dup as u32 {
            check_open(fd)?;
            // SAFETY: fd is open (checked just above) and stays the caller's;
            // the borrow lasts only for the dup call.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            rustix::io::fcntl_dupfd_cloexec(borrowed, 0)
                .map_err(|e| Error::new(Status::DMABROKER_ERROR_IO, format!("duplicating fd {fd}: {e}")))?
        } else {
            return Err(Error::invalid(format!(
                "ownership {ownership} is not a dmabroker_fd_ownership (TAKE = 0, DUP = 1); fd {fd} was not touched"
            )));
        };
        // From here on `owned` is ours: it is closed on every error path.
        let out = out.ok_or_else(|| Error::null("out"))?;
        let buffer = dmabroker_core::Buffer::from_fd(owned)?;
        *out = into_handle(Buffer::new(buffer));
        Ok(())
    })
}

/// The physical segments (scatterlist) of a buffer, merged, in buffer
/// order, read from `/proc/self/pagemap`.
///
/// Two calls: with `capacity` 0 (and `segments` NULL) it stores the count
/// in `*count` and returns `DMABROKER_ERROR_BUFFER_TOO_SMALL` (unless there
/// are none); then with an array of that many. On success `*count` is the
/// number written. A single segment proves physical contiguity.
///
/// # Errors
/// `DMABROKER_ERROR_PERMISSION_DENIED` without `CAP_SYS_ADMIN` (the kernel
/// hides frame numbers); `DMABROKER_ERROR_BUFFER_TOO_SMALL` (with `*count`
/// set to the number needed); `DMABROKER_ERROR_UNSUPPORTED` for a buffer
/// the CPU cannot map; `DMABROKER_ERROR_INVALID_ARGUMENT`; `DMABROKER_ERROR_IO`.
///
/// # Safety
/// `buffer` is NULL or a live handle; `segments` is NULL or writable for
/// `capacity` `dmabroker_segment`s; `count` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_buffer_segments(
    buffer: *const Buffer,
    segments: *mut Segment,
    capacity: usize,
    count: *mut usize,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable size_t.
        let count = unsafe { out(count, "count") }?;
        *count = 0;
        // SAFETY: the caller passes NULL or a live handle.
        let b = unsafe { handle(buffer, "buffer") }?;
        if segments.is_null() && capacity > 0 {
            return Err(Error::null("segments (with capacity > 0)"));
        }
        let found = dmabroker_core::phys::segments(&b.buffer)?;
        *count = found.len();
        if found.len() > capacity {
            return Err(Error::new(
                Status::DMABROKER_ERROR_BUFFER_TOO_SMALL,
                format!("the buffer has {} physical segments, the array holds {capacity}", found.len()),
            ));
        }
        if !found.is_empty() {
            // SAFETY: segments is non-NULL here (found is non-empty, so
            // capacity > 0, and NULL with capacity > 0 was refused) and the
            // caller promises room for `capacity` >= found.len() elements.
            let dst = unsafe { std::slice::from_raw_parts_mut(segments, found.len()) };
            for (d, s) in dst.iter_mut().zip(&found) {
                *d = Segment { phys_addr: s.phys_addr, len: s.len };
            }
        }
        Ok(())
    })
}
