//! A plane's `IN_FORMATS` blob (`struct drm_format_modifier_blob`): which
//! modifiers it scans out for which fourcc.
//!
//! Layout (`include/uapi/drm/drm_mode.h`): a 24-byte header (`version`,
//! `flags`, `count_formats`, `formats_offset`, `count_modifiers`,
//! `modifiers_offset`, all `u32`), `count_formats` fourccs (`u32`) at
//! `formats_offset`, and `count_modifiers` 24-byte entries at
//! `modifiers_offset`: `u64 formats` (a bitmask over the fourcc list),
//! `u32 offset` (the index of bit 0), `u32 pad`, `u64 modifier`. Every
//! offset and count is checked against the blob's length: a short or
//! inconsistent blob is an error, never a panic.

/// What [`parse`] found: each fourcc with the modifiers offered for it, in
/// the blob's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFormats {
    /// `(fourcc, modifiers)` in the order of the blob's format list.
    pub formats: Vec<(u32, Vec<u64>)>,
}

impl InFormats {
    /// The modifiers offered for `fourcc` (empty when the plane lacks it).
    pub fn modifiers(&self, fourcc: u32) -> &[u64] {
        self.formats.iter().find(|(f, _)| *f == fourcc).map_or(&[], |(_, m)| m.as_slice())
    }
}

/// Why an `IN_FORMATS` blob could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InFormatsError {
    /// Shorter than its header or than what the header describes.
    #[error("IN_FORMATS blob of {len} bytes is too short for {what}")]
    Truncated {
        /// The blob's length.
        len: usize,
        /// What did not fit.
        what: &'static str,
    },
    /// A version this parser does not know (only 1 exists).
    #[error("IN_FORMATS blob version {0} (only version 1 is known)")]
    Version(u32),
}

const HEADER: usize = 24;
const MODIFIER_ENTRY: usize = 24;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

/// The byte range `offset .. offset + count * size`, if it lies in `len`.
fn range(len: usize, offset: u32, count: u32, size: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(count).ok()?.checked_mul(size)?)?;
    (end <= len).then_some(start..end)
}

/// Read an `IN_FORMATS` blob.
///
/// # Errors
/// [`InFormatsError`] for a blob that is short, points past its end, or has
/// an unknown version.
pub fn parse(blob: &[u8]) -> Result<InFormats, InFormatsError> {
    let len = blob.len();
    if len < HEADER {
        return Err(InFormatsError::Truncated { len, what: "the header" });
    }
    let version = u32_at(blob, 0);
    if version != 1 {
        return Err(InFormatsError::Version(version));
    }
    let (count_formats, formats_offset) = (u32_at(blob, 8), u32_at(blob, 12));
    let (count_modifiers, modifiers_offset) = (u32_at(blob, 16), u32_at(blob, 20));
    let fr =
        range(len, formats_offset, count_formats, 4).ok_or(InFormatsError::Truncated { len, what: "the formats" })?;
    let mr = range(len, modifiers_offset, count_modifiers, MODIFIER_ENTRY)
        .ok_or(InFormatsError::Truncated { len, what: "the modifiers" })?;
    let mut formats: Vec<(u32, Vec<u64>)> = blob[fr].chunks_exact(4).map(|c| (u32_at(c, 0), Vec::new())).collect();
    for entry in blob[mr].chunks_exact(MODIFIER_ENTRY) {
        let mask = u64_at(entry, 0);
        let offset = u32_at(entry, 8) as usize;
        let modifier = u64_at(entry, 16);
        for bit in 0..64 {
            if mask & (1 << bit) == 0 {
                continue;
            }
            // A bit past the format list names no format: ignored, as the
            // kernel never sets one.
            if let Some((_, mods)) = offset.checked_add(bit).and_then(|i| formats.get_mut(i)) {
                if !mods.contains(&modifier) {
                    mods.push(modifier);
                }
            }
        }
    }
    Ok(InFormats { formats })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(formats: &[u32], modifiers: &[(u64, u32, u64)]) -> Vec<u8> {
        let formats_offset = HEADER as u32;
        let modifiers_offset = formats_offset + 4 * formats.len() as u32;
        let mut b = Vec::new();
        for v in [1, 0, formats.len() as u32, formats_offset, modifiers.len() as u32, modifiers_offset] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        for f in formats {
            b.extend_from_slice(&f.to_ne_bytes());
        }
        for &(mask, offset, modifier) in modifiers {
            b.extend_from_slice(&mask.to_ne_bytes());
            b.extend_from_slice(&offset.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            b.extend_from_slice(&modifier.to_ne_bytes());
        }
        b
    }

    const XR24: u32 = u32::from_le_bytes(*b"XR24");
    const AR24: u32 = u32::from_le_bytes(*b"AR24");
    const NV12: u32 = u32::from_le_bytes(*b"NV12");
    const X_TILED: u64 = 0x0100_0000_0000_0001;

    #[test]
    fn linear_only_plane_as_the_kernel_builds_it() {
        // drm_plane.c's default: every format with LINEAR (vkms's planes).
        let p = parse(&blob(&[XR24, AR24, NV12], &[(0b111, 0, 0)])).unwrap();
        assert_eq!(p.formats, vec![(XR24, vec![0]), (AR24, vec![0]), (NV12, vec![0])]);
        assert_eq!(p.modifiers(NV12), &[0]);
        assert!(p.modifiers(u32::from_le_bytes(*b"YUYV")).is_empty());
    }

    #[test]
    fn modifiers_apply_by_mask_and_sliding_offset() {
        // 70 formats: the second window (offset 64) reaches formats 64..69.
        let mut formats: Vec<u32> = (0..70).collect();
        formats[0] = XR24;
        formats[65] = NV12;
        let p = parse(&blob(&formats, &[(1, 0, 0), (1, 0, X_TILED), (0b10, 64, 0)])).unwrap();
        assert_eq!(p.modifiers(XR24), &[0, X_TILED]);
        assert_eq!(p.modifiers(NV12), &[0]);
        assert!(p.formats[1].1.is_empty(), "format 1 is in no mask");
    }

    #[test]
    fn short_or_inconsistent_blobs_are_errors() {
        assert_eq!(parse(&[0; 10]), Err(InFormatsError::Truncated { len: 10, what: "the header" }));
        let mut b = blob(&[XR24], &[(1, 0, 0)]);
        b[0] = 2;
        assert_eq!(parse(&b), Err(InFormatsError::Version(2)));
        let b = blob(&[XR24], &[(1, 0, 0)]);
        let short = &b[..b.len() - 1];
        assert!(matches!(parse(short), Err(InFormatsError::Truncated { what: "the modifiers", .. })));
        let mut huge = b.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(parse(&huge), Err(InFormatsError::Truncated { what: "the formats", .. })));
        // A mask bit past the list names nothing; no panic.
        let p = parse(&blob(&[XR24], &[(u64::MAX, u32::MAX, 0)])).unwrap();
        assert!(p.formats[0].1.is_empty());
    }
}
