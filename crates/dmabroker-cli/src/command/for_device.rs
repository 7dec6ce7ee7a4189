//! What `--for` names: a device node (`/dev/video0`, `/dev/dri/card0`) or a
//! Vulkan physical device (`vulkan:N[:USAGE,...]`), and the DRM format
//! modifier every one of them imports.
//!
//! Device nodes address memory linearly (V4L2, DRM dumb buffers): they offer
//! LINEAR; a KMS card offers what its primary planes scan out. A Vulkan device says itself which modifiers it imports from a
//! dma-buf for the format and usage (`dmabroker-vulkan`, cargo feature
//! `vulkan`): the offers meet in
//! [`dmabroker::constraints::modifier::choose_modifier`], and the layout
//! carries the modifier they agree on, or the error names the device that
//! refused it.

use dmabroker::constraints::modifier::{choose_modifier, ChosenModifier, ModifierOffer, MOD_LINEAR};
use dmabroker::constraints::{Constraints, DeviceProbe};
use dmabroker::device::kms::{KmsDevice, PlaneKind};
use dmabroker::format::PixelFormat;
use std::fmt;
use std::path::{Path, PathBuf};

/// Usages a `vulkan:N` device is asked about when none are given: what a
/// consumer that samples or copies the frame needs.
pub const DEFAULT_VULKAN_USAGE: &str = "sampled,transfer";

/// One `--for` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForDevice {
    /// A device node: `/dev/videoN`, `/dev/dri/cardN`, a by-id symlink.
    Node(PathBuf),
    /// Vulkan physical device `index`, for the comma-separated `usage`
    /// (sampled, storage, color, transfer, transfer-src, transfer-dst).
    Vulkan {
        /// The physical device's index in the loader's list.
        index: usize,
        /// The usages, as given (or [`DEFAULT_VULKAN_USAGE`]).
        usage: String,
    },
}

impl fmt::Display for ForDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Node(p) => write!(f, "{}", p.display()),
            Self::Vulkan { index, usage } => write!(f, "vulkan:{index}:{usage}"),
        }
    }
}

/// clap's parser for `--for`: `vulkan:N[:USAGE,...]`, or a path.
pub fn parse_for(text: &str) -> Result<ForDevice, String> {
    let Some(rest) = text.strip_prefix("vulkan:") else {
        return Ok(ForDevice::Node(PathBuf::from(text)));
    };
    let (index, usage) = rest.split_once(':').unwrap_or((rest, DEFAULT_VULKAN_USAGE));
    let index = index.parse::<usize>().map_err(|_| {
        format!("{text}: the Vulkan device is vulkan:N with N its index (vulkan:0, vulkan:1:storage; `vulkaninfo --summary` lists them)")
    })?;
    const KNOWN: [&str; 7] =
        ["sampled", "storage", "color", "color-attachment", "transfer", "transfer-src", "transfer-dst"];
    for word in usage.split(',') {
        if !KNOWN.contains(&word) {
            return Err(format!("{text}: unknown Vulkan usage {word:?}: the usages are {}", KNOWN.join(", ")));
        }
    }
    Ok(ForDevice::Vulkan { index, usage: usage.to_owned() })
}

/// What a Vulkan device adds to the plan.
pub struct VulkanProbe {
    /// Its requirements (a real dma-buf), with the device as provenance.
    pub constraints: Constraints,
    /// The modifiers it imports for the format and usage.
    pub offer: ModifierOffer,
    /// One line saying what it offers and what it refused.
    pub note: String,
}

/// Ask Vulkan physical device `index` what it imports from a dma-buf for
/// `format` with `usage`.
#[cfg(feature = "vulkan")]
pub fn probe_vulkan(index: usize, usage: &str, format: PixelFormat) -> anyhow::Result<VulkanProbe> {
    use dmabroker_vulkan::{Usage, Vulkan};
    let usage = Usage::parse(usage).map_err(|e| anyhow::anyhow!("--for vulkan:{index}:{usage}: {e}"))?;
    let fourcc = drm_fourcc(format, &format!("vulkan:{index}"))?;
    let vk = Vulkan::open(index).map_err(|e| anyhow::anyhow!("--for vulkan:{index}: {e}"))?;
    let offer = vk.modifier_offer(fourcc, usage).map_err(|e| anyhow::anyhow!("--for vulkan:{index}: {e}"))?;
    let mut note = Vulkan::describe_offer(&offer);
    if !offer.refused.is_empty() {
        let refused: Vec<String> = offer
            .refused
            .iter()
            .map(|(m, why)| format!("{} ({why})", dmabroker::constraints::modifier::modifier_name(*m)))
            .collect();
        note.push_str(&format!("; refuses {}", refused.join(", ")));
    }
    Ok(VulkanProbe { constraints: vk.constraints(), offer, note })
}

/// Without the `vulkan` feature: say how to get it.
#[cfg(not(feature = "vulkan"))]
pub fn probe_vulkan(index: usize, usage: &str, _format: PixelFormat) -> anyhow::Result<VulkanProbe> {
    anyhow::bail!(
        "--for vulkan:{index}:{usage}: this dmabroker was built without Vulkan support; rebuild it with \
         `cargo build --release -p dmabroker-cli --features vulkan` (dynamically linked: a +crt-static \
         binary cannot load libvulkan.so.1)"
    )
}

/// The offer of the node at `path` (probed as `probe`) for `format` when it
/// is a KMS card: what its primary planes scan out `format` in (their
/// `IN_FORMATS` blobs, `dmabroker::device::kms`); `None` for any other node
/// (V4L2, render nodes, render-only drivers such as vgem), which address
/// memory linearly.
///
/// # Errors
/// A card whose primary planes do not scan out `format` at all (naming
/// what they take), a format without a DRM code, or a failed KMS query.
pub fn kms_offer(path: &Path, probe: &DeviceProbe, format: PixelFormat) -> anyhow::Result<Option<ModifierOffer>> {
    if probe.subsystem != "drm" {
        return Ok(None);
    }
    let Ok(card) = KmsDevice::open(path) else { return Ok(None) };
    let fourcc = drm_fourcc(format, &probe.label)?;
    let offer = card.modifier_offer(PlaneKind::Primary, fourcc, format.plane_count() as u32)?;
    if offer.modifiers.is_empty() {
        let why = offer.refused.first().map_or("no plane takes it", |(_, w)| w.as_str());
        anyhow::bail!("--format {format} cannot be shown by {}: {why}", offer.device);
    }
    Ok(Some(offer))
}

/// The DRM fourcc of `format`, which a modifier is offered for.
pub fn drm_fourcc(format: PixelFormat, device: &str) -> anyhow::Result<u32> {
    format.to_drm().map(|f| f as u32).ok_or_else(|| {
        anyhow::anyhow!("--format {format} has no DRM fourcc, so {device} cannot be asked for its modifiers")
    })
}

/// The modifier every device imports: `wanted` (`--modifier`), else LINEAR,
/// the layout dmabroker computes pitches and offsets for. `offers` holds
/// one entry per `--for` device.
pub fn choose(offers: &[ModifierOffer], wanted: Option<u64>) -> anyhow::Result<ChosenModifier> {
    choose_modifier(offers, Some(wanted.unwrap_or(MOD_LINEAR))).map_err(|e| anyhow::anyhow!("{e}"))
}

/// clap's parser for `--modifier`: `LINEAR`, or the 64-bit value in hex
/// (`0x0100000000000001`) or decimal.
pub fn parse_modifier(text: &str) -> Result<u64, String> {
    if text.eq_ignore_ascii_case("linear") {
        return Ok(MOD_LINEAR);
    }
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse::<u64>(),
    };
    parsed.map_err(|_| {
        format!("{text}: a DRM format modifier is LINEAR or its 64-bit value (0x0100000000000001 is I915_X_TILED)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_vulkan_devices() {
        assert_eq!(parse_for("/dev/video0"), Ok(ForDevice::Node("/dev/video0".into())));
        assert_eq!(parse_for("vulkan:0"), Ok(ForDevice::Vulkan { index: 0, usage: DEFAULT_VULKAN_USAGE.into() }));
        assert_eq!(
            parse_for("vulkan:2:storage,sampled"),
            Ok(ForDevice::Vulkan { index: 2, usage: "storage,sampled".into() })
        );
        let e = parse_for("vulkan:x").unwrap_err();
        assert!(e.contains("vulkan:N"), "{e}");
        let e = parse_for("vulkan:0:sampeld").unwrap_err();
        assert!(e.contains("\"sampeld\"") && e.contains("storage"), "{e}");
    }

    #[test]
    fn modifiers_by_name_or_value() {
        assert_eq!(parse_modifier("LINEAR"), Ok(0));
        assert_eq!(parse_modifier("0x0100000000000001"), Ok(0x0100_0000_0000_0001));
        assert_eq!(parse_modifier("72057594037927937"), Ok(0x0100_0000_0000_0001));
        assert!(parse_modifier("tiled").unwrap_err().contains("LINEAR"));
    }

    #[test]
    fn linear_unless_asked_and_refusals_name_the_device() {
        let fourcc = u32::from_le_bytes(*b"XR24");
        let offers =
            [ModifierOffer::linear("video0 (vivid)", fourcc, 1), ModifierOffer::linear("card0 (vkms)", fourcc, 1)];
        assert_eq!(choose(&offers, None).unwrap().modifier, MOD_LINEAR);
        let e = choose(&offers, Some(0x0100_0000_0000_0001)).unwrap_err().to_string();
        assert!(e.contains("video0 (vivid) refuses it") && e.contains("card0 (vkms) refuses it"), "{e}");
    }
}
