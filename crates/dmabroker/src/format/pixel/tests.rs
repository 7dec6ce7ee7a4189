//! Tests of [`PixelFormat`](super::PixelFormat): codes against the kernel
//! headers, V4L2 <-> DRM by memory order, round trips, parsing, serde.

use super::*;
use crate::format::v4l2_fourcc;
use std::collections::HashSet;

/// The `V4L2_PIX_FMT_*` values from `include/uapi/linux/videodev2.h`,
/// spelled out independently of the table above.
const V4L2_CODES: [(PixelFormat, u32); 28] = [
    (PixelFormat::Rgb24, v4l2_fourcc(b'R', b'G', b'B', b'3')),
    (PixelFormat::Bgr24, v4l2_fourcc(b'B', b'G', b'R', b'3')),
    (PixelFormat::Rgb32, v4l2_fourcc(b'R', b'G', b'B', b'4')),
    (PixelFormat::Bgr32, v4l2_fourcc(b'B', b'G', b'R', b'4')),
    (PixelFormat::Abgr32, v4l2_fourcc(b'A', b'R', b'2', b'4')),
    (PixelFormat::Xbgr32, v4l2_fourcc(b'X', b'R', b'2', b'4')),
    (PixelFormat::Bgra32, v4l2_fourcc(b'R', b'A', b'2', b'4')),
    (PixelFormat::Bgrx32, v4l2_fourcc(b'R', b'X', b'2', b'4')),
    (PixelFormat::Rgba32, v4l2_fourcc(b'A', b'B', b'2', b'4')),
    (PixelFormat::Rgbx32, v4l2_fourcc(b'X', b'B', b'2', b'4')),
    (PixelFormat::Argb32, v4l2_fourcc(b'B', b'A', b'2', b'4')),
    (PixelFormat::Xrgb32, v4l2_fourcc(b'B', b'X', b'2', b'4')),
    (PixelFormat::Yuyv, 0x5659_5559),
    (PixelFormat::Uyvy, v4l2_fourcc(b'U', b'Y', b'V', b'Y')),
    (PixelFormat::Yvyu, v4l2_fourcc(b'Y', b'V', b'Y', b'U')),
    (PixelFormat::Vyuy, v4l2_fourcc(b'V', b'Y', b'U', b'Y')),
    (PixelFormat::Nv12, 0x3231_564e),
    (PixelFormat::Nv21, v4l2_fourcc(b'N', b'V', b'2', b'1')),
    (PixelFormat::Nv16, v4l2_fourcc(b'N', b'V', b'1', b'6')),
    (PixelFormat::Nv61, v4l2_fourcc(b'N', b'V', b'6', b'1')),
    (PixelFormat::Yuv420, v4l2_fourcc(b'Y', b'U', b'1', b'2')),
    (PixelFormat::Yvu420, v4l2_fourcc(b'Y', b'V', b'1', b'2')),
    (PixelFormat::Nv12M, v4l2_fourcc(b'N', b'M', b'1', b'2')),
    (PixelFormat::Nv21M, v4l2_fourcc(b'N', b'M', b'2', b'1')),
    (PixelFormat::Nv16M, v4l2_fourcc(b'N', b'M', b'1', b'6')),
    (PixelFormat::Nv61M, v4l2_fourcc(b'N', b'M', b'6', b'1')),
    (PixelFormat::Yuv420M, v4l2_fourcc(b'Y', b'M', b'1', b'2')),
    (PixelFormat::Yvu420M, v4l2_fourcc(b'Y', b'M', b'2', b'1')),
];

/// Bytes in memory, lowest address first, of the packed RGB formats per
/// V4L2 (`Documentation/userspace-api/media/v4l/pixfmt-rgb.rst`), and of
/// the DRM formats per `drm_fourcc.h` ("[31:0] A:R:G:B little endian").
fn v4l2_memory_order(f: PixelFormat) -> &'static str {
    match f {
        PixelFormat::Rgb24 => "RGB",
        PixelFormat::Bgr24 => "BGR",
        PixelFormat::Rgb32 | PixelFormat::Xrgb32 => "XRGB",
        PixelFormat::Bgr32 | PixelFormat::Xbgr32 => "BGRX",
        PixelFormat::Abgr32 => "BGRA",
        PixelFormat::Bgra32 => "ABGR",
        PixelFormat::Bgrx32 => "XBGR",
        PixelFormat::Rgba32 => "RGBA",
        PixelFormat::Rgbx32 => "RGBX",
        PixelFormat::Argb32 => "ARGB",
        _ => unreachable!("not a packed RGB format"),
    }
}

fn drm_memory_order(code: DrmFourcc) -> String {
    // A DRM name lists components from bit 31 (or 23) down; memory holds
    // the least significant byte first.
    let name = format!("{code:?}");
    let components: String = match code {
        DrmFourcc::Rgb888 => "RGB".into(),
        DrmFourcc::Bgr888 => "BGR".into(),
        DrmFourcc::Argb8888 => "ARGB".into(),
        DrmFourcc::Xrgb8888 => "XRGB".into(),
        DrmFourcc::Abgr8888 => "ABGR".into(),
        DrmFourcc::Xbgr8888 => "XBGR".into(),
        DrmFourcc::Rgba8888 => "RGBA".into(),
        DrmFourcc::Rgbx8888 => "RGBX".into(),
        DrmFourcc::Bgra8888 => "BGRA".into(),
        DrmFourcc::Bgrx8888 => "BGRX".into(),
        _ => unreachable!("not a packed RGB DRM format: {name}"),
    };
    components.chars().rev().collect()
}

#[test]
fn table_is_complete_and_unique() {
    assert_eq!(PixelFormat::all().len(), V4L2_CODES.len());
    let names: HashSet<_> = PixelFormat::all().iter().map(|f| f.name()).collect();
    assert_eq!(names.len(), PixelFormat::all().len());
    let codes: HashSet<_> = PixelFormat::all().iter().map(|f| f.to_v4l2()).collect();
    assert_eq!(codes.len(), PixelFormat::all().len());
}

#[test]
fn v4l2_codes_match_videodev2_h() {
    for (format, code) in V4L2_CODES {
        assert_eq!(format.to_v4l2(), code, "{format}");
        assert_eq!(PixelFormat::from_v4l2(code), Some(format), "{format}");
    }
    assert_eq!(PixelFormat::from_v4l2(v4l2_fourcc(b'M', b'J', b'P', b'G')), None);
    assert_eq!(PixelFormat::from_v4l2(0), None);
}

#[test]
fn rgb_maps_to_drm_by_memory_order() {
    for &format in &PixelFormat::all()[..12] {
        let drm = format.to_drm().expect("every RGB format has a DRM code");
        assert_eq!(drm_memory_order(drm), v4l2_memory_order(format), "{format} -> {drm:?}");
    }
    // The eight formats with alpha or padding share their fourcc with DRM.
    for format in [
        PixelFormat::Abgr32,
        PixelFormat::Xbgr32,
        PixelFormat::Bgra32,
        PixelFormat::Bgrx32,
        PixelFormat::Rgba32,
        PixelFormat::Rgbx32,
        PixelFormat::Argb32,
        PixelFormat::Xrgb32,
    ] {
        assert_eq!(format.to_drm().map(|d| d as u32), Some(format.to_v4l2()), "{format}");
    }
}

#[test]
fn yuv_keeps_its_code_and_m_forms_share_it() {
    for &format in PixelFormat::all() {
        let drm = format.to_drm().expect("every format here has a DRM code");
        if format.plane_count() > 1 || format.subsampling() != (1, 1) {
            let single = format.to_single_buffer();
            assert_eq!(drm as u32, single.to_v4l2(), "{format}");
        }
    }
}

#[test]
fn round_trips_v4l2_enum_drm() {
    for &format in PixelFormat::all() {
        assert_eq!(PixelFormat::from_v4l2(format.to_v4l2()), Some(format));
        let drm = format.to_drm().unwrap();
        let back = PixelFormat::from_drm(drm).unwrap();
        assert_eq!(back.to_drm(), Some(drm), "{format}");
        if format.is_deprecated() || format.is_multi_buffer() {
            assert_ne!(back, format, "{format} should map back to its canonical form");
            assert!(!back.is_deprecated() && !back.is_multi_buffer());
            assert_eq!(back.plane_count(), format.plane_count());
        } else {
            assert_eq!(back, format);
        }
    }
    assert_eq!(PixelFormat::from_drm(DrmFourcc::Xrgb8888), Some(PixelFormat::Xbgr32));
    assert_eq!(PixelFormat::from_drm(DrmFourcc::Bgrx8888), Some(PixelFormat::Xrgb32));
    assert_eq!(PixelFormat::from_drm(DrmFourcc::Nv12), Some(PixelFormat::Nv12));
    assert_eq!(PixelFormat::from_drm(DrmFourcc::Rgb565), None);
}

#[test]
fn single_and_multi_buffer_forms_pair_up() {
    for &format in PixelFormat::all() {
        let single = format.to_single_buffer();
        let multi = format.to_multi_buffer();
        assert!(!single.is_multi_buffer());
        assert_eq!(single.to_multi_buffer(), multi);
        assert_eq!(multi.to_single_buffer(), single);
        assert_eq!(single.plane_count(), multi.plane_count());
        assert_eq!(multi.is_multi_buffer(), multi.plane_count() > 1);
        assert_eq!(multi.buffer_count(), multi.plane_count());
        assert_eq!(single.buffer_count(), 1);
    }
}

#[test]
fn parses_names_aliases_and_codes() {
    let cases = [
        ("NV12", PixelFormat::Nv12),
        ("nv12m", PixelFormat::Nv12M),
        (" YUYV ", PixelFormat::Yuyv),
        ("yuy2", PixelFormat::Yuyv),
        ("RGB24", PixelFormat::Rgb24),
        ("rgb3", PixelFormat::Rgb24),
        ("I420", PixelFormat::Yuv420),
        ("YU12", PixelFormat::Yuv420),
        ("yuv420m", PixelFormat::Yuv420M),
        ("YM12", PixelFormat::Yuv420M),
        ("YV12", PixelFormat::Yvu420),
        ("NM21", PixelFormat::Nv21M),
        ("AR24", PixelFormat::Abgr32),
        ("BA24", PixelFormat::Argb32),
        ("XRGB8888", PixelFormat::Xbgr32),
        ("argb8888", PixelFormat::Abgr32),
        ("RGB888", PixelFormat::Bgr24),
        // DRM-only fourccs: 'RG24' is DRM_FORMAT_RGB888, 'BG24' DRM_FORMAT_BGR888.
        ("RG24", PixelFormat::Bgr24),
        ("BG24", PixelFormat::Rgb24),
        ("BGR4", PixelFormat::Bgr32),
    ];
    for (text, format) in cases {
        assert_eq!(text.parse::<PixelFormat>(), Ok(format), "{text:?}");
    }
    for &format in PixelFormat::all() {
        assert_eq!(format.to_string().parse::<PixelFormat>(), Ok(format));
        assert_eq!(format.v4l2_fourcc().to_string().parse::<PixelFormat>(), Ok(format));
    }
}

#[test]
fn parse_error_lists_valid_names() {
    let err = "NV13".parse::<PixelFormat>().unwrap_err();
    assert_eq!(err.input(), "NV13");
    let message = err.to_string();
    assert!(message.contains("\"NV13\""), "{message}");
    for &format in PixelFormat::all() {
        assert!(message.contains(format.name()), "{message} lacks {format}");
    }
    assert!("".parse::<PixelFormat>().is_err());
    assert!("MJPG".parse::<PixelFormat>().is_err());
}

#[test]
fn serde_uses_the_name() {
    let json = serde_json::to_string(&PixelFormat::Yuv420M).unwrap();
    assert_eq!(json, "\"YUV420M\"");
    assert_eq!(serde_json::from_str::<PixelFormat>("\"i420\"").unwrap(), PixelFormat::Yuv420);
    assert!(serde_json::from_str::<PixelFormat>("\"bogus\"").is_err());
}

#[test]
fn display_pads() {
    assert_eq!(format!("{:<6}|", PixelFormat::Nv12), "NV12  |");
}
