//! iceoryx2 0.10 measured the way `dmabroker bench pool` measures its pool,
//! printing the same markdown table: for each payload size, a paced latency
//! phase (producer timestamp -> subscriber wake, CLOCK_MONOTONIC) and a
//! back-to-back throughput phase, in two wait modes:
//! - event-driven: publish, then `Notifier::notify`; the subscriber sleeps in
//!   `Listener::timed_wait` and drains `Subscriber::receive` (iceoryx2's
//!   documented pattern for a subscriber that does not spin);
//! - busy-poll: the subscriber spins on `Subscriber::receive`.
//!
//! Lossless like the pool's Block policy: no safe overflow, publisher
//! back-pressure `RetryUntilDelivered`. Neither side touches the payload
//! beyond a 24-byte header (timestamp, phase).
//!
//! Run: `cargo run --release --manifest-path benches/iceoryx2-peer/Cargo.toml`
//! (args: `[--sizes 4096,1048576,12441600] [--latency-frames 2000] [--gap-us 500] [--seconds 1]`).

use iceoryx2::port::backpressure_strategy::BackpressureStrategy;
use iceoryx2::port::update_connections::UpdateConnections;
use iceoryx2::prelude::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const LATENCY: u64 = 0;
const THROUGHPUT: u64 = 1;
const STOP: u64 = 2;

type Error = Box<dyn std::error::Error>;

fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

struct Args {
    sizes: Vec<u64>,
    latency_frames: u64,
    gap_us: u64,
    seconds: f64,
}

fn parse_args() -> Result<Args, Error> {
    let mut a = Args { sizes: vec![4096, 1 << 20, 12_441_600], latency_frames: 2000, gap_us: 500, seconds: 1.0 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--sizes" => a.sizes = value.split(',').map(|s| s.parse()).collect::<Result<_, _>>()?,
            "--latency-frames" => a.latency_frames = value.parse()?,
            "--gap-us" => a.gap_us = value.parse()?,
            "--seconds" => a.seconds = value.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(a)
}

fn main() -> Result<(), Error> {
    set_log_level(LogLevel::Error);
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("__subscriber") {
        return subscriber(&argv[2], &argv[3] == "event", argv[4].parse()?);
    }
    let args = parse_args()?;
    let mut rows = Vec::new();
    for &size in &args.sizes {
        for (label, event) in [("iceoryx2, event-driven subscriber (listener wait)", true), ("iceoryx2, busy-polling subscriber", false)] {
            let (fps, p50, p99) = publisher(&args, size, event)?;
            eprintln!("{label} {}: done", fmt_size(size));
            rows.push((label, size, p50, p99, fps));
        }
    }
    println!("| transport | payload | latency p50 | latency p99 | frames/s | futex wake-ups per frame (throughput) |");
    println!("|---|---|---|---|---|---|");
    for (label, size, p50, p99, fps) in rows {
        println!("| {label} | {} | {} | {} | {fps:.0} | n/a |", fmt_size(size), fmt_ns(p50), fmt_ns(p99));
    }
    Ok(())
}

fn service_name(size: u64, event: bool) -> String {
    format!("dmabroker-bench/{}/{size}/{}", std::process::id(), if event { "event" } else { "poll" })
}

fn publisher(args: &Args, size: u64, event: bool) -> Result<(f64, u64, u64), Error> {
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let name = service_name(size, event);
    let pubsub = node
        .service_builder(&name.as_str().try_into()?)
        .publish_subscribe::<[u8]>()
        .enable_safe_overflow(false)
        .subscriber_max_buffer_size(4)
        .history_size(0)
        .max_publishers(1)
        .max_subscribers(1)
        .open_or_create()?;
    let publisher = pubsub
        .publisher_builder()
        .initial_max_slice_len(size as usize)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()?;
    let events = node.service_builder(&format!("{name}/ev").as_str().try_into()?).event().open_or_create()?;
    let notifier = events.notifier_builder().create()?;

    let mut child = Command::new(std::env::current_exe()?)
        .args(["__subscriber", &name, if event { "event" } else { "poll" }, &size.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    // The subscriber says when its ports exist, so no frame goes nowhere.
    if lines.next().transpose()?.as_deref() != Some("ready") {
        return Err("subscriber did not start".into());
    }
    publisher.update_connections()?;

    let send = |phase: u64| -> Result<(), Error> {
        let mut sample = publisher.loan_slice_uninit(size as usize)?;
        let header: [u64; 2] = [now_ns(), phase];
        let bytes = header.iter().flat_map(|w| w.to_le_bytes());
        for (dst, b) in sample.payload_mut().iter_mut().zip(bytes) {
            dst.write(b);
        }
        // SAFETY: the payload is shared memory that iceoryx2 zeroes when it
        // creates the segment (and earlier samples wrote); only the header
        // written above is ever read. Initialising all 12 MiB per frame
        // would measure memset, not the handoff.
        let sample = unsafe { sample.assume_init() };
        sample.send()?;
        if event {
            notifier.notify()?;
        }
        Ok(())
    };
    let gap = Duration::from_micros(args.gap_us);
    for _ in 0..args.latency_frames {
        send(LATENCY)?;
        std::thread::sleep(gap);
    }
    std::thread::sleep(Duration::from_millis(20));
    let n = ((args.seconds * 1e9 / 2000.0) as u64).clamp(50, 500_000);
    let start = now_ns();
    for _ in 0..n {
        send(THROUGHPUT)?;
    }
    send(STOP)?;
    let report = lines.next().transpose()?.ok_or("subscriber printed no report")?;
    child.wait()?;
    let v: Vec<u64> = report.split_whitespace().map(|w| w.parse()).collect::<Result<_, _>>()?;
    let [p50, p99, tp_frames, tp_last] = v[..] else { return Err("bad report".into()) };
    let fps = tp_frames as f64 / (tp_last.saturating_sub(start).max(1) as f64 / 1e9);
    Ok((fps, p50, p99))
}

fn subscriber(name: &str, event: bool, _size: u64) -> Result<(), Error> {
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let pubsub = node
        .service_builder(&name.try_into()?)
        .publish_subscribe::<[u8]>()
        .enable_safe_overflow(false)
        .subscriber_max_buffer_size(4)
        .history_size(0)
        .max_publishers(1)
        .max_subscribers(1)
        .open_or_create()?;
    let subscriber = pubsub.subscriber_builder().buffer_size(4).create()?;
    let events = node.service_builder(&format!("{name}/ev").as_str().try_into()?).event().open_or_create()?;
    let listener = events.listener_builder().create()?;
    println!("ready");
    let mut latencies = Vec::new();
    let (mut tp_frames, mut tp_last) = (0u64, 0u64);
    'outer: loop {
        if event {
            listener.timed_wait(|_| {}, Duration::from_secs(1))?;
        }
        while let Some(sample) = subscriber.receive()? {
            let now = now_ns();
            let p = sample.payload();
            let word = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&p[i * 8..i * 8 + 8]);
                u64::from_le_bytes(b)
            };
            match word(1) {
                LATENCY => latencies.push(now.saturating_sub(word(0))),
                THROUGHPUT => {
                    tp_frames += 1;
                    tp_last = now;
                }
                _ => break 'outer,
            }
        }
        if !event {
            std::hint::spin_loop();
        }
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies.get(((latencies.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or(0);
    println!("{} {} {tp_frames} {tp_last}", at(0.5), at(0.99));
    Ok(())
}

fn fmt_ns(ns: u64) -> String {
    if ns < 10_000 {
        format!("{:.1} us", ns as f64 / 1e3)
    } else if ns < 10_000_000 {
        format!("{:.0} us", ns as f64 / 1e3)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

/// The same units `dmabroker` prints (KiB/MiB with one decimal when needed).
fn fmt_size(bytes: u64) -> String {
    let units = [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in units {
        if bytes >= unit {
            let v = bytes as f64 / unit as f64;
            return if bytes % unit == 0 { format!("{} {name}", bytes / unit) } else { format!("{v:.1} {name}") };
        }
    }
    format!("{bytes} B")
}
