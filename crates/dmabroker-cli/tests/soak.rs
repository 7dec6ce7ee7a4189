//! Soak: many concurrent client processes doing mixed work against one real
//! `dmabroker serve` (allocate + map + write, publish by name and by token,
//! import, unpublish, stats, pools by name with frames streamed,
//! disconnects), while the test SIGKILLs random clients (and starts new
//! ones) and restarts the broker once through the service manager's fd store.
//! Afterwards the broker's fd count and memory are back at their baseline,
//! every quota charge is gone, and every publication not withdrawn is still
//! importable with its bytes. Prints a summary: ops/s, p99 latency per op,
//! errors by kind.
//!
//! CI runs a short form (16 clients, 8 s). The full run:
//!
//! ```sh
//! DMABROKER_SOAK_CLIENTS=64 DMABROKER_SOAK_SECS=300 \
//!   cargo test --release --target x86_64-unknown-linux-gnu -p dmabroker-cli --test soak -- --nocapture
//! ```

mod common;

use common::fdstore::{spawn_broker, stop, Manager, Shared, PASSING_FDS};
use dmabroker::client::{Client, PublishOptions};
use dmabroker::pool::{attach_by_name, ConsumerOptions, FrameMeta, PoolOptions, PoolRegistration, Producer};
use dmabroker::Heaps;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WORKER_ENV: &str = "DMABROKER_SOAK_WORKER";
/// Workers' publications expire: what a killed worker published goes too.
const EXPIRY: Duration = Duration::from_secs(2);

/// The broker process, killed if the test fails before stopping it (its
/// inherited stdout would keep the test harness's pipe open).
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// xorshift64*: the soak only needs cheap, seeded variety.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What one worker did: per op, the count and latencies; errors by kind.
#[derive(Default)]
struct Tally {
    latencies: BTreeMap<&'static str, Vec<u64>>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn time<T, E: std::fmt::Debug>(&mut self, op: &'static str, f: impl FnOnce() -> Result<T, E>) -> Option<T> {
        let t = Instant::now();
        match f() {
            Ok(v) => {
                self.latencies.entry(op).or_default().push(t.elapsed().as_nanos() as u64);
                Some(v)
            }
            Err(e) => {
                // The kind: the error's variant name, without its details.
                let kind = format!("{e:?}").split(['(', ' ', '{']).next().unwrap_or("?").to_owned();
                *self.errors.entry(format!("{op}: {kind}")).or_default() += 1;
                None
            }
        }
    }

    /// One line per op and error: `op NAME N LAT...` / `err KIND N`.
    fn report(&self) -> String {
        let mut out = String::new();
        for (op, l) in &self.latencies {
            let lats: Vec<String> = l.iter().map(u64::to_string).collect();
            out.push_str(&format!("op {op} {}\n", lats.join(",")));
        }
        for (kind, n) in &self.errors {
            out.push_str(&format!("err {} {n}\n", kind.replace(' ', "_")));
        }
        out
    }
}

/// One client process: mixed work until `deadline`, reconnecting whenever
/// the broker goes away (its restart).
fn worker(socket: &Path, id: u64, deadline: Instant, report: &Path) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((id + 1) * 0x1000_0001) ^ u64::from(std::process::id()));
    let mut tally = Tally::default();
    let mut client: Option<Client> = None;
    let mut mine: Vec<(String, dmabroker::Buffer)> = Vec::new();
    let mut n = 0u64;
    let mut last_report = Instant::now();
    while Instant::now() < deadline {
        n += 1;
        let Some(c) = client.as_mut() else {
            client = tally.time("connect", || Client::connect(socket));
            if client.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            continue;
        };
        let mut broken = false;
        match rng.below(10) {
            0..=2 => {
                let len = 4096 << rng.below(8);
                if let Some(b) = tally.time("allocate", || c.allocate("memfd", len, None)) {
                    if let Some(mut m) = tally.time("map", || b.map_read_write()) {
                        if let Ok(mut w) = m.begin_write() {
                            w[0] = id as u8;
                        }
                    }
                    if rng.below(2) == 0 {
                        let name = format!("soak-{id}-{}-{n}", std::process::id());
                        // Publications outlive their publisher (by design): an
                        // expiry lets a killed worker's names go too.
                        let options = PublishOptions::named(name.clone()).expires_in(EXPIRY);
                        if tally.time("publish", || c.publish(&b, options)).is_some() {
                            mine.push((name, b));
                        }
                    }
                } else {
                    broken = true;
                }
            }
            3 => {
                if let Some((name, _)) = mine.pop() {
                    broken |= tally.time("unpublish", || c.unpublish(&name)).is_none();
                }
            }
            4..=5 => {
                // Import what someone published (a name may vanish meanwhile).
                match tally.time("list", || c.list()) {
                    Some((entries, _)) if !entries.is_empty() => {
                        let e = &entries[rng.below(entries.len() as u64) as usize];
                        if let Some(imported) = tally.time("import", || c.import(&e.key)) {
                            let _ = tally.time("map", || imported.buffer.map_read());
                        }
                    }
                    Some(_) => {}
                    None => broken = true,
                }
            }
            6 => {
                let b = tally.time("allocate", || c.allocate("memfd", 4096, None));
                if let Some(b) = b {
                    let options = PublishOptions::token().one_shot(true).expires_in(EXPIRY);
                    let token = tally.time("publish", || c.publish(&b, options));
                    if let Some(t) = token {
                        let _ = tally.time("import", || c.import(&t));
                    }
                } else {
                    broken = true;
                }
            }
            7 => broken |= tally.time("stats", || c.stats()).is_none(),
            8 => {
                // A pool by name, attached through the broker, 8 frames.
                let name = format!("soakpool-{id}-{}", std::process::id());
                let heaps = Heaps::discover();
                if let (Some(mut producer), Some(mut reg)) = (
                    tally.time("pool", || Producer::allocate(&heaps, "memfd", &PoolOptions::new(2, 4096))),
                    tally.time("pool-register", || PoolRegistration::register(socket, &name, &[], "soak")),
                ) {
                    let path = socket.to_owned();
                    let attach = std::thread::spawn(move || {
                        let (mut consumer, _) = attach_by_name(&path, &name, &ConsumerOptions::default())?;
                        for _ in 0..8 {
                            let frame = consumer.recv(Some(Duration::from_secs(5)))?;
                            drop(frame);
                        }
                        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
                    });
                    let t0 = Instant::now();
                    let mut sent = 0;
                    while sent < 8 && t0.elapsed() < Duration::from_secs(5) && !attach.is_finished() {
                        if let Ok(Some((s, _))) = reg.accept() {
                            let _ = producer.attach(s);
                        }
                        // The handshake runs in the producer's own calls.
                        if producer.wait_for_consumers(1, Duration::from_millis(5)) {
                            if let Ok(slot) = producer.acquire(Some(Duration::from_millis(50))) {
                                if slot.submit(FrameMeta::new(4096)).is_ok() {
                                    sent += 1;
                                }
                            }
                        }
                    }
                    let _ = tally.time("pool-stream", || attach.join().map_err(|_| "consumer panicked")?);
                }
            }
            _ => {
                // Disconnect: everything unpublished stays charged only while held.
                client = None;
                mine.clear();
            }
        }
        if broken {
            client = None;
            mine.clear();
        }
        if last_report.elapsed() > Duration::from_millis(500) {
            let _ = std::fs::write(report, tally.report());
            last_report = Instant::now();
        }
    }
    // Withdraw this worker's names before it ends (a killed one cannot: the
    // broker's sweeps must clean up after it).
    if let Some(c) = client.as_mut() {
        for (name, _) in mine.drain(..) {
            let _ = c.unpublish(&name);
        }
    }
    let _ = std::fs::write(report, tally.report());
}

/// Entry point of a worker process (the test binary run again).
#[test]
fn soak_worker_entry() {
    let Ok(spec) = std::env::var(WORKER_ENV) else { return };
    let mut parts = spec.splitn(4, ':');
    let (id, ms, report, socket) = (parts.next(), parts.next(), parts.next(), parts.next());
    let (Some(id), Some(ms), Some(report), Some(socket)) = (id, ms, report, socket) else { panic!("bad {spec}") };
    let deadline = Instant::now() + Duration::from_millis(ms.parse().unwrap());
    worker(Path::new(socket), id.parse().unwrap(), deadline, Path::new(report));
}

fn spawn_worker(id: u64, until: Instant, dir: &Path, socket: &Path, generation: u32) -> (Child, PathBuf) {
    let report = dir.join(format!("worker-{id}-{generation}.txt"));
    let ms = until.saturating_duration_since(Instant::now()).as_millis();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "soak_worker_entry", "--nocapture", "--test-threads", "1"])
        .env(WORKER_ENV, format!("{id}:{ms}:{}:{}", report.display(), socket.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, report)
}

fn proc_fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, std::iter::Iterator::count)
}

fn proc_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn p99(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get((v.len() * 99 / 100).min(v.len().saturating_sub(1))).copied().unwrap_or(0)
}

#[test]
fn soak_mixed_clients_kills_and_a_restart_leave_nothing_behind() {
    if std::env::var_os(WORKER_ENV).is_some() {
        return;
    }
    let _one_at_a_time = PASSING_FDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let clients = env_num("DMABROKER_SOAK_CLIENTS", 16);
    let secs = env_num("DMABROKER_SOAK_SECS", 8);
    let dir = std::env::temp_dir().join(format!("dmabroker-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("b.sock");
    let notify = dir.join("notify.sock");
    let nsock = rustix::net::socket_with(AddressFamily::UNIX, SocketType::DGRAM, SocketFlags::CLOEXEC, None).unwrap();
    rustix::net::bind(&nsock, &SocketAddrUnix::new(&notify).unwrap()).unwrap();
    let manager = Shared::spawn(Manager { socket: nsock, store: BTreeMap::new(), ready: 0, stored: Vec::new() });
    let mut broker = Reap(spawn_broker(&dir, &notify, &[]));
    manager.wait_ready(1);

    // Publications the soak must never lose: 8 named buffers with a pattern.
    let mut owner = Client::connect(&socket).unwrap();
    let mut kept = Vec::new();
    for i in 0..8u8 {
        let b = owner.allocate("memfd", 64 << 10, None).unwrap();
        b.map_read_write().unwrap().begin_write().unwrap().fill(0xc0 | i);
        owner.publish(&b, PublishOptions::named(format!("kept-{i}"))).unwrap();
        kept.push(b);
    }
    drop(kept); // the broker holds them now
    std::thread::sleep(Duration::from_millis(200));
    let (base_fds, base_rss) = (proc_fd_count(broker.0.id()), proc_rss_kib(broker.0.id()));

    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let mut rng = Rng(u64::from(std::process::id()) | 1);
    let mut workers: Vec<(u64, Child, PathBuf)> = Vec::new();
    let mut reports = Vec::new();
    for id in 0..clients {
        let (c, r) = spawn_worker(id, until, &dir, &socket, 0);
        workers.push((id, c, r));
    }
    let (mut kills, mut generation, mut restarted) = (0u32, 0u32, false);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(250));
        // A random client dies by SIGKILL mid-work; a new one takes its place.
        if Instant::now() + Duration::from_secs(1) < until {
            let i = rng.below(workers.len() as u64) as usize;
            let (id, mut child, report) = workers.swap_remove(i);
            let _ = child.kill();
            let _ = child.wait();
            reports.push(report);
            kills += 1;
            generation += 1;
            let (c, r) = spawn_worker(id, until, &dir, &socket, generation);
            workers.push((id, c, r));
        }
        // Halfway: the broker restarts through the fd store.
        if !restarted && start.elapsed() > Duration::from_secs(secs) / 2 {
            restarted = true;
            drop(owner);
            stop(&mut broker.0);
            std::thread::sleep(Duration::from_millis(100));
            let mut inherited: Vec<(String, OwnedFd)> =
                std::mem::take(&mut manager.0.lock().unwrap().store).into_iter().collect();
            let listener =
                rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
                    .unwrap();
            let _ = std::fs::remove_file(&socket);
            rustix::net::bind(&listener, &SocketAddrUnix::new(&socket).unwrap()).unwrap();
            rustix::net::listen(&listener, 128).unwrap();
            inherited.insert(0, ("dmabroker.socket".to_owned(), listener));
            broker = Reap(spawn_broker(&dir, &notify, &inherited));
            drop(inherited);
            manager.wait_ready(2);
            owner = Client::connect(&socket).unwrap();
        }
    }
    for (_, mut child, report) in workers {
        let _ = child.wait();
        reports.push(report);
    }
    let elapsed = start.elapsed();
    assert!(restarted, "the broker was never restarted");

    // Summary: every worker's report, killed ones included (their last one).
    let mut by_op: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for r in &reports {
        for line in std::fs::read_to_string(r).unwrap_or_default().lines() {
            let mut w = line.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("op"), Some(op), Some(l)) => {
                    by_op.entry(op.to_owned()).or_default().extend(l.split(',').filter_map(|x| x.parse::<u64>().ok()));
                }
                (Some("err"), Some(kind), Some(n)) => {
                    *errors.entry(kind.to_owned()).or_default() += n.parse::<u64>().unwrap_or(0);
                }
                _ => {}
            }
        }
    }
    let total: usize = by_op.values().map(Vec::len).sum();
    println!(
        "soak: {clients} clients, {:.1} s, {kills} SIGKILLs, 1 broker restart: {total} ops, {:.0} ops/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    for (op, l) in &mut by_op {
        println!("  {op:<14} {:>7} ops  p99 {:>8.1} us", l.len(), p99(l) as f64 / 1e3);
    }
    for (kind, n) in &errors {
        println!("  error {kind}: {n}");
    }
    assert!(total > clients as usize * 10, "the clients did almost nothing: {total} ops");

    // Nothing left behind: the broker's sweeps find the killed clients'
    // buffers unheld, charges go, fds and memory return to the baseline.
    let pid = broker.0.id();
    let deadline = Instant::now() + Duration::from_secs(30) + EXPIRY;
    let settled = loop {
        let stats = owner.stats().unwrap();
        let (list, _) = owner.list().unwrap();
        let only_kept = list.iter().all(|e| e.key.starts_with("kept-"));
        if only_kept && stats.total_buffers == 8 && proc_fd_count(pid) <= base_fds {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "30 s after the clients ended: {} buffers held, {} publications ({:?}), {} fds (baseline {base_fds})",
            stats.total_buffers,
            list.len(),
            list.iter().map(|e| &e.key).take(5).collect::<Vec<_>>(),
            proc_fd_count(pid)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for i in 0..8u8 {
        let imported = owner.import(&format!("kept-{i}")).unwrap();
        assert!(imported.buffer.map_read().unwrap().begin_read().unwrap().iter().all(|x| *x == 0xc0 | i));
    }
    for i in 0..8u8 {
        owner.unpublish(&format!("kept-{i}")).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = owner.stats().unwrap();
        if s.used_bytes == 0 && s.used_buffers == 0 && s.total_buffers == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "charges remain after every publication was withdrawn: {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let rss = proc_rss_kib(pid);
    println!(
        "  broker after: {} fds (baseline {base_fds}), RSS {rss} KiB (baseline {base_rss} KiB, before the restart), {} buffers",
        proc_fd_count(pid),
        settled.total_buffers
    );
    // The restarted broker is a new process: its memory is compared with
    // the first one's baseline, with room for allocator caches.
    assert!(rss < base_rss + 16 * 1024, "broker RSS {rss} KiB vs baseline {base_rss} KiB");
    drop(owner);
    stop(&mut broker.0);
    let _ = std::fs::remove_dir_all(&dir);
}
