//! A KMS device as a constraint source: what its planes scan out, fourcc by
//! fourcc, with the modifiers of each plane's `IN_FORMATS` blob, as
//! [`ModifierOffer`]s that [`choose_modifier`](crate::constraints::modifier::choose_modifier)
//! merges with the offers of the other devices (V4L2's
//! [`ModifierOffer::linear`], Vulkan's list).
//!
//! A plane without `IN_FORMATS` (kernels before 5.1, or drivers that set
//! no modifiers then) scans out its `GETPLANE` formats linearly.

use super::in_formats::{self, InFormatsError};
use super::{KmsDevice, KmsError, Plane, PlaneKind};
use crate::constraints::modifier::{ModifierCaps, ModifierOffer, MOD_LINEAR};

/// Why a KMS device's offer could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OfferError {
    /// A query failed.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// A plane's `IN_FORMATS` blob is malformed.
    #[error("plane {plane}: {source}")]
    InFormats {
        /// The plane.
        plane: u32,
        /// What is wrong.
        source: InFormatsError,
    },
}

impl KmsDevice {
    /// `(fourcc, modifiers)` that `plane` scans out, from its `IN_FORMATS`
    /// blob (or its format list, linearly, without one).
    ///
    /// # Errors
    /// [`OfferError`].
    pub fn plane_modifiers(&self, plane: &Plane) -> Result<Vec<(u32, Vec<u64>)>, OfferError> {
        match plane.in_formats_blob {
            Some(id) => {
                let blob = self.blob(id)?;
                let parsed =
                    in_formats::parse(&blob).map_err(|source| OfferError::InFormats { plane: plane.id, source })?;
                Ok(parsed.formats)
            }
            None => Ok(plane.formats.iter().map(|&f| (f, vec![MOD_LINEAR])).collect()),
        }
    }

    /// The device's offer for `fourcc` on its planes of `kind` (primary
    /// planes: what a full-screen frame needs): every modifier any such
    /// plane scans out it in, in the first plane's order, each with
    /// `planes` memory planes (`IN_FORMATS` does not say; for LINEAR it is
    /// the format's plane count). An empty offer (`modifiers` empty, the
    /// planes' formats in `refused`) when no plane takes the fourcc.
    ///
    /// # Errors
    /// [`OfferError`].
    pub fn modifier_offer(&self, kind: PlaneKind, fourcc: u32, planes: u32) -> Result<ModifierOffer, OfferError> {
        let mut modifiers: Vec<ModifierCaps> = Vec::new();
        let mut others: Vec<u32> = Vec::new();
        for plane in self.planes()?.iter().filter(|p| p.kind == kind) {
            for (f, mods) in self.plane_modifiers(plane)? {
                if f != fourcc {
                    if !others.contains(&f) {
                        others.push(f);
                    }
                    continue;
                }
                for m in mods {
                    if !modifiers.iter().any(|c| c.modifier == m) {
                        modifiers.push(ModifierCaps { modifier: m, planes });
                    }
                }
            }
        }
        let refused = if modifiers.is_empty() {
            let list: Vec<String> =
                others.iter().map(|f| String::from_utf8_lossy(&f.to_le_bytes()).into_owned()).collect();
            vec![(
                MOD_LINEAR,
                format!("its {} planes do not scan out this format (they take {})", kind_name(kind), list.join(", ")),
            )]
        } else {
            Vec::new()
        };
        Ok(ModifierOffer {
            device: format!("{} ({})", self.path().display(), self.driver_name()),
            fourcc,
            modifiers,
            refused,
        })
    }
}

fn kind_name(kind: PlaneKind) -> &'static str {
    match kind {
        PlaneKind::Primary => "primary",
        PlaneKind::Overlay => "overlay",
        PlaneKind::Cursor => "cursor",
    }
}
