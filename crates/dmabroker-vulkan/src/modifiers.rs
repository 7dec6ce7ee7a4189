//! Vulkan as a constraint source: which DRM modifiers physical device N
//! imports from a dma-buf for a fourcc and usage.
//!
//! For each entry of `VkDrmFormatModifierPropertiesListEXT` whose tiling
//! features cover the usage, `vkGetPhysicalDeviceImageFormatProperties2`
//! with `VkPhysicalDeviceImageDrmFormatModifierInfoEXT` and
//! `VkPhysicalDeviceExternalImageFormatInfo(DMA_BUF_BIT_EXT)` says whether
//! an image of that modifier can be imported from a dma-buf; what passes is
//! the device's [`ModifierOffer`], what fails is listed with the reason.

use crate::error::call;
use crate::format::{fourcc_text, vk_format};
use crate::{Usage, Vulkan, VulkanError};
use ash::vk;
use dmabroker::constraints::modifier::{ModifierCaps, ModifierOffer};
use dmabroker::constraints::Constraints;

impl Vulkan {
    /// The modifiers this device imports from a dma-buf for `drm_fourcc`
    /// with `usage`, in the driver's order; refused ones carry the reason.
    pub fn modifier_offer(&self, drm_fourcc: u32, usage: Usage) -> Result<ModifierOffer, VulkanError> {
        let format = vk_format(drm_fourcc)?;
        let mut list = vk::DrmFormatModifierPropertiesListEXT::default();
        let mut props = vk::FormatProperties2::default().push_next(&mut list);
        // SAFETY: valid physical device; `props` chains `list` with a zero
        // count and null array, which asks for the count only.
        unsafe { self.instance.get_physical_device_format_properties2(self.physical, format, &mut props) };
        let count = list.drm_format_modifier_count as usize;
        let mut entries = vec![vk::DrmFormatModifierPropertiesEXT::default(); count];
        let mut list = vk::DrmFormatModifierPropertiesListEXT::default().drm_format_modifier_properties(&mut entries);
        let mut props = vk::FormatProperties2::default().push_next(&mut list);
        // SAFETY: `list` points at `entries`, `count` elements long, alive
        // for the call; the driver writes at most that many.
        unsafe { self.instance.get_physical_device_format_properties2(self.physical, format, &mut props) };
        let written = (list.drm_format_modifier_count as usize).min(count);
        entries.truncate(written);

        let mut offer =
            ModifierOffer { device: self.provenance(), fourcc: drm_fourcc, modifiers: Vec::new(), refused: Vec::new() };
        let want = usage.features();
        for e in &entries {
            if !e.drm_format_modifier_tiling_features.contains(want) {
                offer.refused.push((
                    e.drm_format_modifier,
                    format!(
                        "its tiling features {:#x} lack {:#x}",
                        e.drm_format_modifier_tiling_features.as_raw(),
                        want.as_raw()
                    ),
                ));
                continue;
            }
            match self.importable(format, e.drm_format_modifier, usage)? {
                Ok(()) => offer
                    .modifiers
                    .push(ModifierCaps { modifier: e.drm_format_modifier, planes: e.drm_format_modifier_plane_count }),
                Err(why) => offer.refused.push((e.drm_format_modifier, why)),
            }
        }
        Ok(offer)
    }

    /// Ok(Ok) when an image of `modifier` can be imported from a dma-buf,
    /// Ok(Err(reason)) when the driver says no.
    fn importable(&self, format: vk::Format, modifier: u64, usage: Usage) -> Result<Result<(), String>, VulkanError> {
        let mut drm = vk::PhysicalDeviceImageDrmFormatModifierInfoEXT::default()
            .drm_format_modifier(modifier)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        let mut external = vk::PhysicalDeviceExternalImageFormatInfo::default()
            .handle_type(vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT);
        let info = vk::PhysicalDeviceImageFormatInfo2::default()
            .format(format)
            .ty(vk::ImageType::TYPE_2D)
            .tiling(vk::ImageTiling::DRM_FORMAT_MODIFIER_EXT)
            .usage(usage.flags())
            .push_next(&mut drm)
            .push_next(&mut external);
        let mut external_props = vk::ExternalImageFormatProperties::default();
        let mut props = vk::ImageFormatProperties2::default().push_next(&mut external_props);
        // SAFETY: `info` and `props` are valid chains of structures alive for
        // the call (the DRM modifier and external info in the input, the
        // external properties in the output).
        let r = unsafe { self.instance.get_physical_device_image_format_properties2(self.physical, &info, &mut props) };
        match r {
            Ok(()) => {}
            Err(vk::Result::ERROR_FORMAT_NOT_SUPPORTED) => {
                return Ok(Err("vkGetPhysicalDeviceImageFormatProperties2: format not supported".into()))
            }
            Err(e) => return Err(call("vkGetPhysicalDeviceImageFormatProperties2")(e)),
        }
        let features = external_props.external_memory_properties.external_memory_features;
        if !features.contains(vk::ExternalMemoryFeatureFlags::IMPORTABLE) {
            return Ok(Err(format!(
                "not importable from a dma-buf (external memory features {:#x})",
                features.as_raw()
            )));
        }
        Ok(Ok(()))
    }

    /// The requirements a Vulkan import adds to the heap choice: a real
    /// dma-buf, with this device as provenance.
    pub fn constraints(&self) -> Constraints {
        Constraints::builder(self.provenance())
            .dma_buf(true)
            .note(format!("{}: imports dma-bufs (VK_EXT_external_memory_dma_buf)", self.provenance()))
            .build()
            .unwrap_or_else(|_| Constraints::none())
    }

    /// A one-line summary for `fourcc`: what is offered, what is refused.
    pub fn describe_offer(offer: &ModifierOffer) -> String {
        use dmabroker::constraints::modifier::modifier_name;
        let ok: Vec<String> =
            offer.modifiers.iter().map(|c| format!("{} ({} plane)", modifier_name(c.modifier), c.planes)).collect();
        format!(
            "{} {}: imports {}",
            offer.device,
            fourcc_text(offer.fourcc),
            if ok.is_empty() { "nothing".into() } else { ok.join(", ") }
        )
    }
}
