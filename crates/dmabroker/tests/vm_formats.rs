//! dmabroker's [`Layout`] against what a real V4L2 driver answers to
//! `VIDIOC_S_FMT`: every format vivid offers that dmabroker knows, at common
//! and odd sizes, on vivid's single-planar (`/dev/video0`) and multi-planar
//! (`/dev/video1`) capture nodes; then the same with dmabroker's padded
//! pitches passed in, which vivid must keep.
//!
//! vivid's webcam input (input 0) only offers six fixed sizes, so the nodes
//! are switched to the HDMI input, whose scaler takes any size from 16x16
//! up; the original input is restored afterwards.
//!
//! # How vivid computes a format, and where it differs from dmabroker
//!
//! vivid (`vivid_try_fmt_vid_cap()` in
//! `drivers/media/test-drivers/vivid/vivid-vid-cap.c`) describes each format
//! by a bit depth and a vertical downsampling per plane (NV12: 8 and 8 bits,
//! 1 and 2; YUV420: 8, 4, 4 bits, 1, 2, 2; YUYV: 16 bits) and computes, for
//! each memory plane `p`,
//!
//! - `bytesperline = max(asked, width * bit_depth[p] / 8)`,
//! - `sizeimage = bytesperline * height / vdownsampling[p] + data_offset[p]`,
//!   plus, for a single-buffer format with several planes, each further
//!   plane's share of plane 0: `bytesperline * height * (bit_depth[q] /
//!   vdownsampling[q]) / bit_depth[0]`,
//!
//! all in integer arithmetic that rounds **down**. It keeps an odd width,
//! but 6.12's vivid rounds an odd height of a 4:2:0 format down to even
//! (641x481 NV12 is answered as 641x480; 7.x's keeps it, see `vivid_size`). dmabroker (like the kernel's `v4l2_fill_pixfmt()`)
//! rounds a subsampled dimension **up**: the chroma of NV12 at 641 pixels is
//! 321 U/V pairs, a 642-byte line. So, comparing at the size vivid answered:
//!
//! - for packed formats (one plane), and for every format whose width and
//!   height are multiples of its chroma subsampling, vivid's pitches and
//!   sizes equal dmabroker's exactly; so do they whenever the pitches are
//!   dmabroker's padded ones (`stride_align` 256), which vivid keeps;
//! - for an odd width of a subsampled format, dmabroker's pitches and sizes
//!   are at least vivid's, never less: a buffer dmabroker sizes is always
//!   large enough for vivid. The layouts are not interchangeable, though:
//!   vivid derives the chroma pitch of a single-buffer NV12 frame from the
//!   luma pitch (641), dmabroker uses 642, which the single-planar API cannot
//!   express; [`Layout::matches_v4l2_implicit_planes`] says so (false), and
//!   any `stride_align` of 2 or more makes the layouts agree again.
//!
//! vivid also adds a 128-byte `data_offset` in front of NV16M's plane 0 and
//! NV61M's plane 1 on a multi-planar node (`PLANE0_DATA_OFFSET` in
//! `vivid-core.h`, to exercise applications' handling of it; the 6.12 vivid
//! no longer does so for YUYV), and includes it in that plane's
//! `sizeimage`. dmabroker's layouts have no data offset, so the comparisons
//! subtract it.

mod vm_common;

use dmabroker::device::v4l2::{BufType, Format, V4l2Device};
use dmabroker::format::{Layout, LayoutOptions, PixelFormat};
use std::collections::BTreeSet;
use vm_common::vivid;

/// Sizes to try: common ones, then odd ones (odd after halving, odd itself).
const SIZES: [(u32, u32); 7] =
    [(640, 480), (1280, 720), (1920, 1080), (3840, 2160), (642, 482), (641, 481), (319, 239)];

/// The pitch alignment of the padded check.
const STRIDE_ALIGN: u64 = 256;

/// vivid's `PLANE0_DATA_OFFSET`.
const DATA_OFFSET: u32 = 128;

/// vivid's `MAX_ZOOM * MAX_WIDTH`: the widest line its `bytesperline` may span.
const MAX_LINE_PIXELS: u64 = 4 * 4096;

/// Switches a vivid node to its HDMI input and back to the original input
/// when dropped (also when a test panics), so that later tests and test
/// binaries find vivid as they expect it.
struct HdmiInput<'d> {
    dev: &'d V4l2Device,
    original: u32,
}

impl<'d> HdmiInput<'d> {
    fn select(dev: &'d V4l2Device) -> Self {
        let inputs = dev.inputs().expect("VIDIOC_ENUMINPUT");
        let original = dev.input().expect("VIDIOC_G_INPUT");
        assert!(inputs.iter().any(|i| i.index == original), "G_INPUT {original} is not among {inputs:?}");
        let hdmi = inputs
            .iter()
            .find(|i| i.name.starts_with("HDMI"))
            .unwrap_or_else(|| panic!("vivid lists no HDMI input: {inputs:?}"));
        assert!(!hdmi.tuner, "{hdmi:?}");
        dev.set_input(hdmi.index).expect("VIDIOC_S_INPUT");
        assert_eq!(dev.input().expect("VIDIOC_G_INPUT"), hdmi.index);
        assert!(dev.set_input(inputs.len() as u32).is_err(), "S_INPUT past the last input must fail");
        Self { dev, original }
    }
}

impl Drop for HdmiInput<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.dev.set_input(self.original) {
            eprintln!("could not restore vivid input {}: {e}", self.original);
        }
    }
}

/// vivid's description of a format (`struct vivid_fmt`), from what
/// dmabroker knows about it.
struct VividFmt {
    bit_depth: [u64; 3],
    vdownsampling: [u64; 3],
    planes: usize,
    buffers: usize,
    data_offset: [u32; 3],
}

fn vivid_fmt(format: PixelFormat, multiplanar_node: bool) -> VividFmt {
    let (_, vdiv) = format.subsampling();
    let vdiv = u64::from(vdiv);
    let (bit_depth, vdownsampling) = match format.plane_count() {
        // Packed: bytes per pixel from a one-pixel-wide layout (YUYV: 2).
        1 => {
            let bpp = Layout::new(format, 1, 1, &LayoutOptions::default()).unwrap().bytesperline();
            ([bpp * 8, 0, 0], [1, 0, 0])
        }
        // Y, then interleaved chroma: as many bytes per line as Y.
        2 => ([8, 8, 0], [1, vdiv, 0]),
        // Y, U, V: each chroma line half as long as Y's.
        _ => ([8, 4, 4], [1, vdiv, vdiv]),
    };
    let data_offset = match (multiplanar_node, format) {
        (true, PixelFormat::Nv16M) => [DATA_OFFSET, 0, 0],
        (true, PixelFormat::Nv61M) => [0, DATA_OFFSET, 0],
        _ => [0; 3],
    };
    VividFmt { bit_depth, vdownsampling, planes: format.plane_count(), buffers: format.buffer_count(), data_offset }
}

/// What vivid answers for `format` at `width` x `height` when asked for
/// pitches `asked` (0: its minimum): `(bytesperline, sizeimage)` per memory
/// plane, as `vivid_try_fmt_vid_cap()` computes them.
fn vivid_answer(
    format: PixelFormat,
    multiplanar_node: bool,
    width: u32,
    height: u32,
    asked: &[u32],
) -> Vec<(u32, u32)> {
    let f = vivid_fmt(format, multiplanar_node);
    let (w, h) = (u64::from(width), u64::from(height));
    let mut out: Vec<(u64, u64)> = (0..f.buffers)
        .map(|p| {
            let min = w * f.bit_depth[p] / 8;
            let max = MAX_LINE_PIXELS * f.bit_depth[p] / 8;
            let bpl = u64::from(asked.get(p).copied().unwrap_or(0)).clamp(min, max);
            let size = bpl * h / f.vdownsampling[p] + u64::from(f.data_offset[p]);
            (bpl, size)
        })
        .collect();
    for q in f.buffers..f.planes {
        out[0].1 += out[0].0 * h * (f.bit_depth[q] / f.vdownsampling[q]) / (f.bit_depth[0] / f.vdownsampling[0]);
    }
    out.into_iter().map(|(b, s)| (u32::try_from(b).unwrap(), u32::try_from(s).unwrap())).collect()
}

/// Whether dmabroker's layout and vivid's answer must agree exactly: one
/// plane, or a size that is a multiple of the chroma subsampling (with
/// `pitch_given`, the pitches come from dmabroker and only the height's
/// rounding can differ).
fn exact(format: PixelFormat, width: u32, height: u32, pitch_given: bool) -> bool {
    let (hdiv, vdiv) = format.subsampling();
    format.plane_count() == 1 || ((pitch_given || width % hdiv == 0) && height % vdiv == 0)
}

/// The pitches of each memory plane of `layout` (V4L2's per-buffer
/// `bytesperline`: plane 0's for a single-buffer format).
fn memory_plane_pitches(layout: &Layout) -> Vec<u32> {
    let mut pitches = Vec::new();
    for buffer in 0..layout.buffer_count() {
        let plane = layout.planes().iter().find(|p| p.buffer == buffer).expect("every buffer holds a plane");
        pitches.push(u32::try_from(plane.bytesperline).unwrap());
    }
    pitches
}

/// `ensure!(failures, cond, "why {}", x)`: record a failure and go on, so
/// that one run reports every mismatch, not only the first.
macro_rules! ensure {
    ($fails:expr, $cond:expr, $($why:tt)+) => {
        if !$cond {
            $fails.push(format!($($why)+));
        }
    };
}

/// The size vivid answers: the width asked, and on 6.12 the height rounded
/// down to a multiple of the vertical chroma subsampling (6.12's vivid keeps
/// odd widths but not odd heights of 4:2:0 formats); the 7.x vivid of the
/// VM's kernel matrix keeps odd heights too (641x481 NV12 stays 641x481).
/// The change landed between 6.12 and 7.2 (not bisected: neither end of the
/// matrix is in between), taken here as 7.0.
fn vivid_size(format: PixelFormat, width: u32, height: u32) -> (u32, u32) {
    let (_, vdiv) = format.subsampling();
    if vm_common::kernel_version().is_some_and(|v| v >= (7, 0)) {
        (width, height)
    } else {
        (width, height - height % vdiv)
    }
}

/// One S_FMT and its comparison. Records mismatches in `fails`; returns a
/// line for the summary when the layouts legitimately differ (odd sizes).
fn check(
    dev: &V4l2Device,
    bt: BufType,
    format: PixelFormat,
    (width, height): (u32, u32),
    padded: bool,
    fails: &mut Vec<String>,
) -> Option<String> {
    let mp = bt.is_multiplanar();
    let options =
        if padded { LayoutOptions::default().with_stride_align(STRIDE_ALIGN) } else { LayoutOptions::default() };
    // The pitches to ask for: dmabroker's padded ones for the size vivid
    // will answer.
    let (aw, ah) = vivid_size(format, width, height);
    let asked = if padded { memory_plane_pitches(&Layout::new(format, aw, ah, &options).unwrap()) } else { Vec::new() };
    let what = format!(
        "{} {format} {width}x{height}{}",
        dev.path().display(),
        if padded { " (stride_align 256)" } else { "" }
    );
    let got: Format = match dev.set_format_with_pitches(bt, width, height, format.to_v4l2(), &asked) {
        Ok(got) => got,
        Err(e) => {
            fails.push(format!("{what}: S_FMT: {e}"));
            return None;
        }
    };
    let n = fails.len();
    ensure!(fails, got.pixelformat == format.to_v4l2(), "{what}: format changed: {got:?}");
    ensure!(fails, got.field == 1, "{what}: not progressive (V4L2_FIELD_NONE): {got:?}");
    ensure!(
        fails,
        (got.width, got.height) == (aw, ah),
        "{what}: vivid answered {}x{}, expected {aw}x{ah}: {got:?}",
        got.width,
        got.height
    );
    if fails.len() > n {
        return None;
    }
    // dmabroker's layout of the size vivid answered.
    let ours = Layout::new(format, got.width, got.height, &options).expect("Layout::new");
    if got.planes.len() != ours.buffer_count() {
        fails.push(format!("{what}: memory planes: vivid {got:?}, dmabroker {ours:?}"));
        return None;
    }

    // vivid's answer is exactly its documented arithmetic...
    let model = vivid_answer(format, mp, got.width, got.height, &asked);
    let answered: Vec<(u32, u32)> = got.planes.iter().map(|p| (p.bytesperline, p.sizeimage)).collect();
    ensure!(
        fails,
        answered == model,
        "{what}: vivid's (bytesperline, sizeimage) per plane {answered:?}, model {model:?}"
    );

    // ...and relates to dmabroker's layout as the module docs say.
    let offsets = vivid_fmt(format, mp).data_offset;
    let pitches = memory_plane_pitches(&ours);
    let exact = exact(format, got.width, got.height, padded);
    let mut differs = Vec::new();
    for (p, plane) in got.planes.iter().enumerate() {
        let vivid_size = u64::from(plane.sizeimage.saturating_sub(offsets[p]));
        let our_size = ours.buffer_sizes()[p];
        let vivid_pitch = plane.bytesperline;
        if padded {
            ensure!(
                fails,
                vivid_pitch == asked[p],
                "{what}: plane {p}: vivid did not keep dmabroker's pitch {}: {got:?}",
                asked[p]
            );
        }
        if exact {
            ensure!(
                fails,
                (vivid_pitch, vivid_size) == (pitches[p], our_size),
                "{what}: plane {p}: vivid pitch {vivid_pitch} size {vivid_size} \
                 (less data_offset {}), dmabroker {} / {our_size}",
                offsets[p],
                pitches[p]
            );
        } else {
            // Odd size of a subsampled format: dmabroker rounds up.
            ensure!(
                fails,
                pitches[p] >= vivid_pitch && our_size >= vivid_size,
                "{what}: plane {p}: dmabroker's pitch {} / size {our_size} below vivid's \
                 {vivid_pitch} / {vivid_size}",
                pitches[p]
            );
            if (pitches[p], our_size) != (vivid_pitch, vivid_size) {
                differs
                    .push(format!("plane {p}: pitch {} vs {vivid_pitch}, size {our_size} vs {vivid_size}", pitches[p]));
            }
        }
    }
    // The single-planar API carries only the luma pitch; dmabroker's chroma
    // pitch is the one drivers derive from it unless the width is odd and
    // unpadded.
    if ours.buffer_count() == 1 && format.plane_count() > 1 {
        let (hdiv, _) = format.subsampling();
        ensure!(
            fails,
            ours.matches_v4l2_implicit_planes() == (padded || got.width % hdiv == 0),
            "{what}: matches_v4l2_implicit_planes: {ours:?}"
        );
    }
    (!differs.is_empty())
        .then(|| format!("{what} (answered {}x{}): dmabroker larger: {}", got.width, got.height, differs.join("; ")))
}

/// Every known format of one vivid node at every size, unpadded and padded.
fn formats_match(test: &str, multiplanar: bool, must_have: &[PixelFormat]) {
    let (dev, bt) = require!(test, vivid(multiplanar), "vivid");
    let _input = HdmiInput::select(&dev);

    let offered = dev.formats(bt).expect("VIDIOC_ENUM_FMT");
    let codes: BTreeSet<u32> = offered.iter().map(|f| f.pixelformat).collect();
    let known: Vec<PixelFormat> = PixelFormat::all().iter().copied().filter(|f| codes.contains(&f.to_v4l2())).collect();
    let unknown: Vec<String> = offered
        .iter()
        .filter(|f| PixelFormat::from_v4l2(f.pixelformat).is_none())
        .map(|f| dmabroker::format::Fourcc(f.pixelformat).to_string())
        .collect();
    for f in must_have {
        assert!(known.contains(f), "{test}: vivid does not offer {f}: {offered:?}");
    }
    if !multiplanar {
        assert!(
            known.iter().all(|f| !f.is_multi_buffer()),
            "a single-planar node cannot offer a one-buffer-per-plane format: {known:?}"
        );
    }

    let mut differences = Vec::new();
    let mut fails = Vec::new();
    let mut checks = 0;
    for &format in &known {
        for &size in &SIZES {
            for padded in [false, true] {
                checks += 1;
                if let Some(d) = check(&dev, bt, format, size, padded, &mut fails) {
                    differences.push(d);
                }
            }
        }
    }
    assert!(fails.is_empty(), "{test}: {} of {checks} checks failed:\n  {}", fails.len(), fails.join("\n  "));
    // Only odd widths may differ, and the listed odd widths of subsampled
    // formats must (else the test would not exercise the rounding).
    assert!(known.iter().any(|f| f.plane_count() > 1) != differences.is_empty(), "{differences:?}");
    eprintln!(
        "{test}: {} formats ({}) x {} sizes x 2 = {checks} S_FMT checks; vivid formats \
         dmabroker does not know: {}; {} legitimate differences (odd sizes, vivid rounds down):",
        known.len(),
        known.iter().map(|f| f.name()).collect::<Vec<_>>().join(" "),
        SIZES.len(),
        unknown.join(" "),
        differences.len()
    );
    for d in &differences {
        eprintln!("  {d}");
    }
}

#[test]
fn single_planar_formats_match_dmabroker_layouts() {
    use PixelFormat as F;
    formats_match(
        "single_planar_formats_match_dmabroker_layouts",
        false,
        &[
            F::Yuyv,
            F::Uyvy,
            F::Nv12,
            F::Nv21,
            F::Nv16,
            F::Nv61,
            F::Yuv420,
            F::Yvu420,
            F::Rgb24,
            F::Bgr24,
            F::Xbgr32,
            F::Argb32,
        ],
    );
}

#[test]
fn multi_planar_formats_match_dmabroker_layouts() {
    use PixelFormat as F;
    formats_match(
        "multi_planar_formats_match_dmabroker_layouts",
        true,
        &[F::Yuyv, F::Nv12, F::Yuv420, F::Nv12M, F::Nv21M, F::Nv16M, F::Nv61M, F::Yuv420M, F::Yvu420M],
    );
}

/// The vivid model above is right about the webcam input too, where only
/// six sizes exist: asking 641x481 gets the nearest one, and the layout of
/// the answered size matches.
#[test]
fn webcam_input_rounds_to_its_sizes() {
    let test = "webcam_input_rounds_to_its_sizes";
    let (dev, bt) = require!(test, vivid(false), "vivid");
    let inputs = dev.inputs().expect("VIDIOC_ENUMINPUT");
    let webcam =
        inputs.iter().find(|i| i.name.starts_with("Webcam")).unwrap_or_else(|| panic!("no webcam input: {inputs:?}"));
    let original = dev.input().expect("G_INPUT");
    dev.set_input(webcam.index).expect("S_INPUT webcam");
    let got = dev.set_format(bt, 641, 481, PixelFormat::Nv12.to_v4l2()).expect("S_FMT");
    dev.set_input(original).expect("S_INPUT back");
    assert_eq!((got.width, got.height), (640, 480), "{got:?}");
    let ours = Layout::new(PixelFormat::Nv12, got.width, got.height, &LayoutOptions::default()).unwrap();
    assert_eq!(u64::from(got.planes[0].bytesperline), ours.bytesperline());
    assert_eq!(u64::from(got.planes[0].sizeimage), ours.total_size());
}
