//! CPU mappings and the begin/end bracket around CPU access.

use crate::buffer::Buffer;
use crate::error::{guard, guard_value, Error, Status};
use crate::{free_handle, handle, into_handle, out};
use dmabroker_core::buffer::{BufferMapping, CpuAccessKind, OwnedCpuAccess};
use std::ffi::c_void;
use std::ptr;
use std::sync::{Mutex, MutexGuard};

/// How a buffer is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MapMode {
    /// Read-only (`PROT_READ`): the only mode for a read-only fd.
    Read = 0,
    /// Read-write.
    ReadWrite = 1,
}

/// A `dmabroker_map_mode` as C passes it.
pub type MapModeArg = u32;

/// What CPU access `dmabroker_mapping_begin` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Access {
    /// Reads: they see what devices wrote before the begin.
    Read = 0,
    /// Writes: devices see them after the end.
    Write = 1,
    /// Reads and writes.
    ReadWrite = 2,
}

/// A `dmabroker_access` as C passes it.
pub type AccessArg = u32;

/// A mapping's state: idle (the mapping alone), or in a CPU access (the
/// library's owned guard, which owns the mapping and whose drop is the end
/// of the access: `DMA_BUF_IOCTL_SYNC` `END`, cache maintenance). Owned
/// values only: no borrow of the mapping is ever stretched to `'static`.
enum State {
    Idle(BufferMapping),
    Active(OwnedCpuAccess),
    /// Only between taking the state and putting it back, inside one call
    /// under the lock; a panic there (caught at the edge) leaves it, and
    /// later calls then refuse the mapping.
    Taken,
}

/// A CPU mapping of a whole buffer (opaque): made by `dmabroker_buffer_map`,
/// released (unmapped) by `dmabroker_mapping_free`. It keeps its buffer
/// alive, so the buffer handle may be freed first. Its calls lock it, so
/// two threads cannot both begin an access on one mapping.
pub struct Mapping {
    state: Mutex<State>,
    len: usize,
    writable: bool,
}

impl Mapping {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while locked (caught by the guard) leaves the state as
        // consistent as before the call: keep going.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Map the whole buffer into this process.
///
/// `mode` is a `dmabroker_map_mode`: `DMABROKER_MAP_MODE_READ` or
/// `DMABROKER_MAP_MODE_READ_WRITE`.
///
/// # Errors
/// `DMABROKER_ERROR_READ_ONLY` (read-write mapping of a read-only fd),
/// `DMABROKER_ERROR_UNSUPPORTED` (a device-only buffer),
/// `DMABROKER_ERROR_OUT_OF_MEMORY`, `DMABROKER_ERROR_INVALID_ARGUMENT`,
/// `DMABROKER_ERROR_IO`.
///
/// # Safety
/// `buffer` is NULL or a live handle; `out` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_buffer_map(
    buffer: *const Buffer,
    mode: MapModeArg,
    out: *mut *mut Mapping,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        // SAFETY: the caller passes NULL or a live handle.
        let b = unsafe { handle(buffer, "buffer") }?;
        let mapping = if mode == MapMode::Read as u32 {
            b.buffer.map_read()?
        } else if mode == MapMode::ReadWrite as u32 {
            b.buffer.map_read_write()?
        } else {
            return Err(Error::invalid(format!("mode {mode} is not a dmabroker_map_mode (READ = 0, READ_WRITE = 1)")));
        };
        let len = mapping.len();
        let writable = mapping.is_writable();
        *out = into_handle(Mapping { state: Mutex::new(State::Idle(mapping)), len, writable });
        Ok(())
    })
}

/// Unmap and release a mapping. NULL is ignored. An access still active is
/// ended first (as `dmabroker_mapping_end` would). Pointers from
/// `dmabroker_mapping_begin` are invalid afterwards.
///
/// # Safety
/// `mapping` is NULL or a live handle not freed before, used by no other
/// thread during the call nor afterwards.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_mapping_free(mapping: *mut Mapping) {
    // SAFETY: the caller passes NULL or a live handle it gives up.
    guard_value((), || unsafe { free_handle(mapping) });
}

/// Length of the mapping in bytes (0 for NULL).
///
/// # Safety
/// `mapping` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_mapping_len(mapping: *const Mapping) -> usize {
    guard_value(0, || {
        // SAFETY: the caller passes NULL or a live handle.
        unsafe { handle(mapping, "mapping") }.map_or(0, |m| m.len)
    })
}

/// Begin CPU access to the mapped bytes and get them: `*data` points to
/// `*len` bytes, valid until `dmabroker_mapping_end`. For a dma-buf this
/// is `DMA_BUF_IOCTL_SYNC` `START`; for memory marked non-coherent, the
/// cache maintenance that makes the devices' writes visible.
///
/// `access` is a `dmabroker_access`. With `DMABROKER_ACCESS_READ` the
/// bytes must only be read (a read-only mapping faults on writes).
/// `WRITE` and `READ_WRITE` need a read-write mapping.
///
/// Every successful begin must be followed by `dmabroker_mapping_end` (or
/// `dmabroker_mapping_free`, which ends it). One access at a time per
/// mapping: a second begin fails with `DMABROKER_ERROR_BUSY`.
///
/// # Errors
/// `DMABROKER_ERROR_BUSY`, `DMABROKER_ERROR_READ_ONLY` (write access
/// through a read-only mapping), `DMABROKER_ERROR_INVALID_ARGUMENT`,
/// `DMABROKER_ERROR_IO` (the kernel refused the sync). On failure `*data`
/// is NULL and `*len` 0.
///
/// # Safety
/// `mapping` is NULL or a live handle; `data` and `len` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_mapping_begin(
    mapping: *const Mapping,
    access: AccessArg,
    data: *mut *mut c_void,
    len: *mut usize,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let data = unsafe { out(data, "data") }?;
        *data = ptr::null_mut();
        // SAFETY: the caller passes NULL or a writable size_t.
        let len = unsafe { out(len, "len") }?;
        *len = 0;
        // SAFETY: the caller passes NULL or a live handle.
        let m = unsafe { handle(mapping, "mapping") }?;
        let access = [Access::Read, Access::Write, Access::ReadWrite]
            .into_iter()
            .find(|a| *a as u32 == access)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "access {access} is not a dmabroker_access (READ = 0, WRITE = 1, READ_WRITE = 2)"
                ))
            })?;
        let mut state = m.lock();
        if matches!(*state, State::Active(_)) {
            return Err(Error::new(
                Status::DMABROKER_ERROR_BUSY,
                "a CPU access is already active on this mapping: call dmabroker_mapping_end first",
            ));
        }
        if access != Access::Read && !m.writable {
            return Err(Error::new(
                Status::DMABROKER_ERROR_READ_ONLY,
                "write access through a read-only mapping: map with DMABROKER_MAP_MODE_READ_WRITE",
            ));
        }
        let State::Idle(idle) = std::mem::replace(&mut *state, State::Taken) else {
            return Err(Error::new(
                Status::DMABROKER_ERROR_IO,
                "this mapping was left unusable by an earlier internal failure: free it and map again",
            ));
        };
        let kind = match access {
            Access::Read => CpuAccessKind::Read,
            Access::Write => CpuAccessKind::Write,
            Access::ReadWrite => CpuAccessKind::ReadWrite,
        };
        let mut active = match idle.into_access(kind) {
            Ok(a) => a,
            Err((idle, e)) => {
                *state = State::Idle(idle);
                return Err(e.into());
            }
        };
        let n = active.as_slice().len();
        let ptr = match active.as_mut_slice() {
            Some(bytes) => bytes.as_mut_ptr().cast::<c_void>(),
            None => active.as_slice().as_ptr() as *mut c_void,
        };
        *state = State::Active(active);
        *data = ptr;
        *len = n;
        Ok(())
    })
}

/// End the CPU access begun by `dmabroker_mapping_begin`: for a dma-buf
/// `DMA_BUF_IOCTL_SYNC` `END` (devices then see CPU writes), for
/// non-coherent memory the cache maintenance. The pointer from begin must
/// not be used afterwards.
///
/// # Errors
/// `DMABROKER_ERROR_NOT_BEGUN` when no access is active;
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL.
///
/// # Safety
/// `mapping` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_mapping_end(mapping: *const Mapping) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let m = unsafe { handle(mapping, "mapping") }?;
        let mut state = m.lock();
        match std::mem::replace(&mut *state, State::Taken) {
            // Ending the owned access gives the mapping back.
            State::Active(active) => {
                *state = State::Idle(active.end());
                Ok(())
            }
            other => {
                *state = other;
                Err(Error::new(
                    Status::DMABROKER_ERROR_NOT_BEGUN,
                    "no CPU access is active on this mapping: call dmabroker_mapping_begin first",
                ))
            }
        }
    })
}
