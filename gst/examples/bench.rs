//! One side of the two-process benchmark of `gst/bench/run.sh`: runs a
//! pipeline (`gst-launch-1.0` syntax) to EOS and prints one JSON line with
//! frames, frames/s (first to last frame), CPU time (`cpu_s`: the whole
//! process; `cpu_us_per_frame`: user + system time from the first frame to
//! EOS over the frames after the first, so start-up is left out) and, for a
//! consumer, latency percentiles.
//!
//! The producer pipeline must contain an element named `stamp` (e.g.
//! `identity name=stamp` right before the sink): a probe on its src pad
//! writes `CLOCK_MONOTONIC` ns into the first 8 bytes of each frame. The
//! consumer pipeline must contain `identity name=stamp` after the source:
//! its probe reads those bytes and records now minus stamp. Both sides of
//! the comparison are measured by the same probes, so the latency is the
//! transport's: from the producer's sink pad to the consumer's first
//! element.
//!
//! ```text
//! bench producer 'videotestsrc num-buffers=300 ! video/x-raw,format=NV12,width=3840,height=2160 ! identity name=stamp ! dmabrokersink pool=b'
//! bench consumer 'dmabrokersrc pool=b ! identity name=stamp ! fakesink'
//! ```

use gst::prelude::*;
use std::sync::{Arc, Mutex};
use std::time::Instant;

fn now_ns() -> u64 {
    dmabroker::pool::now_ns()
}

/// User + system CPU time of this process, all threads (`/proc/self/stat`
/// fields 14 and 15, in clock ticks).
fn cpu_seconds() -> Result<f64, String> {
    let stat = std::fs::read_to_string("/proc/self/stat").map_err(|e| e.to_string())?;
    // The command name (field 2) may hold spaces: count from its `)`.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("bad /proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).ok_or("bad /proc/self/stat");
    // After `)`: field 3 is index 0, so utime (14) is 11 and stime (15) 12.
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Ok((ticks(11)? + ticks(12)?) as f64 / hz)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let role = args.next().ok_or("usage: bench producer|consumer PIPELINE")?;
    let description = args.next().ok_or("usage: bench producer|consumer PIPELINE")?;
    gst::init().map_err(|e| e.to_string())?;
    let pipeline = gst::parse::launch(&description).map_err(|e| format!("{description}: {e}"))?;
    let bin = pipeline.clone().downcast::<gst::Bin>().map_err(|_| "not a bin")?;
    let stamp = bin.by_name("stamp").ok_or("no element named `stamp` in the pipeline")?;
    let pad = stamp.static_pad("src").ok_or("`stamp` has no src pad")?;
    let frames = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let frames = frames.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    }
    let latencies: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::with_capacity(100_000)));
    let first: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    // CPU time when the first frame passed: the figure per frame is the
    // streaming part, without start-up (under TCG, GStreamer's init and
    // registry load cost more than 40 4K frames).
    let cpu_at_first: Arc<Mutex<Option<f64>>> = Arc::new(Mutex::new(None));
    let last: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let producer = role == "producer";
    {
        let (latencies, first, last, cpu_at_first) =
            (latencies.clone(), first.clone(), last.clone(), cpu_at_first.clone());
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            let now = Instant::now();
            first.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| {
                *cpu_at_first.lock().unwrap_or_else(|p| p.into_inner()) = cpu_seconds().ok();
                now
            });
            *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
            if let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data {
                if producer {
                    let b = buffer.make_mut();
                    if let Ok(mut map) = b.map_writable() {
                        if map.len() >= 8 {
                            map[..8].copy_from_slice(&now_ns().to_le_bytes());
                        }
                    }
                } else if let Ok(map) = buffer.map_readable() {
                    if map.len() >= 8 {
                        let mut w = [0u8; 8];
                        w.copy_from_slice(&map[..8]);
                        let sent = u64::from_le_bytes(w);
                        let mut l = latencies.lock().unwrap_or_else(|p| p.into_inner());
                        if l.len() < 1_000_000 {
                            l.push(now_ns().saturating_sub(sent));
                        }
                    }
                }
            }
            gst::PadProbeReturn::Ok
        });
    }
    pipeline.set_state(gst::State::Playing).map_err(|e| e.to_string())?;
    let bus = pipeline.bus().ok_or("no bus")?;
    let mut error = None;
    for msg in bus.iter_timed(gst::ClockTime::NONE) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                // shmsrc ends with an error when shmsink closes: after
                // frames came, that is the end of the stream.
                if producer || frames.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                    error = Some(format!("{} ({:?})", e.error(), e.debug()));
                }
                break;
            }
            _ => {}
        }
    }
    let cpu_end = cpu_seconds()?;
    let _ = pipeline.set_state(gst::State::Null);
    if let Some(e) = error {
        return Err(e);
    }
    let cpu = cpu_seconds()?;
    let streaming_cpu = cpu_end - (*cpu_at_first.lock().unwrap_or_else(|p| p.into_inner())).unwrap_or(0.0);
    let n = frames.load(std::sync::atomic::Ordering::Relaxed);
    let span = match (*first.lock().unwrap_or_else(|p| p.into_inner()), *last.lock().unwrap_or_else(|p| p.into_inner()))
    {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let mut l = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    l.sort_unstable();
    let pct = |p: f64| if l.is_empty() { 0.0 } else { l[((l.len() - 1) as f64 * p) as usize] as f64 / 1000.0 };
    let fps = if span > 0.0 && n > 1 { (n - 1) as f64 / span } else { 0.0 };
    println!(
        "{{\"role\":\"{role}\",\"frames\":{n},\"fps\":{fps:.1},\"cpu_s\":{cpu:.3},\"cpu_us_per_frame\":{:.1},\"latency_p50_us\":{:.1},\"latency_p99_us\":{:.1}}}",
        if n > 1 { streaming_cpu * 1e6 / (n - 1) as f64 } else { 0.0 },
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}
