//! `dmabroker demo`: a zero-copy streaming pool end to end.
//!
//! This process is the producer; it re-executes itself (`/proc/self/exe demo
//! --role consumer ...`, hidden arguments) for each consumer process. Each
//! consumer checks every frame against the checksum the producer put in the
//! ring entry's `meta` word and reports progress as JSON lines on its stdout,
//! which the producer turns into the live status line.
//!
//! The transport is a parameter ([`DemoTransport`]): today a pool socket the
//! producer listens on; an embedded broker can become another variant without
//! touching the producer or consumer loops.

use dmabroker::pool::{
    Backpressure, Consumer, ConsumerOptions, FrameMeta, PoolError, PoolOptions, Producer, WaitMode,
};
use dmabroker::size::format_size;
use dmabroker::Heaps;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Arguments of `dmabroker demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Frames to stream.
    #[arg(long, default_value_t = 300)]
    pub frames: u64,
    /// Frame size WxH (NV12: W*H*3/2 bytes; W and H even).
    #[arg(long, default_value = "1920x1080", value_parser = parse_wh)]
    pub size: (u32, u32),
    /// Heap for the pool's buffers (see `dmabroker heaps`).
    #[arg(long, default_value = "memfd")]
    pub heap: String,
    /// Buffers in the pool (4-8 suit video).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub buffers: u32,
    /// Consumer processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub consumers: u32,
    /// Frame rate to pace the producer at; 0 = as fast as the consumers go.
    #[arg(long, default_value_t = 0.0)]
    pub fps: f64,
    /// What the producer does when consumers hold every buffer.
    #[arg(long, value_enum, default_value_t = PolicyArg::Block)]
    pub backpressure: PolicyArg,
    /// Internal: run as a consumer process.
    #[arg(long, hide = true)]
    pub role: Option<String>,
    /// Internal: the consumer's pool socket.
    #[arg(long, hide = true)]
    pub socket: Option<PathBuf>,
    /// Internal: the consumer's number.
    #[arg(long, hide = true, default_value_t = 0)]
    pub id: u32,
}

/// `--backpressure` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyArg {
    /// Wait for consumers (lossless).
    Block,
    /// Drop the oldest unread frame.
    DropOldest,
}

fn parse_wh(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(|| format!("`{s}`: expected WIDTHxHEIGHT, e.g. 1920x1080"))?;
    let parse = |v: &str| v.trim().parse::<u32>().map_err(|_| format!("`{v}` is not a number"));
    let (w, h) = (parse(w)?, parse(h)?);
    if w == 0 || h == 0 || w % 2 != 0 || h % 2 != 0 {
        return Err(format!("{w}x{h}: NV12 needs a non-zero even width and height"));
    }
    if u64::from(w) * u64::from(h) > 1 << 28 {
        return Err(format!("{w}x{h} is larger than 16384x16384"));
    }
    Ok((w, h))
}

/// How the demo's consumers reach the producer.
#[derive(Debug, Clone)]
pub enum DemoTransport {
    /// The producer listens on a pool socket at this path.
    PoolSocket(PathBuf),
}

impl DemoTransport {
    /// A socket under `$XDG_RUNTIME_DIR` (or the temp dir), unique to this process.
    pub fn default_socket() -> Self {
        let dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        Self::PoolSocket(dir.join(format!("dmabroker-demo-{}.sock", std::process::id())))
    }

    fn serve(&self, producer: &mut Producer) -> anyhow::Result<()> {
        match self {
            Self::PoolSocket(path) => {
                producer.listen(path)?;
            }
        }
        Ok(())
    }

    fn consumer_args(&self) -> Vec<String> {
        match self {
            Self::PoolSocket(path) => vec!["--socket".into(), path.display().to_string()],
        }
    }

    fn connect(args: &DemoArgs) -> anyhow::Result<Consumer> {
        let path = args.socket.as_ref().ok_or_else(|| anyhow::anyhow!("--role consumer needs --socket"))?;
        let options = ConsumerOptions { wait: WaitMode::default(), ..Default::default() };
        Ok(Consumer::connect_with(path, &options)?)
    }
}

/// One consumer's report line (JSON on its stdout).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Report {
    id: u32,
    frames: u64,
    bad: u64,
    gaps: u64,
    wakes: u64,
    /// Latency percentiles over the last window (progress) or the whole run (final), ns.
    p50_ns: u64,
    p99_ns: u64,
    /// Set on the final line: "closed", "producer-gone", or an error.
    end: Option<String>,
}

pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    match args.role.as_deref() {
        None => run_producer(args, &DemoTransport::default_socket()),
        Some("consumer") => run_consumer(args),
        Some(other) => anyhow::bail!("unknown demo role `{other}`"),
    }
}

/// Write a moving NV12 test pattern for frame `n`: a luma gradient that
/// scrolls, a bright vertical bar that moves, neutral chroma, and the frame
/// number in the first 8 bytes so no two frames are alike.
pub(crate) fn test_pattern(buf: &mut [u8], width: usize, height: usize, n: u64) {
    let (y_plane, uv_plane) = buf.split_at_mut(width * height);
    let bar = (n as usize * 8) % width.max(1);
    for (r, row) in y_plane.chunks_mut(width).enumerate() {
        row.fill((r as u64 + 2 * n) as u8);
        let end = (bar + 64).min(row.len());
        row[bar.min(end)..end].fill(235);
    }
    for (r, row) in uv_plane.chunks_mut(width).enumerate() {
        row.fill(128u8.wrapping_add((r as u64 ^ n) as u8 & 7));
    }
    let k = buf.len().min(8);
    buf[..k].copy_from_slice(&n.to_le_bytes()[..k]);
}

/// 64-bit frame checksum: FNV-1a over little-endian 8-byte words (then the
/// tail bytes). Fast enough for 3 MB per frame on one core (~0.5 ms).
pub(crate) fn checksum(buf: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = buf.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(0x100_0000_01b3);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// p50 and p99 of samples (sorted in place); zeros when empty.
pub(crate) fn p50_p99(samples: &mut [u64]) -> (u64, u64) {
    if samples.is_empty() {
        return (0, 0);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.50), at(0.99))
}

pub(crate) fn fmt_ns(ns: u64) -> String {
    if ns < 10_000 {
        format!("{:.1} us", ns as f64 / 1e3)
    } else if ns < 10_000_000 {
        format!("{:.0} us", ns as f64 / 1e3)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

fn run_consumer(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let mut consumer = DemoTransport::connect(args)?;
    let mut out = std::io::stdout().lock();
    let mut report = Report { id: args.id, ..Report::default() };
    let mut all = Vec::with_capacity(args.frames as usize);
    let mut window = Vec::new();
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
                all.push(latency);
                window.push(latency);
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
            (report.p50_ns, report.p99_ns) = p50_p99(&mut window);
            report.wakes = consumer.wakes();
            window.clear();
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
            out.flush()?;
            last_print = Instant::now();
        }
    };
    (report.p50_ns, report.p99_ns) = p50_p99(&mut all);
    report.wakes = consumer.wakes();
    report.end = Some(end.clone());
    writeln!(out, "{}", serde_json::to_string(&report)?)?;
    out.flush()?;
    Ok(if end == "closed" && report.bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

struct Live {
    reports: Mutex<Vec<Report>>,
    produced: AtomicU64,
}

fn run_producer(args: &DemoArgs, transport: &DemoTransport) -> anyhow::Result<ExitCode> {
    let (width, height) = (args.size.0 as usize, args.size.1 as usize);
    let frame_len = (width * height * 3 / 2) as u64;
    let heaps = Heaps::discover();
    let policy = match args.backpressure {
        PolicyArg::Block => Backpressure::Block,
        PolicyArg::DropOldest => Backpressure::DropOldest,
    };
    let options = PoolOptions::new(args.buffers as usize, frame_len)
        .backpressure(policy)
        .max_consumers(args.consumers)
        .name("demo");
    let mut producer = Producer::allocate(&heaps, &args.heap, &options)?;
    transport.serve(&mut producer)?;
    // The device layer has no V4L2 capture source yet (device/v4l2.rs);
    // until it does, the demo says plainly that frames are synthetic.
    let source = "synthetic NV12 test pattern (no V4L2 capture source in the device layer yet)";
    eprintln!(
        "dmabroker demo: {} frames of {width}x{height} NV12 ({}) from a {source}; pool of {} {} buffers; {} consumer processes",
        args.frames,
        format_size(frame_len),
        args.buffers,
        args.heap,
        args.consumers
    );

    let live = Arc::new(Live { reports: Mutex::new(vec![Report::default(); args.consumers as usize]), produced: AtomicU64::new(0) });
    let mut children = Vec::new();
    let mut readers = Vec::new();
    for id in 0..args.consumers {
        let mut child = spawn_consumer(id, transport, args.frames)?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("consumer {id} has no stdout"))?;
        let live = Arc::clone(&live);
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(r) = serde_json::from_str::<Report>(&line) {
                    if let Ok(mut reports) = live.reports.lock() {
                        reports[id as usize] = r;
                    }
                }
            }
        }));
        children.push(child);
    }
    if !producer.wait_for_consumers(args.consumers as usize, Duration::from_secs(10)) {
        for c in &mut children {
            let _ = c.kill();
        }
        anyhow::bail!("the consumer processes did not attach within 10 s");
    }

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let status = {
        let (live, stop) = (Arc::clone(&live), Arc::clone(&stop));
        std::thread::spawn(move || status_loop(&live, &stop, frame_len))
    };
    let started = Instant::now();
    let period = (args.fps > 0.0).then(|| Duration::from_secs_f64(1.0 / args.fps));
    let mut result = Ok(());
    for n in 0..args.frames {
        let mut slot = match producer.acquire(Some(Duration::from_secs(30))) {
            Ok(s) => s,
            Err(e) => {
                result = Err(anyhow::anyhow!(e));
                break;
            }
        };
        let sum = {
            let mut w = slot.mapping().begin_write()?;
            let frame = &mut w[..frame_len as usize];
            test_pattern(frame, width, height, n);
            checksum(frame)
        };
        slot.submit(FrameMeta::new(frame_len).meta(sum))?;
        live.produced.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = period {
            let due = started + p * (n as u32 + 1);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    let elapsed = started.elapsed();
    let stats = producer.stats();
    producer.close();
    drop(producer);
    let mut failed = result.is_err();
    if let Err(e) = &result {
        eprintln!("dmabroker demo: producer stopped: {e:#}");
    }
    for (id, mut child) in children.into_iter().enumerate() {
        let status = child.wait()?;
        if !status.success() {
            eprintln!("dmabroker demo: consumer {id} failed ({status})");
            failed = true;
        }
    }
    for r in readers {
        let _ = r.join();
    }
    stop.store(true, Ordering::Relaxed);
    let _ = status.join();

    let produced = live.produced.load(Ordering::Relaxed);
    let reports = live.reports.lock().map(|r| r.clone()).unwrap_or_default();
    let fps = produced as f64 / elapsed.as_secs_f64().max(1e-9);
    let received: u64 = reports.iter().map(|r| r.frames).sum();
    println!(
        "{produced} frames of {width}x{height} NV12 ({}) in {:.2} s: {fps:.1} fps; source: {source}",
        format_size(frame_len),
        elapsed.as_secs_f64()
    );
    for r in &reports {
        let dropped = stats.consumers.iter().find(|c| c.slot == r.id).map_or(0, |c| c.dropped);
        println!(
            "consumer {}: {} frames, {} checksum mismatches, {} dropped, latency p50 {} p99 {}, {} futex wake-ups, end: {}",
            r.id,
            r.frames,
            r.bad,
            dropped,
            fmt_ns(r.p50_ns),
            fmt_ns(r.p99_ns),
            r.wakes,
            r.end.as_deref().unwrap_or("no report")
        );
        if r.bad > 0 || r.end.as_deref() != Some("closed") {
            failed = true;
        }
        if policy == Backpressure::Block && r.frames != produced {
            eprintln!("dmabroker demo: consumer {} received {} of {produced} frames", r.id, r.frames);
            failed = true;
        }
    }
    println!(
        "bytes not copied: {} ({} deliveries of {} each); frames dropped by backpressure: {}",
        format_size(received * frame_len),
        received,
        format_size(frame_len),
        stats.dropped
    );
    println!("result: {}", if failed { "FAILED" } else { "ok" });
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn spawn_consumer(id: u32, transport: &DemoTransport, frames: u64) -> anyhow::Result<Child> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(["demo", "--role", "consumer", "--id", &id.to_string(), "--frames", &frames.to_string()])
        .args(transport.consumer_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd.spawn().map_err(|e| anyhow::anyhow!("starting consumer {id} (/proc/self/exe): {e}"))
}

/// The live status line: ~4 times a second on a terminal, once a second
/// as plain lines otherwise (logs, CI).
fn status_loop(live: &Live, stop: &std::sync::atomic::AtomicBool, frame_len: u64) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty { Duration::from_millis(250) } else { Duration::from_secs(1) };
    let mut last = (Instant::now(), 0u64);
    let mut printed = false;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(every);
        let produced = live.produced.load(Ordering::Relaxed);
        let now = Instant::now();
        let fps = (produced - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-9);
        last = (now, produced);
        let reports = live.reports.lock().map(|r| r.clone()).unwrap_or_default();
        let p50 = reports.iter().map(|r| r.p50_ns).max().unwrap_or(0);
        let p99 = reports.iter().map(|r| r.p99_ns).max().unwrap_or(0);
        let received: u64 = reports.iter().map(|r| r.frames).sum();
        let line = format!(
            "frames {produced}  {fps:6.1} fps  handoff latency p50 {} p99 {}  not copied {}",
            fmt_ns(p50),
            fmt_ns(p99),
            format_size(received * frame_len)
        );
        if tty {
            eprint!("\r\x1b[K{line}");
        } else {
            eprintln!("{line}");
        }
        printed = true;
    }
    if tty && printed {
        eprintln!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_wh("1920x1080"), Ok((1920, 1080)));
        assert!(parse_wh("1921x1080").is_err());
        assert!(parse_wh("0x0").is_err());
        assert!(parse_wh("axb").is_err());
        assert!(parse_wh("1920").is_err());
    }

    #[test]
    fn pattern_differs_per_frame() {
        let mut a = vec![0u8; 64 * 32 * 3 / 2];
        let mut b = a.clone();
        test_pattern(&mut a, 64, 32, 1);
        test_pattern(&mut b, 64, 32, 2);
        assert_ne!(checksum(&a), checksum(&b));
    }
}
