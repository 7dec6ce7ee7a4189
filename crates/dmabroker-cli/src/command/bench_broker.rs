//! `dmabroker bench broker`: allocation through the broker against
//! in-process allocation, throughput with concurrent clients, and the
//! broker's memory per live buffer. Starts its own broker (this binary,
//! `serve`) on a private socket with a policy large enough for the run.

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
    /// Round trips per size.
    #[arg(long, default_value_t = 500)]
    pub iterations: usize,
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

fn start_daemon(live: usize) -> anyhow::Result<Daemon> {
    let dir = std::env::temp_dir().join(format!("dmabroker-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let policy = dir.join("policy.toml");
    let uid = rustix::process::getuid().as_raw();
    std::fs::write(
        &policy,
        format!(
            "[[user]]\nuid = {uid}\nheaps = [\"*\"]\nmax_bytes = \"1TiB\"\nmax_buffers = {}\npublish = true\n",
            live + 100_000
        ),
    )?;
    let socket = dir.join("bench.sock");
    let child = Command::new(std::env::current_exe()?)
        .args(["serve", "--socket"])
        .arg(&socket)
        .arg("--policy")
        .arg(&policy)
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
    // The broker inherits the limit: it holds one fd per live buffer.
    let nofile = raise_nofile((args.live as u64 + 50_000).max(65_536));
    let daemon = start_daemon(args.live)?;
    let heaps = Heaps::discover();
    let heap = heaps.require(&args.heap)?;
    println!("## Broker\n");
    println!("Heap `{}`; broker and clients on this machine; RLIMIT_NOFILE {nofile}.\n", args.heap);
    println!("| size | in-process p50 / p99 (us) | through broker p50 / p99 (us) | overhead p50 (us) |");
    println!("|---|---|---|---|");
    let mut client = Client::connect(&daemon.socket)?;
    for &size in &args.sizes {
        let iterations = if size >= 8 << 20 { args.iterations.min(100) } else { args.iterations };
        let mut local = Vec::with_capacity(iterations);
        let mut remote = Vec::with_capacity(iterations);
        for i in 0..iterations {
            // Interleaved so that drift hits both the same.
            let t = Instant::now();
            drop(heap.allocate(&AllocRequest::new(size))?);
            local.push(t.elapsed());
            let t = Instant::now();
            drop(client.allocate(&args.heap, size, None)?);
            remote.push(t.elapsed());
            if i % 1000 == 999 {
                // Reconnecting unpins what this connection was handed.
                client = Client::connect(&daemon.socket)?;
            }
        }
        local.sort();
        remote.sort();
        let (l50, r50) = (percentile(&local, 0.5), percentile(&remote, 0.5));
        println!(
            "| {} | {} / {} | {} / {} | {} |",
            format_size(size),
            us(l50),
            us(percentile(&local, 0.99)),
            us(r50),
            us(percentile(&remote, 0.99)),
            us(r50.saturating_sub(l50))
        );
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
    let per = if made > 0 { after.saturating_sub(before) as f64 / made as f64 } else { 0.0 };
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
