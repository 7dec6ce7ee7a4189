//! The consumer role: attach, verify every frame's checksum, report JSON lines.

use super::histogram::LatencyHistogram;
use super::pattern::checksum;
use super::report::Report;
use super::{DemoArgs, DemoTransport};

use dmabroker::pool::PoolError;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) fn run_consumer(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    // Ctrl-C on a terminal, `timeout` or `kill -TERM -PGID` reach the whole
    // process group: the producer stops and closes the stream in order, and
    // this process ends with it (having reported every frame it got).
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::new(AtomicBool::new(false)))?;
    }
    let mut consumer = DemoTransport::connect(args)?;
    let mut out = std::io::stdout().lock();
    let mut report = Report { id: args.id, ..Report::default() };
    // Fixed memory however many frames come (--frames can be 2^64 - 1).
    let mut all = LatencyHistogram::new();
    let mut window = LatencyHistogram::new();
    let mut last_print = Instant::now();
    let mut last_seq: Option<u64> = None;
    let end = loop {
        let outcome = match consumer.recv(Some(Duration::from_secs(30))) {
            Ok(mut frame) => {
                let latency = dmabroker::pool::now_ns().saturating_sub(frame.info().timestamp_ns);
                let info = *frame.info();
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
                None
            }
            Err(PoolError::Closed) => Some("closed".to_owned()),
            Err(PoolError::ProducerGone) => Some("producer-gone".to_owned()),
            Err(e) => Some(e.to_string()),
        };
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
    (report.p50_ns, report.p99_ns) = all.p50_p99();
    report.wakes = consumer.wakes();
    report.dropped = consumer.dropped();
    report.end = Some(end.clone());
    writeln!(out, "{}", serde_json::to_string(&report)?)?;
    out.flush()?;
    Ok(if end == "closed" && report.bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
