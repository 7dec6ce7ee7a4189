//! Camera to mem2mem, zero copy (issue 17 item 2c): a vivid frame captured
//! by `V4L2_MEMORY_DMABUF` into a dmabroker buffer goes, the same dma-buf,
//! to vim2m's `OUTPUT` queue; vim2m's `CAPTURE` queue writes into another
//! dmabroker buffer. Every buffer is allocated for the merged constraints of
//! vivid and vim2m. The CPU touches neither on the way: it reads both only
//! at the end, through the library's sync guard, and checks vim2m's known
//! transforms byte for byte (drivers/media/test-drivers/vim2m.c):
//! RGB24 -> BGR24 swaps the first and third byte of every pixel, and RGB24
//! -> RGB24 with `V4L2_CID_HFLIP` mirrors every line (out[x] = in[w-1-x]).
//!
//! vim2m is built only by the project's kernel (`vm/run.sh --kernel proj`):
//! on Debian's kernels each test prints `SKIP <test>: <reason>` through
//! `vm_common::proj_only`; on the project's kernel a miss is a failure.

mod vm_common;

use dmabroker::constraints::{allocate_for, Constraints, Profiles};
use dmabroker::device::v4l2::{find_mem2mem, find_mem2mem_by, fourcc, BufType, ControlId, Format, Memory, V4l2Device};
use dmabroker::format::{Layout, LayoutOptions, PixelFormat};
use dmabroker::{Buffer, BufferKind, Heaps};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// vim2m's default and largest frame (MAX_W x MAX_H), and vivid's webcam's.
const W: u32 = 640;
const H: u32 = 480;
const TIMEOUT: Duration = Duration::from_secs(20);
/// What the OUTPUT buffer carries; vim2m copies it to the CAPTURE buffer
/// (V4L2_BUF_FLAG_TIMESTAMP_COPY), which shows the result is this frame's.
const STAMP: Duration = Duration::from_micros(1_234_567_891);

/// vivid's single-planar capture node, or `None` after `skip` (a failure
/// in the VM, where vivid is always there).
fn vivid(test: &str) -> Option<V4l2Device> {
    match vm_common::vivid(false) {
        Ok((cam, bt)) => {
            assert_eq!(bt, BufType::VideoCapture);
            Some(cam)
        }
        Err(reason) => {
            vm_common::skip(test, &reason);
            None
        }
    }
}

fn node_name(dev: &V4l2Device) -> String {
    dev.path().file_name().unwrap().to_string_lossy().into_owned()
}

fn check_format(what: &str, f: &Format, format: PixelFormat, layout: &Layout) {
    assert_eq!((f.pixelformat, f.width, f.height), (format.to_v4l2(), W, H), "{what}: {f:?}");
    assert_eq!(f.planes.len(), 1, "{what}: {f:?}");
    // vim2m and vicodec read and write tightly packed lines (bytesperline =
    // width * depth), so the layout must be the unpadded one all agree on.
    assert_eq!(u64::from(f.planes[0].bytesperline), layout.bytesperline(), "{what}: {f:?}");
    assert_eq!(u64::from(f.planes[0].sizeimage), layout.total_size(), "{what}: {f:?}");
}

/// The devices' constraints from sysfs, merged: every buffer of a test is
/// allocated for all of them.
fn constraints_of(devs: &[&V4l2Device]) -> Constraints {
    let profiles = Profiles::new();
    let each: Vec<Constraints> =
        devs.iter().map(|d| Constraints::probe_with(d.path(), &profiles).expect("probe through sysfs")).collect();
    let merged = Constraints::merge_all(&each).expect("merge");
    assert!(merged.needs_dma_buf(), "all import dma-bufs: {merged:?}");
    let from = &merged.dma_buf().expect("dma-buf requirement").from;
    for dev in devs {
        assert!(from.iter().any(|d| d.starts_with(&node_name(dev))), "{} not among {from:?}", node_name(dev));
    }
    merged
}

/// One buffer of `len` bytes for `merged`, from the heap the library
/// chooses; the heap's name is kept in `heap` for the figures.
fn allocate(test: &str, merged: &Constraints, len: u64, what: &str, heap: &mut String) -> Buffer {
    let (b, choice) = allocate_for(&Heaps::discover(), merged, len, Some(what))
        .unwrap_or_else(|e| panic!("{test}: allocate_for {what}, {len} bytes: {e}"));
    assert_eq!(b.kind(), BufferKind::DmaBuf, "{choice:?}");
    if heap.is_empty() {
        eprintln!("{test}: {what}: {} bytes from {} ({})", b.len(), choice.heap, choice.reasons.join("; "));
    }
    *heap = choice.heap;
    b
}

/// vivid captures one RGB24 frame into one of `slots` (it streams only with
/// two buffers queued; either may get the frame); returns it and the ms taken.
fn capture_frame<'a>(cam: &V4l2Device, slots: &'a [Buffer; 2], layout: &Layout) -> (&'a Buffer, f64) {
    let t = Instant::now();
    let mut q = cam.request_buffers(BufType::VideoCapture, Memory::DmaBuf, 2).expect("vivid REQBUFS");
    for (i, b) in slots.iter().enumerate() {
        q.queue_dmabuf(i as u32, &[b.as_fd()], &[b.len() as u32]).expect("vivid QBUF");
    }
    q.stream_on().expect("vivid STREAMON");
    let d = q.dequeue(Some(TIMEOUT)).expect("vivid DQBUF");
    assert!(!d.error && u64::from(d.bytesused[0]) == layout.total_size(), "{d:?}");
    q.stream_off().expect("vivid STREAMOFF");
    (&slots[d.index as usize], t.elapsed().as_secs_f64() * 1e3)
}

/// One frame through a mem2mem device whose formats are set: `input`
/// (`used` bytes of data) on OUTPUT, `output` on CAPTURE. Returns the
/// CAPTURE buffer's `bytesused` and the ms from REQBUFS to both dequeued.
fn one_frame(m2m: &V4l2Device, input: &Buffer, used: u32, output: &Buffer) -> (u32, f64) {
    let (out_t, cap_t) = (m2m.output_type().expect("OUTPUT queue"), m2m.capture_type().expect("CAPTURE queue"));
    let t = Instant::now();
    let mut outq = m2m.request_buffers(out_t, Memory::DmaBuf, 1).expect("REQBUFS OUTPUT");
    let mut capq = m2m.request_buffers(cap_t, Memory::DmaBuf, 1).expect("REQBUFS CAPTURE");
    outq.queue_dmabuf_output(0, &[input.as_fd()], &[input.len() as u32], &[used], STAMP).expect("QBUF OUTPUT");
    capq.queue_dmabuf(0, &[output.as_fd()], &[output.len() as u32]).expect("QBUF CAPTURE");
    outq.stream_on().expect("STREAMON OUTPUT");
    capq.stream_on().expect("STREAMON CAPTURE");
    let consumed = outq.dequeue(Some(TIMEOUT)).expect("DQBUF OUTPUT");
    let done = capq.dequeue(Some(TIMEOUT)).expect("DQBUF CAPTURE");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!((consumed.index, consumed.bytesused[0], consumed.error), (0, used, false), "{consumed:?}");
    assert_eq!((done.index, done.error), (0, false), "{done:?}");
    assert_eq!(done.timestamp, STAMP, "the CAPTURE buffer carries the OUTPUT buffer's timestamp: {done:?}");
    outq.stream_off().expect("STREAMOFF OUTPUT");
    capq.stream_off().expect("STREAMOFF CAPTURE");
    (done.bytesused[0], ms)
}

/// The first `n` bytes of `b`, read by the CPU through the sync guard
/// (`DMA_BUF_IOCTL_SYNC` START/END around the read).
fn read(b: &Buffer, n: u64) -> Vec<u8> {
    let mut map = b.map_read().expect("map");
    let guard = map.begin_read().expect("DMA_BUF_IOCTL_SYNC START");
    guard[..n as usize].to_vec()
}

/// One vivid frame through vim2m: returns (input frame, output frame) as
/// read at the end through the sync guard.
fn through_vim2m(test: &str, out_format: PixelFormat, hflip: bool) -> Option<(Vec<u8>, Vec<u8>)> {
    let m2m = vm_common::proj_only(test, find_mem2mem("vim2m").map_err(|e| e.to_string()))?;
    let cam = vivid(test)?;
    assert!(m2m.is_mem2mem() && !cam.is_mem2mem());
    let (out_t, cap_t) = (m2m.output_type().expect("vim2m OUTPUT"), m2m.capture_type().expect("vim2m CAPTURE"));
    let in_format = PixelFormat::Rgb24;
    let in_layout = Layout::new(in_format, W, H, &LayoutOptions::default()).unwrap();
    let out_layout = Layout::new(out_format, W, H, &LayoutOptions::default()).unwrap();

    // Formats: vivid captures RGB24, vim2m takes RGB24 and gives `out_format`.
    let f = cam.set_format(BufType::VideoCapture, W, H, in_format.to_v4l2()).expect("vivid S_FMT");
    check_format("vivid CAPTURE", &f, in_format, &in_layout);
    let f = m2m.set_format(out_t, W, H, in_format.to_v4l2()).expect("vim2m S_FMT OUTPUT");
    check_format("vim2m OUTPUT", &f, in_format, &in_layout);
    let f = m2m.set_format(cap_t, W, H, out_format.to_v4l2()).expect("vim2m S_FMT CAPTURE");
    check_format("vim2m CAPTURE", &f, out_format, &out_layout);
    if hflip {
        assert_eq!(m2m.set_control(ControlId::HFLIP, 1).expect("S_CTRL HFLIP"), 1);
        assert_eq!(m2m.control(ControlId::HFLIP).expect("G_CTRL HFLIP"), 1);
    }

    let merged = constraints_of(&[&cam, &m2m]);
    let len = in_layout.total_size().max(out_layout.total_size());
    let mut heap = String::new();
    let slots =
        [allocate(test, &merged, len, "vivid-0", &mut heap), allocate(test, &merged, len, "vivid-1", &mut heap)];
    let result = allocate(test, &merged, len, "vim2m-capture", &mut heap);

    // vivid -> dma-buf -> vim2m OUTPUT; vim2m CAPTURE -> another dma-buf.
    let (frame, capture_ms) = capture_frame(&cam, &slots, &in_layout);
    let (used, m2m_ms) = one_frame(&m2m, frame, in_layout.total_size() as u32, &result);
    assert_eq!(u64::from(used), out_layout.total_size());

    // Only now the CPU reads both.
    let input = read(frame, in_layout.total_size());
    let output = read(&result, out_layout.total_size());
    eprintln!(
        "{test}: vivid {} -> vim2m {} ({}{} -> {}): {W}x{H}, {} bytes in, {} out, heap {heap}; \
         vivid capture {capture_ms:.1} ms, vim2m round trip {m2m_ms:.1} ms",
        node_name(&cam),
        node_name(&m2m),
        in_format,
        if hflip { " + HFLIP" } else { "" },
        out_format,
        input.len(),
        output.len(),
    );
    Some((input, output))
}

/// `(x, y)` and the bytes of the first pixel where `output` differs from
/// `expected(x, y, input)`, and how many pixels differ.
fn compare(input: &[u8], output: &[u8], expected: impl Fn(usize, usize) -> [u8; 3]) -> (usize, Option<String>) {
    let (w, h) = (W as usize, H as usize);
    let mut bad = 0;
    let mut first = None;
    for y in 0..h {
        for x in 0..w {
            let o = (y * w + x) * 3;
            let want = expected(x, y);
            if output[o..o + 3] != want {
                bad += 1;
                first.get_or_insert_with(|| {
                    format!(
                        "pixel ({x}, {y}): got {:?}, want {want:?} (input {:?})",
                        &output[o..o + 3],
                        &input[o..o + 3]
                    )
                });
            }
        }
    }
    (bad, first)
}

#[test]
fn vivid_rgb24_through_vim2m_to_bgr24_swaps_red_and_blue() {
    let test = "vivid_rgb24_through_vim2m_to_bgr24_swaps_red_and_blue";
    let Some((input, output)) = through_vim2m(test, PixelFormat::Bgr24, false) else { return };
    // The check means something only if red and blue differ somewhere.
    let differ = input.chunks_exact(3).filter(|p| p[0] != p[2]).count();
    assert!(differ > 1000, "vivid's frame has only {differ} pixels with red != blue");
    let (bad, first) = compare(&input, &output, |x, y| {
        let i = (y * W as usize + x) * 3;
        [input[i + 2], input[i + 1], input[i]]
    });
    assert_eq!(bad, 0, "{bad} pixels differ from the byte swap; first: {}", first.unwrap_or_default());
    eprintln!("{test}: {} pixels verified ({differ} with red != blue), 0 differ", W * H);
}

#[test]
fn vivid_rgb24_through_vim2m_with_hflip_mirrors_every_line() {
    let test = "vivid_rgb24_through_vim2m_with_hflip_mirrors_every_line";
    let Some((input, output)) = through_vim2m(test, PixelFormat::Rgb24, true) else { return };
    let line = W as usize * 3;
    // The check means something only if lines are not palindromes.
    let asymmetric = input.chunks_exact(line).filter(|l| l.chunks_exact(3).ne(l.chunks_exact(3).rev())).count();
    assert!(asymmetric > 0, "every line of vivid's frame reads the same mirrored");
    assert!(output != input, "HFLIP changed nothing");
    let (bad, first) = compare(&input, &output, |x, y| {
        let i = (y * W as usize + (W as usize - 1 - x)) * 3;
        [input[i], input[i + 1], input[i + 2]]
    });
    assert_eq!(bad, 0, "{bad} pixels differ from the mirror image; first: {}", first.unwrap_or_default());
    eprintln!("{test}: {} pixels verified ({asymmetric} of {H} lines asymmetric), 0 differ", W * H);
}

/// vicodec's node that has `fourcc` on the queue `queue` picks
/// (encoder: FWHT on CAPTURE; stateful decoder: FWHT on OUTPUT).
fn vicodec(test: &str, what: &str, code: u32, on_capture: bool) -> Option<V4l2Device> {
    let found = find_mem2mem_by("vicodec", |d| {
        let t = if on_capture { d.capture_type() } else { d.output_type() };
        t.and_then(|t| d.formats(t).ok()).is_some_and(|f| f.iter().any(|f| f.pixelformat == code))
    });
    vm_common::proj_only(test, found.map_err(|e| format!("vicodec {what}: {e}")))
}

/// Error figures of `decoded` against `original`: (PSNR dB, mean |diff|, max |diff|).
fn error_figures(original: &[u8], decoded: &[u8]) -> (f64, f64, u8) {
    let (mut sq, mut abs, mut max) = (0u64, 0u64, 0u8);
    for (&a, &b) in original.iter().zip(decoded) {
        let d = a.abs_diff(b);
        sq += u64::from(d) * u64::from(d);
        abs += u64::from(d);
        max = max.max(d);
    }
    let n = original.len() as f64;
    let mse = sq as f64 / n;
    let psnr = if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0 * 255.0 / mse).log10() };
    (psnr, abs as f64 / n, max)
}

/// vicodec's tolerance at its default I-frame quantisation (QP 20): the
/// FWHT is lossy (coefficients quantised per 8x8 block), so a decoded frame
/// is compared by PSNR, not byte for byte. Measured on the project's kernel:
/// 35.4 dB (mean |diff| 0.73, max 60) on vivid's 640x480 colour bars.
const MIN_PSNR_DB: f64 = 30.0;

#[test]
fn vivid_rgb24_through_vicodec_encode_then_decode_within_tolerance() {
    let test = "vivid_rgb24_through_vicodec_encode_then_decode_within_tolerance";
    let fwht = fourcc(b"FWHT");
    let Some(enc) = vicodec(test, "encoder", fwht, true) else { return };
    let Some(dec) = vicodec(test, "stateful decoder", fwht, false) else { return };
    let Some(cam) = vivid(test) else { return };
    assert_ne!(enc.path(), dec.path());
    let raw = PixelFormat::Rgb24;
    let layout = Layout::new(raw, W, H, &LayoutOptions::default()).unwrap();
    let (enc_out, enc_cap) = (enc.output_type().unwrap(), enc.capture_type().unwrap());
    let (dec_out, dec_cap) = (dec.output_type().unwrap(), dec.capture_type().unwrap());

    // Formats: vivid RGB24; the encoder RGB24 -> FWHT; the decoder FWHT -> raw.
    let f = cam.set_format(BufType::VideoCapture, W, H, raw.to_v4l2()).expect("vivid S_FMT");
    check_format("vivid CAPTURE", &f, raw, &layout);
    let f = enc.set_format(enc_out, W, H, raw.to_v4l2()).expect("encoder S_FMT OUTPUT");
    check_format("encoder OUTPUT", &f, raw, &layout);
    let f = enc.set_format(enc_cap, W, H, fwht).expect("encoder S_FMT CAPTURE");
    assert_eq!(f.pixelformat, fwht, "{f:?}");
    let enc_size = f.planes[0].sizeimage;
    let f = dec.set_format(dec_out, W, H, fwht).expect("decoder S_FMT OUTPUT");
    assert_eq!(f.pixelformat, fwht, "{f:?}");
    let comp_len = u64::from(enc_size.max(f.planes[0].sizeimage));
    let qp = enc.control(ControlId::FWHT_I_FRAME_QP).expect("G_CTRL FWHT_I_FRAME_QP");

    let merged = constraints_of(&[&cam, &enc, &dec]);
    let mut heap = String::new();
    let len = layout.total_size();
    let slots =
        [allocate(test, &merged, len, "vivid-0", &mut heap), allocate(test, &merged, len, "vivid-1", &mut heap)];
    let compressed = allocate(test, &merged, comp_len, "fwht", &mut heap);
    let decoded = allocate(test, &merged, len, "decoded", &mut heap);

    // vivid -> dma-buf -> encoder OUTPUT; encoder CAPTURE -> compressed dma-buf.
    let (frame, capture_ms) = capture_frame(&cam, &slots, &layout);
    let (comp_size, enc_ms) = one_frame(&enc, frame, len as u32, &compressed);
    assert!(comp_size > 0 && u64::from(comp_size) < len, "compressed frame of {comp_size} bytes");

    // The compressed dma-buf -> decoder OUTPUT (bytesused: the frame's
    // size). A stateful decoder reads the stream's header when OUTPUT
    // starts and sets its CAPTURE format from it (the source change).
    let t = Instant::now();
    let mut outq = dec.request_buffers(dec_out, Memory::DmaBuf, 1).expect("decoder REQBUFS OUTPUT");
    outq.queue_dmabuf_output(0, &[compressed.as_fd()], &[compressed.len() as u32], &[comp_size], STAMP)
        .expect("decoder QBUF OUTPUT");
    outq.stream_on().expect("decoder STREAMON OUTPUT");
    let from_header = dec.format(dec_cap).expect("decoder G_FMT CAPTURE");
    assert_eq!((from_header.width, from_header.height), (W, H), "from the stream's header: {from_header:?}");
    // The header says "3 RGB components": ask for RGB24; vicodec may
    // answer BGR24 (its first such format), compared with red and blue swapped.
    let f = dec.set_format(dec_cap, W, H, raw.to_v4l2()).expect("decoder S_FMT CAPTURE");
    let swapped = f.pixelformat == PixelFormat::Bgr24.to_v4l2();
    assert!(f.pixelformat == raw.to_v4l2() || swapped, "decoder CAPTURE {f:?}");
    assert_eq!(u64::from(f.planes[0].sizeimage), len, "{f:?}");
    let mut capq = dec.request_buffers(dec_cap, Memory::DmaBuf, 1).expect("decoder REQBUFS CAPTURE");
    capq.queue_dmabuf(0, &[decoded.as_fd()], &[decoded.len() as u32]).expect("decoder QBUF CAPTURE");
    capq.stream_on().expect("decoder STREAMON CAPTURE");
    let done = capq.dequeue(Some(TIMEOUT)).expect("decoder DQBUF CAPTURE");
    let consumed = outq.dequeue(Some(TIMEOUT)).expect("decoder DQBUF OUTPUT");
    let dec_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(!done.error && !consumed.error, "{done:?} {consumed:?}");
    assert_eq!(u64::from(done.bytesused[0]), len, "{done:?}");
    assert_eq!(done.timestamp, STAMP, "{done:?}");
    outq.stream_off().expect("STREAMOFF");
    capq.stream_off().expect("STREAMOFF");
    drop((outq, capq));

    // Only now the CPU reads the frame and its decoded copy.
    let input = read(frame, len);
    let mut output = read(&decoded, len);
    if swapped {
        output.chunks_exact_mut(3).for_each(|p| p.swap(0, 2));
    }
    assert!(input.iter().any(|&b| b != input[0]), "vivid's frame is uniform");
    let (psnr, mean, max) = error_figures(&input, &output);
    eprintln!(
        "{test}: vivid {} -> vicodec {} (RGB24 -> FWHT, I-frame QP {qp}) -> {} (FWHT -> {}): {W}x{H}, \
         {len} bytes -> {comp_size} ({:.1}:1) -> {len}, heap {heap}; PSNR {psnr:.2} dB, mean |diff| {mean:.3}, \
         max |diff| {max}; vivid capture {capture_ms:.1} ms, encode {enc_ms:.1} ms, decode {dec_ms:.1} ms",
        node_name(&cam),
        node_name(&enc),
        node_name(&dec),
        if swapped { "BGR24" } else { "RGB24" },
        len as f64 / f64::from(comp_size),
    );
    assert!(psnr >= MIN_PSNR_DB, "decoded frame PSNR {psnr:.2} dB < {MIN_PSNR_DB} dB (mean {mean:.3}, max {max})");
}

/// The typed errors of the mem2mem calls, on the real driver: a camera is
/// not found as mem2mem, controls are clamped or refused by name, and a
/// wrong queue, an oversized payload or a too-small dma-buf is refused
/// before or by QBUF.
#[test]
fn mem2mem_errors_are_typed() {
    use dmabroker::device::v4l2::{ControlError, FindError, QueueError};
    let test = "mem2mem_errors_are_typed";
    let Some(m2m) = vm_common::proj_only(test, find_mem2mem("vim2m").map_err(|e| e.to_string())) else { return };
    let Some(_cam) = vivid(test) else { return };
    match find_mem2mem("vivid") {
        Err(FindError::NotFound { seen, .. }) => {
            assert!(seen.iter().any(|s| s.ends_with("vivid (not mem2mem)")), "{seen:?}");
            assert!(seen.iter().any(|s| s.ends_with("vim2m (mem2mem)")), "{seen:?}");
        }
        Err(e) => panic!("unexpected {e}"),
        Ok(d) => panic!("vivid found as mem2mem: {d:?}"),
    }
    // Booleans become 0 or 1; an unknown id is named.
    assert_eq!(m2m.set_control(ControlId::HFLIP, 5).expect("S_CTRL HFLIP 5"), 1);
    let unknown = ControlId(0x0098_09ff);
    assert!(matches!(m2m.set_control(unknown, 1), Err(ControlError::NoSuchControl(id)) if id == unknown));

    let (out_t, cap_t) = (m2m.output_type().unwrap(), m2m.capture_type().unwrap());
    let layout = Layout::new(PixelFormat::Rgb24, W, H, &LayoutOptions::default()).unwrap();
    for t in [out_t, cap_t] {
        m2m.set_format(t, W, H, PixelFormat::Rgb24.to_v4l2()).expect("S_FMT");
    }
    let merged = constraints_of(&[&m2m]);
    let mut heap = String::new();
    let good = allocate(test, &merged, layout.total_size(), "good", &mut heap);
    let small = allocate(test, &merged, 4096, "small", &mut heap);
    let outq = m2m.request_buffers(out_t, Memory::DmaBuf, 1).expect("REQBUFS OUTPUT");
    let capq = m2m.request_buffers(cap_t, Memory::DmaBuf, 1).expect("REQBUFS CAPTURE");
    let len = good.len() as u32;
    let e = capq.queue_dmabuf_output(0, &[good.as_fd()], &[len], &[len], STAMP).unwrap_err();
    assert!(matches!(e, QueueError::NotOutput(t) if t == cap_t), "{e}");
    let e = outq.queue_dmabuf_output(0, &[good.as_fd()], &[len], &[len + 1], STAMP).unwrap_err();
    assert!(matches!(e, QueueError::PayloadTooLarge { plane: 0, .. }), "{e}");
    let e = outq.queue_dmabuf_output(0, &[small.as_fd()], &[4096], &[4096], STAMP).unwrap_err();
    assert!(matches!(e, QueueError::Rejected(_)), "a 4096-byte dma-buf for a {len}-byte frame: {e}");
    eprintln!("{test}: NotFound, NoSuchControl, NotOutput, PayloadTooLarge, Rejected as expected; HFLIP 5 kept as 1");
}
