//! Device constraints and allocation by constraints: `dmabroker_constraints_*`
//! and `dmabroker_alloc_for`.

use crate::buffer::Buffer;
use crate::error::{alloc_status, errno_status, guard, guard_value, Error, Result, Status};
use crate::heaps::Heaps;
use crate::{c_str, free_handle, handle, handle_mut, into_handle, owned_c_string};
use dmabroker_core::buffer::{CacheMode, Coherency as CoreCoherency};
use dmabroker_core::constraints::{
    allocate_for, AllocForError, Choice, ChooseError, ConflictError, Constraints as CoreConstraints, DeviceCoherency,
    DeviceProfile, InvalidConstraint, ProbeError,
};
use std::ffi::c_char;
use std::ptr;

/// How a device relates to CPU caches (`dmabroker_constraints_set_coherency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Coherency {
    /// No statement (removes one made before).
    Unspecified = 0,
    /// The device snoops CPU caches (`dma-coherent`): cached memory, no
    /// cache maintenance.
    Snoops = 1,
    /// The device does not snoop: cached memory with cache maintenance
    /// around CPU access (`dmabroker_mapping_begin`/`_end` do it), or
    /// uncached memory.
    NeedsMaintenance = 2,
    /// The device needs memory the CPU maps uncached.
    NeedsUncached = 3,
}

/// A `dmabroker_coherency` as C passes it (read as an integer).
pub type CoherencyArg = u32;

/// The requirements of one or more devices (opaque): made by
/// `dmabroker_constraints_new` (one device described by the setters) or
/// `dmabroker_constraints_probe` (a device node read through sysfs and the
/// device profiles), combined with `dmabroker_constraints_merge`, released
/// by `dmabroker_constraints_free`. Setters and merge change it: a handle
/// being changed must not be used by another thread at the same time.
pub struct Constraints {
    /// The device the setters speak for.
    device: String,
    /// What the setters said: the requirement keys of a profile entry
    /// (never its matcher, `contiguous` or `unless_iommu`).
    own: DeviceProfile,
    /// What probing and merging brought in.
    merged: CoreConstraints,
}

impl Constraints {
    /// A handle for `device` holding what another source found (a Vulkan
    /// device's requirements), with nothing said by the setters yet.
    #[cfg_attr(not(feature = "vulkan"), allow(dead_code))]
    pub(crate) fn of(device: String, merged: CoreConstraints) -> Self {
        Self { device, own: DeviceProfile::default(), merged }
    }

    /// Everything this handle requires: its own device's requirements
    /// merged with what was probed and merged in.
    pub(crate) fn effective(&self) -> Result<CoreConstraints> {
        Self::combine(&self.device, &self.own, &self.merged)
    }

    fn combine(device: &str, own: &DeviceProfile, merged: &CoreConstraints) -> Result<CoreConstraints> {
        if *own == DeviceProfile::default() {
            // Nothing said: the device does not join the merged set.
            return Ok(merged.clone());
        }
        merged.merge(&own.to_constraints(device)?).map_err(Error::from)
    }

    /// Change the own requirements, keeping the change only when the result
    /// is valid and conflict-free.
    fn update(&mut self, change: impl FnOnce(&mut DeviceProfile)) -> Result<()> {
        let mut next = self.own.clone();
        change(&mut next);
        Self::combine(&self.device, &next, &self.merged)?;
        self.own = next;
        Ok(())
    }
}

impl From<InvalidConstraint> for Error {
    fn from(e: InvalidConstraint) -> Self {
        Self::invalid(e.to_string())
    }
}

impl From<ConflictError> for Error {
    fn from(e: ConflictError) -> Self {
        Self::new(Status::DMABROKER_ERROR_CONFLICT, e.to_string())
    }
}

impl From<ProbeError> for Error {
    fn from(e: ProbeError) -> Self {
        let status = match &e {
            ProbeError::NotFound { .. } | ProbeError::NoSuchDevice { .. } => Status::DMABROKER_ERROR_NOT_FOUND,
            ProbeError::Stat { source, .. } => errno_status(*source),
            ProbeError::NotACharDevice { .. } | ProbeError::UnsupportedSubsystem { .. } => {
                Status::DMABROKER_ERROR_UNSUPPORTED
            }
            ProbeError::NoSysfsEntry { .. } | ProbeError::Profile(_) => Status::DMABROKER_ERROR_IO,
            #[allow(unreachable_patterns)]
            _ => Status::DMABROKER_ERROR_IO,
        };
        Self::new(status, e.to_string())
    }
}

impl From<AllocForError> for Error {
    fn from(e: AllocForError) -> Self {
        let status = match &e {
            AllocForError::Choose(ChooseError::ZeroSize | ChooseError::SizeOverflow { .. }) => {
                Status::DMABROKER_ERROR_INVALID_ARGUMENT
            }
            AllocForError::Choose(_) => Status::DMABROKER_ERROR_UNSUPPORTED,
            // The status of the last heap tried (out of memory, permission, ...).
            AllocForError::Alloc { attempts } => {
                attempts.last().map_or(Status::DMABROKER_ERROR_OUT_OF_MEMORY, |(_, a)| alloc_status(a))
            }
            #[allow(unreachable_patterns)]
            _ => Status::DMABROKER_ERROR_IO,
        };
        Self::new(status, e.to_string())
    }
}

/// Start describing a device named `device` (the name that reasons and
/// errors show, e.g. `"isp0"`), with no requirement yet: add them with the
/// `dmabroker_constraints_set_*` calls.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL pointers or a name that is
/// not UTF-8.
///
/// # Safety
/// `device` is NULL or a C string; `out` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_constraints_new(device: *const c_char, out: *mut *mut Constraints) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        // SAFETY: the caller passes NULL or a C string valid for the call.
        let device = unsafe { c_str(device, "device") }?;
        *out = into_handle(Constraints {
            device: device.to_owned(),
            own: DeviceProfile::default(),
            merged: CoreConstraints::none(),
        });
        Ok(())
    })
}

/// The constraints of a V4L2 or DRM device node (`"/dev/video0"`,
/// `"/dev/dri/card0"`), read from sysfs (DMA mask, IOMMU) and the device
/// profiles in `/etc/dmabroker/devices.d`. The setters then add
/// requirements on behalf of the node.
///
/// # Errors
/// `DMABROKER_ERROR_NOT_FOUND` (no such node), `DMABROKER_ERROR_UNSUPPORTED`
/// (not a V4L2, DRM or accel device), `DMABROKER_ERROR_IO` (no sysfs entry,
/// an invalid profile file), `DMABROKER_ERROR_PERMISSION_DENIED`,
/// `DMABROKER_ERROR_INVALID_ARGUMENT`.
///
/// # Safety
/// `path` is NULL or a C string; `out` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_constraints_probe(path: *const c_char, out: *mut *mut Constraints) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        // SAFETY: the caller passes NULL or a C string valid for the call.
        let path = unsafe { c_str(path, "path") }?;
        let merged = CoreConstraints::probe(path)?;
        // The setters speak for the probed device, under its probed name
        // (`video0 (vivid)`).
        let device = match merged.devices() {
            [one] => one.clone(),
            _ => path.to_owned(),
        };
        *out = into_handle(Constraints { device, own: DeviceProfile::default(), merged });
        Ok(())
    })
}

/// Release a constraints handle. NULL is ignored.
///
/// # Safety
/// `constraints` is NULL or a live handle not freed before; it is not used
/// afterwards.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_constraints_free(constraints: *mut Constraints) {
    // SAFETY: the caller passes NULL or a live handle it gives up.
    guard_value((), || unsafe { free_handle(constraints) });
}

/// Run a setter: the handle, then the change (refused, and the handle left
/// as it was, when the value is invalid or conflicts with what was merged in).
///
/// # Safety
/// `constraints` is NULL or a live handle no other thread uses during the call.
unsafe fn set(constraints: *mut Constraints, change: impl FnOnce(&mut DeviceProfile)) -> Status {
    guard(|| {
        // SAFETY: by this function's contract.
        let c = unsafe { handle_mut(constraints, "constraints") }?;
        c.update(change)
    })
}

/// The device needs physically contiguous memory (`true`: one segment), or
/// not (`false`: removes this handle's segment limit).
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL.
///
/// # Safety
/// `constraints` is NULL or a live handle no other thread uses during the call.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_constraints_set_contiguous(
    constraints: *mut Constraints,
    contiguous: bool,
) -> Status {
    // SAFETY: the caller's promise is set's contract.
    unsafe { set(constraints, |o| o.max_segments = contiguous.then_some(1)) }
}

/// The device follows at most `max_segments` physical segments (a
/// scatter-gather table of that many entries; 1: contiguous). 0 removes
/// this handle's limit.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL.
///
/// # Safety
/// `constraints` is NULL or a live handle no other thread uses during the call.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_constraints_set_max_segments(
    constraints: *mut Constraints,
    max_segments: u64,
) -> Status {
    // SAFETY: the caller's promise is set's contract.
    unsafe { set(constraints, |o| o.max_segments = (max_segments > 0).then_some(max_segments)) }
}

/// The device reaches physical addresses below `2^bits` only (its DMA
/// mask, no IOMMU): 12 to 64 (64: no limit); 0 removes this handle's limit.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL or `bits` outside 12..=64.
///
/// # Safety
/// `constraints` is NULL or a live handle no other thread uses during the call.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_constraints_set_address_bits(constraints: *mut Constraints, bits: u32) -> Status {
    // SAFETY: the caller's promise is set's contract.
    unsafe { set(constraints, |o| o.address_bits = (bits > 0).then_some(bits)) }
}

/// The buffer must start on a multiple of `align` bytes (a power of two);
/// 0 removes this handle's requirement.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL or a value not a power of two.
///
/// # Safety
/// `constraints` is NULL or a live handle no other thread uses during the call.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_constraints_set_align(constraints: *mut Constraints, align: u64) -> Status {
    // SAFETY: the caller's promise is set's contract.
    unsafe { set(constraints, |o| o.align = (align > 0).then_some(align)) }
}

/// The buffer's pages must be at least `page_size` bytes (a power of two),
/// e.g. a device TLB built for 64 KiB pages; 0 removes this handle's
/// requirement.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL or a value not a power of two.
///
/// # Safety
/// `constraints` is NULL or a live handle no other thread uses during the call.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_constraints_set_page_size(constraints: *mut Constraints, page_size: u64) -> Status {
    // SAFETY: the caller's promise is set's contract.
    unsafe { set(constraints, |o| o.page_size = (page_size > 0).then_some(page_size)) }
}

/// The buffer's length is rounded up to a multiple of `granularity` bytes
/// (a power of two); 0 removes this handle's requirement.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL or a value not a power of two.
///
/// # Safety
/// `constraints` is NULL or a live handle no other thread uses during the call.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_constraints_set_granularity(
    constraints: *mut Constraints,
    granularity: u64,
) -> Status {
    // SAFETY: the caller's promise is set's contract.
    unsafe { set(constraints, |o| o.granularity = (granularity > 0).then_some(granularity)) }
}

/// How the device relates to CPU caches, a `dmabroker_coherency`
/// (`DMABROKER_COHERENCY_UNSPECIFIED` removes this handle's statement).
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL or an unknown value;
/// `DMABROKER_ERROR_CONFLICT` when it contradicts a device merged in
/// (cached against uncached); the handle is then unchanged.
///
/// # Safety
/// `constraints` is NULL or a live handle no other thread uses during the call.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_constraints_set_coherency(
    constraints: *mut Constraints,
    coherency: CoherencyArg,
) -> Status {
    let value = match coherency {
        c if c == Coherency::Unspecified as u32 => None,
        c if c == Coherency::Snoops as u32 => Some(DeviceCoherency::Snoops),
        c if c == Coherency::NeedsMaintenance as u32 => Some(DeviceCoherency::NeedsMaintenance),
        c if c == Coherency::NeedsUncached as u32 => Some(DeviceCoherency::NeedsUncached),
        other => {
            return guard(|| {
                Err(Error::invalid(format!(
                    "coherency {other} is not a dmabroker_coherency (UNSPECIFIED = 0, SNOOPS = 1, \
                     NEEDS_MAINTENANCE = 2, NEEDS_UNCACHED = 3)"
                )))
            })
        }
    };
    // SAFETY: the caller's promise is set's contract.
    unsafe { set(constraints, |o| o.coherency = value) }
}

/// Whether the device imports a dma-buf (`true`), or CPU/IPC memory (a
/// memfd) will do (`false`).
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL.
///
/// # Safety
/// `constraints` is NULL or a live handle no other thread uses during the call.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_constraints_set_dma_buf(constraints: *mut Constraints, needed: bool) -> Status {
    // SAFETY: the caller's promise is set's contract.
    unsafe { set(constraints, |o| o.dma_buf = Some(needed)) }
}

/// Add the requirements of `src` (every device it describes) to `dst`: the
/// strictest value of each wins (fewest segments, largest alignment, fewest
/// address bits, dma-buf over CPU memory, non-coherent over coherent).
/// `src` is unchanged and may be freed afterwards.
///
/// # Errors
/// `DMABROKER_ERROR_CONFLICT` (one side needs cached memory, the other
/// uncached; `dst` is then unchanged), `DMABROKER_ERROR_INVALID_ARGUMENT`.
///
/// # Safety
/// `dst` is NULL or a live handle no other thread uses during the call;
/// `src` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_constraints_merge(dst: *mut Constraints, src: *const Constraints) -> Status {
    guard(|| {
        if src.is_null() {
            return Err(Error::null("src"));
        }
        if ptr::eq(dst, src) {
            // Merging a set of devices with itself changes nothing.
            return Ok(());
        }
        // SAFETY: the caller passes NULL or a live handle; src is another
        // handle (checked above), so the two references do not alias.
        let dst = unsafe { handle_mut(dst, "dst") }?;
        // SAFETY: non-NULL, a live handle by the caller's promise.
        let src = unsafe { handle(src, "src") }?;
        let merged = dst.merged.merge(&src.effective()?)?;
        Constraints::combine(&dst.device, &dst.own, &merged)?;
        dst.merged = merged;
        Ok(())
    })
}

/// What the constraints require, one requirement per line with the
/// devices behind it (`"no requirement (devices: ...)"` when none), as a
/// string the caller releases with `dmabroker_string_free`.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for NULL pointers.
///
/// # Safety
/// `constraints` is NULL or a live handle; `out` is NULL or writable for
/// one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_constraints_describe(
    constraints: *const Constraints,
    out: *mut *mut c_char,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        // SAFETY: the caller passes NULL or a live handle.
        let c = unsafe { handle(constraints, "constraints") }?;
        *out = owned_c_string(&c.effective()?.to_string());
        Ok(())
    })
}

/// What `dmabroker_alloc_for` chose and why. The two strings belong to the
/// caller: release them with `dmabroker_choice_info_clear` (or each with
/// `dmabroker_string_free`). On failure both are NULL and the rest 0.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct ChoiceInfo {
    /// The heap allocated from (`"dma-heap/system"`).
    pub heap: *mut c_char,
    /// Why that heap, one sentence each, joined with `"; "` (fallbacks
    /// from heaps that failed to allocate included).
    pub reasons: *mut c_char,
    /// Bytes requested: the length rounded up to the granularity.
    pub len: u64,
    /// Bytes the heap gave: `len` rounded up to its page size.
    pub allocated_len: u64,
    /// Start alignment requested.
    pub align: u64,
    /// Physical contiguity was requested.
    pub contiguous: bool,
    /// CPU access needs cache maintenance (done by `dmabroker_mapping_begin`/`_end`).
    pub non_coherent: bool,
    /// The buffer is mapped uncached (or write-combined) on the CPU.
    pub uncached: bool,
}

impl ChoiceInfo {
    /// The choice as C sees it; the strings are the caller's to free.
    pub(crate) fn of(choice: &Choice) -> Self {
        Self {
            heap: owned_c_string(&choice.heap),
            reasons: owned_c_string(&choice.reasons.join("; ")),
            len: choice.len,
            allocated_len: choice.allocated_len,
            align: choice.align,
            contiguous: choice.contiguous,
            non_coherent: choice.coherency == CoreCoherency::NonCoherent,
            uncached: choice.cache == CacheMode::Uncached,
        }
    }

    pub(crate) const EMPTY: Self = Self {
        heap: ptr::null_mut(),
        reasons: ptr::null_mut(),
        len: 0,
        allocated_len: 0,
        align: 0,
        contiguous: false,
        non_coherent: false,
        uncached: false,
    };
}

/// Choose the cheapest heap that meets every requirement of `constraints`
/// and allocate `len` bytes from it (falling back to the next suitable
/// heap when one fails to allocate). `name` (NULL: none) names the buffer.
/// `heaps` may be NULL (discovered for this call). `choice_info` may be
/// NULL; otherwise it receives the heap and the reasons.
///
/// # Errors
/// `DMABROKER_ERROR_UNSUPPORTED` when no heap meets the constraints (the
/// message says what each heap lacks and hints what to do), the status of
/// the last heap tried when every suitable heap failed to allocate
/// (`DMABROKER_ERROR_OUT_OF_MEMORY`, `_PERMISSION_DENIED`, ...),
/// `DMABROKER_ERROR_INVALID_ARGUMENT` (NULL pointers, size 0).
///
/// # Safety
/// `heaps` is NULL or a live handle; `constraints` is NULL or a live handle;
/// `name` is NULL or a C string; `out` is NULL or writable for one pointer;
/// `choice_info` is NULL or writable for one `dmabroker_choice_info` (its
/// old contents are overwritten, not freed).
#[no_mangle]
pub unsafe extern "C" fn dmabroker_alloc_for(
    heaps: *const Heaps,
    constraints: *const Constraints,
    len: u64,
    name: *const c_char,
    out: *mut *mut Buffer,
    choice_info: *mut ChoiceInfo,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable dmabroker_choice_info.
        let mut info = unsafe { choice_info.as_mut() };
        if let Some(i) = info.as_deref_mut() {
            *i = ChoiceInfo::EMPTY;
        }
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        // SAFETY: the caller passes NULL or a live handle.
        let constraints = unsafe { handle(constraints, "constraints") }?.effective()?;
        let name = if name.is_null() {
            None
        } else {
            // SAFETY: non-NULL, and the caller passes a C string.
            Some(unsafe { c_str(name, "name") }?)
        };
        let (buffer, choice) = if heaps.is_null() {
            allocate_for(&Heaps::discover().heaps, &constraints, len, name)?
        } else {
            // SAFETY: non-NULL, and the caller passes a live handle.
            let heaps = unsafe { handle(heaps, "heaps") }?;
            allocate_for(&heaps.heaps, &constraints, len, name)?
        };
        if let Some(i) = info {
            *i = ChoiceInfo::of(&choice);
        }
        *out = into_handle(Buffer::new(buffer));
        Ok(())
    })
}

/// Release the strings of a `dmabroker_choice_info` and set them to NULL
/// (the rest is left as it is). NULL, and a struct already cleared, are
/// ignored.
///
/// # Safety
/// `info` is NULL or points to a `dmabroker_choice_info` filled by
/// `dmabroker_alloc_for` (or all-zero), whose strings were not freed otherwise.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_choice_info_clear(info: *mut ChoiceInfo) {
    guard_value((), || {
        // SAFETY: the caller passes NULL or a writable dmabroker_choice_info.
        if let Some(i) = unsafe { info.as_mut() } {
            // SAFETY: the strings are NULL or came from this library
            // (CString::into_raw) and were not freed, by the contract.
            unsafe {
                crate::client::dmabroker_string_free(i.heap);
                crate::client::dmabroker_string_free(i.reasons);
            }
            i.heap = ptr::null_mut();
            i.reasons = ptr::null_mut();
        }
    });
}
