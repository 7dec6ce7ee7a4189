//! `alloc --for /dev/dri/cardN --format F`: a KMS card as a modifier
//! source. Its offer is what its primary planes scan out F in (their
//! `IN_FORMATS` blobs, `dmabroker::device::kms`), merged by `alloc_for`
//! with the other devices' offers (LINEAR from V4L2 and render nodes,
//! Vulkan's list).

use dmabroker::constraints::modifier::ModifierOffer;
use dmabroker::constraints::DeviceProbe;
use dmabroker::device::kms::{KmsDevice, PlaneKind};
use dmabroker::format::PixelFormat;
use std::path::Path;

/// The offer of the node at `path` (probed as `probe`) for `format` when it
/// is a KMS card; `None` for any other node (V4L2, render nodes, render-only
/// drivers such as vgem), which address memory linearly.
///
/// # Errors
/// A card whose primary planes do not scan out `format` at all (naming
/// what they take), a format without a DRM code, or a failed KMS query.
pub(crate) fn kms_offer(
    path: &Path,
    probe: &DeviceProbe,
    format: PixelFormat,
) -> anyhow::Result<Option<ModifierOffer>> {
    if probe.subsystem != "drm" {
        return Ok(None);
    }
    let Ok(card) = KmsDevice::open(path) else { return Ok(None) };
    let fourcc = super::for_device::drm_fourcc(format, &probe.label)?;
    let offer = card.modifier_offer(PlaneKind::Primary, fourcc, format.plane_count() as u32)?;
    if offer.modifiers.is_empty() {
        let why = offer.refused.first().map_or("no plane takes it", |(_, w)| w.as_str());
        anyhow::bail!("--format {format} cannot be shown by {}: {why}", offer.device);
    }
    Ok(Some(offer))
}
