//! Vulkan physical devices as constraint sources (cargo feature `vulkan`):
//! `dmabroker_constraints_vulkan`, the C equivalent of `dmabroker alloc
//! --for vulkan:N[:USAGE]`.

use crate::constraints::Constraints;
use crate::error::{guard, Error, Status};
use crate::{c_str, into_handle};
use dmabroker_core::constraints::modifier::{choose_modifier, MOD_LINEAR};
use dmabroker_vulkan::{Usage, Vulkan, VulkanError};
use std::ffi::c_char;
use std::ptr;

fn status(e: &VulkanError) -> Status {
    match e {
        VulkanError::NoLoader(_) | VulkanError::NoDevice { .. } => Status::DMABROKER_ERROR_NOT_FOUND,
        VulkanError::MissingExtension { .. } | VulkanError::UnsupportedFormat(_) => Status::DMABROKER_ERROR_UNSUPPORTED,
        _ => Status::DMABROKER_ERROR_IO,
    }
}

/// The constraints of Vulkan physical device `index` (as `vulkaninfo
/// --summary` numbers them) importing dma-bufs of DRM format `drm_fourcc`
/// for `usage` (`"transfer"`, `"sampled,storage"`, ...; NULL: transfer):
/// a dma-buf, with the device as provenance (`vulkan:0 (llvmpipe ...)`).
/// The device must import the LINEAR modifier for that format and usage,
/// the layout dmabroker computes; merge the handle with the other devices'
/// (`dmabroker_constraints_merge`) and allocate (`dmabroker_alloc_for`).
/// Only in a library built with the cargo feature `vulkan` (dynamically
/// linked: libvulkan.so.1 is loaded at run time); the header declares it
/// when `DMABROKER_VULKAN` is defined.
///
/// # Errors
/// `DMABROKER_ERROR_NOT_FOUND` (no Vulkan loader, no device `index`),
/// `DMABROKER_ERROR_UNSUPPORTED` (the device lacks dma-buf import, has no
/// Vulkan format for `drm_fourcc`, or does not import LINEAR for it: the
/// message names the device and what it offers),
/// `DMABROKER_ERROR_INVALID_ARGUMENT` (an unknown usage, NULL `out`),
/// `DMABROKER_ERROR_IO` (a Vulkan call failed).
///
/// # Safety
/// `usage` is NULL or a C string; `out` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_constraints_vulkan(
    index: u32,
    drm_fourcc: u32,
    usage: *const c_char,
    out: *mut *mut Constraints,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        let usage = if usage.is_null() {
            Usage::TRANSFER
        } else {
            // SAFETY: the caller passes NULL (handled above) or a C string.
            let text = unsafe { c_str(usage, "usage") }?;
            Usage::parse(text).map_err(Error::invalid)?
        };
        let device = format!("vulkan:{index}");
        let vk = Vulkan::open(index as usize).map_err(|e| Error::new(status(&e), format!("{device}: {e}")))?;
        let offer =
            vk.modifier_offer(drm_fourcc, usage).map_err(|e| Error::new(status(&e), format!("{device}: {e}")))?;
        choose_modifier(&[offer], Some(MOD_LINEAR))
            .map_err(|e| Error::new(Status::DMABROKER_ERROR_UNSUPPORTED, e.to_string()))?;
        *out = into_handle(Constraints::of(vk.provenance(), vk.constraints()));
        Ok(())
    })
}
