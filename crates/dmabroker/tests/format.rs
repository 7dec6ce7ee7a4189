//! The format layer through its public API only: what the CLI and the device
//! layer rely on (parsing user input, V4L2/DRM codes, JSON layouts, errors).

use dmabroker::format::{DrmFourcc, Fourcc, Layout, LayoutError, LayoutOptions, ParseFormatError, PixelFormat};

#[test]
fn cli_style_input_to_layout_json() {
    let format: PixelFormat = "nv12m".parse().unwrap();
    let options = LayoutOptions::default().with_stride_align(64).with_size_align(4096);
    let layout = Layout::new(format, 1280, 720, &options).unwrap();
    let json: serde_json::Value = serde_json::to_value(&layout).unwrap();
    assert_eq!(json["format"], "NV12M");
    assert_eq!(json["buffer_sizes"], serde_json::json!([921_600, 462_848]));
    assert_eq!(json["total_size"], 921_600 + 462_848);
    assert_eq!(json["planes"][1]["buffer"], 1);
    assert_eq!(json["planes"][1]["bytesperline"], 1280);
    assert_eq!(json["planes"][1]["lines"], 360);
}

#[test]
fn device_codes_round_trip() {
    for &format in PixelFormat::all() {
        let v4l2 = format.to_v4l2();
        assert_eq!(PixelFormat::from_v4l2(v4l2), Some(format));
        assert_eq!(Fourcc(v4l2).to_string().parse::<PixelFormat>(), Ok(format));
        let drm = format.to_drm().unwrap();
        let canonical = PixelFormat::from_drm(drm).unwrap();
        assert_eq!(canonical.to_drm(), Some(drm));
        assert_eq!(canonical.plane_count(), format.plane_count());
    }
    // A V4L2 capture in XBGR32 is imported into DRM as XRGB8888, same fourcc.
    assert_eq!(PixelFormat::Xbgr32.to_drm(), Some(DrmFourcc::Xrgb8888));
    assert_eq!(PixelFormat::Xbgr32.to_v4l2(), DrmFourcc::Xrgb8888 as u32);
    // RGB24 is R, G, B in memory: DRM calls that BGR888.
    assert_eq!(PixelFormat::Rgb24.to_drm(), Some(DrmFourcc::Bgr888));
}

#[test]
fn errors_say_what_to_fix() {
    let err: ParseFormatError = "H264".parse::<PixelFormat>().unwrap_err();
    assert!(err.to_string().contains("NV12"), "{err}");

    let err = Layout::new(PixelFormat::Yuyv, 0, 480, &LayoutOptions::default()).unwrap_err();
    assert!(matches!(err, LayoutError::EmptyImage { width: 0, height: 480, .. }));
    assert_eq!(err.to_string(), "YUYV 0x480: width and height must both be at least 1");

    let err = Layout::new(PixelFormat::Nv12, 64, 64, &LayoutOptions::default().with_size_align(3000)).unwrap_err();
    assert_eq!(err.to_string(), "size_align must be a power of two, not 3000");

    let err = Layout::new(PixelFormat::Xrgb32, u32::MAX, u32::MAX, &LayoutOptions::default()).unwrap_err();
    assert!(matches!(err, LayoutError::Overflow { .. }), "{err}");
}
