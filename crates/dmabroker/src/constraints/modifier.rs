//! DRM format modifiers as a requirement: each device that touches a buffer
//! offers the modifiers it can import for one fourcc ([`ModifierOffer`]);
//! [`choose_modifier`] picks one every device offers (LINEAR where that is
//! all they share) or names which device refuses which modifier
//! ([`ModifierError`]).
//!
//! V4L2 capture queues and DRM dumb buffers address memory linearly: their
//! offer is [`ModifierOffer::linear`]. Vulkan reports its own list
//! (`dmabroker-vulkan`: `VkDrmFormatModifierPropertiesListEXT`, each entry
//! checked for dma-buf import).

use serde::Serialize;
use std::fmt;

/// `DRM_FORMAT_MOD_LINEAR`.
pub const MOD_LINEAR: u64 = 0;
/// `DRM_FORMAT_MOD_INVALID`: "implicit", no explicit modifier.
pub const MOD_INVALID: u64 = 0x00ff_ffff_ffff_ffff;

/// A modifier as people read it: `LINEAR`, `INVALID`, or vendor and code
/// (`0x0100000000000001 (vendor INTEL)`).
pub fn modifier_name(modifier: u64) -> String {
    match modifier {
        MOD_LINEAR => "LINEAR".to_owned(),
        MOD_INVALID => "INVALID".to_owned(),
        m => {
            let vendor = match m >> 56 {
                0x01 => "INTEL",
                0x02 => "AMD",
                0x03 => "NVIDIA",
                0x04 => "SAMSUNG",
                0x05 => "QCOM",
                0x06 => "VIVANTE",
                0x07 => "BROADCOM",
                0x08 => "ARM",
                0x09 => "ALLWINNER",
                0x0a => "AMLOGIC",
                _ => "unknown vendor",
            };
            format!("{m:#018x} ({vendor})")
        }
    }
}

/// One modifier a device can import, with its plane count (memory planes:
/// a compressed modifier can add metadata planes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ModifierCaps {
    /// The DRM format modifier.
    pub modifier: u64,
    /// Memory planes the device expects for it.
    pub planes: u32,
}

/// The modifiers one device can import for one DRM fourcc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModifierOffer {
    /// The device, as provenance: `vulkan:0 (llvmpipe)`, `/dev/video0`.
    pub device: String,
    /// The DRM fourcc the offer is for.
    pub fourcc: u32,
    /// What it can import, in the device's order of preference.
    pub modifiers: Vec<ModifierCaps>,
    /// What the device said about modifiers it refused, for the error
    /// message (`modifier: reason`).
    pub refused: Vec<(u64, String)>,
}

impl ModifierOffer {
    /// A device that addresses memory linearly (V4L2, DRM dumb buffers).
    pub fn linear(device: impl Into<String>, fourcc: u32, planes: u32) -> Self {
        Self {
            device: device.into(),
            fourcc,
            modifiers: vec![ModifierCaps { modifier: MOD_LINEAR, planes }],
            refused: Vec::new(),
        }
    }

    /// Whether the device offers `modifier`.
    pub fn offers(&self, modifier: u64) -> Option<&ModifierCaps> {
        self.modifiers.iter().find(|c| c.modifier == modifier)
    }

    fn list(&self) -> String {
        if self.modifiers.is_empty() {
            return "none".to_owned();
        }
        self.modifiers.iter().map(|c| modifier_name(c.modifier)).collect::<Vec<_>>().join(", ")
    }
}

/// The modifier every device accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChosenModifier {
    /// The modifier.
    pub modifier: u64,
    /// Its memory plane count.
    pub planes: u32,
    /// The devices that offered it (all of them).
    pub from: Vec<String>,
}

/// No modifier every device accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModifierError {
    /// The offers are for different fourccs.
    #[error("modifier offers are for different formats ({0}): ask every device for the same fourcc")]
    MixedFormats(String),
    /// The modifier asked for is one some devices refuse.
    #[error("modifier {} for {}: {}; choose one all offer, or drop the device", modifier_name(*.modifier), fourcc_text(*.fourcc), refusals_text(.refusals))]
    Refused {
        /// The modifier asked for.
        modifier: u64,
        /// The fourcc.
        fourcc: u32,
        /// `(device, what it offers instead)` for each device that refuses.
        refusals: Vec<(String, String)>,
    },
    /// No modifier is offered by every device.
    #[error("no modifier for {} that every device imports: {}", fourcc_text(*.fourcc), refusals_text(.offers))]
    NoCommon {
        /// The fourcc.
        fourcc: u32,
        /// `(device, what it offers)` for each device.
        offers: Vec<(String, String)>,
    },
    /// The planes differ between devices for the same modifier.
    #[error("modifier {} for {}: {} expect different plane counts ({})", modifier_name(*.modifier), fourcc_text(*.fourcc), .devices, .planes)]
    PlaneMismatch {
        /// The modifier.
        modifier: u64,
        /// The fourcc.
        fourcc: u32,
        /// The devices.
        devices: String,
        /// Their plane counts.
        planes: String,
    },
}

fn fourcc_text(code: u32) -> String {
    let b = code.to_le_bytes();
    if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
        String::from_utf8_lossy(&b).trim_end().to_owned()
    } else {
        format!("{code:#010x}")
    }
}

fn refusals_text(r: &[(String, String)]) -> String {
    r.iter().map(|(d, why)| format!("{d} {why}")).collect::<Vec<_>>().join("; ")
}

/// Pick the modifier every offer contains: `wanted` when given (an error
/// names each device that refuses it and what it offers instead), otherwise
/// the first modifier of the first offer that all others contain (LINEAR
/// where that is all they share). No offers: LINEAR.
pub fn choose_modifier(offers: &[ModifierOffer], wanted: Option<u64>) -> Result<ChosenModifier, ModifierError> {
    let Some(first) = offers.first() else {
        let modifier = wanted.unwrap_or(MOD_LINEAR);
        return Ok(ChosenModifier { modifier, planes: 1, from: Vec::new() });
    };
    if offers.iter().any(|o| o.fourcc != first.fourcc) {
        let list = offers.iter().map(|o| format!("{} {}", o.device, fourcc_text(o.fourcc))).collect::<Vec<_>>();
        return Err(ModifierError::MixedFormats(list.join(", ")));
    }
    let fourcc = first.fourcc;
    let candidate = match wanted {
        Some(m) => {
            let refusals: Vec<(String, String)> = offers
                .iter()
                .filter(|o| o.offers(m).is_none())
                .map(|o| {
                    let why =
                        o.refused.iter().find(|(r, _)| *r == m).map(|(_, w)| format!(" ({w})")).unwrap_or_default();
                    (o.device.clone(), format!("refuses it{why}: it offers {}", o.list()))
                })
                .collect();
            if !refusals.is_empty() {
                return Err(ModifierError::Refused { modifier: m, fourcc, refusals });
            }
            m
        }
        None => match first.modifiers.iter().find(|c| offers.iter().all(|o| o.offers(c.modifier).is_some())) {
            Some(c) => c.modifier,
            None => {
                let offers = offers.iter().map(|o| (o.device.clone(), format!("offers {}", o.list()))).collect();
                return Err(ModifierError::NoCommon { fourcc, offers });
            }
        },
    };
    let planes: Vec<u32> = offers.iter().filter_map(|o| o.offers(candidate)).map(|c| c.planes).collect();
    if planes.iter().any(|p| *p != planes[0]) {
        return Err(ModifierError::PlaneMismatch {
            modifier: candidate,
            fourcc,
            devices: crate::constraints::who(&offers.iter().map(|o| o.device.clone()).collect::<Vec<_>>()),
            planes: planes.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
        });
    }
    let mut from: Vec<String> = offers.iter().map(|o| o.device.clone()).collect();
    from.sort();
    from.dedup();
    Ok(ChosenModifier { modifier: candidate, planes: planes[0], from })
}

impl fmt::Display for ChosenModifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} plane(s); offered by {})",
            modifier_name(self.modifier),
            self.planes,
            crate::constraints::who(&self.from)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XR24: u32 = u32::from_le_bytes(*b"XR24");
    const X_TILED: u64 = 0x0100_0000_0000_0001;

    fn gpu() -> ModifierOffer {
        ModifierOffer {
            device: "vulkan:0 (gpu)".into(),
            fourcc: XR24,
            modifiers: vec![
                ModifierCaps { modifier: X_TILED, planes: 1 },
                ModifierCaps { modifier: MOD_LINEAR, planes: 1 },
            ],
            refused: vec![],
        }
    }

    #[test]
    fn linear_when_that_is_all_they_share() {
        let c = choose_modifier(&[gpu(), ModifierOffer::linear("/dev/video0", XR24, 1)], None).unwrap();
        assert_eq!(c.modifier, MOD_LINEAR);
        assert_eq!(c.from, vec!["/dev/video0".to_owned(), "vulkan:0 (gpu)".to_owned()]);
        assert_eq!(choose_modifier(&[gpu()], None).unwrap().modifier, X_TILED);
    }

    #[test]
    fn refusal_names_the_device_and_modifier() {
        let e = choose_modifier(&[gpu(), ModifierOffer::linear("/dev/video0", XR24, 1)], Some(X_TILED)).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("/dev/video0 refuses it: it offers LINEAR"), "{text}");
        assert!(text.contains("0x0100000000000001 (INTEL)"), "{text}");
        assert!(!text.contains("vulkan:0"), "{text}");
    }

    #[test]
    fn no_common_and_mixed_formats() {
        let mut only_tiled = gpu();
        only_tiled.modifiers.retain(|c| c.modifier == X_TILED);
        let e = choose_modifier(&[only_tiled, ModifierOffer::linear("/dev/video0", XR24, 1)], None).unwrap_err();
        assert!(matches!(e, ModifierError::NoCommon { .. }), "{e}");
        let e = choose_modifier(&[gpu(), ModifierOffer::linear("/dev/video0", 1, 1)], None).unwrap_err();
        assert!(matches!(e, ModifierError::MixedFormats(_)), "{e}");
    }
}
