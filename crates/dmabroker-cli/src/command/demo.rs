//! `dmabroker demo`: a zero-copy streaming pool end to end.
//!
//! This process is the producer; it re-executes itself (`/proc/self/exe demo
//! --role consumer ...`, hidden arguments) for each consumer process. Each
//! consumer checks every frame against the checksum the producer put in the
//! ring entry's `meta` word and reports progress as JSON lines on its stdout,
//! which the producer turns into the live status line.
//!
//! Frames come from a source (`--source`): the first V4L2 capture device
//! (`/dev/video*` in order; the device fills the pool's buffers itself
//! through `V4L2_MEMORY_DMABUF`, so the pool's buffers are dma-bufs chosen
//! with the device's probed constraints), or a synthetic NV12 test pattern
//! the producer writes. `auto` takes the device when one is usable.
//!
//! The transport is a parameter ([`DemoTransport`]): today a pool socket the
//! producer listens on; an embedded broker can become another variant without
//! touching the producer or consumer loops.
//!
//! The run ends after `--frames` frames, on SIGINT/SIGTERM (the stream is
//! closed in order and the socket removed; exit status 128 + the signal), or
//! as FAILED when every consumer is gone. `--json` prints the summary as one
//! JSON document on stdout. Memory does not grow with `--frames`: latency
//! percentiles come from a fixed log-scale histogram.

use super::measure::fmt_ns;
use dmabroker::constraints::{allocate_for, Constraints};
use dmabroker::device::v4l2::{video_nodes, BufType, CapFlags, Memory, Queue, V4l2Device};
use dmabroker::format::{Layout, LayoutOptions, PixelFormat};
use dmabroker::pool::{
    AcquireError, Backpressure, Consumer, ConsumerOptions, FrameFlags, FrameMeta, PoolError, PoolOptions, Producer,
    WaitMode, WriteSlot,
};
use dmabroker::size::format_size;
use dmabroker::Heaps;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Arguments of `dmabroker demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Frames to stream.
    #[arg(long, default_value_t = 300)]
    pub frames: u64,
    /// Frame size WxH (NV12: W*H*3/2 bytes; W and H even). A V4L2 device
    /// may pick the nearest size it supports: the output says which.
    #[arg(long, default_value = "1920x1080", value_parser = parse_wh)]
    pub size: (u32, u32),
    /// Where frames come from: `auto` = the first V4L2 capture device when
    /// one is usable, else `synthetic`.
    #[arg(long, value_enum, default_value_t = SourceArg::Auto)]
    pub source: SourceArg,
    /// The V4L2 capture node (default: the first /dev/video* that captures).
    #[arg(long, value_name = "PATH")]
    pub device: Option<PathBuf>,
    /// Heap for the pool's buffers (see `dmabroker heaps`). Default: memfd
    /// for the synthetic source; for V4L2, the cheapest heap that meets the
    /// device's probed constraints (a dma-buf heap).
    #[arg(long)]
    pub heap: Option<String>,
    /// Buffers in the pool (4-8 suit video).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub buffers: u32,
    /// Consumer processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub consumers: u32,
    /// Frame rate to pace the producer at; 0 = as fast as the consumers go.
    #[arg(long, default_value_t = 0.0)]
    pub fps: f64,
    /// How the synthetic source gets its pool's buffers: `embedded` starts
    /// a dmabroker broker in this process on a temporary socket and
    /// allocates through its client API; `none` allocates directly.
    #[arg(long, value_enum, default_value_t = BrokerArg::Embedded)]
    pub broker: BrokerArg,
    /// What the producer does when consumers hold every buffer.
    #[arg(long, value_enum, default_value_t = PolicyArg::Block)]
    pub backpressure: PolicyArg,
    /// Print the summary as JSON on stdout (the live status stays on stderr).
    #[arg(long)]
    pub json: bool,
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

/// `--source` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceArg {
    /// V4L2 when a capture device is usable, else synthetic.
    Auto,
    /// The first V4L2 capture device (or `--device`); an error without one.
    V4l2,
    /// A synthetic NV12 test pattern written by the producer.
    Synthetic,
}

/// `--broker` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerArg {
    /// Allocate through a broker started in this process.
    Embedded,
    /// Allocate from the heap directly.
    None,
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
    /// Frames the producer took back before this consumer read them.
    #[serde(default)]
    dropped: u64,
    /// Latency percentiles over the last window (progress) or the whole run (final), ns.
    p50_ns: u64,
    p99_ns: u64,
    /// Set on the final line: "closed", "producer-gone", or an error.
    end: Option<String>,
}

pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    match args.role.as_deref() {
        None => run_producer(args, &DemoTransport::default_socket()).inspect_err(|e| {
            // A run that fails before it streams still owes --json readers a
            // document (the error goes to stderr as well).
            if args.json {
                let _ = crate::output::print_json(
                    &serde_json::json!({ "result": "FAILED", "error": crate::error_chain(e) }),
                );
            }
        }),
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

/// Latency samples in fixed memory: a log-scale histogram with 16
/// sub-buckets per power of two (values within 1/16 of each other share a
/// bucket), so p50/p99 are within about 3% whatever the number of frames.
#[derive(Debug, Clone)]
pub(crate) struct LatencyHistogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl LatencyHistogram {
    const SUB_BITS: u32 = 4;
    const SUB: u64 = 1 << Self::SUB_BITS;
    /// Buckets: one per value below `SUB`, then `SUB` per power of two up to 2^63.
    const BUCKETS: usize = ((64 - Self::SUB_BITS + 1) as usize) * Self::SUB as usize;

    pub(crate) fn new() -> Self {
        Self { counts: vec![0; Self::BUCKETS], total: 0, max: 0 }
    }

    fn bucket(v: u64) -> usize {
        if v < Self::SUB {
            return v as usize;
        }
        let e = 63 - v.leading_zeros(); // >= SUB_BITS
        let sub = (v >> (e - Self::SUB_BITS)) & (Self::SUB - 1);
        (e - Self::SUB_BITS + 1) as usize * Self::SUB as usize + sub as usize
    }

    /// The smallest value of bucket `i` and its width.
    fn bounds(i: usize) -> (u64, u64) {
        let (b, sub) = ((i as u64) / Self::SUB, (i as u64) % Self::SUB);
        if b == 0 {
            (sub, 1)
        } else {
            ((Self::SUB + sub) << (b - 1), 1 << (b - 1))
        }
    }

    pub(crate) fn record(&mut self, v: u64) {
        self.counts[Self::bucket(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub(crate) fn clear(&mut self) {
        self.counts.fill(0);
        self.total = 0;
        self.max = 0;
    }

    /// The value at quantile `q` (0..=1): the middle of its bucket, at most
    /// the largest sample; 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, width) = Self::bounds(i);
                return (low + (width - 1) / 2).min(self.max);
            }
        }
        self.max
    }

    pub(crate) fn p50_p99(&self) -> (u64, u64) {
        (self.quantile(0.50), self.quantile(0.99))
    }
}

fn run_consumer(args: &DemoArgs) -> anyhow::Result<ExitCode> {
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

struct Live {
    reports: Mutex<Vec<Report>>,
    produced: AtomicU64,
    /// When production ended (ns after it started, plus one; 0 = still
    /// running): the last status line measures fps up to here.
    finished_ns: AtomicU64,
}

impl Live {
    fn finish(&self, started: Instant) {
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        let _ = self.finished_ns.compare_exchange(0, ns + 1, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn finished_at(&self, started: Instant) -> Option<Instant> {
        match self.finished_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(started + Duration::from_nanos(ns - 1)),
        }
    }
}

/// SIGINT/SIGTERM: the run stops at the next frame (or wait slice), closes
/// the stream in order and removes its socket.
#[derive(Debug, Clone)]
struct Stop {
    /// The signal number received, 0 while none.
    signal: Arc<AtomicUsize>,
}

impl Stop {
    fn on_signals() -> anyhow::Result<Self> {
        let signal = Arc::new(AtomicUsize::new(0));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize)?;
        }
        Ok(Self { signal })
    }

    /// The signal that asked to stop, if any.
    fn signal(&self) -> Option<usize> {
        match self.signal.load(Ordering::Relaxed) {
            0 => None,
            s => Some(s),
        }
    }
}

/// Why production ended early.
#[derive(Debug)]
enum Ended {
    /// `--frames` frames were produced.
    Complete,
    /// SIGINT/SIGTERM.
    Interrupted,
}

/// Longest the producer waits for a free buffer before it gives up.
const ACQUIRE_LIMIT: Duration = Duration::from_secs(30);
/// Waits are cut in slices this long to notice signals and lost consumers.
const SLICE: Duration = Duration::from_millis(100);

/// Where the frames of a run come from, once set up.
enum Source {
    /// The producer writes a test pattern.
    Synthetic,
    /// A V4L2 capture device fills the pool's buffers.
    V4l2(V4l2Source),
}

/// A V4L2 capture device with its format set.
struct V4l2Source {
    dev: V4l2Device,
    buf_type: BufType,
    /// Bytes the device fills per frame (`sizeimage`).
    frame_len: u64,
}

/// What the producer streams, whatever the source.
struct Setup {
    source: Source,
    producer: Producer,
    width: u32,
    height: u32,
    format: PixelFormat,
    frame_len: u64,
    heap: String,
    /// One line saying where frames come from, for the banner and summary.
    description: String,
}

/// Capture pixel formats the demo asks a device for, preferred first.
const CAPTURE_FORMATS: [PixelFormat; 2] = [PixelFormat::Nv12, PixelFormat::Yuyv];

/// The capture queue type of a node, single-planar preferred (the demo
/// queues one dma-buf per frame either way); `None` for nodes that do not
/// capture video by streaming (memory-to-memory nodes included).
fn capture_queue(dev: &V4l2Device) -> Option<BufType> {
    let caps = dev.capabilities().device_caps;
    if !caps.contains(CapFlags::STREAMING) {
        None
    } else if caps.contains(CapFlags::VIDEO_CAPTURE) {
        Some(BufType::VideoCapture)
    } else if caps.contains(CapFlags::VIDEO_CAPTURE_MPLANE) {
        Some(BufType::VideoCaptureMplane)
    } else {
        None
    }
}

/// The first capture node: `--device`, else `/dev/video*` in order,
/// single-planar nodes before multi-planar ones. `Ok(None)`: none at all.
fn find_capture_device(args: &DemoArgs) -> anyhow::Result<Option<(V4l2Device, BufType)>> {
    if let Some(path) = &args.device {
        let dev = V4l2Device::open(path)?;
        let bt = capture_queue(&dev)
            .ok_or_else(|| anyhow::anyhow!("{} is not a streaming video capture device", path.display()))?;
        return Ok(Some((dev, bt)));
    }
    let mut mplane = None;
    for path in video_nodes() {
        let Ok(dev) = V4l2Device::open(&path) else { continue };
        match capture_queue(&dev) {
            Some(BufType::VideoCapture) => return Ok(Some((dev, BufType::VideoCapture))),
            Some(bt) if mplane.is_none() => mplane = Some((dev, bt)),
            _ => {}
        }
    }
    Ok(mplane)
}

/// Open the capture device, set the format, allocate dma-bufs for it from
/// its probed constraints and make the pool of them. `Ok(None)` when there
/// is no capture device.
fn setup_v4l2(args: &DemoArgs, options: &PoolOptions, heaps: &Heaps) -> anyhow::Result<Option<Setup>> {
    let Some((dev, buf_type)) = find_capture_device(args)? else { return Ok(None) };
    let path = dev.path().to_path_buf();
    let offered: Vec<u32> = dev.formats(buf_type)?.iter().map(|f| f.pixelformat).collect();
    let format = CAPTURE_FORMATS.into_iter().find(|f| offered.contains(&f.to_v4l2())).ok_or_else(|| {
        let names: Vec<String> = offered
            .iter()
            .map(|&c| PixelFormat::from_v4l2(c).map_or(format!("{c:#x}"), |f| f.name().to_owned()))
            .collect();
        anyhow::anyhow!("{} captures neither NV12 nor YUYV (it offers {})", path.display(), names.join(", "))
    })?;
    let (w, h) = args.size;
    let fmt = dev.set_format(buf_type, w, h, format.to_v4l2())?;
    if fmt.pixelformat != format.to_v4l2() || fmt.planes.len() != 1 {
        anyhow::bail!("{} did not accept {format} as one buffer per frame (it set {fmt:?})", path.display());
    }
    if (fmt.width, fmt.height) != (w, h) {
        eprintln!("dmabroker demo: {} does not capture {w}x{h}; it chose {}x{}", path.display(), fmt.width, fmt.height);
    }
    // The frame as V4L2 lays it out; the driver may pad lines further.
    let layout = Layout::new(format, fmt.width, fmt.height, &LayoutOptions::default())?;
    if u64::from(fmt.planes[0].bytesperline) != layout.bytesperline() {
        eprintln!(
            "dmabroker demo: {} pads lines to {} bytes (unpadded: {})",
            path.display(),
            fmt.planes[0].bytesperline,
            layout.bytesperline()
        );
    }
    let frame_len = layout.total_size().max(u64::from(fmt.planes[0].sizeimage));
    let options = PoolOptions { buffer_len: frame_len, ..options.clone() };
    let mut buffers = Vec::with_capacity(options.buffers);
    let heap;
    let why;
    match &args.heap {
        Some(name) => {
            for i in 0..options.buffers {
                let request = dmabroker::AllocRequest::new(frame_len).name(format!("demo-{i}"));
                buffers.push(heaps.allocate(name, &request)?);
            }
            heap = name.clone();
            why = "--heap".to_owned();
        }
        None => {
            // What sysfs and the device profiles say the device needs (a
            // dma-buf, an address limit...); without a sysfs entry, at
            // least a dma-buf: V4L2_MEMORY_DMABUF imports nothing else.
            let constraints = Constraints::probe(&path).or_else(|e| {
                tracing::debug!("probing {}: {e}; assuming it needs a dma-buf", path.display());
                Constraints::builder(path.display().to_string()).dma_buf(true).build()
            })?;
            let mut chosen = None;
            for i in 0..options.buffers {
                let (buffer, choice) = allocate_for(heaps, &constraints, frame_len, Some(&format!("demo-{i}")))?;
                buffers.push(buffer);
                chosen.get_or_insert(choice);
            }
            let choice = chosen.ok_or_else(|| anyhow::anyhow!("a pool needs at least one buffer"))?;
            heap = choice.heap.clone();
            // The first reason says why this heap; the rest (what was
            // passed over) is `dmabroker alloc --for`'s business.
            why = choice.reasons.first().cloned().unwrap_or_default();
        }
    }
    if let Some(i) = buffers.iter().position(|b| b.kind() != dmabroker::BufferKind::DmaBuf) {
        anyhow::bail!(
            "buffer {i} from {heap} is not a dma-buf: V4L2_MEMORY_DMABUF needs dma-bufs (choose a dma-heap or udmabuf)"
        );
    }
    let producer = Producer::new(buffers, &options)?;
    let caps = dev.capabilities();
    let description = format!(
        "V4L2 capture {} ({} \"{}\", {}, V4L2_MEMORY_DMABUF into {heap} buffers: {why})",
        path.display(),
        caps.driver,
        caps.card,
        if buf_type.is_multiplanar() { "multi-planar" } else { "single-planar" }
    );
    Ok(Some(Setup {
        source: Source::V4l2(V4l2Source {
            dev,
            buf_type,
            frame_len: u64::from(fmt.planes[0].sizeimage).min(frame_len),
        }),
        producer,
        width: fmt.width,
        height: fmt.height,
        format,
        frame_len,
        heap,
        description,
    }))
}

/// A broker serving on a temporary socket from a thread of this process,
/// stopped (and its socket removed) on drop.
struct EmbeddedBroker {
    path: PathBuf,
    stop: Option<std::os::unix::net::UnixStream>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EmbeddedBroker {
    fn start() -> anyhow::Result<Self> {
        use dmabroker_broker::{Broker, Config, Listener};
        let dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let path = dir.join(format!("dmabroker-demo-broker-{}.sock", std::process::id()));
        let (shutdown, stop) = std::os::unix::net::UnixStream::pair()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let listen = path.clone();
        let thread = std::thread::Builder::new().name("broker".into()).spawn(move || {
            let mut config = Config::new(Listener::Path(listen));
            config.notify = false;
            // Its clients (this demo) share its process: count their holds.
            config.clients_in_process = true;
            match Broker::start(config, Vec::new(), shutdown.into()) {
                Ok(mut broker) => {
                    let _ = ready_tx.send(Ok(()));
                    if let Err(e) = broker.run() {
                        tracing::warn!("embedded broker stopped: {e}");
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
        let started = ready_rx.recv().map_err(|_| anyhow::anyhow!("the embedded broker thread died while starting"));
        let broker = Self { path, stop: Some(stop), thread: Some(thread) };
        started??;
        Ok(broker)
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        // One byte makes the shutdown socket readable: the event loop ends.
        if let Some(mut stop) = self.stop.take() {
            let _ = stop.write_all(b"x");
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn setup_synthetic(args: &DemoArgs, options: &PoolOptions, heaps: &Heaps) -> anyhow::Result<Setup> {
    let (width, height) = args.size;
    let frame_len = u64::from(width) * u64::from(height) * 3 / 2;
    let heap = args.heap.clone().unwrap_or_else(|| "memfd".to_owned());
    let options = PoolOptions { buffer_len: frame_len, ..options.clone() };
    let mut description = "synthetic NV12 test pattern".to_owned();
    let producer = if args.broker == BrokerArg::Embedded && heaps.get(&heap).is_some() {
        let broker = EmbeddedBroker::start()
            .map_err(|e| anyhow::anyhow!("starting the embedded broker: {e:#} (or pass --broker none)"))?;
        let mut client = dmabroker::client::Client::connect(&broker.path)?;
        let buffers = (0..options.buffers)
            .map(|i| client.allocate(&heap, frame_len, Some(&format!("{}-{i}", options.name))))
            .collect::<Result<Vec<_>, _>>()?;
        description.push_str(&format!(
            ", buffers allocated through the embedded dmabroker broker ({} protocol v{}) at {}",
            client.server(),
            client.version(),
            broker.path.display()
        ));
        // The buffers are ours now: the broker is not needed to stream.
        drop(client);
        drop(broker);
        Producer::new(buffers, &options)?
    } else {
        // (An unknown heap fails here, with the list of heaps.)
        Producer::allocate(heaps, &heap, &options)?
    };
    Ok(Setup {
        source: Source::Synthetic,
        producer,
        width,
        height,
        format: PixelFormat::Nv12,
        frame_len,
        heap,
        description,
    })
}

fn setup(args: &DemoArgs, options: &PoolOptions) -> anyhow::Result<Setup> {
    let heaps = Heaps::discover();
    match args.source {
        SourceArg::Synthetic => setup_synthetic(args, options, &heaps),
        SourceArg::V4l2 => setup_v4l2(args, options, &heaps)?.ok_or_else(|| {
            anyhow::anyhow!("no V4L2 capture device: no /dev/video* node captures video (use --source synthetic)")
        }),
        SourceArg::Auto => match setup_v4l2(args, options, &heaps) {
            Ok(Some(s)) => Ok(s),
            Ok(None) => setup_synthetic(args, options, &heaps),
            Err(e) => {
                eprintln!("dmabroker demo: V4L2 capture unavailable ({e:#}); using the synthetic source");
                setup_synthetic(args, options, &heaps)
            }
        },
    }
}

/// One consumer in the summary (`--json`).
#[derive(Debug, serde::Serialize)]
struct ConsumerSummary {
    id: u32,
    pid: u32,
    frames: u64,
    bad: u64,
    /// Frames the producer took back before this consumer read them.
    dropped: u64,
    /// Frames handed to it (the producer's count; `None` when it was lost).
    delivered: Option<u64>,
    p50_ns: u64,
    p99_ns: u64,
    wakes: u64,
    end: Option<String>,
}

/// The run's summary (`--json`).
#[derive(Debug, serde::Serialize)]
struct Summary {
    /// `ok`, `FAILED` or `interrupted`.
    result: &'static str,
    /// Why the producer stopped early, if it did.
    error: Option<String>,
    /// The signal that stopped the run.
    signal: Option<usize>,
    produced: u64,
    elapsed_s: f64,
    fps: f64,
    width: u32,
    height: u32,
    format: String,
    frame_len: u64,
    source: String,
    heap: String,
    buffers: u32,
    backpressure: &'static str,
    /// Frames taken back from at least one consumer (drop-oldest).
    dropped: u64,
    lost_consumers: u64,
    bytes_not_copied: u64,
    consumers: Vec<ConsumerSummary>,
}

fn run_producer(args: &DemoArgs, transport: &DemoTransport) -> anyhow::Result<ExitCode> {
    if !args.fps.is_finite() || args.fps < 0.0 {
        anyhow::bail!("--fps {}: expected a frame rate of 0 (unpaced) or more", args.fps);
    }
    let period = match args.fps {
        f if f > 0.0 => Some(
            Duration::try_from_secs_f64(1.0 / f)
                .map_err(|_| anyhow::anyhow!("--fps {f:e} is too small: one frame would take forever"))?,
        ),
        _ => None,
    };
    let stop = Stop::on_signals()?;
    let policy = match args.backpressure {
        PolicyArg::Block => Backpressure::Block,
        PolicyArg::DropOldest => Backpressure::DropOldest,
    };
    let options =
        PoolOptions::new(args.buffers as usize, 1).backpressure(policy).max_consumers(args.consumers).name("demo");
    let Setup { source, mut producer, width, height, format, frame_len, heap, description } = setup(args, &options)?;
    transport.serve(&mut producer)?;
    eprintln!(
        "dmabroker demo: {} frames of {width}x{height} {format} ({}) from a {description}; pool of {} {heap} buffers; {} consumer processes",
        args.frames,
        format_size(frame_len),
        args.buffers,
        args.consumers
    );

    let live = Arc::new(Live {
        reports: Mutex::new(vec![Report::default(); args.consumers as usize]),
        produced: AtomicU64::new(0),
        finished_ns: AtomicU64::new(0),
    });
    let mut children = Vec::new();
    let mut readers = Vec::new();
    for id in 0..args.consumers {
        let mut child = match spawn_consumer(id, transport, args.frames) {
            Ok(child) => child,
            Err(e) => {
                reap(&mut children);
                return Err(e);
            }
        };
        let Some(stdout) = child.stdout.take() else {
            children.push(child);
            reap(&mut children);
            anyhow::bail!("consumer {id} has no stdout");
        };
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
    // The pids the producer sees in its stats: each consumer connects itself.
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    let attach_deadline = Instant::now() + Duration::from_secs(10);
    while !producer.wait_for_consumers(args.consumers as usize, SLICE) {
        if let Some(signal) = stop.signal() {
            reap(&mut children);
            eprintln!("dmabroker demo: stopped by signal {signal} before the consumers attached");
            return Ok(signal_exit(signal));
        }
        if Instant::now() >= attach_deadline {
            reap(&mut children);
            anyhow::bail!("the consumer processes did not attach within 10 s");
        }
    }

    let status_done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let status = {
        let (live, status_done) = (Arc::clone(&live), Arc::clone(&status_done));
        std::thread::spawn(move || status_loop(&live, &status_done, frame_len, started))
    };
    let result = match &source {
        Source::Synthetic => {
            produce_synthetic(args, &mut producer, &live, &stop, period, (width as usize, height as usize, frame_len))
        }
        Source::V4l2(v) => produce_v4l2(args, &mut producer, &live, &stop, period, v),
    };
    live.finish(started);
    let elapsed = started.elapsed();
    let stats = producer.stats();
    producer.close();
    drop(producer);
    let mut failed = false;
    let mut interrupted = None;
    // What went wrong, for the summary's `error` (also in --json).
    let mut problems: Vec<String> = Vec::new();
    let error = match &result {
        Ok(Ended::Complete) => None,
        Ok(Ended::Interrupted) => {
            interrupted = stop.signal();
            eprintln!(
                "dmabroker demo: stopped by signal {} after {} frames",
                interrupted.unwrap_or(0),
                live.produced.load(Ordering::Relaxed)
            );
            None
        }
        Err(e) => {
            eprintln!("dmabroker demo: producer stopped: {}", crate::error_chain(e));
            failed = true;
            Some(crate::error_chain(e))
        }
    };
    for (id, child) in children.iter_mut().enumerate() {
        let status = child.wait()?;
        if !status.success() {
            eprintln!("dmabroker demo: consumer {id} failed ({status})");
            problems.push(format!("consumer {id} failed ({status})"));
            failed = true;
        }
    }
    for r in readers {
        let _ = r.join();
    }
    status_done.store(true, Ordering::Relaxed);
    let _ = status.join();

    let produced = live.produced.load(Ordering::Relaxed);
    let reports = live.reports.lock().map(|r| r.clone()).unwrap_or_default();
    let fps = produced as f64 / elapsed.as_secs_f64().max(1e-9);
    let received: u64 = reports.iter().map(|r| r.frames).sum();
    let mut consumers = Vec::with_capacity(reports.len());
    for (r, &pid) in reports.iter().zip(&pids) {
        // By pid: `r.id` is the spawn order, the producer's slots are the
        // attach order, and the two differ whenever consumers race to attach.
        let seen = stats.consumers.iter().find(|c| c.pid == pid);
        let dropped = seen.map_or(r.dropped, |c| c.dropped);
        if r.bad > 0 || r.end.as_deref() != Some("closed") {
            if interrupted.is_none() || r.bad > 0 {
                problems.push(format!(
                    "consumer {}: {} bad frames, end: {}",
                    r.id,
                    r.bad,
                    r.end.as_deref().unwrap_or("no report")
                ));
            }
            failed = true;
        }
        if interrupted.is_none() && r.end.as_deref() == Some("closed") {
            if policy == Backpressure::Block && r.frames != produced {
                eprintln!("dmabroker demo: consumer {} received {} of {produced} frames", r.id, r.frames);
                problems.push(format!("consumer {} received {} of {produced} frames", r.id, r.frames));
                failed = true;
            }
            if r.frames + dropped != produced {
                eprintln!(
                    "dmabroker demo: consumer {}: {} received + {dropped} dropped is not the {produced} produced",
                    r.id, r.frames
                );
                problems.push(format!(
                    "consumer {}: {} received + {dropped} dropped is not the {produced} produced",
                    r.id, r.frames
                ));
                failed = true;
            }
        }
        consumers.push(ConsumerSummary {
            id: r.id,
            pid,
            frames: r.frames,
            bad: r.bad,
            dropped,
            delivered: seen.map(|c| c.delivered),
            p50_ns: r.p50_ns,
            p99_ns: r.p99_ns,
            wakes: r.wakes,
            end: r.end.clone(),
        });
    }
    let summary = Summary {
        result: if interrupted.is_some() && !failed {
            "interrupted"
        } else if failed || interrupted.is_some() {
            "FAILED"
        } else {
            "ok"
        },
        error: error.or_else(|| (!problems.is_empty()).then(|| problems.join("; "))),
        signal: interrupted,
        produced,
        elapsed_s: elapsed.as_secs_f64(),
        fps,
        width,
        height,
        format: format.to_string(),
        frame_len,
        source: description,
        heap,
        buffers: args.buffers,
        backpressure: match policy {
            Backpressure::Block => "block",
            Backpressure::DropOldest => "drop-oldest",
        },
        dropped: stats.dropped,
        lost_consumers: stats.lost_consumers,
        bytes_not_copied: received.saturating_mul(frame_len),
        consumers,
    };
    if args.json {
        crate::output::print_json(&summary)?;
    } else {
        print_summary(&summary)?;
    }
    Ok(match interrupted {
        Some(signal) if !failed => signal_exit(signal),
        _ if failed => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    })
}

fn print_summary(s: &Summary) -> anyhow::Result<()> {
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
    writeln!(text, "result: {}", s.result)?;
    crate::output::emit(&text)
}

/// The exit status of a run stopped by `signal`: 128 + its number, as a shell reports it.
fn signal_exit(signal: usize) -> ExitCode {
    ExitCode::from(u8::try_from(128 + signal).unwrap_or(u8::MAX))
}

/// Kill and reap consumer processes (setup failed or was interrupted).
fn reap(children: &mut Vec<Child>) {
    for c in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    children.clear();
}

/// Fails when every consumer is gone: nobody would see the frames.
fn ensure_consumers(producer: &Producer) -> anyhow::Result<()> {
    if producer.attached() == 0 {
        let lost = producer.stats().lost_consumers;
        anyhow::bail!("every consumer is gone ({lost} lost): stopping instead of streaming to nobody");
    }
    Ok(())
}

/// Get a free buffer (waiting in slices, so that a signal or the loss of
/// every consumer ends the wait) and hand it to `use_slot`. `Ok(None)`: a
/// signal asked to stop.
fn with_free_slot<T>(
    producer: &mut Producer,
    stop: &Stop,
    use_slot: impl FnOnce(WriteSlot<'_>) -> anyhow::Result<T>,
) -> anyhow::Result<Option<T>> {
    let started = Instant::now();
    loop {
        if stop.signal().is_some() {
            return Ok(None);
        }
        match producer.acquire(Some(SLICE)) {
            Ok(slot) => return use_slot(slot).map(Some),
            Err(AcquireError::Timeout(_)) => {}
            Err(e) => return Err(e.into()),
        }
        // Starved: every consumer holds every buffer (or none is left).
        ensure_consumers(producer)?;
        if started.elapsed() >= ACQUIRE_LIMIT {
            return Err(AcquireError::Timeout(ACQUIRE_LIMIT).into());
        }
    }
}

/// Sleep until `due`, in slices; false when a signal asked to stop.
fn sleep_until(due: Instant, stop: &Stop) -> bool {
    loop {
        if stop.signal().is_some() {
            return false;
        }
        match due.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => std::thread::sleep(left.min(SLICE)),
            _ => return true,
        }
    }
}

/// The producer writes each frame: the test pattern, then its checksum.
fn produce_synthetic(
    args: &DemoArgs,
    producer: &mut Producer,
    live: &Live,
    stop: &Stop,
    period: Option<Duration>,
    (width, height, frame_len): (usize, usize, u64),
) -> anyhow::Result<Ended> {
    let mut due = Instant::now();
    for n in 0..args.frames {
        let written = with_free_slot(producer, stop, |mut slot| {
            let sum = {
                let mut w = slot.mapping().begin_write()?;
                let frame = &mut w[..frame_len as usize];
                test_pattern(frame, width, height, n);
                checksum(frame)
            };
            slot.submit(FrameMeta::new(frame_len).meta(sum))?;
            Ok(())
        })?;
        if written.is_none() {
            return Ok(Ended::Interrupted);
        }
        live.produced.fetch_add(1, Ordering::Relaxed);
        // acquire() noticed the dead ones (its maintenance runs every 10 ms).
        ensure_consumers(producer)?;
        if let Some(p) = period {
            due = due.checked_add(p).unwrap_or(due);
            if !sleep_until(due, stop) {
                return Ok(Ended::Interrupted);
            }
        }
    }
    Ok(Ended::Complete)
}

/// Longest wait for the device's next frame (vivid under emulation is slow).
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(20);

/// The device fills the pool's buffers: each free buffer is lent to the
/// device (QBUF), each captured one (DQBUF) is checksummed under a CPU read
/// guard and handed to the consumers; once they all released it, it is free
/// in the pool again and goes back to the device.
fn produce_v4l2(
    args: &DemoArgs,
    producer: &mut Producer,
    live: &Live,
    stop: &Stop,
    period: Option<Duration>,
    source: &V4l2Source,
) -> anyhow::Result<Ended> {
    let nbuf = producer.options().buffers as u32;
    let mut queue = source.dev.request_buffers(source.buf_type, Memory::DmaBuf, nbuf)?;
    if queue.count() < nbuf {
        anyhow::bail!("{} granted {} buffer slots of the {nbuf} asked", source.dev.path().display(), queue.count());
    }
    let path = source.dev.path();
    let length = |p: &Producer| -> u32 { p.buffers().next().map_or(0, |b| u32::try_from(b.len()).unwrap_or(u32::MAX)) };
    let length = length(producer);
    let mut in_device = 0u32;
    while in_device < nbuf && lend(producer, &queue, length, None)? {
        in_device += 1;
    }
    queue.stream_on()?;
    // --fps paces the submits: the device keeps capturing at its own rate
    // into the buffers it holds, and a frame is handed on once per period.
    let mut due = Instant::now();
    // Drop-oldest would take frames from consumers to fill the device: keep
    // only a few there; blocking pools give it every free buffer.
    let floor = nbuf.min(2);
    for n in 0..args.frames {
        if stop.signal().is_some() {
            queue.stream_off()?;
            return Ok(Ended::Interrupted);
        }
        let d = queue.dequeue(Some(CAPTURE_TIMEOUT)).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        in_device -= 1;
        let mut slot = producer
            .reclaim(d.index)
            .ok_or_else(|| anyhow::anyhow!("{} returned buffer {} that was not queued", path.display(), d.index))?;
        let used = u64::from(d.bytesused.first().copied().unwrap_or(0));
        let used = if used == 0 { source.frame_len } else { used.min(slot.mapping().len() as u64) };
        let sum = {
            let r = slot.mapping().begin_read()?;
            checksum(&r[..used as usize])
        };
        let flags = if d.error { FrameFlags::ERROR } else { FrameFlags::empty() };
        slot.submit(FrameMeta::new(used).meta(sum).flags(flags))?;
        live.produced.fetch_add(1, Ordering::Relaxed);
        // Nobody left to stream to: stop (the maintenance in acquire, run
        // by lend, keeps `attached` current).
        producer.maintain_now();
        ensure_consumers(producer)?;
        let wanted = u32::try_from(args.frames - n - 1).unwrap_or(u32::MAX).min(nbuf);
        while in_device < wanted.min(floor) && lend(producer, &queue, length, Some(stop))? {
            in_device += 1;
        }
        if policy_blocks(producer) {
            while in_device < wanted && lend(producer, &queue, length, None)? {
                in_device += 1;
            }
        }
        if let Some(p) = period.filter(|_| n + 1 < args.frames) {
            due = due.checked_add(p).unwrap_or(due);
            if !sleep_until(due, stop) {
                queue.stream_off()?;
                return Ok(Ended::Interrupted);
            }
        }
    }
    queue.stream_off()?;
    Ok(Ended::Complete)
}

/// Lend one free buffer to the device (QBUF). `wait` (with the run's stop
/// signal): block (or drop the oldest unread frame, per the backpressure
/// policy) until one is free; else take only what is free now. Returns
/// whether one was lent (false also when a signal ended the wait).
fn lend(producer: &mut Producer, queue: &Queue<'_>, length: u32, wait: Option<&Stop>) -> anyhow::Result<bool> {
    // On error the slot drops unsubmitted: the buffer goes back to the pool.
    let queue_it = |slot: WriteSlot<'_>| -> anyhow::Result<()> {
        queue.queue_dmabuf(slot.index(), &[slot.buffer().as_fd()], &[length])?;
        slot.lend();
        Ok(())
    };
    match wait {
        Some(stop) => Ok(with_free_slot(producer, stop, queue_it)?.is_some()),
        None => match producer.acquire(Some(Duration::ZERO)) {
            Ok(slot) => queue_it(slot).map(|()| true),
            Err(AcquireError::Timeout(_)) => Ok(false),
            Err(e) => Err(e.into()),
        },
    }
}

fn policy_blocks(producer: &Producer) -> bool {
    producer.options().backpressure == Backpressure::Block
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
/// as plain lines otherwise (logs, CI). The fps of each line counts the
/// frames of its interval over the time frames were produced in it (the
/// last interval ends when production ended, not at the tick).
fn status_loop(live: &Live, done: &AtomicBool, frame_len: u64, started: Instant) {
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
    fn histogram_percentiles_are_close_in_fixed_memory() {
        let mut h = LatencyHistogram::new();
        assert_eq!(h.p50_p99(), (0, 0));
        let mut exact: Vec<u64> = (1..=10_000u64).map(|i| i * i % 1_000_003 + 7).collect();
        for &v in &exact {
            h.record(v);
        }
        let (p50, p99) = h.p50_p99();
        let (e50, e99) = crate::command::measure::p50_p99(&mut exact);
        for (got, want) in [(p50, e50), (p99, e99)] {
            let err = got.abs_diff(want) as f64 / want as f64;
            assert!(err < 1.0 / 16.0, "{got} vs {want}");
        }
        // Small values are exact; extreme ones neither panic nor overflow.
        let mut small = LatencyHistogram::new();
        for v in [3, 3, 3, 9] {
            small.record(v);
        }
        assert_eq!(small.p50_p99(), (3, 9));
        let mut big = LatencyHistogram::new();
        big.record(u64::MAX);
        big.record(0);
        assert!(big.quantile(1.0) >= u64::MAX - u64::MAX / 16, "{}", big.quantile(1.0));
        assert_eq!(big.quantile(0.0), 0);
        big.clear();
        assert_eq!(big.p50_p99(), (0, 0));
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
