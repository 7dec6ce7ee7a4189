//! Pixel formats and frame layouts: `dmabroker_layout_*` and
//! `dmabroker_alloc_format`.

use crate::buffer::{AllocOptions, Buffer};
use crate::error::{guard, guard_value, Error, Result, Status};
use crate::heaps::Heaps;
use crate::{c_str, free_handle, handle, into_handle};
use dmabroker_core::format::{Layout as CoreLayout, LayoutError, LayoutOptions, ParseFormatError, PixelFormat};
use std::ffi::{c_char, CString};
use std::ptr;

/// Where the planes of one frame of a pixel format lie (opaque), exactly as
/// the kernel's `v4l2_fill_pixfmt()` computes them, plus any padding asked
/// for: made by `dmabroker_layout_new`, `dmabroker_layout_new_padded` or
/// `dmabroker_alloc_format`, released by `dmabroker_layout_free`.
/// Read-only after creation, so it may be shared between threads.
pub struct Layout {
    pub(crate) layout: CoreLayout,
    name: CString,
}

/// One plane of a layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct PlaneLayout {
    /// Index of the buffer holding the plane: 0 for single-buffer formats,
    /// the plane's own index for the `...M` formats (one buffer per plane).
    pub buffer: u32,
    /// Number of rows.
    pub lines: u32,
    /// Byte offset of the plane's first row within its buffer.
    pub offset: u64,
    /// Bytes from the start of one row to the next (pitch, stride).
    pub bytesperline: u64,
    /// `bytesperline * lines`.
    pub size: u64,
}

impl From<LayoutError> for Error {
    fn from(e: LayoutError) -> Self {
        let status = match &e {
            LayoutError::EmptyImage { .. } | LayoutError::AlignmentNotPowerOfTwo { .. } => {
                Status::DMABROKER_ERROR_INVALID_ARGUMENT
            }
            _ => Status::DMABROKER_ERROR_OUT_OF_MEMORY,
        };
        Self::new(status, e.to_string())
    }
}

impl From<ParseFormatError> for Error {
    fn from(e: ParseFormatError) -> Self {
        Self::invalid(e.to_string())
    }
}

/// An alignment as C passes it: 0 means none (1).
fn align_arg(a: u64) -> u64 {
    a.max(1)
}

fn make_layout(format: *const c_char, width: u32, height: u32, options: LayoutOptions) -> Result<Layout> {
    // SAFETY: every caller passes on its own caller's promise that `format`
    // is NULL or a C string valid for the call.
    let format: PixelFormat = unsafe { c_str(format, "format") }?.parse()?;
    let layout = CoreLayout::new(format, width, height, &options)?;
    let name = CString::new(format.name()).unwrap_or_default();
    Ok(Layout { layout, name })
}

/// Lay out one `width` x `height` frame of the pixel format `format`: a
/// name (`"NV12"`, `"YUYV"`, `"I420"`, `"XRGB8888"`) or a fourcc (`"NM12"`),
/// any case. Every plane's `bytesperline` is a multiple of `stride_align`
/// (a power of two; 0 or 1: the kernel's unpadded layout).
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` (NULL pointers, an unknown format,
/// whose message lists the known ones, a zero width or height, an alignment
/// not a power of two), `DMABROKER_ERROR_OUT_OF_MEMORY` (a frame too large
/// to address).
///
/// # Safety
/// `format` is NULL or a C string; `out` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_layout_new(
    format: *const c_char,
    width: u32,
    height: u32,
    stride_align: u64,
    out: *mut *mut Layout,
) -> Status {
    // SAFETY: the caller's promise is dmabroker_layout_new_padded's.
    unsafe { dmabroker_layout_new_padded(format, width, height, stride_align, 0, 0, out) }
}

/// `dmabroker_layout_new` with all the padding options (each a power of
/// two; 0 or 1: none): `stride_align` for every `bytesperline`,
/// `plane_align` for each plane's offset within a single buffer,
/// `size_align` for each buffer's size (e.g. the page size).
///
/// # Errors
/// As `dmabroker_layout_new`.
///
/// # Safety
/// `format` is NULL or a C string; `out` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_layout_new_padded(
    format: *const c_char,
    width: u32,
    height: u32,
    stride_align: u64,
    plane_align: u64,
    size_align: u64,
    out: *mut *mut Layout,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        let options = LayoutOptions::UNPADDED
            .with_stride_align(align_arg(stride_align))
            .with_plane_align(align_arg(plane_align))
            .with_size_align(align_arg(size_align));
        *out = into_handle(make_layout(format, width, height, options)?);
        Ok(())
    })
}

/// Release a layout. NULL is ignored.
///
/// # Safety
/// `layout` is NULL or a live handle not freed before; it is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_layout_free(layout: *mut Layout) {
    // SAFETY: the caller passes NULL or a live handle it gives up.
    guard_value((), || unsafe { free_handle(layout) });
}

/// Run a getter that has a value for NULL.
///
/// # Safety
/// `layout` is NULL or a live handle.
unsafe fn get<T: Copy>(layout: *const Layout, none: T, f: impl FnOnce(&Layout) -> T) -> T {
    guard_value(none, || {
        // SAFETY: by this function's contract.
        match unsafe { handle(layout, "layout") } {
            Ok(l) => f(l),
            Err(_) => none,
        }
    })
}

/// The number of planes (0 for NULL).
///
/// # Safety
/// `layout` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_layout_plane_count(layout: *const Layout) -> usize {
    // SAFETY: the caller's promise is get's contract.
    unsafe { get(layout, 0, |l| l.layout.planes().len()) }
}

/// Plane number `index` (0 to plane count - 1): its buffer index, offset,
/// `bytesperline`, lines and size.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL pointers or an index out of range.
///
/// # Safety
/// `layout` is NULL or a live handle; `out` is NULL or writable for one
/// `dmabroker_plane_layout`.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_layout_get_plane(
    layout: *const Layout,
    index: usize,
    out: *mut PlaneLayout,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable dmabroker_plane_layout.
        let out = unsafe { crate::out(out, "out") }?;
        // SAFETY: the caller passes NULL or a live handle.
        let l = unsafe { handle(layout, "layout") }?;
        let planes = l.layout.planes();
        let p = planes.get(index).ok_or_else(|| {
            Error::invalid(format!(
                "plane index {index} is out of range: {} has {} planes",
                l.layout.format(),
                planes.len()
            ))
        })?;
        *out = PlaneLayout {
            buffer: u32::try_from(p.buffer).unwrap_or(u32::MAX),
            lines: p.lines,
            offset: p.offset,
            bytesperline: p.bytesperline,
            size: p.size,
        };
        Ok(())
    })
}

/// The number of buffers a frame needs: 1, or one per plane for the `...M`
/// formats (0 for NULL).
///
/// # Safety
/// `layout` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_layout_buffer_count(layout: *const Layout) -> usize {
    // SAFETY: the caller's promise is get's contract.
    unsafe { get(layout, 0, |l| l.layout.buffer_count()) }
}

/// The size of buffer number `index` in bytes (0 for NULL or an index out
/// of range).
///
/// # Safety
/// `layout` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_layout_buffer_size(layout: *const Layout, index: usize) -> u64 {
    // SAFETY: the caller's promise is get's contract.
    unsafe { get(layout, 0, |l| l.layout.buffer_sizes().get(index).copied().unwrap_or(0)) }
}

/// The size of all buffers of a frame together, in bytes (for a
/// single-buffer format: V4L2's `sizeimage`); 0 for NULL.
///
/// # Safety
/// `layout` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_layout_total_size(layout: *const Layout) -> u64 {
    // SAFETY: the caller's promise is get's contract.
    unsafe { get(layout, 0, |l| l.layout.total_size()) }
}

/// The width in pixels (0 for NULL).
///
/// # Safety
/// `layout` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_layout_width(layout: *const Layout) -> u32 {
    // SAFETY: the caller's promise is get's contract.
    unsafe { get(layout, 0, |l| l.layout.width()) }
}

/// The height in pixels (0 for NULL).
///
/// # Safety
/// `layout` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_layout_height(layout: *const Layout) -> u32 {
    // SAFETY: the caller's promise is get's contract.
    unsafe { get(layout, 0, |l| l.layout.height()) }
}

/// The V4L2 `pixelformat` code of the format (`V4L2_PIX_FMT_NV12`); 0 for NULL.
///
/// # Safety
/// `layout` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_layout_v4l2_pixelformat(layout: *const Layout) -> u32 {
    // SAFETY: the caller's promise is get's contract.
    unsafe { get(layout, 0, |l| l.layout.format().to_v4l2()) }
}

/// The DRM fourcc of the same memory layout (`DRM_FORMAT_NV12`); 0 for
/// NULL or a format DRM has no code for.
///
/// # Safety
/// `layout` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_layout_drm_fourcc(layout: *const Layout) -> u32 {
    // SAFETY: the caller's promise is get's contract.
    unsafe { get(layout, 0, |l| l.layout.format().to_drm().map_or(0, |d| d as u32)) }
}

/// The canonical name of the format (`"NV12"` for `"nv12"` or `"NV12"`),
/// a string owned by the layout; `""` for NULL.
///
/// # Safety
/// `layout` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_layout_format_name(layout: *const Layout) -> *const c_char {
    // SAFETY: the caller's promise is get's contract.
    unsafe { get(layout, c"".as_ptr(), |l| l.name.as_ptr()) }
}

/// Lay out a frame (as `dmabroker_layout_new`) and allocate one buffer of
/// its total size from the heap named `heap` (as `dmabroker_alloc`, with
/// `options`, which may be NULL). `heaps` may be NULL. `layout_out` may be
/// NULL; otherwise it receives the layout, which the caller frees.
///
/// # Errors
/// Those of `dmabroker_layout_new` and `dmabroker_alloc`;
/// `DMABROKER_ERROR_UNSUPPORTED` for a `...M` format, whose planes need
/// one buffer each: lay it out and allocate `dmabroker_layout_buffer_size`
/// bytes per buffer. On failure `*out` and `*layout_out` are NULL.
///
/// # Safety
/// `heaps` is NULL or a live handle; `heap` and `format` are NULL or C
/// strings; `options` is NULL or readable; `out` is NULL or writable for
/// one pointer; `layout_out` is NULL or writable for one pointer.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn dmabroker_alloc_format(
    heaps: *const Heaps,
    heap: *const c_char,
    format: *const c_char,
    width: u32,
    height: u32,
    stride_align: u64,
    options: *const AllocOptions,
    out: *mut *mut Buffer,
    layout_out: *mut *mut Layout,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let layout_out = unsafe { layout_out.as_mut() };
        let layout_out = layout_out.map(|l| {
            *l = ptr::null_mut();
            l
        });
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        let options_ = LayoutOptions::UNPADDED.with_stride_align(align_arg(stride_align));
        let layout = make_layout(format, width, height, options_)?;
        if layout.layout.buffer_count() > 1 {
            return Err(Error::new(
                Status::DMABROKER_ERROR_UNSUPPORTED,
                format!(
                    "{} keeps each of its {} planes in a buffer of its own: lay it out with \
                     dmabroker_layout_new and allocate dmabroker_layout_buffer_size bytes per buffer \
                     (or use the single-buffer format {})",
                    layout.layout.format(),
                    layout.layout.buffer_count(),
                    layout.layout.format().to_single_buffer()
                ),
            ));
        }
        // SAFETY: heaps, heap and options are passed on under the caller's
        // promises, which are allocate's contract.
        let buffer = unsafe { crate::buffer::allocate(heaps, heap, layout.layout.total_size(), options) }?;
        *out = into_handle(Buffer::new(buffer));
        if let Some(l) = layout_out {
            *l = into_handle(layout);
        }
        Ok(())
    })
}
