//! Four-character codes (FourCC) as V4L2 and DRM encode them.
//!
//! Both `v4l2_fourcc(a, b, c, d)` (`include/uapi/linux/videodev2.h`) and
//! `fourcc_code(a, b, c, d)` (`include/uapi/drm/drm_fourcc.h`) pack four ASCII
//! bytes little-endian into a `u32`: `a | b << 8 | c << 16 | d << 24`. The same
//! four characters therefore give the same number in both APIs, although they do
//! not always name the same memory layout (see [`super::PixelFormat`]).

use std::fmt;

/// `v4l2_fourcc(a, b, c, d)`: four bytes packed little-endian into a `u32`.
///
/// ```
/// use dmabroker::format::v4l2_fourcc;
/// assert_eq!(v4l2_fourcc(b'N', b'V', b'1', b'2'), 0x3231_564e);
/// ```
#[must_use]
pub const fn v4l2_fourcc(a: u8, b: u8, c: u8, d: u8) -> u32 {
    u32::from_le_bytes([a, b, c, d])
}

/// A four-character code: the `u32` V4L2 (`pixelformat`) and DRM (`drm_format`)
/// use to name a pixel format.
///
/// Its [`Display`](fmt::Display) prints the four characters when they are
/// printable ASCII (`NV12`, `Y10 ` keeps its trailing space) and the hexadecimal
/// value otherwise, so an unknown code from a driver can be logged as is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fourcc(pub u32);

impl Fourcc {
    /// The code of four bytes, first byte in the least significant position.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 4]) -> Self {
        Self(u32::from_le_bytes(bytes))
    }

    /// The four bytes of the code, least significant first (the reading order).
    #[must_use]
    pub const fn to_bytes(self) -> [u8; 4] {
        self.0.to_le_bytes()
    }

    /// The code spelled by `text`, when it is exactly four printable ASCII
    /// characters (spaces included: V4L2 has codes such as `"Y10 "`).
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let bytes: [u8; 4] = text.as_bytes().try_into().ok()?;
        bytes.iter().all(|b| (0x20..=0x7e).contains(b)).then(|| Self::from_bytes(bytes))
    }

    /// Whether all four bytes are printable ASCII, so that the code reads as text.
    #[must_use]
    pub fn is_printable(self) -> bool {
        self.to_bytes().iter().all(|b| (0x20..=0x7e).contains(b))
    }
}

impl From<u32> for Fourcc {
    fn from(code: u32) -> Self {
        Self(code)
    }
}

impl From<Fourcc> for u32 {
    fn from(code: Fourcc) -> Self {
        code.0
    }
}

impl fmt::Display for Fourcc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_printable() {
            // Printable ASCII is valid UTF-8, one char per byte.
            self.to_bytes().iter().try_for_each(|&b| write!(f, "{}", char::from(b)))
        } else {
            write!(f, "{:#010x}", self.0)
        }
    }
}

impl fmt::Debug for Fourcc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_printable() {
            write!(f, "Fourcc('{self}')")
        } else {
            write!(f, "Fourcc({:#010x})", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_little_endian_like_the_kernel_macro() {
        // V4L2_PIX_FMT_YUYV = v4l2_fourcc('Y', 'U', 'Y', 'V') = 0x56595559
        assert_eq!(v4l2_fourcc(b'Y', b'U', b'Y', b'V'), 0x5659_5559);
        assert_eq!(Fourcc::from_bytes(*b"NV12").0, 0x3231_564e);
        assert_eq!(Fourcc(0x3231_564e).to_bytes(), *b"NV12");
    }

    #[test]
    fn displays_text_or_hex() {
        assert_eq!(Fourcc::from_bytes(*b"NM12").to_string(), "NM12");
        assert_eq!(Fourcc::from_bytes(*b"Y10 ").to_string(), "Y10 ");
        assert_eq!(Fourcc(0x8000_0001).to_string(), "0x80000001");
        assert_eq!(format!("{:?}", Fourcc::from_bytes(*b"AR24")), "Fourcc('AR24')");
        assert_eq!(format!("{:?}", Fourcc(0)), "Fourcc(0x00000000)");
    }

    #[test]
    fn parses_exactly_four_printable_bytes() {
        assert_eq!(Fourcc::parse("YU12"), Some(Fourcc::from_bytes(*b"YU12")));
        assert_eq!(Fourcc::parse("YU1"), None);
        assert_eq!(Fourcc::parse("YU123"), None);
        assert_eq!(Fourcc::parse("Y\u{7f}12"), None);
        // Four bytes, but not ASCII.
        assert_eq!(Fourcc::parse("é12"), None);
    }
}
