//! The live status line and the final summary (text or JSON).

use super::producer::Live;
use super::sink::SinkReport;

use crate::command::measure::fmt_ns;
use dmabroker::size::format_size;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One consumer's report line (JSON on its stdout).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Report {
    pub(super) id: u32,
    pub(super) frames: u64,
    pub(super) bad: u64,
    pub(super) gaps: u64,
    pub(super) wakes: u64,
    /// Frames the producer took back before this consumer read them.
    #[serde(default)]
    pub(super) dropped: u64,
    /// Latency percentiles over the last window (progress) or the whole run (final), ns.
    pub(super) p50_ns: u64,
    pub(super) p99_ns: u64,
    /// Set on the final line: "closed", "producer-gone", or an error.
    pub(super) end: Option<String>,
    /// The consumer showing frames on `--sink`.
    #[serde(default)]
    pub(super) sink: Option<SinkReport>,
    /// Frames that came with a sync_file this consumer waited on
    /// (`--through`), the total and longest time it waited, ns.
    #[serde(default)]
    pub(super) fenced: u64,
    #[serde(default)]
    pub(super) fence_waited_ns: u64,
    #[serde(default)]
    pub(super) fence_wait_max_ns: u64,
}

/// The `--through vulkan` stage in the summary (`--json`).
#[derive(Debug, Default, serde::Serialize)]
#[cfg_attr(not(feature = "vulkan"), allow(dead_code))]
pub(super) struct VulkanSummary {
    /// `vulkan:0 (llvmpipe ...)`.
    pub(super) device: String,
    /// What the device does to each frame.
    pub(super) operation: String,
    /// The capture buffers' heap (imported into Vulkan as the source).
    pub(super) capture_heap: String,
    /// How many capture buffers (the device fills them; Vulkan reads them).
    pub(super) capture_buffers: u32,
    /// Frames submitted to the device.
    pub(super) frames: u64,
    /// Frames handed on with the submission's sync_file (the producer did
    /// not wait for the device); the rest were waited by the producer.
    pub(super) fenced: u64,
    /// Why frames went without a sync_file, when some did.
    pub(super) no_sync_file: Option<String>,
    /// The first sync_file as the kernel describes it (name, timeline, driver).
    pub(super) sync_file: Option<String>,
    /// Fenced frames whose sync_file had already signalled when the
    /// producer handed them on: the driver's export waited for the copy.
    pub(super) signalled_at_handoff: u64,
    /// Producer time to record, submit and export one frame, p50, ns.
    pub(super) submit_p50_ns: u64,
    /// Of which the sync_file export (`vkGetSemaphoreFdKHR`), p50, ns.
    pub(super) export_p50_ns: u64,
    /// Submission to completion (the sync_file signalled), per frame, ns.
    pub(super) gpu_p50_ns: u64,
    pub(super) gpu_p99_ns: u64,
    pub(super) gpu_max_ns: u64,
    /// Frames completed over the time from the first submission to the
    /// last completion.
    pub(super) gpu_fps: f64,
}

/// The `--sink` display in the summary (`--json`).
#[derive(Debug, serde::Serialize)]
pub(super) struct SinkSummary {
    /// The card, driver, connector, mode and plane.
    pub(super) target: String,
    /// Frames put on screen by an atomic commit.
    pub(super) shown: u64,
    /// Frames shown over the time between the first and the last commit.
    pub(super) scanout_fps: f64,
    pub(super) commit_p50_ns: u64,
    pub(super) commit_max_ns: u64,
}

/// One consumer in the summary (`--json`).
#[derive(Debug, serde::Serialize)]
pub(super) struct ConsumerSummary {
    pub(super) id: u32,
    pub(super) pid: u32,
    pub(super) frames: u64,
    pub(super) bad: u64,
    /// Frames the producer took back before this consumer read them.
    pub(super) dropped: u64,
    /// Frames handed to it (the producer's count; `None` when it was lost).
    pub(super) delivered: Option<u64>,
    pub(super) p50_ns: u64,
    pub(super) p99_ns: u64,
    pub(super) wakes: u64,
    /// Frames whose sync_file it waited on (`--through`), and how long in all, ns.
    pub(super) fenced: u64,
    pub(super) fence_waited_ns: u64,
    pub(super) fence_wait_max_ns: u64,
    pub(super) end: Option<String>,
}

/// The run's summary (`--json`).
#[derive(Debug, serde::Serialize)]
pub(super) struct Summary {
    /// `ok`, `FAILED` or `interrupted`.
    pub(super) result: &'static str,
    /// Why the producer stopped early, if it did.
    pub(super) error: Option<String>,
    /// The signal that stopped the run.
    pub(super) signal: Option<usize>,
    pub(super) produced: u64,
    pub(super) elapsed_s: f64,
    pub(super) fps: f64,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) format: String,
    pub(super) frame_len: u64,
    pub(super) source: String,
    pub(super) heap: String,
    pub(super) buffers: u32,
    pub(super) backpressure: &'static str,
    /// Frames taken back from at least one consumer (drop-oldest).
    pub(super) dropped: u64,
    pub(super) lost_consumers: u64,
    pub(super) bytes_not_copied: u64,
    pub(super) consumers: Vec<ConsumerSummary>,
    /// `--sink`: what the display showed.
    pub(super) sink: Option<SinkSummary>,
    /// `--through vulkan`: what the GPU stage did.
    pub(super) vulkan: Option<VulkanSummary>,
}

pub(super) fn print_summary(s: &Summary) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let mut text = String::new();
    writeln!(
        text,
        "{} frames of {}x{} {} ({}) in {:.2} s: {:.1} fps; source: {}",
        s.produced,
        s.width,
        s.height,
        s.format,
        format_size(s.frame_len),
        s.elapsed_s,
        s.fps,
        s.source
    )?;
    for c in &s.consumers {
        writeln!(
            text,
            "consumer {}: {} frames, {} checksum mismatches, {} dropped, latency p50 {} p99 {}, {} futex wake-ups, end: {}",
            c.id,
            c.frames,
            c.bad,
            c.dropped,
            fmt_ns(c.p50_ns),
            fmt_ns(c.p99_ns),
            c.wakes,
            c.end.as_deref().unwrap_or("no report")
        )?;
    }
    let deliveries = s.consumers.iter().map(|c| c.frames).sum::<u64>();
    writeln!(
        text,
        "bytes not copied: {} ({deliveries} deliveries of {} each); frames dropped by backpressure: {}",
        format_size(s.bytes_not_copied),
        format_size(s.frame_len),
        s.dropped
    )?;
    if let Some(k) = &s.sink {
        writeln!(
            text,
            "sink {}: {} frames shown, scanout {:.1} fps (first to last commit), commit latency p50 {} max {}",
            k.target,
            k.shown,
            k.scanout_fps,
            fmt_ns(k.commit_p50_ns),
            fmt_ns(k.commit_max_ns)
        )?;
    }
    if let Some(v) = &s.vulkan {
        writeln!(
            text,
            "vulkan {}: {} frames ({}), {} handed on with the submission's sync_file; per frame: submit {}, \
             device p50 {} p99 {} max {}; {:.1} frames/s on the device; capture: {} {} buffers imported, no CPU copy",
            v.device,
            v.frames,
            v.operation,
            v.fenced,
            fmt_ns(v.submit_p50_ns),
            fmt_ns(v.gpu_p50_ns),
            fmt_ns(v.gpu_p99_ns),
            fmt_ns(v.gpu_max_ns),
            v.gpu_fps,
            v.capture_buffers,
            v.capture_heap
        )?;
        if let Some(fence) = &v.sync_file {
            writeln!(
                text,
                "vulkan: sync_file {fence}; {} of {} already signalled when handed on (export p50 {}{})",
                v.signalled_at_handoff,
                v.fenced,
                fmt_ns(v.export_p50_ns),
                if v.fenced > 0 && v.signalled_at_handoff == v.fenced {
                    ": the driver's export waits for the copy, so the producer did"
                } else {
                    ""
                }
            )?;
        }
        if let Some(why) = &v.no_sync_file {
            writeln!(text, "vulkan: frames without a sync_file (the producer waited for the device): {why}")?;
        }
        for c in &s.consumers {
            writeln!(
                text,
                "consumer {}: waited on {} sync_files, {} in all, longest {}",
                c.id,
                c.fenced,
                fmt_ns(c.fence_waited_ns),
                fmt_ns(c.fence_wait_max_ns)
            )?;
        }
    }
    writeln!(text, "result: {}", s.result)?;
    crate::output::emit(&text)
}

/// The live status line: ~4 times a second on a terminal, once a second
/// as plain lines otherwise (logs, CI). The fps of each line counts the
/// frames of its interval over the time frames were produced in it (the
/// last interval ends when production ended, not at the tick).
pub(super) fn status_loop(live: &Live, done: &AtomicBool, frame_len: u64, started: Instant) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty { Duration::from_millis(250) } else { Duration::from_secs(1) };
    let mut last = (started, 0u64);
    let mut printed = false;
    while !done.load(Ordering::Relaxed) {
        // Sleep in slices: a run that ends early prints its last line at once.
        let tick = last.0 + every;
        while Instant::now() < tick && live.finished_at(started).is_none() && !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10).min(tick.saturating_duration_since(Instant::now())));
        }
        let finished = live.finished_at(started);
        let produced = live.produced.load(Ordering::Relaxed);
        let end = finished.unwrap_or_else(Instant::now).max(last.0);
        let span = end.duration_since(last.0).as_secs_f64();
        let fps = if span > 0.0 { produced.saturating_sub(last.1) as f64 / span } else { 0.0 };
        last = (end, produced);
        let reports = live.reports.lock().map(|r| r.clone()).unwrap_or_default();
        let p50 = reports.iter().map(|r| r.p50_ns).max().unwrap_or(0);
        let p99 = reports.iter().map(|r| r.p99_ns).max().unwrap_or(0);
        let received: u64 = reports.iter().map(|r| r.frames).sum();
        let line = format!(
            "frames {produced}  {fps:6.1} fps  handoff latency p50 {} p99 {}  not copied {}",
            fmt_ns(p50),
            fmt_ns(p99),
            format_size(received.saturating_mul(frame_len))
        );
        if tty {
            eprint!("\r\x1b[K{line}");
        } else {
            eprintln!("{line}");
        }
        printed = true;
        if finished.is_some() {
            break;
        }
    }
    if tty && printed {
        eprintln!();
    }
}
