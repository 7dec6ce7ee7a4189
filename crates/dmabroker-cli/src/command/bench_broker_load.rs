//! `dmabroker bench broker --load`: does load stall the broker? One client
//! (uid [`LOADER_UID`], at its quota, so that quota-pressure sweeps run on
//! top of the timer's) allocates `--load-size` buffers, writes every page
//! and lets go, over and over; every other buffer is a memfd of its own that
//! it publishes and withdraws (its charge ends only after a `/proc` scan);
//! another client's 4 KiB allocations are timed
//! idle and under that load, in alternating phases. The goal (issue 12):
//! the p99 under load within 2x the idle p99.

use super::measure::quantile;
use dmabroker::client::Client;
use dmabroker::size::format_size;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The loading client's uid: its own quota (2 buffers of the load size).
pub const LOADER_UID: u32 = 65533;

/// The policy lines for the loading client.
pub fn policy(load_size: u64) -> String {
    format!(
        "[[user]]\nuid = {LOADER_UID}\nheaps = [\"*\"]\nmax_bytes = \"{}KiB\"\nmax_buffers = 64\n",
        load_size.saturating_mul(2) >> 10
    )
}

#[derive(Debug, Default)]
struct Loaded {
    allocations: u64,
    refused: u64,
    times: Vec<u64>,
    error: Option<String>,
}

/// One loading client until `stop`: allocate, write a byte per page, let go.
fn load(socket: PathBuf, heap: String, size: u64, stop: Arc<AtomicBool>) -> Loaded {
    let mut out = Loaded::default();
    let run = |out: &mut Loaded| -> anyhow::Result<()> {
        let u = rustix::process::Uid::from_raw(LOADER_UID);
        let g = rustix::process::Gid::from_raw(LOADER_UID);
        rustix::thread::set_thread_groups(&[])?;
        rustix::thread::set_thread_res_gid(g, g, g)?;
        rustix::thread::set_thread_res_uid(u, u, u)?;
        let mut c = Client::connect(&socket)?;
        let own = dmabroker::Heaps::discover();
        let touch = |b: &dmabroker::Buffer| -> anyhow::Result<()> {
            let mut m = b.map_read_write()?;
            let mut w = m.begin_write()?;
            for page in w.chunks_mut(4096) {
                page[0] = 1;
            }
            Ok(())
        };
        let mut k = 0u64;
        while !stop.load(Ordering::Relaxed) {
            k += 1;
            // Every other buffer is a memfd of its own, published and
            // withdrawn: only a `/proc` scan can tell when it let go of it.
            let done = if k % 2 == 0 {
                let b = own.allocate("memfd", &dmabroker::AllocRequest::new(size))?;
                touch(&b)?;
                let t = Instant::now();
                match c.publish(&b, dmabroker::client::PublishOptions::default()) {
                    Ok(key) => {
                        let took = t.elapsed();
                        c.unpublish(&key)?;
                        Some(took)
                    }
                    Err(_) => None,
                }
            } else {
                let t = Instant::now();
                match c.allocate(&heap, size, None) {
                    Ok(b) => {
                        let took = t.elapsed();
                        touch(&b)?;
                        Some(took)
                    }
                    Err(_) => None,
                }
            };
            match done {
                Some(took) => {
                    out.times.push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
                    out.allocations += 1;
                }
                // At its quota until a sweep ends an old buffer's charge.
                None => {
                    out.refused += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        Ok(())
    };
    if let Err(e) = run(&mut out) {
        out.error = Some(e.to_string());
    }
    out
}

/// 4 KiB allocation round trips for `phase`.
fn probe(socket: &Path, heap: &str, phase: Duration, into: &mut Vec<u64>) -> anyhow::Result<()> {
    let mut c = Client::connect(socket)?;
    let end = Instant::now() + phase;
    let mut n = 0;
    while Instant::now() < end {
        let t = Instant::now();
        drop(c.allocate(heap, 4096, None)?);
        into.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        n += 1;
        if n % 1000 == 0 {
            // Reconnecting unpins what this connection was handed.
            c = Client::connect(socket)?;
        }
    }
    Ok(())
}

/// Run the load mode against the broker at `socket`; prints its table.
pub fn run(
    socket: &Path,
    heap: &str,
    load_heap: &str,
    load_size: u64,
    rounds: u32,
    seconds: f64,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        rustix::process::geteuid().is_root(),
        "--load needs root: the loading client runs as uid {LOADER_UID}, with a quota of its own"
    );
    let phase = Duration::from_secs_f64(seconds);
    let (mut idle, mut loaded) = (Vec::new(), Vec::new());
    let mut load_total = Loaded::default();
    for _ in 0..rounds {
        probe(socket, heap, phase, &mut idle)?;
        let stop = Arc::new(AtomicBool::new(false));
        let loader = {
            let (socket, heap, stop) = (socket.to_path_buf(), load_heap.to_owned(), stop.clone());
            std::thread::spawn(move || load(socket, heap, load_size, stop))
        };
        // The loader reaches its quota first: the sweeps then run all along.
        std::thread::sleep(Duration::from_millis(200));
        let probed = probe(socket, heap, phase, &mut loaded);
        stop.store(true, Ordering::Relaxed);
        let l = loader.join().map_err(|_| anyhow::anyhow!("the loading client panicked"))?;
        probed?;
        if let Some(e) = l.error {
            anyhow::bail!("the loading client failed: {e}");
        }
        load_total.allocations += l.allocations;
        load_total.refused += l.refused;
        load_total.times.extend(l.times);
        // Let the broker release the loader's buffers before the next idle phase.
        std::thread::sleep(Duration::from_millis(500));
    }
    for v in [&mut idle, &mut loaded, &mut load_total.times] {
        v.sort_unstable();
    }
    let us = |v: &[u64], q: f64| quantile(v, q) as f64 / 1e3;
    let ratio = us(&loaded, 0.99) / us(&idle, 0.99).max(f64::MIN_POSITIVE);
    println!(
        "\n### Under load: {} buffers (`{load_heap}` through the broker, and memfds of its own published and \
         withdrawn, in turn) written and let go by uid {LOADER_UID} at its quota (2 of them), while another client \
         allocates 4 KiB from `{heap}`\n",
        format_size(load_size)
    );
    println!("{rounds} round(s) of {seconds} s idle, then {seconds} s loaded.\n");
    println!(
        "| 4 KiB allocations idle: n / p50 / p99 (us) | under load: n / p50 / p99 (us) | p99 loaded / idle (goal <= 2) | \
         load: buffers / quota refusals / p50 allocate or publish (ms) |"
    );
    println!("|---|---|---|---|");
    println!(
        "| {} / {:.1} / {:.1} | {} / {:.1} / {:.1} | {ratio:.2} | {} / {} / {:.1} |",
        idle.len(),
        us(&idle, 0.5),
        us(&idle, 0.99),
        loaded.len(),
        us(&loaded, 0.5),
        us(&loaded, 0.99),
        load_total.allocations,
        load_total.refused,
        us(&load_total.times, 0.5) / 1e3,
    );
    Ok(())
}
