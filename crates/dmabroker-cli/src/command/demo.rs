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

use dmabroker::constraints::{allocate_for, Constraints};
use dmabroker::device::v4l2::{video_nodes, BufType, CapFlags, Memory, Queue, V4l2Device};
use dmabroker::format::{Layout, LayoutOptions, PixelFormat};
use dmabroker::pool::{
    AcquireError, Backpressure, Consumer, ConsumerOptions, FrameFlags, FrameMeta, PoolError, PoolOptions, Producer,
    WaitMode,
};
use dmabroker::size::format_size;
use dmabroker::Heaps;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::fd::AsFd;
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

fn run_producer(args: &DemoArgs, transport: &DemoTransport) -> anyhow::Result<ExitCode> {
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
    });
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
    let result = match &source {
        Source::Synthetic => produce_synthetic(args, &mut producer, &live, width as usize, height as usize, frame_len),
        Source::V4l2(v) => produce_v4l2(args, &mut producer, &live, v),
    };
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
        "{produced} frames of {width}x{height} {format} ({}) in {:.2} s: {fps:.1} fps; source: {description}",
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

/// The producer writes each frame: the test pattern, then its checksum.
fn produce_synthetic(
    args: &DemoArgs,
    producer: &mut Producer,
    live: &Live,
    width: usize,
    height: usize,
    frame_len: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let period = (args.fps > 0.0).then(|| Duration::from_secs_f64(1.0 / args.fps));
    for n in 0..args.frames {
        let mut slot = producer.acquire(Some(Duration::from_secs(30)))?;
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
    Ok(())
}

/// Longest wait for the device's next frame (vivid under emulation is slow).
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(20);

/// The device fills the pool's buffers: each free buffer is lent to the
/// device (QBUF), each captured one (DQBUF) is checksummed under a CPU read
/// guard and handed to the consumers; once they all released it, it is free
/// in the pool again and goes back to the device.
fn produce_v4l2(args: &DemoArgs, producer: &mut Producer, live: &Live, source: &V4l2Source) -> anyhow::Result<()> {
    let nbuf = producer.options().buffers as u32;
    let mut queue = source.dev.request_buffers(source.buf_type, Memory::DmaBuf, nbuf)?;
    if queue.count() < nbuf {
        anyhow::bail!("{} granted {} buffer slots of the {nbuf} asked", source.dev.path().display(), queue.count());
    }
    let path = source.dev.path();
    let length = |p: &Producer| -> u32 { p.buffers().next().map_or(0, |b| u32::try_from(b.len()).unwrap_or(u32::MAX)) };
    let length = length(producer);
    let mut in_device = 0u32;
    while in_device < nbuf && lend(producer, &queue, length, false)? {
        in_device += 1;
    }
    queue.stream_on()?;
    // Drop-oldest would take frames from consumers to fill the device: keep
    // only a few there; blocking pools give it every free buffer.
    let floor = nbuf.min(2);
    for n in 0..args.frames {
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
        let wanted = u32::try_from(args.frames - n - 1).unwrap_or(u32::MAX).min(nbuf);
        while in_device < wanted.min(floor) && lend(producer, &queue, length, true)? {
            in_device += 1;
        }
        if policy_blocks(producer) {
            while in_device < wanted && lend(producer, &queue, length, false)? {
                in_device += 1;
            }
        }
    }
    queue.stream_off()?;
    Ok(())
}

/// Lend one free buffer to the device (QBUF). `wait`: block (or drop the
/// oldest unread frame, per the backpressure policy) until one is free;
/// else take only what is free now. Returns whether one was lent.
fn lend(producer: &mut Producer, queue: &Queue<'_>, length: u32, wait: bool) -> anyhow::Result<bool> {
    let slot = match producer.acquire(Some(if wait { Duration::from_secs(30) } else { Duration::ZERO })) {
        Ok(slot) => slot,
        Err(AcquireError::Timeout(_)) if !wait => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    // On error the slot drops unsubmitted: the buffer goes back to the pool.
    queue.queue_dmabuf(slot.index(), &[slot.buffer().as_fd()], &[length])?;
    slot.lend();
    Ok(true)
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
