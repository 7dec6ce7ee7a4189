//! Tests of [`Layout`](super::Layout): known sizes, the kernel's and vivid's
//! arithmetic transcribed, alignment, overflow, and invariants over many cases.

use super::*;
use PixelFormat as F;

fn unpadded(format: PixelFormat, width: u32, height: u32) -> Layout {
    Layout::new(format, width, height, &LayoutOptions::default()).unwrap()
}

fn pitches_of(layout: &Layout) -> Vec<u64> {
    layout.planes().iter().map(|p| p.bytesperline).collect()
}

fn offsets_of(layout: &Layout) -> Vec<u64> {
    layout.planes().iter().map(|p| p.offset).collect()
}

#[test]
fn nv12_1080p() {
    let layout = unpadded(F::Nv12, 1920, 1080);
    assert_eq!(layout.total_size(), 3_110_400);
    assert_eq!(layout.buffer_sizes(), [3_110_400]);
    assert_eq!(
        layout.planes(),
        [
            PlaneLayout { buffer: 0, offset: 0, bytesperline: 1920, lines: 1080, size: 2_073_600 },
            PlaneLayout { buffer: 0, offset: 2_073_600, bytesperline: 1920, lines: 540, size: 1_036_800 },
        ]
    );
    assert!(layout.matches_v4l2_implicit_planes());
}

#[test]
fn yuyv_vga() {
    let layout = unpadded(F::Yuyv, 640, 480);
    assert_eq!(layout.total_size(), 614_400);
    assert_eq!(layout.bytesperline(), 1280);
    assert_eq!(layout.planes().len(), 1);
}

#[test]
fn packed_rgb() {
    assert_eq!(unpadded(F::Rgb24, 641, 3).bytesperline(), 1923);
    assert_eq!(unpadded(F::Xbgr32, 641, 3).total_size(), 641 * 4 * 3);
    let aligned = Layout::new(F::Rgb24, 641, 3, &LayoutOptions::default().with_stride_align(64)).unwrap();
    assert_eq!(aligned.bytesperline(), 1984);
    assert_eq!(aligned.total_size(), 1984 * 3);
}

#[test]
fn i420_odd_sizes_round_chroma_up() {
    let layout = unpadded(F::Yuv420, 641, 481);
    assert_eq!(pitches_of(&layout), [641, 321, 321]);
    let lines: Vec<u32> = layout.planes().iter().map(|p| p.lines).collect();
    assert_eq!(lines, [481, 241, 241]);
    assert_eq!(offsets_of(&layout), [0, 308_321, 308_321 + 77_361]);
    // v4l2_fill_pixfmt: 641 * 481 + 2 * (321 * 241)
    assert_eq!(layout.total_size(), 463_043);
    // bytesperline / 2 = 320 != 321: V4L2's single-planar API cannot say this.
    assert!(!layout.matches_v4l2_implicit_planes());

    let tiny = unpadded(F::Yuv420, 1, 1);
    assert_eq!(pitches_of(&tiny), [1, 1, 1]);
    assert_eq!(tiny.total_size(), 3);
}

#[test]
fn nv12_odd_sizes_round_chroma_up() {
    let layout = unpadded(F::Nv12, 641, 481);
    assert_eq!(pitches_of(&layout), [641, 642]);
    assert_eq!(layout.planes()[1].lines, 241);
    assert_eq!(layout.total_size(), 641 * 481 + 642 * 241);
    let nv16 = unpadded(F::Nv16, 3, 3);
    assert_eq!(pitches_of(&nv16), [3, 4]);
    assert_eq!(nv16.planes()[1].lines, 3);
    assert_eq!(nv16.total_size(), 9 + 12);
}

#[test]
fn multi_buffer_formats_put_each_plane_in_its_own_buffer() {
    let layout = unpadded(F::Yuv420M, 1280, 720);
    assert_eq!(layout.buffer_sizes(), [921_600, 230_400, 230_400]);
    assert_eq!(layout.total_size(), 1_382_400);
    for (index, plane) in layout.planes().iter().enumerate() {
        assert_eq!(plane.buffer, index);
        assert_eq!(plane.offset, 0);
    }
    let nv12m = unpadded(F::Nv12M, 1920, 1080);
    assert_eq!(nv12m.buffer_sizes(), [2_073_600, 1_036_800]);
    assert_eq!(nv12m.buffer_count(), 2);
}

#[test]
fn stride_align_keeps_v4l2_derivation_in_single_buffers() {
    let options = LayoutOptions::default().with_stride_align(64);
    let nv12 = Layout::new(F::Nv12, 1918, 1080, &options).unwrap();
    assert_eq!(pitches_of(&nv12), [1920, 1920]);
    assert!(nv12.matches_v4l2_implicit_planes());

    // 1088 is a multiple of 64 but 544 is not: the luma pitch grows to 1152.
    let i420 = Layout::new(F::Yuv420, 1088, 720, &options).unwrap();
    assert_eq!(pitches_of(&i420), [1152, 576, 576]);
    assert!(i420.matches_v4l2_implicit_planes());

    // Separate buffers align each pitch on its own.
    let i420m = Layout::new(F::Yuv420M, 1088, 720, &options).unwrap();
    assert_eq!(pitches_of(&i420m), [1088, 576, 576]);

    // An odd width with alignment: the derived chroma pitch covers it.
    let odd = Layout::new(F::Nv12, 641, 481, &LayoutOptions::default().with_stride_align(2)).unwrap();
    assert_eq!(pitches_of(&odd), [642, 642]);
    assert!(odd.matches_v4l2_implicit_planes());
}

#[test]
fn plane_and_size_align() {
    let options = LayoutOptions::default().with_plane_align(4096).with_size_align(4096);
    let layout = Layout::new(F::Nv12, 100, 101, &options).unwrap();
    assert_eq!(offsets_of(&layout), [0, 12_288]);
    assert_eq!(layout.planes()[1].size, 100 * 51);
    assert_eq!(layout.buffer_sizes(), [20_480]);
    assert!(!layout.matches_v4l2_implicit_planes());

    let m = Layout::new(F::Nv12M, 100, 101, &options).unwrap();
    assert_eq!(offsets_of(&m), [0, 0]);
    assert_eq!(m.buffer_sizes(), [12_288, 8192]);
    assert_eq!(m.total_size(), 20_480);
}

#[test]
fn rejects_empty_images_and_bad_alignments() {
    let options = LayoutOptions::default();
    assert_eq!(
        Layout::new(F::Nv12, 0, 10, &options),
        Err(LayoutError::EmptyImage { format: F::Nv12, width: 0, height: 10 })
    );
    assert!(matches!(Layout::new(F::Nv12, 10, 0, &options), Err(LayoutError::EmptyImage { .. })));
    for (bad, option) in [
        (options.with_stride_align(0), "stride_align"),
        (options.with_plane_align(3), "plane_align"),
        (options.with_size_align(4095), "size_align"),
    ] {
        match Layout::new(F::Nv12, 16, 16, &bad) {
            Err(LayoutError::AlignmentNotPowerOfTwo { option: got, .. }) => {
                assert_eq!(got, option);
            }
            other => panic!("{option}: {other:?}"),
        }
    }
}

#[test]
fn reports_overflow_instead_of_wrapping() {
    let options = LayoutOptions::default();
    let err = Layout::new(F::Xrgb32, u32::MAX, u32::MAX, &options).unwrap_err();
    assert!(matches!(err, LayoutError::Overflow { quantity: "plane size", .. }), "{err}");
    assert!(err.to_string().contains("overflows 64 bits"), "{err}");

    let huge_stride = options.with_stride_align(1 << 63);
    let err = Layout::new(F::Yuv420, 2, 2, &huge_stride).unwrap_err();
    assert!(matches!(err, LayoutError::Overflow { quantity: "bytes per line", .. }), "{err}");

    let err = Layout::new(F::Nv12, 16, 16, &options.with_size_align(1 << 63)).unwrap_err();
    assert!(matches!(err, LayoutError::ExceedsAddressSpace { .. }), "{err}");

    let err = Layout::new(F::Nv12M, 16, 16, &options.with_size_align(1 << 63)).unwrap_err();
    assert!(matches!(err, LayoutError::Overflow { quantity: "total size", .. }), "{err}");

    let err = Layout::new(F::Nv12, 16, 16, &options.with_plane_align(1 << 63).with_size_align(1 << 63));
    assert!(matches!(err, Err(LayoutError::Overflow { quantity: "buffer size", .. })), "{err:?}");
}

#[test]
fn largest_addressable_frame_is_accepted() {
    // 2^34 bytes per line times 2^29 lines is 2^63: one past isize::MAX.
    let options = LayoutOptions::default().with_stride_align(1 << 34);
    let err = Layout::new(F::Xrgb32, u32::MAX, 1 << 29, &options).unwrap_err();
    assert!(matches!(err, LayoutError::ExceedsAddressSpace { size, .. } if size == 1 << 63), "{err}");
    let ok = Layout::new(F::Xrgb32, u32::MAX, (1 << 29) - 1, &options).unwrap();
    assert_eq!(ok.total_size(), (1 << 63) - (1 << 34));
}

/// `v4l2_fill_pixfmt()` / `v4l2_fill_pixfmt_mp()` transcribed from
/// `drivers/media/v4l2-core/v4l2-common.c`, with the `v4l2_format_info`
/// entries (mem_planes, comp_planes, bpp, hdiv, vdiv) typed in
/// independently of the format table. Returns (bytesperline, sizeimage)
/// per memory plane.
fn kernel_fill_pixfmt(format: PixelFormat, width: u32, height: u32) -> Vec<(u64, u64)> {
    let (mem, comp, bpp, hdiv, vdiv): (usize, usize, [u64; 3], u64, u64) = match format {
        F::Rgb24 | F::Bgr24 => (1, 1, [3, 0, 0], 1, 1),
        F::Rgb32
        | F::Bgr32
        | F::Abgr32
        | F::Xbgr32
        | F::Bgra32
        | F::Bgrx32
        | F::Rgba32
        | F::Rgbx32
        | F::Argb32
        | F::Xrgb32 => (1, 1, [4, 0, 0], 1, 1),
        F::Yuyv | F::Uyvy | F::Yvyu | F::Vyuy => (1, 1, [2, 0, 0], 2, 1),
        F::Nv12 | F::Nv21 => (1, 2, [1, 2, 0], 2, 2),
        F::Nv16 | F::Nv61 => (1, 2, [1, 2, 0], 2, 1),
        F::Yuv420 | F::Yvu420 => (1, 3, [1, 1, 1], 2, 2),
        F::Nv12M | F::Nv21M => (2, 2, [1, 2, 0], 2, 2),
        F::Nv16M | F::Nv61M => (2, 2, [1, 2, 0], 2, 1),
        F::Yuv420M | F::Yvu420M => (3, 3, [1, 1, 1], 2, 2),
    };
    let (w, h) = (u64::from(width), u64::from(height));
    let stride = |i: usize| w.div_ceil(if i == 0 { 1 } else { hdiv }) * bpp[i];
    let lines = |i: usize| h.div_ceil(if i == 0 { 1 } else { vdiv });
    if mem == 1 {
        vec![(stride(0), (0..comp).map(|i| stride(i) * lines(i)).sum())]
    } else {
        (0..comp).map(|i| (stride(i), stride(i) * lines(i))).collect()
    }
}

#[test]
fn unpadded_layout_is_the_kernels() {
    for &format in PixelFormat::all() {
        for width in (1..=9).chain([15, 16, 17, 640, 641, 1918, 1920, 4095]) {
            for height in [1, 2, 3, 4, 5, 479, 480, 1080, 2161] {
                let layout = unpadded(format, width, height);
                let kernel = kernel_fill_pixfmt(format, width, height);
                let ours: Vec<(u64, u64)> = if format.is_multi_buffer() {
                    layout.planes().iter().map(|p| p.bytesperline).zip(layout.buffer_sizes().iter().copied()).collect()
                } else {
                    vec![(layout.bytesperline(), layout.buffer_sizes()[0])]
                };
                assert_eq!(ours, kernel, "{format} {width}x{height}");
            }
        }
    }
}

/// vivid's `vivid_try_fmt_vid_cap()` (vivid-vid-cap.c) with its format
/// table (vivid-vid-common.c): bytesperline = width * bit_depth[p] / 8
/// (or the caller's larger value), sizeimage = bytesperline * height /
/// vdownsampling[p], plus, for planes sharing buffer 0, bytesperline *
/// height * (bit_depth[p] / vdownsampling[p]) / (bit_depth[0] /
/// vdownsampling[0]). data_offset is left out: it is 0 except for YUYV,
/// NV16M and NV61M on a multiplanar vivid instance (128 bytes on one plane).
fn vivid_sizeimage(format: PixelFormat, width: u64, height: u64, bpl: &[u64]) -> Vec<u64> {
    let (buffers, bit_depth, vdown): (usize, &[u64], &[u64]) = match format {
        F::Rgb24 | F::Bgr24 => (1, &[24], &[1]),
        F::Yuyv | F::Uyvy | F::Yvyu | F::Vyuy => (1, &[16], &[1]),
        F::Nv12 | F::Nv21 => (1, &[8, 8], &[1, 2]),
        F::Nv16 | F::Nv61 => (1, &[8, 8], &[1, 1]),
        F::Yuv420 | F::Yvu420 => (1, &[8, 4, 4], &[1, 2, 2]),
        F::Nv12M | F::Nv21M => (2, &[8, 8], &[1, 2]),
        F::Nv16M | F::Nv61M => (2, &[8, 8], &[1, 1]),
        F::Yuv420M | F::Yvu420M => (3, &[8, 4, 4], &[1, 2, 2]),
        _ => (1, &[32], &[1]),
    };
    let mut sizes: Vec<u64> = (0..buffers)
        .map(|p| {
            let bytesperline = bpl.get(p).copied().unwrap_or(0).max(width * bit_depth[p] / 8);
            bytesperline * height / vdown[p]
        })
        .collect();
    let bpl0 = bpl.first().copied().unwrap_or(0).max(width * bit_depth[0] / 8);
    for p in buffers..bit_depth.len() {
        sizes[0] += bpl0 * height * (bit_depth[p] / vdown[p]) / (bit_depth[0] / vdown[0]);
    }
    sizes
}

#[test]
fn matches_vivid_at_webcam_sizes() {
    // vivid's webcam input offers only these sizes (webcam_sizes[]).
    let sizes = [(320, 180), (640, 360), (640, 480), (1280, 720), (1920, 1080), (3840, 2160)];
    for &format in PixelFormat::all() {
        for (width, height) in sizes {
            let layout = unpadded(format, width, height);
            let vivid = vivid_sizeimage(format, width.into(), height.into(), &[]);
            assert_eq!(layout.buffer_sizes(), vivid, "{format} {width}x{height}");
            // vivid takes a larger bytesperline from the caller and derives
            // the chroma planes from it, as our aligned layouts expect.
            for align in [64, 256, 4096] {
                let options = LayoutOptions::default().with_stride_align(align);
                let layout = Layout::new(format, width, height, &options).unwrap();
                let bpl: Vec<u64> = if format.is_multi_buffer() {
                    layout.planes().iter().map(|p| p.bytesperline).collect()
                } else {
                    vec![layout.bytesperline()]
                };
                let vivid = vivid_sizeimage(format, width.into(), height.into(), &bpl);
                assert_eq!(layout.buffer_sizes(), vivid, "{format} {width}x{height} align {align}");
            }
        }
    }
}

/// Deterministic pseudo-random cases (xorshift64): invariants that must
/// hold for any format, size and options.
#[test]
fn invariants_hold_for_many_random_cases() {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let format = PixelFormat::all()[(next() % 28) as usize];
        let width = (next() % 5000) as u32 + 1;
        let height = (next() % 3000) as u32 + 1;
        let options = LayoutOptions {
            stride_align: 1 << (next() % 9),
            plane_align: 1 << (next() % 14),
            size_align: 1 << (next() % 22),
        };
        let layout = Layout::new(format, width, height, &options).unwrap();
        let info = format.plane_info();
        assert_eq!(layout.planes().len(), format.plane_count());
        assert_eq!(layout.buffer_count(), format.buffer_count());
        assert_eq!(layout.total_size(), layout.buffer_sizes().iter().sum::<u64>());
        let kernel = kernel_fill_pixfmt(format, width, height);
        for (index, plane) in layout.planes().iter().enumerate() {
            let ctx = format!("{format} {width}x{height} {options:?} plane {index}");
            let (min_pitch, min_lines) = if index == 0 {
                (u64::from(width) * u64::from(info.bpp[0]), height)
            } else {
                (
                    u64::from(width).div_ceil(u64::from(info.hdiv)) * u64::from(info.bpp[1]),
                    height.div_ceil(u32::from(info.vdiv)),
                )
            };
            assert!(plane.bytesperline >= min_pitch, "{ctx}");
            assert_eq!(plane.lines, min_lines, "{ctx}");
            assert_eq!(plane.bytesperline % options.stride_align, 0, "{ctx}");
            assert_eq!(plane.offset % options.plane_align, 0, "{ctx}");
            assert_eq!(plane.size, plane.bytesperline * u64::from(plane.lines), "{ctx}");
            assert!(plane.end() <= layout.buffer_sizes()[plane.buffer], "{ctx}");
            if index > 0 && plane.buffer == layout.planes()[index - 1].buffer {
                assert!(plane.offset >= layout.planes()[index - 1].end(), "{ctx}");
            }
            if format.is_multi_buffer() {
                assert!(plane.size >= kernel[index].1, "{ctx}");
            }
        }
        for size in layout.buffer_sizes() {
            assert_eq!(size % options.size_align, 0);
        }
        if !format.is_multi_buffer() {
            assert!(layout.buffer_sizes()[0] >= kernel[0].1);
        }
        let derivable = options.plane_align == 1 && (options.stride_align > 1 || width & 1 == 0);
        if derivable {
            assert!(layout.matches_v4l2_implicit_planes(), "{format} {width}x{height} {options:?}");
        }
    }
}

#[test]
fn serializes_for_the_cli() {
    let layout = unpadded(F::Nv12, 4, 2);
    let json = serde_json::to_value(&layout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "format": "NV12",
            "width": 4,
            "height": 2,
            "planes": [
                {"buffer": 0, "offset": 0, "bytesperline": 4, "lines": 2, "size": 8},
                {"buffer": 0, "offset": 8, "bytesperline": 4, "lines": 1, "size": 4},
            ],
            "buffer_sizes": [12],
            "total_size": 12,
            "modifier": 0,
        })
    );
    let tiled = serde_json::to_value(layout.with_modifier(0x0100_0000_0000_0001)).unwrap();
    assert_eq!(tiled["modifier"], 0x0100_0000_0000_0001_u64);
    let options: LayoutOptions = serde_json::from_str(r#"{"stride_align": 64}"#).unwrap();
    assert_eq!(options, LayoutOptions::default().with_stride_align(64));
}
