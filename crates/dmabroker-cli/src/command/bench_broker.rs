//! `dmabroker bench broker`: allocation through the broker against
//! in-process allocation, throughput with concurrent clients, and the
//! broker's memory per live buffer. Starts its own broker (this binary,
//! `serve`) on a private socket with a policy large enough for the run.
//!
//! The floor of a round trip, measured in the same rounds and interleaved
//! sample by sample: a bare `SCM_RIGHTS` fd round trip over `SOCK_SEQPACKET`
//! with a child process of this binary ([`FdEcho`]). Each sample also
//! records which CPU the client and the server (broker or echo child) last
//! ran on, so that the table can split the round trips by placement.

use super::bench_floor::{fd_echo, last_cpu, FdEcho, Placement};
use super::measure::{ns, paired_ratios, quantile, JsonReport, JsonRow, Spread};
use dmabroker::client::Client;
use dmabroker::heap::{AllocRequest, Heaps};
use dmabroker::size::format_size;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Arguments of `dmabroker bench broker`.
#[derive(Debug, clap::Args)]
pub struct BenchBrokerArgs {
    /// Heap to allocate from.
    #[arg(long, default_value = "memfd")]
    pub heap: String,
    /// Sizes for the round-trip comparison.
    #[arg(long, value_delimiter = ',', value_parser = dmabroker::size::parse_size, default_value = "4K,1M,12M")]
    pub sizes: Vec<u64>,
    /// Concurrency levels for the throughput test.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub clients: Vec<usize>,
    /// Seconds per throughput level.
    #[arg(long, default_value_t = 1.0, value_parser = crate::cli::parse_seconds)]
    pub seconds: f64,
    /// Live buffers for the memory measurement (0: skip).
    #[arg(long, default_value_t = 100_000)]
    pub live: usize,
    /// Round trips per size and round.
    #[arg(long, default_value_t = 500)]
    pub iterations: usize,
    /// Rounds of the round-trip comparison (median and range over rounds).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Print one JSON report (round trips only; for `bench compare` / scripts/ab.sh).
    #[arg(long)]
    pub json: bool,
    /// Move this process (the client, and the floor's echo child) into this
    /// cgroup directory once the broker runs, so that the broker charges its
    /// dma-heap allocations to another cgroup (through a worker there, with
    /// `dma_heap.mem_accounting=1`): the cost of charging the client.
    #[arg(long, value_name = "DIR")]
    pub client_cgroup: Option<PathBuf>,
    /// With --client-cgroup: how long the client waits between connecting
    /// and its first allocation, in ms (that first allocation is reported
    /// on its own: it may wait for the cgroup's worker to start).
    #[arg(long, default_value_t = 0)]
    pub first_delay_ms: u64,
    /// Have the broker start a cgroup's worker at its first allocation, as
    /// before, instead of when the client connects (an A/B in one boot).
    #[arg(long)]
    pub worker_on_first_request: bool,
    /// Only the load test: another client's 4 KiB allocation p99, idle and
    /// while a client of uid 65533 at its quota allocates `--load-size`
    /// buffers, writes them and lets go (quota-pressure sweeps running).
    /// Needs root. `--rounds` and `--seconds` (per phase) apply.
    #[arg(long)]
    pub load: bool,
    /// Size of the loading client's buffers.
    #[arg(long, value_parser = dmabroker::size::parse_size, default_value = "256M")]
    pub load_size: u64,
    /// Heap of the loading client's buffers (default: `--heap`).
    #[arg(long)]
    pub load_heap: Option<String>,
    /// Internal: child role (`fd-echo`).
    #[arg(long, hide = true)]
    pub role: Option<String>,
    /// Internal: where the child connects.
    #[arg(long, hide = true)]
    pub role_socket: Option<PathBuf>,
}

struct Daemon {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ =
            rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), rustix::process::Signal::TERM);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_daemon(live: usize, extra: &[&str], extra_policy: &str) -> anyhow::Result<Daemon> {
    let dir = std::env::temp_dir().join(format!("dmabroker-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let policy = dir.join("policy.toml");
    let uid = rustix::process::getuid().as_raw();
    std::fs::write(
        &policy,
        format!(
            "[[user]]\nuid = {uid}\nheaps = [\"*\"]\nmax_bytes = \"1TiB\"\nmax_buffers = {}\npublish = true\n{extra_policy}",
            live + 100_000
        ),
    )?;
    let socket = dir.join("bench.sock");
    // A/B: another build's broker under this build's clients.
    let exe =
        std::env::var_os("DMABROKER_BENCH_BROKER").map_or_else(std::env::current_exe, |p| Ok(PathBuf::from(p)))?;
    let child = Command::new(exe)
        .args(["serve", "--socket"])
        .arg(&socket)
        .arg("--policy")
        .arg(&policy)
        .args(extra)
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::null())
        .spawn()?;
    let daemon = Daemon { child, socket, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Client::connect(&daemon.socket).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the broker did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(daemon)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn vm_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Raise RLIMIT_NOFILE as far as allowed (root: to `want`); returns the new soft limit.
fn raise_nofile(want: u64) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    let target = Rlimit { current: Some(want), maximum: Some(want.max(cur.maximum.unwrap_or(0))) };
    if setrlimit(Resource::Nofile, target).is_err() {
        let soft = Rlimit { current: cur.maximum, maximum: cur.maximum };
        let _ = setrlimit(Resource::Nofile, soft);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

pub fn run(args: &BenchBrokerArgs) -> anyhow::Result<ExitCode> {
    if let Some(role) = args.role.as_deref() {
        anyhow::ensure!(role == "fd-echo", "unknown bench role `{role}`");
        let path = args.role_socket.as_ref().ok_or_else(|| anyhow::anyhow!("--role-socket missing"))?;
        return fd_echo(path);
    }
    // The broker inherits the limit: it holds one fd per live buffer.
    let nofile = raise_nofile((args.live as u64 + 50_000).max(65_536));
    if args.load {
        let daemon = start_daemon(args.live, &[], &super::bench_broker_load::policy(args.load_size))?;
        let load_heap = args.load_heap.as_deref().unwrap_or(&args.heap);
        println!("## Broker under load\n\nRLIMIT_NOFILE {nofile}.");
        super::bench_broker_load::run(
            &daemon.socket,
            &args.heap,
            load_heap,
            args.load_size,
            args.rounds,
            args.seconds,
        )?;
        println!("\nCommand: `dmabroker bench broker --load` (release build).");
        return Ok(ExitCode::SUCCESS);
    }
    let extra: &[&str] = if args.worker_on_first_request { &["--charge-worker-on-first-request"] } else { &[] };
    let daemon = start_daemon(args.live, extra, "")?;
    if let Some(dir) = &args.client_cgroup {
        // "0": the writing process, all its threads (cgroup v2).
        std::fs::write(dir.join("cgroup.procs"), "0").map_err(|e| {
            anyhow::anyhow!(
                "cannot move this process into cgroup {} ({e}): give an existing cgroup v2 directory this user may \
                 write cgroup.procs of (as root: mkdir /sys/fs/cgroup/NAME)",
                dir.display()
            )
        })?;
    }
    let heaps = Heaps::discover();
    let heap = heaps.require(&args.heap)?;
    let mut echo = FdEcho::start(&daemon.dir)?;
    let broker_pid = daemon.child.id();
    // The first allocation of the session on its own: for a client in
    // another cgroup it may wait for that cgroup's worker to start.
    let first_size = args.sizes.first().copied().unwrap_or(4096);
    let t = Instant::now();
    let mut client = Client::connect(&daemon.socket)?;
    let connected = t.elapsed();
    std::thread::sleep(Duration::from_millis(args.first_delay_ms));
    let t = Instant::now();
    drop(client.allocate(&args.heap, first_size, None)?);
    let first = t.elapsed();
    let mut report = JsonReport::new("broker");
    report.rows.push(JsonRow {
        key: format!("broker/first-allocation/{}", format_size(first_size)),
        value: Spread::of(&[first.as_nanos() as f64]),
        unit: "ns".into(),
        floor: None,
        ratio: None,
        extra: serde_json::Map::new(),
    });
    let mut lines = Vec::new();
    for &size in &args.sizes {
        let iterations = if size >= 8 << 20 { args.iterations.min(100) } else { args.iterations };
        // Per round: p50 of each path; all samples for the p99s.
        let (mut l50, mut r50, mut f50) = (Vec::new(), Vec::new(), Vec::new());
        let (mut local_all, mut remote_all, mut floor_all) = (Vec::new(), Vec::new(), Vec::new());
        let (mut remote_at, mut floor_at) = (Placement::default(), Placement::default());
        let mut done = 0usize;
        for round in 0..args.rounds {
            let (mut local, mut remote, mut floor) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..iterations {
                // Interleaved, in rotating order, so that drift hits all three alike.
                for k in 0..3 {
                    match (k + i + round as usize) % 3 {
                        0 => {
                            let t = Instant::now();
                            drop(heap.allocate(&AllocRequest::new(size))?);
                            local.push(ns(t.elapsed()));
                        }
                        1 => {
                            let t = Instant::now();
                            drop(client.allocate(&args.heap, size, None)?);
                            let d = ns(t.elapsed());
                            remote.push(d);
                            remote_at.record(d, rustix::thread::sched_getcpu(), last_cpu(broker_pid));
                        }
                        _ => {
                            let t = Instant::now();
                            echo.round_trip()?;
                            let d = ns(t.elapsed());
                            floor.push(d);
                            floor_at.record(d, rustix::thread::sched_getcpu(), last_cpu(echo.pid()));
                        }
                    }
                }
                done += 1;
                if done % 1000 == 0 {
                    // Reconnecting unpins what this connection was handed.
                    client = Client::connect(&daemon.socket)?;
                }
            }
            for (v, out, all) in [
                (&mut local, &mut l50, &mut local_all),
                (&mut remote, &mut r50, &mut remote_all),
                (&mut floor, &mut f50, &mut floor_all),
            ] {
                v.sort_unstable();
                out.push(quantile(v, 0.5) as f64);
                all.extend_from_slice(v);
            }
        }
        for v in [&mut local_all, &mut remote_all, &mut floor_all] {
            v.sort_unstable();
        }
        let p99 = |v: &[u64]| quantile(v, 0.99) as f64 / 1e3;
        let (ls, rs, fs) = (Spread::of(&l50), Spread::of(&r50), Spread::of(&f50));
        let ratio = Spread::of(&paired_ratios(&r50, &f50));
        // Lower bound of an allocation through any broker: the fd round trip
        // plus the allocation itself; what is left is dmabroker's own.
        let bound: Vec<f64> = f50.iter().zip(&l50).map(|(f, l)| f + l).collect();
        let to_bound = Spread::of(&paired_ratios(&r50, &bound));
        let own = Spread::of(&r50.iter().zip(&bound).map(|(r, b)| r - b).collect::<Vec<_>>());
        lines.push(format!(
            "| {} | {} / {:.1} | {} / {:.1} | {} / {:.1} | {} | {} | {:.1} us | {} / {} |",
            format_size(size),
            ls.latency(),
            p99(&local_all),
            fs.latency(),
            p99(&floor_all),
            rs.latency(),
            p99(&remote_all),
            ratio.ratio(),
            to_bound.ratio(),
            own.median / 1e3,
            remote_at.describe(),
            floor_at.describe(),
        ));
        let key = |what: &str| format!("broker/{what}/{}", format_size(size));
        let extra = |v: &[u64]| {
            let mut m = serde_json::Map::new();
            m.insert("p99_ns".into(), quantile(v, 0.99).into());
            m
        };
        report.rows.push(JsonRow {
            key: key("in-process"),
            value: ls,
            unit: "p50_ns".into(),
            floor: None,
            ratio: None,
            extra: extra(&local_all),
        });
        report.rows.push(JsonRow {
            key: key("fd-round-trip"),
            value: fs,
            unit: "p50_ns".into(),
            floor: None,
            ratio: None,
            extra: extra(&floor_all),
        });
        report.rows.push(JsonRow {
            key: key("through-broker"),
            value: rs,
            unit: "p50_ns".into(),
            floor: Some(key("fd-round-trip")),
            ratio: Some(ratio),
            extra: extra(&remote_all),
        });
    }
    drop(echo);
    if args.json {
        report.print()?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("## Broker\n");
    if let Some(dir) = &args.client_cgroup {
        println!("Client in cgroup {}, the broker in its own ({}).\n", dir.display(), charging_line());
    }
    println!(
        "First allocation ({}) of the session, {} ms after connecting (connect + Hello: {} us; the cgroup's worker \
         started at {}): {} us.\n",
        format_size(first_size),
        args.first_delay_ms,
        us(connected),
        if args.worker_on_first_request { "the first allocation" } else { "connect" },
        us(first)
    );
    println!("Heap `{}`; broker and clients on this machine; RLIMIT_NOFILE {nofile}; medians over {} round(s), range in parentheses.\n", args.heap, args.rounds);
    println!("| size | in-process allocation p50 / p99 (us) | floor: bare SCM_RIGHTS round trip p50 / p99 | through broker p50 / p99 | broker / floor (p50) | broker / (floor + in-process) | broker - floor - in-process | placement (p50 by CPU): broker / floor |");
    println!("|---|---|---|---|---|---|---|---|");
    for l in &lines {
        println!("{l}");
    }
    let held = client.stats()?.total_buffers;
    drop(client);
    println!("\n(broker holds {held} buffer(s) after this phase, awaiting its sweep)");

    println!("\n| concurrent clients | allocations/s (4 KiB, alloc + close) | p99 round trip (us) |");
    println!("|---|---|---|");
    for &n in &args.clients {
        let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
        let socket = daemon.socket.clone();
        let heap_name = args.heap.clone();
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let socket = socket.clone();
                let heap_name = heap_name.clone();
                std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                    let mut c = Client::connect(&socket)?;
                    let mut times = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        drop(c.allocate(&heap_name, 4096, None)?);
                        times.push(t.elapsed());
                    }
                    Ok(times)
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            all.extend(t.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??);
        }
        all.sort();
        let rate = all.len() as f64 / args.seconds;
        println!("| {n} | {rate:.0} | {} |", if all.is_empty() { "-".into() } else { us(percentile(&all, 0.99)) });
        // Let the broker release the previous level's buffers.
        std::thread::sleep(Duration::from_millis(300));
    }

    if args.live > 0 {
        measure_live(&daemon.socket, daemon.child.id(), args)?;
    }
    println!("\nCommand: `dmabroker bench broker` (release build).");
    Ok(ExitCode::SUCCESS)
}

/// The kernel's `dma_heap.mem_accounting`, for the table's heading.
fn charging_line() -> String {
    match std::fs::read_to_string("/sys/module/dma_heap/parameters/mem_accounting") {
        Ok(v) => format!("dma_heap.mem_accounting={}", v.trim()),
        Err(_) => "this kernel has no dma_heap.mem_accounting".into(),
    }
}

fn measure_live(socket: &Path, pid: u32, args: &BenchBrokerArgs) -> anyhow::Result<()> {
    std::thread::sleep(Duration::from_millis(500));
    let mut c = Client::connect(socket)?;
    let before = vm_rss(pid);
    let t = Instant::now();
    let mut made = 0;
    let mut held = Vec::with_capacity(args.live);
    for _ in 0..args.live {
        match c.allocate(&args.heap, 4096, None) {
            // Kept open here, so the broker keeps its own fd and entry.
            Ok(b) => held.push(b),
            Err(e) => {
                println!("\nstopped at {made} live buffers: {e}");
                break;
            }
        }
        made += 1;
    }
    let elapsed = t.elapsed();
    let after = vm_rss(pid);
    let stats = c.stats()?;
    drop(held);
    let per = if made > 0 { after.saturating_sub(before) as f64 / f64::from(made) } else { 0.0 };
    println!(
        "\n| live buffers in the broker | broker VmRSS before / after | per live buffer | time to allocate them |"
    );
    println!("|---|---|---|---|");
    println!(
        "| {} | {} / {} | {per:.0} bytes | {:.2} s |",
        stats.total_buffers,
        format_size(before),
        format_size(after),
        elapsed.as_secs_f64()
    );
    Ok(())
}
