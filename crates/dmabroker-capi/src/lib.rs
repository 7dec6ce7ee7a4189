//! The C ABI of dmabroker: `libdmabroker.so`, `libdmabroker.a` and the
//! header `include/dmabroker.h`, generated from this crate by cbindgen (the
//! test `header_is_current` fails when the header is stale).
//!
//! Conventions, the same for every function (see `docs/C-API.md`):
//! - **Handles** are opaque pointers (`dmabroker_heaps`, `dmabroker_buffer`,
//!   `dmabroker_mapping`, `dmabroker_client`, `dmabroker_constraints`,
//!   `dmabroker_layout`, `dmabroker_producer`, `dmabroker_consumer`,
//!   `dmabroker_frame`, `dmabroker_cgroup_stats`) created by one function and released by its
//!   `*_free`, which accepts NULL.
//! - **Errors**: fallible calls return a [`Status`]; `DMABROKER_OK` is 0.
//!   On failure, `dmabroker_last_error()` describes the cause (per thread),
//!   handle out-parameters are set to NULL and fd out-parameters to -1.
//! - **File descriptors** returned to C are plain `int`s the caller owns
//!   and must `close()`; fds passed in are borrowed unless the function
//!   says it takes them.
//! - **Panics** never cross the boundary: every entry point runs inside
//!   `catch_unwind` and a caught panic becomes `DMABROKER_ERROR_PANIC`.
//!
//! This crate is the C edge: it needs `unsafe` to read raw pointers, and
//! every `unsafe` block says why it is sound.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

mod buffer;
mod cgroup;
mod client;
mod constraints;
mod error;
mod format;
mod heaps;
mod mapping;
mod pool;
#[cfg(feature = "vulkan")]
mod vulkan;

pub use buffer::{
    dmabroker_alloc, dmabroker_buffer_clone, dmabroker_buffer_dup_fd, dmabroker_buffer_fd, dmabroker_buffer_free,
    dmabroker_buffer_from_fd, dmabroker_buffer_get_info, dmabroker_buffer_len, dmabroker_buffer_segments, AllocOptions,
    Buffer, BufferInfo, BufferKind, FdOwnership, FdOwnershipArg, Segment,
};
pub use cgroup::{
    dmabroker_cgroup_stats_free, dmabroker_cgroup_stats_get_info, dmabroker_cgroup_stats_get_rule,
    dmabroker_client_get_cgroup_stats, CgroupInfo, CgroupRuleInfo, CgroupStats,
};
pub use client::{
    dmabroker_client_alloc, dmabroker_client_alloc_for, dmabroker_client_connect, dmabroker_client_connect_timeout,
    dmabroker_client_free, dmabroker_client_import, dmabroker_client_publish, dmabroker_client_set_timeout,
    dmabroker_client_unpublish, dmabroker_string_free, Client, PublishOptions,
};
pub use constraints::{
    dmabroker_alloc_for, dmabroker_choice_info_clear, dmabroker_constraints_describe, dmabroker_constraints_free,
    dmabroker_constraints_merge, dmabroker_constraints_new, dmabroker_constraints_probe,
    dmabroker_constraints_set_address_bits, dmabroker_constraints_set_align, dmabroker_constraints_set_coherency,
    dmabroker_constraints_set_contiguous, dmabroker_constraints_set_dma_buf, dmabroker_constraints_set_granularity,
    dmabroker_constraints_set_max_segments, dmabroker_constraints_set_page_size, ChoiceInfo, Coherency, CoherencyArg,
    Constraints,
};
pub use error::Status;
pub use format::{
    dmabroker_alloc_format, dmabroker_layout_buffer_count, dmabroker_layout_buffer_size, dmabroker_layout_drm_fourcc,
    dmabroker_layout_format_name, dmabroker_layout_free, dmabroker_layout_get_plane, dmabroker_layout_height,
    dmabroker_layout_new, dmabroker_layout_new_padded, dmabroker_layout_plane_count, dmabroker_layout_total_size,
    dmabroker_layout_v4l2_pixelformat, dmabroker_layout_width, Layout, PlaneLayout,
};
pub use heaps::{
    dmabroker_heaps_count, dmabroker_heaps_discover, dmabroker_heaps_free, dmabroker_heaps_get_info, HeapInfo,
    HeapKind, Heaps,
};
pub use mapping::{
    dmabroker_buffer_map, dmabroker_mapping_begin, dmabroker_mapping_end, dmabroker_mapping_free,
    dmabroker_mapping_len, Access, AccessArg, MapMode, MapModeArg, Mapping,
};
pub use pool::{
    dmabroker_consumer_connect, dmabroker_consumer_connect_with, dmabroker_consumer_free, dmabroker_consumer_get_stats,
    dmabroker_consumer_held_count, dmabroker_consumer_recv, dmabroker_frame_check, dmabroker_frame_data,
    dmabroker_frame_free, dmabroker_frame_get_buffer, dmabroker_frame_get_info, dmabroker_frame_take_sync_file,
    dmabroker_producer_acquire, dmabroker_producer_buffer_count, dmabroker_producer_cancel, dmabroker_producer_close,
    dmabroker_producer_free, dmabroker_producer_get_buffer, dmabroker_producer_get_consumer_stats,
    dmabroker_producer_get_stats, dmabroker_producer_listen, dmabroker_producer_new, dmabroker_producer_new_for,
    dmabroker_producer_new_for_layout, dmabroker_producer_submit, dmabroker_producer_wait_for_consumers, Consumer,
    ConsumerOptions, ConsumerSelfStats, ConsumerStats, Frame, FrameInfo, PoolOptions, PoolStats, Producer, WaitMode,
    WaitModeArg, DMABROKER_FRAME_FLAG_ERROR, DMABROKER_FRAME_FLAG_KEY_FRAME, DMABROKER_FRAME_FLAG_SYNC_FILE,
};
#[cfg(feature = "vulkan")]
pub use vulkan::dmabroker_constraints_vulkan;

use error::{guard_value, Error, Result};
use std::ffi::{c_char, CStr};

/// A size or count with no limit, or not known: in `dmabroker_heap_info`,
/// `contiguous_up_to` (the whole buffer, however large), `max_buffer_size`
/// and `free_bytes`.
pub const DMABROKER_UNLIMITED: u64 = u64::MAX;

/// The version of the library, e.g. `"0.1.0"` (a static string).
#[no_mangle]
pub extern "C" fn dmabroker_version() -> *const c_char {
    const VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => c"unknown",
    };
    VERSION.as_ptr()
}

/// The message of the most recent failed call on this thread: what went
/// wrong and, where there is one, what to do about it. An empty string
/// when no call has failed on this thread yet. Successful calls leave it
/// unchanged (like `errno`).
///
/// The string belongs to the library and stays valid until the next
/// failing dmabroker call on the same thread: copy it to keep it.
#[no_mangle]
pub extern "C" fn dmabroker_last_error() -> *const c_char {
    guard_value(c"".as_ptr(), error::last_error_ptr)
}

/// The name of a status code (`"DMABROKER_ERROR_IO"`), a static string;
/// `"DMABROKER_UNKNOWN_STATUS"` for a value that is not a status.
#[no_mangle]
pub extern "C" fn dmabroker_status_name(status: StatusArg) -> *const c_char {
    guard_value(c"DMABROKER_UNKNOWN_STATUS".as_ptr(), || {
        Status::ALL
            .iter()
            .find(|s| **s as u32 == status)
            .map_or(c"DMABROKER_UNKNOWN_STATUS".as_ptr(), |s| s.name().as_ptr())
    })
}

/// A status as C passes it in (any `int` value may arrive, so Rust reads it
/// as an integer, never as the enum). Shown as `dmabroker_status` in the header.
pub type StatusArg = u32;

/// Not part of the API (excluded from the header): panics inside the guard,
/// so the tests, the C ones included, can check that a panic becomes
/// `DMABROKER_ERROR_PANIC` instead of crossing into C.
#[doc(hidden)]
#[no_mangle]
pub extern "C" fn dmabroker_private_test_panic() -> Status {
    error::guard(|| panic!("dmabroker_private_test_panic was called"))
}

// ---- helpers to read C's raw pointers -------------------------------------

/// A C string argument as UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid and
/// unchanged for `'a`.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    if p.is_null() {
        return Err(Error::null(what));
    }
    // SAFETY: p is non-NULL and, by this function's contract, NUL-terminated
    // and valid for 'a.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|_| Error::invalid(format!("{what} is not valid UTF-8")))
}

/// A shared reference to a handle.
///
/// # Safety
/// `p` is NULL or a live handle of type `T` made by this library, not
/// freed during `'a`.
pub(crate) unsafe fn handle<'a, T>(p: *const T, what: &str) -> Result<&'a T> {
    // SAFETY: by the contract, a non-NULL p is a live, aligned T.
    unsafe { p.as_ref() }.ok_or_else(|| Error::null(what))
}

/// An exclusive reference to a handle, for calls that change it.
///
/// # Safety
/// `p` is NULL or a live handle of type `T` made by this library, not
/// freed and not used by anyone else during `'a`.
pub(crate) unsafe fn handle_mut<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T> {
    // SAFETY: by the contract, a non-NULL p is a live, aligned, unaliased T.
    unsafe { p.as_mut() }.ok_or_else(|| Error::null(what))
}

/// A string for C to own and release with `dmabroker_string_free` (a NUL
/// inside is replaced, as C would cut the string there).
pub(crate) fn owned_c_string(s: &str) -> *mut c_char {
    std::ffi::CString::new(s.replace('\0', "?")).unwrap_or_default().into_raw()
}

/// The longest Unix socket path: `sun_path` holds 108 bytes, the last for
/// the terminating NUL.
pub(crate) const MAX_SOCKET_PATH: usize = 107;

/// A Unix socket path argument (`what` names it in the message): neither
/// empty nor longer than `sun_path` holds.
pub(crate) fn socket_path_arg<'a>(path: &'a str, what: &str) -> Result<&'a str> {
    if path.is_empty() {
        return Err(Error::invalid(format!("{what} is empty: pass the path of the Unix socket")));
    }
    if path.len() > MAX_SOCKET_PATH {
        return Err(Error::invalid(format!(
            "{what} is {} bytes long; a Unix socket path has at most {MAX_SOCKET_PATH} bytes (sun_path): \
             use a shorter directory",
            path.len()
        )));
    }
    Ok(path)
}

/// A timeout in milliseconds as C passes it: negative means forever.
pub(crate) fn timeout_ms(ms: i64) -> Option<std::time::Duration> {
    u64::try_from(ms).ok().map(std::time::Duration::from_millis)
}

/// An out-parameter as a mutable reference.
///
/// # Safety
/// `p` is NULL or valid, aligned and writable for a `T`, with no other
/// reference to it during `'a`.
pub(crate) unsafe fn out<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T> {
    // SAFETY: by the contract, a non-NULL p is valid, aligned and unaliased.
    unsafe { p.as_mut() }.ok_or_else(|| Error::null(what))
}

/// Give a handle to C.
pub(crate) fn into_handle<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Take a handle back from C and drop it.
///
/// # Safety
/// `p` is NULL or a handle made by [`into_handle`] with the same `T` and
/// not freed before; C does not use it afterwards.
pub(crate) unsafe fn free_handle<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: by the contract, p came from Box::into_raw and is freed once.
        drop(unsafe { Box::from_raw(p) });
    }
}
