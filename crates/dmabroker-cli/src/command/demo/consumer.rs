//! The consumer role: attach, verify every frame's checksum, report JSON lines.

use super::histogram::LatencyHistogram;
use super::pattern::checksum;
use super::report::Report;
use super::sink::{KmsSink, SinkFrame};
use super::{DemoArgs, DemoTransport};

use dmabroker::pool::PoolError;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait for a frame's fence (lavapipe under emulation is slow).
const FENCE_TIMEOUT: Duration = Duration::from_secs(20);

pub(super) fn run_consumer(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    // Ctrl-C on a terminal, `timeout` or `kill -TERM -PGID` reach the whole
    // process group: the producer stops and closes the stream in order, and
    // this process ends with it (having reported every frame it got).
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::new(AtomicBool::new(false)))?;
    }
    let mut consumer = DemoTransport::connect(args)?;
    // `--sink`: this consumer shows the frames (the producer passes the
    // frame's format, size and pitch).
    let kms = match &args.sink {
        Some(card) => Some(dmabroker::device::kms::KmsDevice::open(card)?),
        None => None,
    };
    let mut sink = match &kms {
        Some(kms) => {
            let code = args.sink_format.as_deref().unwrap_or_default();
            let format = dmabroker::format::Fourcc::parse(code)
                .and_then(|f| dmabroker::format::PixelFormat::from_v4l2(f.0))
                .ok_or_else(|| anyhow::anyhow!("--sink-format `{code}`: not a known V4L2 fourcc"))?;
            let frame = SinkFrame { format, width: args.size.0, height: args.size.1, pitch: args.sink_pitch };
            Some(KmsSink::new(kms, &frame)?)
        }
        None => None,
    };
    // The frame on screen: released once the next one replaced it.
    let mut on_screen: Option<dmabroker::pool::KeptFrame> = None;
    let mut out = std::io::stdout().lock();
    let mut report = Report { id: args.id, ..Report::default() };
    // Fixed memory however many frames come (--frames can be 2^64 - 1).
    let mut all = LatencyHistogram::new();
    let mut window = LatencyHistogram::new();
    let mut last_print = Instant::now();
    let mut last_seq: Option<u64> = None;
    let end = loop {
        let (mut outcome, kept) = match consumer.recv(Some(Duration::from_secs(30))) {
            Ok(mut frame) => {
                let latency = dmabroker::pool::now_ns().saturating_sub(frame.info().timestamp_ns);
                let info = *frame.info();
                // `--through`: the device may still be writing the frame;
                // its fence says when it is done (frames without one pass).
                if frame.fence().is_some() {
                    match frame.wait_fence(FENCE_TIMEOUT) {
                        Ok(waited) => {
                            let ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
                            report.fenced += 1;
                            report.fence_waited_ns = report.fence_waited_ns.saturating_add(ns);
                            report.fence_wait_max_ns = report.fence_wait_max_ns.max(ns);
                        }
                        Err(e) => {
                            report.bad += 1;
                            eprintln!("consumer {}: {e}", args.id);
                        }
                    }
                }
                let data = frame.read()?;
                let used = usize::try_from(info.bytes_used).unwrap_or(usize::MAX).min(data.len());
                if checksum(&data[..used]) != info.meta {
                    report.bad += 1;
                    eprintln!("consumer {}: frame {} checksum mismatch", args.id, info.seq);
                }
                if last_seq.is_some_and(|s| info.seq != s + 1) {
                    report.gaps += 1;
                }
                last_seq = Some(info.seq);
                report.frames += 1;
                all.record(latency);
                window.record(latency);
                drop(data);
                (None, sink.is_some().then(|| frame.keep()))
            }
            Err(PoolError::Closed) => (Some("closed".to_owned()), None),
            Err(PoolError::ProducerGone) => (Some("producer-gone".to_owned()), None),
            Err(e) => (Some(e.to_string()), None),
        };
        if let (Some(sink), Some(kept)) = (sink.as_mut(), kept) {
            let shown = sink.show(kept.info().index, consumer.kept_buffer(&kept)?);
            if let Some(prev) = on_screen.replace(kept) {
                let _ = consumer.release_kept(prev);
            }
            report.sink = Some(sink.report.clone());
            if let Err(e) = shown {
                eprintln!("consumer {}: {e:#}", args.id);
                outcome = Some(format!("sink: {e:#}"));
            }
        }
        if let Some(end) = outcome {
            break end;
        }
        if last_print.elapsed() >= Duration::from_millis(250) {
            (report.p50_ns, report.p99_ns) = window.p50_p99();
            report.wakes = consumer.wakes();
            report.dropped = consumer.dropped();
            window.clear();
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
            out.flush()?;
            last_print = Instant::now();
        }
    };
    if let Some(sink) = sink.as_mut() {
        sink.off();
        report.sink = Some(sink.report.clone());
    }
    if let Some(prev) = on_screen.take() {
        let _ = consumer.release_kept(prev);
    }
    drop(sink);
    (report.p50_ns, report.p99_ns) = all.p50_p99();
    report.wakes = consumer.wakes();
    report.dropped = consumer.dropped();
    report.end = Some(end.clone());
    writeln!(out, "{}", serde_json::to_string(&report)?)?;
    out.flush()?;
    Ok(if end == "closed" && report.bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
