//! `--through vulkan[:N]`: camera to Vulkan to the pool, with no CPU copy.
//!
//! The capture device fills its own dma-bufs (allocated for the camera's
//! and the Vulkan device's constraints, with the modifier both import:
//! LINEAR); each is imported once as a `VkImage`, and so is each of the
//! pool's buffers. Per frame the producer submits a transfer on the device
//! that writes the captured frame flipped vertically into a free pool
//! buffer, and hands that buffer on at once with the submission's
//! completion as a sync_file (`WriteSlot::submit_with_fence`, carried
//! only): consumers wait on it (`Frame::wait_fence`) before they read, and
//! the producer does not wait for the device — unless the driver's export
//! does: lavapipe waits for the work in `vkGetSemaphoreFdKHR` and returns
//! the kernel's signalled stub fence, which the summary shows (export time,
//! frames whose sync_file had signalled at hand-off). A capture buffer goes
//! back to the camera once the device finished reading it.
//!
//! The frame's checksum is that of the flipped frame, computed by the
//! producer from the capture (a CPU read under the buffer's sync guard, no
//! copy), so each consumer's check proves the device wrote the transform.
//! A thread watches every sync_file to time the device per frame.

use super::histogram::LatencyHistogram;
use super::pattern::flipped_checksum;
use super::producer::{ensure_consumers, sleep_until, with_free_slot, Ended, Live, Stop, CAPTURE_TIMEOUT};
use super::report::VulkanSummary;
use super::source::{allocate_buffers, capture_constraints, open_capture, Capture, Setup, Source, V4l2Source};
use super::{DemoArgs, Through};

use dmabroker::buffer::BufferMapping;
use dmabroker::constraints::modifier::{choose_modifier, modifier_name, ModifierOffer};
use dmabroker::device::v4l2::{Memory, Queue};
use dmabroker::fence::{FenceStatus, SyncFile};
use dmabroker::format::{Layout, PixelFormat};
use dmabroker::pool::{FenceImport, FrameFlags, FrameMeta, PoolOptions, Producer};
use dmabroker::{Buffer, Heaps};
use dmabroker_vulkan::{ImportedImage, Submission, Usage, Vulkan};
use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Capture buffers the camera fills (the pool's buffers are the output).
const CAPTURE_BUFFERS: usize = 4;
/// Longest the producer (or the watcher) waits for the device.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(20);
/// What the device does to each frame.
const OPERATION: &str = "vertical flip by vkCmdCopyImage";

/// The capture device, its buffers and the Vulkan device, once set up.
pub(super) struct VulkanSource {
    pub(super) capture: V4l2Source,
    vk: Vulkan,
    /// The buffers the camera fills, imported into Vulkan as copy sources.
    camera: Vec<Buffer>,
    /// The frame layout (with the modifier both devices take).
    layout: Layout,
    capture_heap: String,
}

impl VulkanSource {
    /// The summary's stage, before any frame.
    pub(super) fn summary(&self) -> VulkanSummary {
        VulkanSummary {
            device: self.vk.provenance(),
            operation: OPERATION.into(),
            capture_heap: self.capture_heap.clone(),
            capture_buffers: self.camera.len() as u32,
            ..VulkanSummary::default()
        }
    }
}

/// Open the Vulkan device and the camera (XR24: XRGB8888, a format Vulkan
/// copies as `B8G8R8A8`), agree on a modifier, allocate the capture
/// buffers for both and the pool's buffers for Vulkan.
pub(super) fn setup(args: &DemoArgs, options: &PoolOptions, heaps: &Heaps, through: Through) -> anyhow::Result<Setup> {
    let Through::Vulkan(index) = through;
    let vk = Vulkan::open(index).map_err(|e| anyhow::anyhow!("--through {through}: {e}"))?;
    let Capture { dev, buf_type, format, fmt, layout } =
        open_capture(args, &[PixelFormat::Xbgr32])?.ok_or_else(|| {
            anyhow::anyhow!("--through {through}: no V4L2 capture device (no /dev/video* node captures video)")
        })?;
    let path = dev.path().to_path_buf();
    let drm = format.to_drm().ok_or_else(|| anyhow::anyhow!("{format} has no DRM fourcc"))? as u32;
    let offer = vk.modifier_offer(drm, Usage::TRANSFER).map_err(|e| anyhow::anyhow!("--through {through}: {e}"))?;
    let chosen = choose_modifier(&[ModifierOffer::linear(path.display().to_string(), drm, 1), offer], None)
        .map_err(|e| anyhow::anyhow!("--through {through}: {e}"))?;
    let layout = layout.with_modifier(chosen.modifier);
    if u64::from(fmt.planes[0].bytesperline) != layout.bytesperline() {
        anyhow::bail!(
            "{} pads {format} lines to {} bytes, the Vulkan import expects {}: pick another --size",
            path.display(),
            fmt.planes[0].bytesperline,
            layout.bytesperline()
        );
    }
    let frame_len = layout.total_size().max(u64::from(fmt.planes[0].sizeimage));
    let both = capture_constraints(&path)?.merge(&vk.constraints())?;
    let (camera, capture_heap, why) =
        allocate_buffers(heaps, args.heap.as_deref(), &both, CAPTURE_BUFFERS, frame_len, "demo-capture")?;
    let options = PoolOptions { buffer_len: frame_len, ..options.clone() };
    let (out, heap, out_why) =
        allocate_buffers(heaps, args.heap.as_deref(), &vk.constraints(), options.buffers, frame_len, "demo-vulkan")?;
    let producer = Producer::new(out, &options)?;
    let caps = dev.capabilities();
    let description = format!(
        "V4L2 capture {} ({} \"{}\", V4L2_MEMORY_DMABUF into {CAPTURE_BUFFERS} {capture_heap} buffers: {why}), \
         through {}: each capture imported as a VkImage (modifier {}), {OPERATION} into the pool's {heap} buffers \
         ({out_why}), the completion carried as a sync_file",
        path.display(),
        caps.driver,
        caps.card,
        vk.provenance(),
        modifier_name(chosen.modifier)
    );
    Ok(Setup {
        source: Source::Through(Box::new(VulkanSource {
            capture: V4l2Source { dev, buf_type, frame_len: u64::from(fmt.planes[0].sizeimage).min(frame_len) },
            vk,
            camera,
            layout,
            capture_heap,
        })),
        producer,
        width: fmt.width,
        height: fmt.height,
        format,
        frame_len,
        heap,
        description,
        sink: None,
    })
}

/// A copy on the device: which capture it reads, which pool buffer it
/// writes, and the submission (kept until the device is done with both).
struct InFlight<'a> {
    capture: u32,
    slot: u32,
    submission: Submission<'a>,
}

/// The camera's queue and which of its buffers it holds.
struct Camera<'q, 'b> {
    queue: Queue<'q>,
    buffers: &'b [Buffer],
    in_device: usize,
}

impl Camera<'_, '_> {
    /// Lend capture buffer `i` to the device again.
    fn give_back(&mut self, i: u32) -> anyhow::Result<()> {
        let b = &self.buffers[i as usize];
        self.queue.queue_dmabuf(i, &[b.as_fd()], &[u32::try_from(b.len()).unwrap_or(u32::MAX)])?;
        self.in_device += 1;
        Ok(())
    }
}

/// Retire finished copies (oldest first: one queue completes in order),
/// giving their capture buffers back to the camera; `wait`: wait for the
/// oldest one at least.
fn retire(pending: &mut VecDeque<InFlight<'_>>, camera: &mut Camera<'_, '_>, mut wait: bool) -> anyhow::Result<()> {
    while let Some(f) = pending.front() {
        if wait {
            f.submission.wait(DEVICE_TIMEOUT)?;
            wait = false;
        } else if !f.submission.is_done()? {
            break;
        }
        if let Some(f) = pending.pop_front() {
            camera.give_back(f.capture)?;
        }
    }
    Ok(())
}

/// The device's time per frame, from the sync_files: submitted to signalled.
#[derive(Default)]
struct DeviceTimes {
    hist: Option<LatencyHistogram>,
    first_submit: Option<Instant>,
    last_done: Option<Instant>,
    done: u64,
    error: Option<String>,
}

/// A frame to time: its sync_file (a duplicate) or, when it had none, when
/// the producer saw it done; and when it was submitted.
type Watched = (Option<OwnedFd>, Instant, Option<Instant>);

/// A thread that waits on each frame's sync_file (a duplicate; the pool
/// carries the original) and records when it signalled; frames without one
/// (the producer waited) come with their completion time.
struct Watcher {
    tx: Option<mpsc::Sender<Watched>>,
    thread: Option<std::thread::JoinHandle<DeviceTimes>>,
}

impl Watcher {
    fn start() -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel::<Watched>();
        let thread = std::thread::Builder::new().name("vulkan-fences".into()).spawn(move || {
            let mut t = DeviceTimes { hist: Some(LatencyHistogram::new()), ..DeviceTimes::default() };
            for (fd, submitted, done) in rx {
                t.first_submit.get_or_insert(submitted);
                let done = match (fd, done) {
                    (_, Some(done)) => done,
                    (Some(fd), None) => match SyncFile::new(fd)
                        .map_err(|e| e.to_string())
                        .and_then(|f| f.wait(DEVICE_TIMEOUT).map_err(|e| e.to_string()))
                    {
                        Ok(_) => Instant::now(),
                        Err(e) => {
                            t.error.get_or_insert(e);
                            continue;
                        }
                    },
                    (None, None) => continue,
                };
                if let Some(h) = t.hist.as_mut() {
                    h.record(ns(done.saturating_duration_since(submitted)));
                }
                t.done += 1;
                t.last_done = Some(done);
            }
            t
        })?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    fn watch(&self, fence: &SyncFile, submitted: Instant) -> anyhow::Result<()> {
        let dup = fence.as_fd().try_clone_to_owned()?;
        self.send(Some(dup), submitted, None);
        Ok(())
    }

    fn send(&self, fd: Option<OwnedFd>, submitted: Instant, done: Option<Instant>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((fd, submitted, done));
        }
    }

    /// Every frame sent so far, timed.
    fn finish(mut self) -> DeviceTimes {
        drop(self.tx.take());
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

/// The frame loop of `--through vulkan`: capture, submit the device's
/// copy into a free pool buffer, hand it on with the copy's sync_file.
pub(super) fn produce(
    args: &DemoArgs,
    producer: &mut Producer,
    live: &Live,
    stop: &Stop,
    period: Option<Duration>,
    source: &VulkanSource,
    summary: &mut VulkanSummary,
) -> anyhow::Result<Ended> {
    let vk = &source.vk;
    let layout = &source.layout;
    let import = |b: &Buffer| vk.import(b, b.len(), layout, Usage::TRANSFER);
    let captures: Vec<ImportedImage<'_>> = source.camera.iter().map(import).collect::<Result<_, _>>()?;
    let outputs: Vec<ImportedImage<'_>> = producer.buffers().map(import).collect::<Result<_, _>>()?;
    let mut maps: Vec<BufferMapping> = source.camera.iter().map(Buffer::map_read).collect::<Result<_, _>>()?;
    let cap = &source.capture;
    let path = cap.dev.path();
    let n = source.camera.len() as u32;
    let queue = cap.dev.request_buffers(cap.buf_type, Memory::DmaBuf, n)?;
    if queue.count() < n {
        anyhow::bail!("{} granted {} buffer slots of the {n} asked", path.display(), queue.count());
    }
    let mut camera = Camera { queue, buffers: &source.camera, in_device: 0 };
    for i in 0..n {
        camera.give_back(i)?;
    }
    camera.queue.stream_on()?;
    let (pitch, rows) = (layout.bytesperline() as usize, layout.height() as usize);
    let row_bytes = layout.width() as usize * 4;
    let used = layout.bytesperline() * u64::from(layout.height());
    let watcher = Watcher::start()?;
    let mut submit_times = LatencyHistogram::new();
    let mut export_times = LatencyHistogram::new();
    let mut pending: VecDeque<InFlight<'_>> = VecDeque::new();
    let mut due = Instant::now();
    let mut ended = Ended::Complete;
    for k in 0..args.frames {
        if stop.signal().is_some() {
            ended = Ended::Interrupted;
            break;
        }
        // Copies that finished give their captures back; with none left in
        // the camera, the oldest copy is waited for.
        retire(&mut pending, &mut camera, false)?;
        if camera.in_device == 0 {
            if pending.is_empty() {
                anyhow::bail!("{} holds no buffer and no copy is pending", path.display());
            }
            retire(&mut pending, &mut camera, true)?;
        }
        let d = camera.queue.dequeue(Some(CAPTURE_TIMEOUT)).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        camera.in_device -= 1;
        let c = d.index;
        let map = maps
            .get_mut(c as usize)
            .ok_or_else(|| anyhow::anyhow!("{} returned buffer {c} that was not queued", path.display()))?;
        let sum = {
            let r = map.begin_read()?;
            flipped_checksum(&r, pitch, rows, row_bytes)
        };
        let flags = if d.error { FrameFlags::ERROR } else { FrameFlags::empty() };
        let sent = with_free_slot(producer, stop, |slot| {
            let s = slot.index();
            // A copy still writing this buffer (a frame the pool took back
            // unread) finishes before the next one is submitted.
            while let Some(i) = pending.iter().position(|f| f.slot == s) {
                pending[i].submission.wait(DEVICE_TIMEOUT)?;
                if let Some(f) = pending.remove(i) {
                    camera.give_back(f.capture)?;
                }
            }
            let t0 = Instant::now();
            let mut submission = vk.submit_copy_flipped(&captures[c as usize], &outputs[s as usize])?;
            submit_times.record(ns(t0.elapsed()));
            export_times.record(ns(submission.export_time()));
            let meta = FrameMeta::new(used).meta(sum).flags(flags);
            match submission.take_sync_file() {
                Some(fence) => {
                    watcher.watch(&fence, submission.submitted_at())?;
                    if summary.sync_file.is_none() {
                        summary.sync_file =
                            Some(fence.info().map_or_else(|e| format!("(no info: {e})"), |i| i.to_string()));
                    }
                    if matches!(fence.status(), Ok(FenceStatus::Signalled)) {
                        summary.signalled_at_handoff += 1;
                    }
                    slot.submit_with_fence(meta, fence, FenceImport::CarryOnly)?;
                    summary.fenced += 1;
                }
                None => {
                    // Nothing for the consumers to wait on: the producer waits.
                    if summary.no_sync_file.is_none() {
                        summary.no_sync_file = Some(submission.no_sync_file().unwrap_or("none exported").to_owned());
                    }
                    submission.wait(DEVICE_TIMEOUT)?;
                    watcher.send(None, submission.submitted_at(), Some(Instant::now()));
                    slot.submit(meta)?;
                }
            }
            pending.push_back(InFlight { capture: c, slot: s, submission });
            Ok(())
        })?;
        if sent.is_none() {
            ended = Ended::Interrupted;
            break;
        }
        summary.frames += 1;
        live.produced.fetch_add(1, Ordering::Relaxed);
        producer.maintain_now();
        ensure_consumers(producer)?;
        if let Some(p) = period.filter(|_| k + 1 < args.frames) {
            due = due.checked_add(p).unwrap_or(due);
            if !sleep_until(due, stop) {
                ended = Ended::Interrupted;
                break;
            }
        }
    }
    camera.queue.stream_off()?;
    for f in &pending {
        f.submission.wait(DEVICE_TIMEOUT)?;
    }
    drop(pending);
    let times = watcher.finish();
    summary.submit_p50_ns = submit_times.quantile(0.5);
    summary.export_p50_ns = export_times.quantile(0.5);
    if let Some(h) = &times.hist {
        (summary.gpu_p50_ns, summary.gpu_p99_ns) = h.p50_p99();
        summary.gpu_max_ns = h.max;
    }
    if let (Some(a), Some(b)) = (times.first_submit, times.last_done) {
        let span = b.saturating_duration_since(a).as_secs_f64();
        summary.gpu_fps = if span > 0.0 { times.done as f64 / span } else { 0.0 };
    }
    if let Some(e) = times.error {
        anyhow::bail!("waiting on a Vulkan sync_file: {e}");
    }
    Ok(ended)
}
