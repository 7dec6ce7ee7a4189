//! `dmabroker bench ledger`: listing N dma-bufs through the dma-buf BPF
//! iterator against the `/proc` scan that finds the same buffers through
//! their fds (`/proc/<pid>/fd` links, `fdinfo`, `stat`, and `maps`).
//!
//! This process allocates N small dma-bufs (4 KiB from the system dma-heap
//! by default) and holds them, then times, once per round and in rotating
//! order, (a) [`bpf_iter::read`] (load and attach the program, read every
//! record, parse: what `dmabroker ps` does), (a') the same with the program
//! loaded once before the rounds ([`bpf_iter::Loaded::read`]: attach, read,
//! parse; the per-buffer part) and (b) [`accounting::scan`] (what `ps`
//! reads from `/proc`), and checks that each saw all N. The ratios iterator
//! / scan are taken per round, then their median and range. Without the iterator
//! (kernel < 6.16, no BTF, not root, built without `bpf-ledger`) it says why
//! and times only the scan.
//!
//! Note that `dmabroker ps` on a kernel with the iterator runs both (the scan
//! finds the holders, the iterator the buffers no process holds): the table
//! compares the two ways of *finding* the buffers, not `ps` with and without.

use super::measure::{fmt_ns, ns, paired_ratios, JsonReport, JsonRow, Spread};
use anyhow::Context;
use dmabroker::accounting::{self, bpf_iter};
use dmabroker::buffer::BufferKind;
use dmabroker::heap::{AllocRequest, Heaps};
use dmabroker::size::format_size;
use std::collections::HashSet;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Instant;

/// Arguments of `dmabroker bench ledger`.
#[derive(Debug, clap::Args)]
pub struct BenchLedgerArgs {
    /// Dma-bufs to create and hold during the run (raises RLIMIT_NOFILE to fit).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub buffers: u32,
    /// Size of each buffer.
    #[arg(long, default_value = "4K", value_parser = dmabroker::size::parse_size)]
    pub size: u64,
    /// The dma-heap to allocate from.
    #[arg(long, default_value = "dma-heap/system")]
    pub heap: String,
    /// Rounds (each times every method once, in rotating order).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Print one JSON report instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Fds this process needs besides the buffers (stdio, /proc directories
/// open during the scan, the BPF objects).
const SPARE_FDS: u64 = 256;

/// Raises RLIMIT_NOFILE's soft limit (and, as root, the hard one) to `want`.
fn raise_nofile(want: u64) -> anyhow::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    if cur.current.is_none_or(|c| c >= want) {
        return Ok(cur.current.unwrap_or(u64::MAX));
    }
    let hard = cur.maximum.map_or(want, |m| m.max(want));
    if setrlimit(Resource::Nofile, Rlimit { current: Some(want), maximum: Some(hard) }).is_ok() {
        return Ok(want);
    }
    // Not root: the soft limit can reach the hard one, no further.
    let max = cur.maximum.unwrap_or(u64::MAX);
    anyhow::bail!(
        "{} dma-bufs need RLIMIT_NOFILE {want}, but its hard limit is {max} and only root may raise it: \
         run as root, raise the hard limit (`ulimit -Hn`, limits.conf), or give --buffers {} or fewer",
        want - SPARE_FDS,
        max.saturating_sub(SPARE_FDS)
    )
}

/// One method's times, one per round, in nanoseconds.
#[derive(Default)]
struct Method {
    times: Vec<f64>,
    /// The fewest of our buffers it saw in a round.
    seen: Option<u64>,
}

impl Method {
    fn record(&mut self, elapsed_ns: u64, seen: u64) {
        self.times.push(elapsed_ns as f64);
        self.seen = Some(self.seen.map_or(seen, |s| s.min(seen)));
    }
}

pub fn run(args: &BenchLedgerArgs) -> anyhow::Result<ExitCode> {
    let n = u64::from(args.buffers);
    let nofile = raise_nofile(n + SPARE_FDS)?;
    let heaps = Heaps::discover();
    let heap = heaps.require(&args.heap)?;
    let t = Instant::now();
    let mut held = Vec::with_capacity(n as usize);
    let mut ours = HashSet::with_capacity(n as usize);
    for i in 0..n {
        let buffer = heap.allocate(&AllocRequest::new(args.size)).with_context(|| {
            format!("allocating dma-buf {} of {n} ({} from {})", i + 1, format_size(args.size), args.heap)
        })?;
        let st = rustix::fs::fstat(buffer.as_fd()).context("fstat of a new dma-buf")?;
        anyhow::ensure!(
            buffer.kind() == BufferKind::DmaBuf,
            "heap {} made a {:?}, not a dma-buf: give a dma-heap (see `dmabroker heaps`)",
            args.heap,
            buffer.kind()
        );
        ours.insert(st.st_ino);
        held.push(buffer);
    }
    let alloc_elapsed = t.elapsed();

    let count_iter = |entries: &[bpf_iter::DmabufEntry]| entries.iter().filter(|e| ours.contains(&e.inode)).count();
    let count_scan = |s: &accounting::Snapshot| {
        s.buffers.iter().filter(|b| b.kind == BufferKind::DmaBuf && ours.contains(&b.inode)).count()
    };
    // A first, untimed run of each: the iterator's availability, warm caches.
    let mut loaded = bpf_iter::Loaded::load();
    let unavailable = match &mut loaded {
        Ok(l) => l.read().err(),
        Err(e) => Some(e.clone()),
    };
    accounting::scan().context("the /proc scan")?;

    let (mut iter, mut iter_loaded, mut scan) = (Method::default(), Method::default(), Method::default());
    let iter_error = |e: bpf_iter::Unavailable| anyhow::anyhow!("the dma-buf BPF iterator: {e}");
    for round in 0..args.rounds {
        for k in 0..3 {
            let which = (k + round) % 3;
            if which < 2 && unavailable.is_some() {
                continue;
            }
            if which == 0 {
                let t = Instant::now();
                let entries = bpf_iter::read().map_err(iter_error)?;
                let elapsed = ns(t.elapsed());
                iter.record(elapsed, count_iter(&entries) as u64);
            } else if which == 1 {
                let Ok(l) = &mut loaded else { continue };
                let t = Instant::now();
                let entries = l.read().map_err(iter_error)?;
                let elapsed = ns(t.elapsed());
                iter_loaded.record(elapsed, count_iter(&entries) as u64);
            } else {
                let t = Instant::now();
                let snapshot = accounting::scan().context("the /proc scan")?;
                let elapsed = ns(t.elapsed());
                scan.record(elapsed, count_scan(&snapshot) as u64);
            }
        }
    }
    drop(held);

    let (is, ls, ss) = (Spread::of(&iter.times), Spread::of(&iter_loaded.times), Spread::of(&scan.times));
    let ratio = Spread::of(&paired_ratios(&iter.times, &scan.times));
    let loaded_ratio = Spread::of(&paired_ratios(&iter_loaded.times, &scan.times));
    let mut report = JsonReport::new("ledger");
    let key = |what: &str| format!("ledger/{what}/{n}");
    let extra = |m: &Method| {
        let mut e = serde_json::Map::new();
        e.insert("buffers".into(), n.into());
        e.insert("seen".into(), m.seen.unwrap_or(0).into());
        e
    };
    let mut scan_extra = extra(&scan);
    if let Some(why) = &unavailable {
        scan_extra.insert("iterator_unavailable".into(), why.0.clone().into());
    }
    report.rows.push(JsonRow {
        key: key("proc-scan"),
        value: ss,
        unit: "ns".into(),
        floor: None,
        ratio: None,
        extra: scan_extra,
    });
    if unavailable.is_none() {
        report.rows.push(JsonRow {
            key: key("bpf-iterator"),
            value: is,
            unit: "ns".into(),
            floor: Some(key("proc-scan")),
            ratio: Some(ratio),
            extra: extra(&iter),
        });
        report.rows.push(JsonRow {
            key: key("bpf-iterator-loaded"),
            value: ls,
            unit: "ns".into(),
            floor: Some(key("proc-scan")),
            ratio: Some(loaded_ratio),
            extra: extra(&iter_loaded),
        });
    }
    if args.json {
        report.print()?;
    } else {
        let release = rustix::system::uname().release().to_string_lossy().into_owned();
        println!("## Ledger: {n} dma-bufs of {} ({})\n", format_size(args.size), args.heap);
        println!(
            "Kernel {release}; RLIMIT_NOFILE {nofile}; {} round(s), the methods interleaved in rotating order; \
             p50 = median over rounds; allocating the buffers took {:.2} s.\n",
            args.rounds,
            alloc_elapsed.as_secs_f64()
        );
        println!("| method | p50 | min | max | per buffer | seen | iterator / scan |");
        println!("|---|---|---|---|---|---|---|");
        let row = |name: &str, s: &Spread, m: &Method, r: &str| {
            println!(
                "| {name} | {} | {} | {} | {:.2} us | {}/{n} | {r} |",
                fmt_ns(s.median as u64),
                fmt_ns(s.min as u64),
                fmt_ns(s.max as u64),
                s.median / n as f64 / 1e3,
                m.seen.unwrap_or(0)
            );
        };
        if unavailable.is_none() {
            row("BPF iterator, as `ps` (load, attach, read, parse)", &is, &iter, &ratio.ratio());
            row("BPF iterator, loaded once (attach, read, parse)", &ls, &iter_loaded, &loaded_ratio.ratio());
        }
        row("/proc scan (fd links, fdinfo, stat, maps)", &ss, &scan, "1 (floor)");
        if let Some(why) = &unavailable {
            println!("\nThe dma-buf BPF iterator is not available, so only the /proc scan was timed: {why}");
        }
        println!("\nCommand: `dmabroker bench ledger --buffers {n} --rounds {}`.", args.rounds);
    }
    for (name, m) in [("the BPF iterator", &iter), ("the loaded BPF iterator", &iter_loaded), ("the /proc scan", &scan)]
    {
        if let Some(seen) = m.seen.filter(|&s| s != n) {
            eprintln!("dmabroker: {name} saw {seen} of the {n} dma-bufs this process held");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
