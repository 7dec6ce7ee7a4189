//! Camera to display, zero copy, on the project's kernel (`vm/run.sh
//! --kernel proj`: vivid and vkms with its writeback connector built in):
//! one buffer allocated by the constraint solver for vivid (sysfs probe of
//! its node) and vkms (sysfs probe of its card; format XRGB8888 from its
//! primary plane and writeback connector, pitch aligned to 64 bytes) is
//! captured into by vivid (`V4L2_MEMORY_DMABUF`), imported into vkms (PRIME,
//! `ADDFB2` with the layout's pitch and offset) and shown on the primary
//! plane by an atomic commit; a second buffer is the writeback connector's
//! framebuffer. After the writeback out-fence signals, the written-back
//! frame equals the captured one byte for byte in R, G and B (XRGB8888's X
//! byte is padding: vivid writes its alpha control there, vkms writes 0xff).
//! Nothing copies the frame on the CPU: vivid writes it, vkms reads it.
//! Debian's kernels have no vkms: there the test prints `SKIP`.

mod vm_common;

use dmabroker::constraints::modifier::{choose_modifier, modifier_name, ModifierOffer};
use dmabroker::constraints::{allocate_for, Constraints};
use dmabroker::device::kms::{CommitError, FramebufferSpec, KmsDevice, PlaneKind};
use dmabroker::device::v4l2::{BufType, Memory};
use dmabroker::format::{DrmFourcc, Layout, LayoutOptions, PixelFormat};
use dmabroker::{BufferKind, Heaps};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

const W: u32 = 640;
const H: u32 = 480;
/// What many scanout engines ask of a pitch; vkms itself takes any pitch
/// of at least width x 4, so this shows the layout's pitch reaching both.
const PITCH_ALIGN: u64 = 64;
const FENCE_TIMEOUT: Duration = Duration::from_secs(10);
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(20);

fn fourcc_text(code: u32) -> String {
    String::from_utf8_lossy(&code.to_le_bytes()).into_owned()
}

#[test]
fn vivid_frame_reaches_vkms_writeback_unchanged() {
    let test = "vivid_frame_reaches_vkms_writeback_unchanged";
    let Some(kms) = KmsDevice::find("vkms") else {
        let nodes = dmabroker::device::drm::drm_nodes();
        vm_common::skip_unless_proj(test, &format!("no vkms card among {nodes:?} (CONFIG_DRM_VKMS)"));
        return;
    };
    let (cam, bt) = vm_common::vivid(false).unwrap_or_else(|e| panic!("{test}: {e}"));
    assert_eq!(bt, BufType::VideoCapture);
    assert!(kms.writeback_enabled(), "{}: DRM_CLIENT_CAP_WRITEBACK_CONNECTORS refused", kms.path().display());
    let t_start = Instant::now();

    // Memory constraints of both devices, from sysfs, merged.
    let cam_c = Constraints::probe(cam.path()).expect("probe vivid");
    let disp_c = Constraints::probe(kms.path()).expect("probe vkms");
    let merged = cam_c.merge(&disp_c).expect("merge vivid + vkms");
    assert!(merged.needs_dma_buf(), "{merged}");
    assert!(merged.devices().iter().any(|d| d.contains("vkms")), "the card is named by its DRM driver: {merged}");
    eprintln!("{test}: merged constraints of {} and {}: {merged}", cam.path().display(), kms.path().display());

    // The KMS pipe: a connected display connector, the writeback connector,
    // a CRTC both can use, its primary plane, and a 640x480 mode.
    let connectors = kms.connectors().expect("connectors");
    let display = connectors.iter().find(|c| !c.writeback && c.connected).expect("a connected display connector");
    let wb = connectors.iter().find(|c| c.writeback).expect("vkms's writeback connector (vkms.enable_writeback=1)");
    let crtcs = kms.crtcs().expect("CRTCs");
    let crtc = crtcs
        .iter()
        .find(|c| display.possible_crtcs.contains(&c.id) && wb.possible_crtcs.contains(&c.id))
        .expect("a CRTC for both connectors");
    let planes = kms.planes().expect("planes");
    let primary = planes
        .iter()
        .find(|p| p.kind == PlaneKind::Primary && p.possible_crtcs.contains(&crtc.id))
        .expect("a primary plane for the CRTC");
    let mode = display.mode(W, H).unwrap_or_else(|| panic!("{} offers no {W}x{H} mode", display.name));

    // The format: one vivid captures, the plane scans out and the
    // writeback connector writes.
    let xrgb = DrmFourcc::Xrgb8888 as u32;
    let wb_formats = kms.writeback_formats(wb.id).expect("WRITEBACK_PIXEL_FORMATS");
    let format = PixelFormat::from_drm(DrmFourcc::Xrgb8888).expect("XRGB8888 is known");
    assert_eq!(format.v4l2_fourcc().to_string(), "XR24");
    let cam_formats = cam.formats(bt).expect("ENUM_FMT");
    assert!(cam_formats.iter().any(|f| f.pixelformat == format.to_v4l2()), "vivid lacks XR24: {cam_formats:?}");
    assert!(primary.formats.contains(&xrgb), "plane {} lacks XRGB8888", primary.id);
    assert!(wb_formats.contains(&xrgb), "writeback lacks XRGB8888: {wb_formats:?}");
    // Modifiers: vivid addresses memory linearly; vkms says what it scans
    // out in the plane's IN_FORMATS blob.
    assert!(primary.in_formats_blob.is_some(), "plane {} has no IN_FORMATS", primary.id);
    let vkms_offer = kms.modifier_offer(PlaneKind::Primary, xrgb, 1).expect("vkms's offer (IN_FORMATS)");
    let chosen = choose_modifier(&[ModifierOffer::linear(cam.path().display().to_string(), xrgb, 1), vkms_offer], None)
        .expect("a modifier both take");
    assert_eq!(chosen.modifier, 0, "LINEAR");

    // The layout, with the pitch both get.
    let layout = Layout::new(format, W, H, &LayoutOptions::default().with_stride_align(PITCH_ALIGN)).unwrap();
    let pitch = layout.bytesperline();
    let fmt =
        cam.set_format_with_pitches(bt, W, H, format.to_v4l2(), &[u32::try_from(pitch).unwrap()]).expect("S_FMT XR24");
    assert_eq!((fmt.width, fmt.height, fmt.pixelformat), (W, H, format.to_v4l2()), "{fmt:?}");
    assert_eq!(u64::from(fmt.planes[0].bytesperline), pitch, "vivid took another pitch: {fmt:?}");
    assert_eq!(u64::from(fmt.planes[0].sizeimage), layout.total_size(), "{fmt:?}");

    // Buffers: two capture slots (vivid streams with two queued) and the
    // writeback target, all for both devices.
    let heaps = Heaps::discover();
    let alloc = |name: &str| {
        let (b, choice) = allocate_for(&heaps, &merged, layout.total_size(), Some(name))
            .unwrap_or_else(|e| panic!("allocate_for vivid + vkms: {e}"));
        assert_eq!(b.kind(), BufferKind::DmaBuf, "{choice:?}");
        (b, choice)
    };
    let (slot0, choice) = alloc("kms-capture-0");
    let (slot1, _) = alloc("kms-capture-1");
    let (wb_buf, _) = alloc("kms-writeback");
    let slots = [slot0, slot1];
    // The writeback target starts as a known pattern, so an untouched
    // buffer cannot pass.
    wb_buf.map_read_write().unwrap().begin_write().expect("begin_write").fill(0x5a);

    // Capture one frame.
    let t_cap = Instant::now();
    let mut queue = cam.request_buffers(bt, Memory::DmaBuf, 2).expect("REQBUFS DMABUF");
    let length = u32::try_from(slots[0].len()).unwrap();
    for (i, b) in slots.iter().enumerate() {
        queue.queue_dmabuf(i as u32, &[b.as_fd()], &[length]).expect("QBUF");
    }
    queue.stream_on().expect("STREAMON");
    let d = queue.dequeue(Some(CAPTURE_TIMEOUT)).expect("DQBUF");
    assert!(!d.error, "{d:?}");
    queue.stream_off().expect("STREAMOFF");
    drop(queue);
    let capture_time = t_cap.elapsed();
    let frame = &slots[d.index as usize];

    // Into vkms: the captured buffer on the primary plane, the other as the
    // writeback target, one atomic commit.
    let spec = FramebufferSpec::from_layout(&layout, None).unwrap();
    let fb = kms.add_framebuffer(&[frame.as_fd()], &spec).expect("ADDFB2 of the captured buffer");
    let wb_fb = kms.add_framebuffer(&[wb_buf.as_fd()], &spec).expect("ADDFB2 of the writeback buffer");
    let mode_blob = kms.mode_blob(&mode).expect("MODE_ID blob");
    // A writeback framebuffer smaller than the mode: vkms's atomic check
    // refuses it, a typed error, and the display is left as it was.
    let small = FramebufferSpec { width: W / 2, height: H / 2, ..spec.clone() };
    let small_fb = kms.add_framebuffer(&[wb_buf.as_fd()], &small).expect("ADDFB2 of a half-size view");
    let mut bad = kms.atomic_request();
    bad.enable(display.id, crtc.id, &mode_blob)
        .and_then(|r| r.show(primary.id, crtc.id, &fb))
        .and_then(|r| r.writeback(wb.id, crtc.id, &small_fb))
        .expect("atomic properties");
    match bad.commit(true) {
        Err(e @ CommitError::Rejected { .. }) => eprintln!("{test}: half-size writeback refused: {e}"),
        other => panic!("a {}x{} writeback of a {mode} mode must be refused: {other:?}", W / 2, H / 2),
    }
    drop(small_fb);
    let mut req = kms.atomic_request();
    req.enable(display.id, crtc.id, &mode_blob)
        .and_then(|r| r.show(primary.id, crtc.id, &fb))
        .and_then(|r| r.writeback(wb.id, crtc.id, &wb_fb))
        .expect("atomic properties");
    let t_commit = Instant::now();
    let fence = req.commit(true).expect("atomic commit").expect("a writeback out-fence");
    let commit_time = t_commit.elapsed();
    let fence_time = fence.wait(FENCE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));

    // Compare through the CPU sync guards, in place.
    let mut cap_map = frame.map_read().unwrap();
    let mut wb_map = wb_buf.map_read().unwrap();
    let cap = cap_map.begin_read().expect("begin_read capture");
    let out = wb_map.begin_read().expect("begin_read writeback");
    let pitch = pitch as usize;
    let (mut differ, mut first) = (0usize, None);
    let (mut x_cap, mut x_out) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    for y in 0..H as usize {
        for x in 0..W as usize {
            let at = y * pitch + x * 4;
            if cap[at..at + 3] != out[at..at + 3] {
                differ += 1;
                first.get_or_insert((x, y, cap[at..at + 4].to_vec(), out[at..at + 4].to_vec()));
            }
            x_cap.insert(cap[at + 3]);
            x_out.insert(out[at + 3]);
        }
    }
    let distinct: std::collections::BTreeSet<&[u8]> = (0..H as usize)
        .step_by(8)
        .flat_map(|y| (0..W as usize).map(move |x| (y, x)))
        .map(|(y, x)| &cap[y * pitch + x * 4..y * pitch + x * 4 + 3])
        .collect();
    assert!(
        distinct.len() > 4,
        "the captured frame is almost uniform ({} colours): not vivid's pattern",
        distinct.len()
    );
    assert!(
        !x_out.contains(&0x5a),
        "some pixels still hold the 0x5a fill: the writeback did not write the whole frame"
    );
    assert_eq!(
        differ,
        0,
        "{differ} of {} pixels differ in RGB; first (x, y, captured BGRX, written back BGRX): {first:?}",
        W * H
    );
    eprintln!(
        "{test}: {W}x{H} XRGB8888 (V4L2 XR24), pitch {pitch} (aligned to {PITCH_ALIGN}), {} bytes per buffer \
         ({} allocated) from {} [{}]; capture slot {} seq {} in {:.1} ms; fb {} on plane {} of CRTC {} \
         ({}, mode {mode}), writeback fb {} on {}; atomic commit {:.1} ms, out-fence after {:.1} ms more; \
         {} pixels equal in R, G and B ({} colours seen); X byte (padding, not compared): captured {:?}, \
         written back {:?}; modifier {} from {}; total {:.1} ms",
        layout.total_size(),
        frame.len(),
        choice.heap,
        choice.reasons.join("; "),
        d.index,
        d.sequence,
        capture_time.as_secs_f64() * 1e3,
        fb.id(),
        primary.id,
        crtc.id,
        display.name,
        wb_fb.id(),
        wb.name,
        commit_time.as_secs_f64() * 1e3,
        fence_time.as_secs_f64() * 1e3,
        W * H,
        distinct.len(),
        x_cap,
        x_out,
        modifier_name(chosen.modifier),
        chosen.from.join(" + "),
        t_start.elapsed().as_secs_f64() * 1e3,
    );
    eprintln!(
        "{test}: formats: vivid {}, plane {} {}, writeback {}",
        cam_formats.len(),
        primary.id,
        primary.formats.iter().map(|&f| fourcc_text(f)).collect::<Vec<_>>().join(","),
        wb_formats.iter().map(|&f| fourcc_text(f)).collect::<Vec<_>>().join(",")
    );
    drop((cap, out));

    // Turn the pipe off again (the framebuffers are removed on drop).
    let mut off = kms.atomic_request();
    off.disable(primary.id, &[display.id, wb.id], crtc.id).expect("properties to turn off");
    assert!(off.commit(true).expect("atomic commit: off").is_none());
}
