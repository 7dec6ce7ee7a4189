//! The C ABI of dmabroker: `libdmabroker.so`, `libdmabroker.a` and the
//! header `include/dmabroker.h`, generated from this crate by cbindgen (the
//! test `header_is_current` fails when the header is stale).
//!
//! Conventions, the same for every function (see `docs/C-API.md`):
//! - **Handles** are opaque pointers (`dmabroker_heaps`, `dmabroker_buffer`,
//!   `dmabroker_mapping`) created by one function and released by its
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
mod client;
mod error;
mod heaps;
mod mapping;

pub use buffer::{
    dmabroker_alloc, dmabroker_buffer_clone, dmabroker_buffer_dup_fd, dmabroker_buffer_fd,
    dmabroker_buffer_free, dmabroker_buffer_from_fd, dmabroker_buffer_get_info,
    dmabroker_buffer_len, dmabroker_buffer_segments, AllocOptions, Buffer, BufferInfo, BufferKind,
    FdOwnership, FdOwnershipArg, Segment,
};
pub use client::{
    dmabroker_client_alloc, dmabroker_client_connect, dmabroker_client_free,
    dmabroker_client_import, dmabroker_client_publish, dmabroker_client_unpublish,
    dmabroker_string_free, Client, PublishOptions,
};
pub use error::Status;
pub use heaps::{
    dmabroker_heaps_count, dmabroker_heaps_discover, dmabroker_heaps_free,
    dmabroker_heaps_get_info, HeapInfo, HeapKind, Heaps,
};
pub use mapping::{
    dmabroker_buffer_map, dmabroker_mapping_begin, dmabroker_mapping_end, dmabroker_mapping_free,
    dmabroker_mapping_len, Access, AccessArg, MapMode, MapModeArg, Mapping,
};

use error::{guard_value, Error, Result};
use std::ffi::{c_char, CStr};

/// A size or count with no limit, or not known: in `dmabroker_heap_info`,
/// `contiguous_up_to` (the whole buffer, however large), `max_buffer_size`
/// and `free_bytes`.
pub const DMABROKER_UNLIMITED: u64 = u64::MAX;

/// The version of the library, e.g. `"0.1.0"` (a static string).
#[no_mangle]
pub extern "C" fn dmabroker_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
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
    c.to_str()
        .map_err(|_| Error::invalid(format!("{what} is not valid UTF-8")))
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
