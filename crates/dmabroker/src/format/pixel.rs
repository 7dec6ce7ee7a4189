//! [`PixelFormat`]: the pixel formats dmabroker lays out, and their V4L2 and DRM codes.

use std::fmt;
use std::str::FromStr;

use drm_fourcc::DrmFourcc;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::fourcc::Fourcc;

/// A pixel format: which samples a frame holds and how they lie in memory.
///
/// Names follow V4L2's `V4L2_PIX_FMT_*` macros without the prefix. The memory
/// order in each variant's documentation lists bytes from the lowest address.
///
/// # V4L2 and DRM names of the same memory layout
///
/// The mapping goes by the order of the bytes in memory, never by the names:
///
/// - DRM names list components from the most to the least significant bits of
///   a little-endian word, so a DRM name reads the bytes in memory backwards:
///   `DRM_FORMAT_ARGB8888` is B, G, R, A from the lowest address and
///   `DRM_FORMAT_RGB888` is B, G, R.
/// - V4L2 names of 24-bit formats and of the newer 32-bit formats (`RGBA32`,
///   `RGBX32`, `ARGB32`, `XRGB32`, `BGRA32`, `BGRX32`) read the bytes in memory
///   forwards: `RGB24` is R, G, B and `ARGB32` is A, R, G, B. The older
///   `ABGR32`/`XBGR32` (and the deprecated `BGR32`, `RGB32`) do not: `ABGR32` is
///   B, G, R, A and `XBGR32` B, G, R, X.
///
/// Hence V4L2 `RGB24` is DRM `BGR888` and V4L2 `ABGR32` is DRM `ARGB8888`. For
/// the eight 32-bit formats with alpha or padding V4L2 chose the same fourcc as
/// DRM (`ABGR32` and `ARGB8888` are both `'AR24'`). YUV formats carry the same
/// name and code in both APIs. The `…M` formats (one buffer per plane) have no
/// DRM code of their own: DRM describes planes by (buffer, offset, pitch)
/// triples, so `NV12M` maps to `DRM_FORMAT_NV12` like `NV12` does, and
/// [`PixelFormat::from_drm`] returns the single-buffer form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum PixelFormat {
    /// `V4L2_PIX_FMT_RGB24` (`'RGB3'`): R, G, B; DRM `BGR888`.
    Rgb24,
    /// `V4L2_PIX_FMT_BGR24` (`'BGR3'`): B, G, R; DRM `RGB888`.
    Bgr24,
    /// `V4L2_PIX_FMT_RGB32` (`'RGB4'`, deprecated: alpha or padding is
    /// ambiguous): X/A, R, G, B; DRM `BGRX8888`. Prefer [`Self::Xrgb32`] or
    /// [`Self::Argb32`].
    Rgb32,
    /// `V4L2_PIX_FMT_BGR32` (`'BGR4'`, deprecated: alpha or padding is
    /// ambiguous): B, G, R, X/A; DRM `XRGB8888`. Prefer [`Self::Xbgr32`] or
    /// [`Self::Abgr32`].
    Bgr32,
    /// `V4L2_PIX_FMT_ABGR32` (`'AR24'`): B, G, R, A; DRM `ARGB8888`.
    Abgr32,
    /// `V4L2_PIX_FMT_XBGR32` (`'XR24'`): B, G, R, X; DRM `XRGB8888`.
    Xbgr32,
    /// `V4L2_PIX_FMT_BGRA32` (`'RA24'`): A, B, G, R; DRM `RGBA8888`.
    Bgra32,
    /// `V4L2_PIX_FMT_BGRX32` (`'RX24'`): X, B, G, R; DRM `RGBX8888`.
    Bgrx32,
    /// `V4L2_PIX_FMT_RGBA32` (`'AB24'`): R, G, B, A; DRM `ABGR8888`.
    Rgba32,
    /// `V4L2_PIX_FMT_RGBX32` (`'XB24'`): R, G, B, X; DRM `XBGR8888`.
    Rgbx32,
    /// `V4L2_PIX_FMT_ARGB32` (`'BA24'`): A, R, G, B; DRM `BGRA8888`.
    Argb32,
    /// `V4L2_PIX_FMT_XRGB32` (`'BX24'`): X, R, G, B; DRM `BGRX8888`.
    Xrgb32,
    /// `V4L2_PIX_FMT_YUYV` (`'YUYV'`, also called YUY2): packed 4:2:2, Y0, U, Y1, V.
    Yuyv,
    /// `V4L2_PIX_FMT_UYVY` (`'UYVY'`): packed 4:2:2, U, Y0, V, Y1.
    Uyvy,
    /// `V4L2_PIX_FMT_YVYU` (`'YVYU'`): packed 4:2:2, Y0, V, Y1, U.
    Yvyu,
    /// `V4L2_PIX_FMT_VYUY` (`'VYUY'`): packed 4:2:2, V, Y0, U, Y1.
    Vyuy,
    /// `V4L2_PIX_FMT_NV12` (`'NV12'`): 4:2:0, a Y plane then an interleaved
    /// U, V plane, in one buffer.
    Nv12,
    /// `V4L2_PIX_FMT_NV21` (`'NV21'`): 4:2:0, a Y plane then an interleaved
    /// V, U plane, in one buffer.
    Nv21,
    /// `V4L2_PIX_FMT_NV16` (`'NV16'`): 4:2:2, a Y plane then an interleaved
    /// U, V plane, in one buffer.
    Nv16,
    /// `V4L2_PIX_FMT_NV61` (`'NV61'`): 4:2:2, a Y plane then an interleaved
    /// V, U plane, in one buffer.
    Nv61,
    /// `V4L2_PIX_FMT_YUV420` (`'YU12'`, also called I420): 4:2:0, Y, U and V
    /// planes in one buffer.
    Yuv420,
    /// `V4L2_PIX_FMT_YVU420` (`'YV12'`): 4:2:0, Y, V and U planes in one buffer.
    Yvu420,
    /// `V4L2_PIX_FMT_NV12M` (`'NM12'`): [`Self::Nv12`] with each plane in its own buffer.
    Nv12M,
    /// `V4L2_PIX_FMT_NV21M` (`'NM21'`): [`Self::Nv21`] with each plane in its own buffer.
    Nv21M,
    /// `V4L2_PIX_FMT_NV16M` (`'NM16'`): [`Self::Nv16`] with each plane in its own buffer.
    Nv16M,
    /// `V4L2_PIX_FMT_NV61M` (`'NM61'`): [`Self::Nv61`] with each plane in its own buffer.
    Nv61M,
    /// `V4L2_PIX_FMT_YUV420M` (`'YM12'`): [`Self::Yuv420`] with each plane in its own buffer.
    Yuv420M,
    /// `V4L2_PIX_FMT_YVU420M` (`'YM21'`): [`Self::Yvu420`] with each plane in its own buffer.
    Yvu420M,
}

/// What the layout code needs to know about a format's planes: the fields of
/// the kernel's `struct v4l2_format_info` (`drivers/media/v4l2-core/v4l2-common.c`)
/// for the formats here, none of which uses `bpp_div` or tiling blocks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlaneInfo {
    /// Number of planes (`comp_planes`).
    pub(crate) planes: u8,
    /// Whether each plane has its own buffer (`mem_planes == comp_planes > 1`).
    pub(crate) multi_buffer: bool,
    /// Bytes per sample group of each plane: per pixel for plane 0, per
    /// `hdiv` pixels for the chroma planes (`bpp`).
    pub(crate) bpp: [u8; 3],
    /// Horizontal subsampling of the chroma planes (`hdiv`).
    pub(crate) hdiv: u8,
    /// Vertical subsampling of the chroma planes (`vdiv`).
    pub(crate) vdiv: u8,
}

struct Info {
    name: &'static str,
    v4l2: [u8; 4],
    drm: Option<DrmFourcc>,
    /// Other names accepted by [`PixelFormat::from_str`] (common names and the
    /// DRM name of the same memory layout).
    aliases: &'static [&'static str],
    deprecated: bool,
    planes: PlaneInfo,
}

const PACKED3: PlaneInfo = packed(3);
const PACKED4: PlaneInfo = packed(4);
const PACKED_422: PlaneInfo = PlaneInfo { planes: 1, multi_buffer: false, bpp: [2, 0, 0], hdiv: 2, vdiv: 1 };
const NV_420: PlaneInfo = semi_planar(2, false);
const NV_422: PlaneInfo = semi_planar(1, false);
const NV_420_M: PlaneInfo = semi_planar(2, true);
const NV_422_M: PlaneInfo = semi_planar(1, true);
const PLANAR_420: PlaneInfo = planar_420(false);
const PLANAR_420_M: PlaneInfo = planar_420(true);

const fn packed(bytes: u8) -> PlaneInfo {
    PlaneInfo { planes: 1, multi_buffer: false, bpp: [bytes, 0, 0], hdiv: 1, vdiv: 1 }
}

const fn semi_planar(vdiv: u8, multi_buffer: bool) -> PlaneInfo {
    PlaneInfo { planes: 2, multi_buffer, bpp: [1, 2, 0], hdiv: 2, vdiv }
}

const fn planar_420(multi_buffer: bool) -> PlaneInfo {
    PlaneInfo { planes: 3, multi_buffer, bpp: [1, 1, 1], hdiv: 2, vdiv: 2 }
}

impl PixelFormat {
    /// Every format, in a stable order (single-buffer forms before their `…M`
    /// forms, non-deprecated before deprecated of the same DRM code).
    const ALL: [PixelFormat; 28] = [
        Self::Rgb24,
        Self::Bgr24,
        Self::Abgr32,
        Self::Xbgr32,
        Self::Bgra32,
        Self::Bgrx32,
        Self::Rgba32,
        Self::Rgbx32,
        Self::Argb32,
        Self::Xrgb32,
        Self::Rgb32,
        Self::Bgr32,
        Self::Yuyv,
        Self::Uyvy,
        Self::Yvyu,
        Self::Vyuy,
        Self::Nv12,
        Self::Nv21,
        Self::Nv16,
        Self::Nv61,
        Self::Yuv420,
        Self::Yvu420,
        Self::Nv12M,
        Self::Nv21M,
        Self::Nv16M,
        Self::Nv61M,
        Self::Yuv420M,
        Self::Yvu420M,
    ];

    /// Every supported format, in a stable order.
    #[must_use]
    pub fn all() -> &'static [PixelFormat] {
        &Self::ALL
    }

    fn info(self) -> Info {
        use DrmFourcc as D;
        let rgb = |name, v4l2: &[u8; 4], drm, aliases| Info {
            name,
            v4l2: *v4l2,
            drm: Some(drm),
            aliases,
            deprecated: false,
            planes: PACKED4,
        };
        let yuv = |name, v4l2: &[u8; 4], drm, aliases, planes| Info {
            name,
            v4l2: *v4l2,
            drm: Some(drm),
            aliases,
            deprecated: false,
            planes,
        };
        match self {
            Self::Rgb24 => Info { planes: PACKED3, ..rgb("RGB24", b"RGB3", D::Bgr888, &["BGR888"]) },
            Self::Bgr24 => Info { planes: PACKED3, ..rgb("BGR24", b"BGR3", D::Rgb888, &["RGB888"]) },
            Self::Rgb32 => Info { deprecated: true, ..rgb("RGB32", b"RGB4", D::Bgrx8888, &[]) },
            Self::Bgr32 => Info { deprecated: true, ..rgb("BGR32", b"BGR4", D::Xrgb8888, &[]) },
            Self::Abgr32 => rgb("ABGR32", b"AR24", D::Argb8888, &["ARGB8888"]),
            Self::Xbgr32 => rgb("XBGR32", b"XR24", D::Xrgb8888, &["XRGB8888"]),
            Self::Bgra32 => rgb("BGRA32", b"RA24", D::Rgba8888, &["RGBA8888"]),
            Self::Bgrx32 => rgb("BGRX32", b"RX24", D::Rgbx8888, &["RGBX8888"]),
            Self::Rgba32 => rgb("RGBA32", b"AB24", D::Abgr8888, &["ABGR8888"]),
            Self::Rgbx32 => rgb("RGBX32", b"XB24", D::Xbgr8888, &["XBGR8888"]),
            Self::Argb32 => rgb("ARGB32", b"BA24", D::Bgra8888, &["BGRA8888"]),
            Self::Xrgb32 => rgb("XRGB32", b"BX24", D::Bgrx8888, &["BGRX8888"]),
            Self::Yuyv => yuv("YUYV", b"YUYV", D::Yuyv, &["YUY2"], PACKED_422),
            Self::Uyvy => yuv("UYVY", b"UYVY", D::Uyvy, &[], PACKED_422),
            Self::Yvyu => yuv("YVYU", b"YVYU", D::Yvyu, &[], PACKED_422),
            Self::Vyuy => yuv("VYUY", b"VYUY", D::Vyuy, &[], PACKED_422),
            Self::Nv12 => yuv("NV12", b"NV12", D::Nv12, &[], NV_420),
            Self::Nv21 => yuv("NV21", b"NV21", D::Nv21, &[], NV_420),
            Self::Nv16 => yuv("NV16", b"NV16", D::Nv16, &[], NV_422),
            Self::Nv61 => yuv("NV61", b"NV61", D::Nv61, &[], NV_422),
            Self::Yuv420 => yuv("YUV420", b"YU12", D::Yuv420, &["I420"], PLANAR_420),
            Self::Yvu420 => yuv("YVU420", b"YV12", D::Yvu420, &[], PLANAR_420),
            Self::Nv12M => yuv("NV12M", b"NM12", D::Nv12, &[], NV_420_M),
            Self::Nv21M => yuv("NV21M", b"NM21", D::Nv21, &[], NV_420_M),
            Self::Nv16M => yuv("NV16M", b"NM16", D::Nv16, &[], NV_422_M),
            Self::Nv61M => yuv("NV61M", b"NM61", D::Nv61, &[], NV_422_M),
            Self::Yuv420M => yuv("YUV420M", b"YM12", D::Yuv420, &[], PLANAR_420_M),
            Self::Yvu420M => yuv("YVU420M", b"YM21", D::Yvu420, &[], PLANAR_420_M),
        }
    }

    pub(crate) fn plane_info(self) -> PlaneInfo {
        self.info().planes
    }

    /// The canonical name: the `V4L2_PIX_FMT_*` macro without its prefix
    /// (`"NV12"`, `"YUV420M"`, `"XBGR32"`). [`Display`](fmt::Display) prints it
    /// and [`FromStr`] accepts it.
    #[must_use]
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The V4L2 `pixelformat` code, `v4l2_fourcc(a, b, c, d)`.
    #[must_use]
    pub fn to_v4l2(self) -> u32 {
        self.v4l2_fourcc().0
    }

    /// The V4L2 code as a [`Fourcc`], which prints as its four characters.
    #[must_use]
    pub fn v4l2_fourcc(self) -> Fourcc {
        Fourcc::from_bytes(self.info().v4l2)
    }

    /// The format whose V4L2 `pixelformat` code is `code`, if dmabroker knows it.
    #[must_use]
    pub fn from_v4l2(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.to_v4l2() == code)
    }

    /// The DRM format of the same memory layout (see
    /// [above](Self#v4l2-and-drm-names-of-the-same-memory-layout)); the `…M` forms give the code of their
    /// single-buffer form. `None` for a format DRM has no code for (none of
    /// today's formats).
    #[must_use]
    pub fn to_drm(self) -> Option<DrmFourcc> {
        self.info().drm
    }

    /// The format of DRM code `code`, if dmabroker knows it: the single-buffer,
    /// non-deprecated form (`DRM_FORMAT_NV12` gives [`Self::Nv12`], not
    /// [`Self::Nv12M`]; `DRM_FORMAT_XRGB8888` gives [`Self::Xbgr32`], not
    /// [`Self::Bgr32`]). Use [`Self::to_multi_buffer`] for one buffer per plane.
    #[must_use]
    pub fn from_drm(code: DrmFourcc) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.to_drm() == Some(code) && !f.is_deprecated() && !f.is_multi_buffer())
    }

    /// Number of planes: 1 for packed formats, 2 for `NV…`, 3 for `YUV420`/`YVU420`.
    #[must_use]
    pub fn plane_count(self) -> usize {
        usize::from(self.plane_info().planes)
    }

    /// Number of buffers (V4L2 memory planes) a frame occupies: the plane count
    /// for the `…M` forms, 1 for the others.
    #[must_use]
    pub fn buffer_count(self) -> usize {
        if self.is_multi_buffer() {
            self.plane_count()
        } else {
            1
        }
    }

    /// Whether each plane lives in its own buffer (the `…M` forms, which V4L2
    /// offers only through its multi-planar API).
    #[must_use]
    pub fn is_multi_buffer(self) -> bool {
        self.plane_info().multi_buffer
    }

    /// Whether V4L2 marks the format deprecated (`RGB32`, `BGR32`: the fourth
    /// byte may be alpha or padding, depending on the driver).
    #[must_use]
    pub fn is_deprecated(self) -> bool {
        self.info().deprecated
    }

    /// Chroma subsampling as (horizontal, vertical) divisors: (1, 1) for RGB,
    /// (2, 1) for 4:2:2, (2, 2) for 4:2:0.
    #[must_use]
    pub fn subsampling(self) -> (u32, u32) {
        let planes = self.plane_info();
        (u32::from(planes.hdiv), u32::from(planes.vdiv))
    }

    /// The form with every plane in one buffer: `NV12M` gives `NV12`; any other
    /// format is returned unchanged.
    #[must_use]
    pub fn to_single_buffer(self) -> Self {
        match self {
            Self::Nv12M => Self::Nv12,
            Self::Nv21M => Self::Nv21,
            Self::Nv16M => Self::Nv16,
            Self::Nv61M => Self::Nv61,
            Self::Yuv420M => Self::Yuv420,
            Self::Yvu420M => Self::Yvu420,
            other => other,
        }
    }

    /// The form with each plane in its own buffer: `NV12` gives `NV12M`; a
    /// format with a single plane (or already in `…M` form) is returned unchanged.
    #[must_use]
    pub fn to_multi_buffer(self) -> Self {
        match self {
            Self::Nv12 => Self::Nv12M,
            Self::Nv21 => Self::Nv21M,
            Self::Nv16 => Self::Nv16M,
            Self::Nv61 => Self::Nv61M,
            Self::Yuv420 => Self::Yuv420M,
            Self::Yvu420 => Self::Yvu420M,
            other => other,
        }
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// The text given to [`PixelFormat::from_str`] names no known format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown pixel format {input:?}: expected one of {names}, \
     a common name (I420, YUY2), a DRM name (XRGB8888) \
     or a four-character V4L2 or DRM code (NM12, XR24)",
    names = valid_names()
)]
pub struct ParseFormatError {
    input: String,
}

impl ParseFormatError {
    /// The text that was not recognised.
    #[must_use]
    pub fn input(&self) -> &str {
        &self.input
    }

    /// The canonical names [`PixelFormat::from_str`] accepts (it also accepts
    /// aliases and fourcc codes).
    pub fn valid_names() -> impl Iterator<Item = &'static str> {
        PixelFormat::ALL.into_iter().map(PixelFormat::name)
    }
}

fn valid_names() -> String {
    ParseFormatError::valid_names().collect::<Vec<_>>().join(", ")
}

impl FromStr for PixelFormat {
    type Err = ParseFormatError;

    /// Parses, in this order and ignoring case and surrounding blanks:
    /// a canonical name (`"NV12"`, `"nv12m"`, `"RGB24"`), an alias (`"I420"`,
    /// `"YUY2"`, DRM names such as `"XRGB8888"`, which name the same memory
    /// layout as V4L2 `XBGR32`), a V4L2 fourcc (`"YU12"`, `"NM12"`), then a DRM
    /// fourcc (`"XR24"`, `"RG24"`).
    ///
    /// # Errors
    ///
    /// [`ParseFormatError`] when nothing matches; its message lists the valid names.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let by_name = Self::ALL.into_iter().find(|f| {
            let info = f.info();
            info.name.eq_ignore_ascii_case(text) || info.aliases.iter().any(|a| a.eq_ignore_ascii_case(text))
        });
        let by_code = || {
            // All the V4L2 and DRM codes here are upper case.
            let code = Fourcc::parse(&text.to_ascii_uppercase())?;
            Self::from_v4l2(code.0).or_else(|| DrmFourcc::try_from(code.0).ok().and_then(Self::from_drm))
        };
        by_name.or_else(by_code).ok_or_else(|| ParseFormatError { input: text.to_owned() })
    }
}

impl Serialize for PixelFormat {
    /// Serialized as its canonical [`name`](PixelFormat::name).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for PixelFormat {
    /// Deserialized from any text [`FromStr`] accepts.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
