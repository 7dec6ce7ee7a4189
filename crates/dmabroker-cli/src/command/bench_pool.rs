//! `dmabroker bench pool`: frame handoff through a pool against copying the
//! frame through a Unix socket, between the same two processes.
//!
//! For each payload size and transport this process produces and a child
//! (`/proc/self/exe bench pool --role ...`, hidden arguments) consumes:
//! 1. latency phase: frames paced `--gap-us` apart so the consumer is idle
//!    when each arrives (asleep in the blocking mode); the consumer records
//!    `CLOCK_MONOTONIC` at wake-up minus the producer's timestamp;
//! 2. throughput phase: frames back to back; frames/s = frames / (consumer's
//!    last receive - producer's start).
//!
//! Neither pool consumer touches the payload (a device would read it); the
//! socket consumer must receive every byte, which is the point.
//! `benches/iceoryx2-peer` prints the same table for iceoryx2.
//!
//! Floors, measured between the same two kinds of process and interleaved
//! with the pool rows in every round (see [`floor`]): a bare futex wake
//! ping-pong on shared memory (the blocking pool's floor), the same with
//! eventfds, and a bare shared-memory spin (the polling pool's floor). Each
//! pool row's p50 is shown as a ratio to its floor's p50 in the same round,
//! median and range over `--rounds`.

use super::bench_floor as floor;
use super::measure::{fmt_ns, p50_p99, paired_ratios, JsonReport, JsonRow, Spread};
use dmabroker::pool::{now_ns, ConsumerOptions, FrameMeta, PoolOptions, Producer, WaitMode};
use dmabroker::size::format_size;
use dmabroker::Heaps;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

/// Arguments of `dmabroker bench pool`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchPoolArgs {
    /// Payload sizes (default: 4 KiB, 1 MiB, and 3840x2160 NV12 = 12441600 bytes).
    #[arg(long, value_delimiter = ',', value_parser = dmabroker::size::parse_size, default_value = "4096,1048576,12441600")]
    pub sizes: Vec<u64>,
    /// Heap for the pool's buffers.
    #[arg(long, default_value = "memfd")]
    pub heap: String,
    /// Buffers in the pool.
    #[arg(long, default_value_t = 4)]
    pub buffers: usize,
    /// Paced frames per latency measurement.
    #[arg(long, default_value_t = 2000)]
    pub latency_frames: u64,
    /// Gap between paced frames, in microseconds (longer than the consumer's spin).
    #[arg(long, default_value_t = 500)]
    pub gap_us: u64,
    /// Seconds of back-to-back frames per throughput measurement (approximate).
    #[arg(long, default_value_t = 1.0, value_parser = crate::cli::parse_seconds)]
    pub seconds: f64,
    /// Rounds: every row and its floor are measured once per round, in
    /// alternating order; tables show the median and range over rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Print one JSON report (for `bench compare` / scripts/ab.sh) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Internal: child role (`pool-consumer`, `socket-consumer`, `futex-consumer`, `eventfd-consumer`, `spin-consumer`).
    #[arg(long, hide = true)]
    pub role: Option<String>,
    /// Internal: where the child connects.
    #[arg(long, hide = true)]
    pub socket: Option<PathBuf>,
    /// Internal: the pool consumer's wait mode (`block`, `poll`).
    #[arg(long, hide = true, default_value = "block")]
    pub wait: String,
}

/// Phase markers in the frame's meta word / socket header.
const LATENCY: u64 = 0;
const THROUGHPUT: u64 = 1;

/// What a child reports (one JSON line at the end).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct ChildReport {
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub samples: u64,
    pub tp_frames: u64,
    pub tp_last_ns: u64,
    pub wakes: u64,
    /// Latency samples taken with producer and consumer last on one CPU, and apart.
    #[serde(default)]
    pub same_cpu: u64,
    #[serde(default)]
    pub apart: u64,
    #[serde(default)]
    pub p50_same_ns: u64,
    #[serde(default)]
    pub p50_apart_ns: u64,
}

/// The transports, in table order: (key, label, floor key, kind).
const TRANSPORTS: [(&str, &str, Option<&str>); 6] = [
    ("blocking", "pool, blocking consumer (futex)", Some("futex")),
    ("futex", "floor: bare futex wake ping-pong (shared memory)", None),
    ("eventfd", "floor: bare eventfd ping-pong", None),
    ("polling", "pool, busy-polling consumer", Some("spin")),
    ("spin", "floor: bare shared-memory spin ping-pong", None),
    ("socket", "copy through Unix stream socket", None),
];

/// One measurement of one transport at one size in one round.
struct Sample {
    fps: Option<f64>,
    report: ChildReport,
}

pub fn run(args: &BenchPoolArgs) -> anyhow::Result<ExitCode> {
    match args.role.as_deref() {
        None => run_parent(args),
        Some("pool-consumer") => pool_consumer(args),
        Some("socket-consumer") => socket_consumer(args),
        Some(role @ ("futex-consumer" | "eventfd-consumer" | "spin-consumer")) => {
            floor::consumer(role, args.socket.as_deref())
        }
        Some(other) => anyhow::bail!("unknown bench role `{other}`"),
    }
}

fn measure(args: &BenchPoolArgs, heaps: &Heaps, key: &str, size: u64) -> anyhow::Result<Sample> {
    Ok(match key {
        "blocking" | "polling" => {
            let (fps, report) = bench_pool(args, heaps, size, if key == "blocking" { "block" } else { "poll" })?;
            Sample { fps: Some(fps), report }
        }
        "socket" => {
            let (fps, report) = bench_socket(args, size)?;
            Sample { fps: Some(fps), report }
        }
        floor => Sample { fps: None, report: floor::run(floor, args.latency_frames, args.gap_us)? },
    })
}

fn run_parent(args: &BenchPoolArgs) -> anyhow::Result<ExitCode> {
    let heaps = Heaps::discover();
    // An unrecorded warm-up of both pool modes: the first measured row
    // otherwise pays for cold page tables, caches and CPU frequency ramps
    // (its 4 KiB polling p50 read 0.9 us against 0.3 us on every rerun).
    let warm = BenchPoolArgs { latency_frames: args.latency_frames.min(300), seconds: 0.2, ..args.clone() };
    for wait in ["block", "poll"] {
        bench_pool(&warm, &heaps, args.sizes.first().copied().unwrap_or(4096), wait)?;
    }
    // samples[size index][transport index][round]
    let mut samples: Vec<Vec<Vec<Sample>>> =
        args.sizes.iter().map(|_| TRANSPORTS.iter().map(|_| Vec::new()).collect()).collect();
    for round in 0..args.rounds {
        for (si, &size) in args.sizes.iter().enumerate() {
            // Alternate the order so that no row always follows the same one.
            let order: Vec<usize> =
                if round % 2 == 0 { (0..TRANSPORTS.len()).collect() } else { (0..TRANSPORTS.len()).rev().collect() };
            for ti in order {
                let key = TRANSPORTS[ti].0;
                samples[si][ti].push(measure(args, &heaps, key, size)?);
            }
            eprintln!("round {}/{}, {}: done", round + 1, args.rounds, format_size(size));
        }
    }
    let mut report = JsonReport::new("pool");
    for (si, &size) in args.sizes.iter().enumerate() {
        let p50s = |ti: usize| -> Vec<f64> { samples[si][ti].iter().map(|s| s.report.p50_ns as f64).collect() };
        for (ti, (key, label, floor)) in TRANSPORTS.iter().enumerate() {
            let rows = &samples[si][ti];
            let p99 = Spread::of(&rows.iter().map(|s| s.report.p99_ns as f64).collect::<Vec<_>>());
            let fps: Vec<f64> = rows.iter().filter_map(|s| s.fps).collect();
            let tp_frames: u64 = rows.iter().map(|s| s.report.tp_frames).sum();
            let wakes: u64 = rows.iter().map(|s| s.report.wakes).sum();
            let floor_ti = floor.and_then(|f| TRANSPORTS.iter().position(|t| t.0 == f));
            let ratio = floor_ti.map(|fi| Spread::of(&paired_ratios(&p50s(ti), &p50s(fi))));
            let mut extra = serde_json::Map::new();
            extra.insert("label".into(), (*label).into());
            extra.insert("p99_ns".into(), serde_json::to_value(p99)?);
            if !fps.is_empty() {
                extra.insert("frames_per_s".into(), serde_json::to_value(Spread::of(&fps))?);
            }
            let sum = |f: fn(&ChildReport) -> u64| rows.iter().map(|s| f(&s.report)).sum::<u64>();
            let (same, apart) = (sum(|r| r.same_cpu), sum(|r| r.apart));
            if same + apart > 0 {
                let med = |f: fn(&ChildReport) -> u64| {
                    Spread::of(&rows.iter().map(|s| f(&s.report) as f64).filter(|v| *v > 0.0).collect::<Vec<_>>())
                        .median as u64
                };
                extra.insert(
                    "placement".into(),
                    floor::describe(same, med(|r| r.p50_same_ns), apart, med(|r| r.p50_apart_ns)).into(),
                );
            }
            if key.starts_with("blocking") || key.starts_with("polling") {
                let per = if tp_frames > 0 { wakes as f64 / tp_frames as f64 } else { 0.0 };
                extra.insert("futex_wakes_per_frame".into(), per.into());
            }
            report.rows.push(JsonRow {
                key: format!("pool/{key}/{}", format_size(size)),
                value: Spread::of(&p50s(ti)),
                unit: "p50_ns".into(),
                floor: floor.map(|f| format!("pool/{f}/{}", format_size(size))),
                ratio,
                extra,
            });
        }
    }
    if args.json {
        report.print()?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Medians over {} round(s), range in parentheses; each ratio is the row's p50 over its floor's p50 in the same round.\n",
        args.rounds
    );
    println!("| transport | payload | latency p50 | ratio to floor (p50) | latency p99 | frames/s | futex wake-ups per frame (throughput) | placement (p50 by CPU) |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in &report.rows {
        let get = |k: &str| row.extra.get(k).and_then(|v| serde_json::from_value::<Spread>(v.clone()).ok());
        let size = row.key.rsplit('/').next().unwrap_or("");
        let wakes = row.extra.get("futex_wakes_per_frame").and_then(serde_json::Value::as_f64);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.extra.get("label").and_then(|v| v.as_str()).unwrap_or(&row.key),
            size,
            row.value.latency(),
            match (&row.ratio, &row.floor) {
                (Some(r), Some(f)) => format!("{} of {}", r.ratio(), f.split('/').nth(1).unwrap_or(f)),
                _ => "(floor)".into(),
            },
            fmt_ns(get("p99_ns").map_or(0.0, |s| s.median) as u64),
            get("frames_per_s").map_or("n/a".into(), |s| format!("{:.0}", s.median)),
            wakes.map_or("n/a".into(), |w| format!("{w:.2}")),
            row.extra.get("placement").and_then(|v| v.as_str()).unwrap_or("-"),
        );
    }
    // The headline ratio the pool exists for.
    for &size in &args.sizes {
        let fps = |t: &str| {
            report
                .rows
                .iter()
                .find(|r| r.key == format!("pool/{t}/{}", format_size(size)))
                .and_then(|r| r.extra.get("frames_per_s"))
                .and_then(|v| serde_json::from_value::<Spread>(v.clone()).ok())
                .map_or(0.0, |s| s.median)
        };
        let (pool, socket) = (fps("blocking"), fps("socket"));
        if socket > 0.0 {
            println!(
                "\n{}: pool (blocking) delivers {:.0}x the frame rate of socket copying",
                format_size(size),
                pool / socket
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn socket_path(tag: &str) -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    dir.join(format!("dmabroker-bench-{}-{tag}.sock", std::process::id()))
}

pub(crate) fn spawn(role: &str, socket: &std::path::Path, wait: &str) -> anyhow::Result<Child> {
    Command::new("/proc/self/exe")
        .args(["bench", "pool", "--role", role, "--wait", wait, "--socket"])
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting the consumer process: {e}"))
}

pub(crate) fn collect(child: Child) -> anyhow::Result<ChildReport> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!("consumer process failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().ok_or_else(|| anyhow::anyhow!("consumer printed no report"))?;
    Ok(serde_json::from_str(line)?)
}

/// How many back-to-back frames fit in `seconds` at a guessed rate, so that
/// slow transports do not take minutes.
fn throughput_frames(seconds: f64, per_frame_ns: f64) -> u64 {
    ((seconds * 1e9 / per_frame_ns) as u64).clamp(50, 500_000)
}

fn bench_pool(args: &BenchPoolArgs, heaps: &Heaps, size: u64, wait: &str) -> anyhow::Result<(f64, ChildReport)> {
    let path = socket_path("pool");
    let mut producer = Producer::allocate(heaps, &args.heap, &PoolOptions::new(args.buffers, size).name("bench"))?;
    producer.listen(&path)?;
    let child = spawn("pool-consumer", &path, wait)?;
    if !producer.wait_for_consumers(1, Duration::from_secs(10)) {
        anyhow::bail!("the consumer process did not attach");
    }
    let gap = Duration::from_micros(args.gap_us);
    for _ in 0..args.latency_frames {
        producer.acquire(Some(Duration::from_secs(10)))?.submit(FrameMeta::new(size).meta(LATENCY))?;
        std::thread::sleep(gap);
    }
    // Let the last paced frame be released before timing starts.
    std::thread::sleep(Duration::from_millis(20));
    let n = throughput_frames(args.seconds, 2_000.0);
    let start = now_ns();
    for _ in 0..n {
        producer.acquire(Some(Duration::from_secs(10)))?.submit(FrameMeta::new(size).meta(THROUGHPUT))?;
    }
    producer.close();
    drop(producer);
    let report = collect(child)?;
    let fps = report.tp_frames as f64 / (report.tp_last_ns.saturating_sub(start).max(1) as f64 / 1e9);
    Ok((fps, report))
}

fn pool_consumer(args: &BenchPoolArgs) -> anyhow::Result<ExitCode> {
    let path = args.socket.as_ref().ok_or_else(|| anyhow::anyhow!("--socket missing"))?;
    let wait = if args.wait == "poll" { WaitMode::BusyPoll } else { WaitMode::default() };
    let mut consumer = dmabroker::pool::Consumer::connect_with(path, &ConsumerOptions { wait, ..Default::default() })?;
    let mut latencies = Vec::new();
    let mut placement = floor::Placement::default();
    let mut report = ChildReport::default();
    let mut tp_wakes_base = None;
    loop {
        let (ts, phase) = match consumer.recv(Some(Duration::from_secs(30))) {
            Ok(frame) => (frame.info().timestamp_ns, frame.info().meta),
            Err(dmabroker::pool::PoolError::Closed) => break,
            Err(e) => return Err(e.into()),
        };
        let now = now_ns();
        if phase == LATENCY {
            latencies.push(now.saturating_sub(ts));
            placement.record_parent(now.saturating_sub(ts));
        } else {
            if tp_wakes_base.is_none() {
                tp_wakes_base = Some(consumer.wakes());
            }
            report.tp_frames += 1;
            report.tp_last_ns = now;
        }
    }
    report.wakes = consumer.wakes() - tp_wakes_base.unwrap_or(0);
    report.samples = latencies.len() as u64;
    (report.p50_ns, report.p99_ns) = p50_p99(&mut latencies);
    placement.fill(&mut report);
    println!("{}", serde_json::to_string(&report)?);
    Ok(ExitCode::SUCCESS)
}

fn bench_socket(args: &BenchPoolArgs, size: u64) -> anyhow::Result<(f64, ChildReport)> {
    let path = socket_path("copy");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let child = spawn("socket-consumer", &path, "block")?;
    let (mut stream, _) = listener.accept()?;
    let _ = std::fs::remove_file(&path);
    // The frame exists in memory already (as in a pool buffer); only the copy is measured.
    let payload = vec![0x5au8; size as usize];
    let send = |stream: &mut UnixStream, phase: u64| -> std::io::Result<()> {
        let mut header = [0u8; 24];
        header[..8].copy_from_slice(&size.to_le_bytes());
        header[8..16].copy_from_slice(&now_ns().to_le_bytes());
        header[16..].copy_from_slice(&phase.to_le_bytes());
        stream.write_all(&header)?;
        stream.write_all(&payload)
    };
    let gap = Duration::from_micros(args.gap_us);
    // A 12 MiB copy takes milliseconds: fewer paced frames keep the run short.
    let paced = if size > (4 << 20) { args.latency_frames.min(300) } else { args.latency_frames };
    for _ in 0..paced {
        send(&mut stream, LATENCY)?;
        std::thread::sleep(gap);
    }
    std::thread::sleep(Duration::from_millis(20));
    // ~1 ns per byte through the socket on this class of machine.
    let n = throughput_frames(args.seconds, 2_000.0 + size as f64);
    let start = now_ns();
    for _ in 0..n {
        send(&mut stream, THROUGHPUT)?;
    }
    drop(stream);
    let report = collect(child)?;
    let fps = report.tp_frames as f64 / (report.tp_last_ns.saturating_sub(start).max(1) as f64 / 1e9);
    Ok((fps, report))
}

fn socket_consumer(args: &BenchPoolArgs) -> anyhow::Result<ExitCode> {
    let path = args.socket.as_ref().ok_or_else(|| anyhow::anyhow!("--socket missing"))?;
    let mut stream = UnixStream::connect(path)?;
    let mut latencies = Vec::new();
    let mut report = ChildReport::default();
    let mut buf = Vec::new();
    loop {
        let mut header = [0u8; 24];
        match stream.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let word = |i: usize| u64::from_le_bytes(header[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        let (len, ts, phase) = (word(0), word(1), word(2));
        let len = usize::try_from(len).map_err(|_| anyhow::anyhow!("frame length {len} out of range"))?;
        buf.resize(len, 0);
        stream.read_exact(&mut buf)?;
        let now = now_ns();
        if phase == LATENCY {
            latencies.push(now.saturating_sub(ts));
        } else {
            report.tp_frames += 1;
            report.tp_last_ns = now;
        }
    }
    report.samples = latencies.len() as u64;
    (report.p50_ns, report.p99_ns) = p50_p99(&mut latencies);
    println!("{}", serde_json::to_string(&report)?);
    Ok(ExitCode::SUCCESS)
}
