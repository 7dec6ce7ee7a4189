//! DRM fourccs as Vulkan formats, and the usages a buffer is asked for.

use crate::VulkanError;
use ash::vk;

const fn fourcc(b: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*b)
}

/// The `VkFormat` whose memory layout equals the DRM fourcc's (DRM formats
/// are little-endian packed: XR24 = bytes B, G, R, X = `B8G8R8A8`).
pub fn vk_format(drm_fourcc: u32) -> Result<vk::Format, VulkanError> {
    Ok(match drm_fourcc {
        x if x == fourcc(b"XR24") || x == fourcc(b"AR24") => vk::Format::B8G8R8A8_UNORM,
        x if x == fourcc(b"XB24") || x == fourcc(b"AB24") => vk::Format::R8G8B8A8_UNORM,
        x if x == fourcc(b"R8  ") => vk::Format::R8_UNORM,
        x if x == fourcc(b"GR88") => vk::Format::R8G8_UNORM,
        x if x == fourcc(b"YUYV") => vk::Format::G8B8G8R8_422_UNORM,
        x if x == fourcc(b"NV12") => vk::Format::G8_B8R8_2PLANE_420_UNORM,
        x => return Err(VulkanError::UnsupportedFormat(fourcc_text(x))),
    })
}

pub(crate) fn fourcc_text(code: u32) -> String {
    let b = code.to_le_bytes();
    if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
        String::from_utf8_lossy(&b).trim_end().to_owned()
    } else {
        format!("{code:#010x}")
    }
}

/// What the device will do with the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Sampled in a shader.
    pub sampled: bool,
    /// Storage image (compute writes).
    pub storage: bool,
    /// Render target.
    pub color_attachment: bool,
    /// Source of a transfer.
    pub transfer_src: bool,
    /// Destination of a transfer.
    pub transfer_dst: bool,
}

impl Usage {
    /// Transfer source and destination (copies, blits).
    pub const TRANSFER: Usage =
        Usage { sampled: false, storage: false, color_attachment: false, transfer_src: true, transfer_dst: true };

    /// Parse `sampled,storage,color,transfer-src,transfer-dst,transfer`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut u = Usage::default();
        for w in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match w {
                "sampled" => u.sampled = true,
                "storage" => u.storage = true,
                "color" | "color-attachment" => u.color_attachment = true,
                "transfer-src" => u.transfer_src = true,
                "transfer-dst" => u.transfer_dst = true,
                "transfer" => {
                    u.transfer_src = true;
                    u.transfer_dst = true;
                }
                other => {
                    return Err(format!(
                        "unknown Vulkan usage `{other}`: use sampled, storage, color, transfer-src, transfer-dst or transfer"
                    ))
                }
            }
        }
        if u == Usage::default() {
            return Err(
                "no Vulkan usage given: use sampled, storage, color, transfer-src, transfer-dst or transfer".into()
            );
        }
        Ok(u)
    }

    /// As `VkImageUsageFlags`.
    pub fn flags(self) -> vk::ImageUsageFlags {
        let mut f = vk::ImageUsageFlags::empty();
        for (on, bit) in [
            (self.sampled, vk::ImageUsageFlags::SAMPLED),
            (self.storage, vk::ImageUsageFlags::STORAGE),
            (self.color_attachment, vk::ImageUsageFlags::COLOR_ATTACHMENT),
            (self.transfer_src, vk::ImageUsageFlags::TRANSFER_SRC),
            (self.transfer_dst, vk::ImageUsageFlags::TRANSFER_DST),
        ] {
            if on {
                f |= bit;
            }
        }
        f
    }

    /// The format features these usages need, to filter modifiers.
    pub fn features(self) -> vk::FormatFeatureFlags {
        let mut f = vk::FormatFeatureFlags::empty();
        for (on, bit) in [
            (self.sampled, vk::FormatFeatureFlags::SAMPLED_IMAGE),
            (self.storage, vk::FormatFeatureFlags::STORAGE_IMAGE),
            (self.color_attachment, vk::FormatFeatureFlags::COLOR_ATTACHMENT),
            (self.transfer_src, vk::FormatFeatureFlags::TRANSFER_SRC),
            (self.transfer_dst, vk::FormatFeatureFlags::TRANSFER_DST),
        ] {
            if on {
                f |= bit;
            }
        }
        f
    }
}
