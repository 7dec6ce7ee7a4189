//! `alloc --for ... --format F`: the DRM format modifier every `--for`
//! device takes for F. A KMS card offers what its primary planes scan out
//! (their `IN_FORMATS` blobs, `dmabroker::device::kms`); a V4L2 node offers
//! LINEAR; the offers are merged by `choose_modifier`, which names each
//! device that refuses. Without a KMS card among the devices nothing is
//! said (V4L2 and render nodes are linear-only: nothing to choose).

use dmabroker::constraints::modifier::{choose_modifier, ChosenModifier, ModifierOffer};
use dmabroker::constraints::DeviceProbe;
use dmabroker::device::kms::{KmsDevice, PlaneKind};
use dmabroker::format::PixelFormat;
use std::path::PathBuf;

/// The modifier for `format` that every device of `devices` (probed as
/// `probes`, in the same order) takes, when one of them is a KMS card.
///
/// # Errors
/// A KMS card whose primary planes do not scan out `format` at all, no
/// modifier common to every device, or a failed KMS query.
pub(crate) fn choose(
    format: PixelFormat,
    devices: &[PathBuf],
    probes: &[DeviceProbe],
) -> anyhow::Result<Option<ChosenModifier>> {
    let Some(drm) = format.to_drm() else { return Ok(None) };
    let fourcc = drm as u32;
    let mut offers: Vec<ModifierOffer> = Vec::new();
    let mut kms = false;
    for (path, probe) in devices.iter().zip(probes) {
        match probe.subsystem.as_str() {
            "video4linux" => offers.push(ModifierOffer::linear(probe.label.clone(), fourcc, 1)),
            "drm" => {
                // Render nodes and render-only drivers (vgem) do no KMS:
                // they scan nothing out and add no offer.
                let Ok(card) = KmsDevice::open(path) else { continue };
                let offer = card.modifier_offer(PlaneKind::Primary, fourcc)?;
                if offer.modifiers.is_empty() {
                    let why = offer.refused.first().map(|(_, w)| w.as_str()).unwrap_or("no plane takes it");
                    anyhow::bail!("--format {format} cannot be shown by {}: {why}", offer.device);
                }
                offers.push(offer);
                kms = true;
            }
            _ => {}
        }
    }
    if !kms {
        return Ok(None);
    }
    Ok(Some(choose_modifier(&offers, None)?))
}
