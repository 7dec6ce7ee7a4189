//! The client's cgroup as the broker sees it (protocol version 4's
//! `StatsWithCgroup`): `dmabroker_client_get_cgroup_stats` and the
//! `dmabroker_cgroup_stats_*` readers.
//!
//! The info structs are the first of this API that may grow: each starts
//! with `struct_size`, which the caller sets to `sizeof` the struct as its
//! header declares it. The library fills only that many bytes (fields are
//! only ever added at the end) and writes back how many it filled, so a
//! program built against an older header keeps working with a newer
//! library, and a newer program learns which fields an older library set.

use crate::client::Client;
use crate::error::{guard, guard_value, Error, Status};
use crate::{free_handle, handle, into_handle, DMABROKER_UNLIMITED};
use dmabroker_core::proto::CgroupStats as CoreStats;
use std::ffi::{c_char, CString};
use std::ptr;

/// What the broker says of the asking client's cgroup
/// (`dmabroker_cgroup_stats_get_info`). The strings belong to the
/// `dmabroker_cgroup_stats` handle and stay valid until it is freed.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct CgroupInfo {
    /// Set by the caller to `sizeof(dmabroker_cgroup_info)`; set by the
    /// library to the bytes it filled.
    pub struct_size: usize,
    /// The broker reported the cgroup (protocol version 4 or later); when
    /// false (an older broker) every other field is zero or NULL.
    pub available: bool,
    /// The policy refuses this client everything but importing because its
    /// cgroup is unknown (`cgroup_unknown = "refuse"`).
    pub refused: bool,
    /// Its cgroup v2 path (`/proc/PID/cgroup`'s `0::` line, in the broker's
    /// cgroup namespace); NULL when the broker could not read it.
    pub path: *const c_char,
    /// Why the broker could not read it; NULL when it could.
    pub unknown: *const c_char,
    /// Bytes charged to this exact cgroup through the broker (all its
    /// clients, every uid).
    pub used_bytes: u64,
    /// Buffers charged to this exact cgroup.
    pub used_buffers: u64,
    /// The policy's `[[cgroup]]` rules matching it
    /// (`dmabroker_cgroup_stats_get_rule` 0 to rule_count - 1).
    pub rule_count: usize,
}

/// One `[[cgroup]]` rule matching the client
/// (`dmabroker_cgroup_stats_get_rule`). The strings belong to the
/// `dmabroker_cgroup_stats` handle.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct CgroupRuleInfo {
    /// Set by the caller to `sizeof(dmabroker_cgroup_rule_info)`; set by the
    /// library to the bytes it filled.
    pub struct_size: usize,
    /// The rule's pattern as written (e.g. `"app-flatpak-*.scope"`; a subtree rule ends in two stars).
    pub rule: *const c_char,
    /// Its line in the policy file.
    pub line: u32,
    /// 1: it allows publishing, 0: it denies it, -1: it does not say.
    pub publish: i32,
    /// The cgroup its quota is charged to: the client's, or the top of the
    /// subtree for a subtree rule.
    pub unit: *const c_char,
    /// Bytes charged to `unit` (and, for a subtree rule, below it).
    pub used_bytes: u64,
    /// Buffers charged likewise.
    pub used_buffers: u64,
    /// Its byte quota; `DMABROKER_UNLIMITED` when it sets none.
    pub max_bytes: u64,
    /// Its buffer quota; `DMABROKER_UNLIMITED` when it sets none.
    pub max_buffers: u64,
    /// The heaps it allows, comma-separated (`"memfd,dma-heap/system"`, `""`
    /// for none); NULL when it does not narrow them.
    pub heaps: *const c_char,
}

struct Rule {
    rule: CString,
    unit: CString,
    heaps: Option<CString>,
    stats: dmabroker_core::proto::CgroupRuleStats,
}

/// The answer of `dmabroker_client_get_cgroup_stats` (opaque, read-only:
/// may be shared between threads), released by `dmabroker_cgroup_stats_free`.
pub struct CgroupStats {
    stats: Option<CoreStats>,
    path: Option<CString>,
    unknown: Option<CString>,
    rules: Vec<Rule>,
}

fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "?")).unwrap_or_default()
}

impl CgroupStats {
    fn new(stats: Option<CoreStats>) -> Self {
        let Some(s) = stats else { return Self { stats: None, path: None, unknown: None, rules: Vec::new() } };
        let rules = s
            .rules
            .iter()
            .map(|r| Rule {
                rule: c_string(&r.rule),
                unit: c_string(&r.unit),
                heaps: r.heaps.as_ref().map(|h| c_string(&h.join(","))),
                stats: r.clone(),
            })
            .collect();
        Self {
            path: s.path.as_deref().map(c_string),
            unknown: s.unknown.as_deref().map(c_string),
            rules,
            stats: Some(s),
        }
    }
}

/// Copy `value` into the caller's struct, at most `(*out).struct_size`
/// bytes, and set its `struct_size` to what was filled.
///
/// # Safety
/// `out` is writable for `(*out).struct_size` bytes (the caller's promise:
/// it set that field to the size of the struct it passes), and `T` starts
/// with a `usize` `struct_size`.
unsafe fn fill<T: Copy>(out: *mut T, value: T, what: &str) -> Result<(), Error> {
    // SAFETY: the caller passes a pointer to a struct whose first field is
    // struct_size, readable as a usize.
    let asked = unsafe { out.cast::<usize>().read() };
    let min = std::mem::size_of::<usize>();
    if asked < min {
        return Err(Error::invalid(format!("{what}.struct_size is {asked}: set it to sizeof({what}) before the call")));
    }
    let n = asked.min(std::mem::size_of::<T>());
    // SAFETY: `value` is a plain repr(C) struct of size_of::<T>() bytes,
    // `out` is writable for `asked` >= n bytes (the caller's promise), and
    // the two do not overlap (`value` is a local).
    unsafe { ptr::copy_nonoverlapping(ptr::addr_of!(value).cast::<u8>(), out.cast::<u8>(), n) };
    // SAFETY: as above: the first usize of `out` is writable.
    unsafe { out.cast::<usize>().write(n) };
    Ok(())
}

/// Ask the broker what it sees of this client's cgroup: its path, what is
/// charged to it, and the matching `[[cgroup]]` rules with their quotas
/// and use. A broker older than protocol version 4 answers without them:
/// the handle is made anyway and its info says `available = false`.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` (NULL), `DMABROKER_ERROR_TIMEOUT`,
/// `DMABROKER_ERROR_BROKER` (the connection failed or the broker refused).
///
/// # Safety
/// `client` is NULL or a live handle; `out` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_client_get_cgroup_stats(
    client: *const Client,
    out: *mut *mut CgroupStats,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        // SAFETY: the caller passes NULL or a live handle.
        let client = unsafe { handle(client, "client") }?;
        let (_, cgroup) = client.stats_with_cgroup()?;
        *out = into_handle(CgroupStats::new(cgroup));
        Ok(())
    })
}

/// Fill `out` (whose `struct_size` the caller set) from `stats`.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for a NULL pointer or a
/// `struct_size` smaller than the field itself.
///
/// # Safety
/// `stats` is NULL or a live handle; `out` is NULL or writable for
/// `out->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_cgroup_stats_get_info(stats: *const CgroupStats, out: *mut CgroupInfo) -> Status {
    guard(|| {
        if out.is_null() {
            return Err(Error::null("out"));
        }
        // SAFETY: the caller passes NULL or a live handle.
        let h = unsafe { handle(stats, "stats") }?;
        let info = match &h.stats {
            None => CgroupInfo {
                struct_size: 0,
                available: false,
                refused: false,
                path: ptr::null(),
                unknown: ptr::null(),
                used_bytes: 0,
                used_buffers: 0,
                rule_count: 0,
            },
            Some(s) => CgroupInfo {
                struct_size: 0,
                available: true,
                refused: s.refused,
                path: h.path.as_ref().map_or(ptr::null(), |p| p.as_ptr()),
                unknown: h.unknown.as_ref().map_or(ptr::null(), |p| p.as_ptr()),
                used_bytes: s.used_bytes,
                used_buffers: s.used_buffers,
                rule_count: h.rules.len(),
            },
        };
        // SAFETY: the caller's promise on `out`; CgroupInfo starts with struct_size.
        unsafe { fill(out, info, "dmabroker_cgroup_info") }
    })
}

/// Fill `out` (whose `struct_size` the caller set) with rule number
/// `index` (0 to `rule_count` - 1, in policy order).
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` for a NULL pointer, an index out of
/// range or a `struct_size` smaller than the field itself.
///
/// # Safety
/// `stats` is NULL or a live handle; `out` is NULL or writable for
/// `out->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_cgroup_stats_get_rule(
    stats: *const CgroupStats,
    index: usize,
    out: *mut CgroupRuleInfo,
) -> Status {
    guard(|| {
        if out.is_null() {
            return Err(Error::null("out"));
        }
        // SAFETY: the caller passes NULL or a live handle.
        let h = unsafe { handle(stats, "stats") }?;
        let r = h.rules.get(index).ok_or_else(|| {
            Error::invalid(format!("rule index {index} is out of range: the cgroup matches {} rule(s)", h.rules.len()))
        })?;
        let s = &r.stats;
        let info = CgroupRuleInfo {
            struct_size: 0,
            rule: r.rule.as_ptr(),
            line: s.line,
            publish: s.publish.map_or(-1, i32::from),
            unit: r.unit.as_ptr(),
            used_bytes: s.used_bytes,
            used_buffers: s.used_buffers,
            max_bytes: s.max_bytes.unwrap_or(DMABROKER_UNLIMITED),
            max_buffers: s.max_buffers.unwrap_or(DMABROKER_UNLIMITED),
            heaps: r.heaps.as_ref().map_or(ptr::null(), |p| p.as_ptr()),
        };
        // SAFETY: the caller's promise on `out`; CgroupRuleInfo starts with struct_size.
        unsafe { fill(out, info, "dmabroker_cgroup_rule_info") }
    })
}

/// Release a `dmabroker_cgroup_stats` (NULL is ignored); its strings go with it.
///
/// # Safety
/// `stats` is NULL or a handle from `dmabroker_client_get_cgroup_stats` not
/// freed before; it is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_cgroup_stats_free(stats: *mut CgroupStats) {
    // SAFETY: the caller passes NULL or a live handle it gives up.
    guard_value((), || unsafe { free_handle(stats) });
}
