//! The producer role: the frame loop, consumer processes, signals and the
//! end of the run.

use super::pattern::{checksum, test_pattern};
use super::report::{print_summary, status_loop, ConsumerSummary, Report, SinkSummary, Summary, VulkanSummary};
use super::source::{setup, Setup, Source, V4l2Source};
use super::{DemoArgs, DemoTransport, PolicyArg};

use dmabroker::device::v4l2::{Memory, Queue};
use dmabroker::pool::{AcquireError, Backpressure, FrameFlags, FrameMeta, PoolOptions, Producer, WriteSlot};
use dmabroker::size::format_size;
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(super) struct Live {
    pub(super) reports: Mutex<Vec<Report>>,
    pub(super) produced: AtomicU64,
    /// When production ended (ns after it started, plus one; 0 = still
    /// running): the last status line measures fps up to here.
    pub(super) finished_ns: AtomicU64,
}

impl Live {
    pub(super) fn finish(&self, started: Instant) {
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        let _ = self.finished_ns.compare_exchange(0, ns + 1, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub(super) fn finished_at(&self, started: Instant) -> Option<Instant> {
        match self.finished_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(started + Duration::from_nanos(ns - 1)),
        }
    }
}

/// SIGINT/SIGTERM: the run stops at the next frame (or wait slice), closes
/// the stream in order and removes its socket.
#[derive(Debug, Clone)]
pub(super) struct Stop {
    /// The signal number received, 0 while none.
    pub(super) signal: Arc<AtomicUsize>,
}

impl Stop {
    pub(super) fn on_signals() -> anyhow::Result<Self> {
        let signal = Arc::new(AtomicUsize::new(0));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize)?;
        }
        Ok(Self { signal })
    }

    /// The signal that asked to stop, if any.
    pub(super) fn signal(&self) -> Option<usize> {
        match self.signal.load(Ordering::Relaxed) {
            0 => None,
            s => Some(s),
        }
    }
}

/// Why production ended early.
#[derive(Debug)]
pub(super) enum Ended {
    /// `--frames` frames were produced.
    Complete,
    /// SIGINT/SIGTERM.
    Interrupted,
}

/// Longest the producer waits for a free buffer before it gives up.
pub(super) const ACQUIRE_LIMIT: Duration = Duration::from_secs(30);
/// Waits are cut in slices this long to notice signals and lost consumers.
pub(super) const SLICE: Duration = Duration::from_millis(100);

pub(super) fn run_producer(args: &DemoArgs, transport: &DemoTransport) -> anyhow::Result<ExitCode> {
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
    let Setup { source, mut producer, width, height, format, frame_len, heap, description, sink } =
        setup(args, &options)?;
    // Consumer 0 shows the frames: it opens the card after this process
    // closed it (setup did), so it becomes DRM master.
    let sink_args: Vec<String> = match (&args.sink, sink) {
        (Some(card), Some(f)) => vec![
            "--sink".into(),
            card.display().to_string(),
            "--sink-format".into(),
            f.format.v4l2_fourcc().to_string(),
            "--size".into(),
            format!("{}x{}", f.width, f.height),
            "--sink-pitch".into(),
            f.pitch.to_string(),
        ],
        _ => Vec::new(),
    };
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
        let mut extra = if id == 0 { sink_args.clone() } else { Vec::new() };
        if args.through.is_some() {
            extra.push("--wait-fences".into());
        }
        let mut child = match spawn_consumer(id, transport, args.frames, &extra) {
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

    // `--through vulkan`: what the GPU stage did.
    #[cfg_attr(not(feature = "vulkan"), allow(unused_mut))]
    let mut vulkan: Option<VulkanSummary> = None;
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
        #[cfg(feature = "vulkan")]
        Source::Through(v) => {
            let stage = vulkan.insert(v.summary());
            super::through_vulkan::produce(args, &mut producer, &live, &stop, period, v, stage)
        }
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
            fenced: r.fenced,
            fence_waited_ns: r.fence_waited_ns,
            fence_wait_max_ns: r.fence_wait_max_ns,
            end: r.end.clone(),
        });
        // Every frame came with the device's sync_file: each consumer
        // waited on each one it read.
        if let Some(v) = vulkan.as_ref().filter(|v| v.fenced == v.frames && v.frames > 0) {
            if r.end.as_deref() == Some("closed") && r.fenced != r.frames {
                problems.push(format!(
                    "consumer {} waited on {} sync_files for {} frames ({} carried one)",
                    r.id, r.fenced, r.frames, v.fenced
                ));
                failed = true;
            }
        }
    }
    let sink = args.sink.as_ref().map(|card| {
        let r = reports.first().and_then(|r| r.sink.clone()).unwrap_or_default();
        if interrupted.is_none() && !failed && policy == Backpressure::Block && r.shown != produced {
            problems.push(format!("the sink {} showed {} of {produced} frames", card.display(), r.shown));
            failed = true;
        }
        SinkSummary {
            target: if r.target.is_empty() { card.display().to_string() } else { r.target.clone() },
            shown: r.shown,
            scanout_fps: r.scanout_fps(),
            commit_p50_ns: r.commit_p50_ns,
            commit_max_ns: r.commit_max_ns,
        }
    });
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
        sink,
        vulkan,
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

/// The exit status of a run stopped by `signal`: 128 + its number, as a shell reports it.
pub(super) fn signal_exit(signal: usize) -> ExitCode {
    ExitCode::from(u8::try_from(128 + signal).unwrap_or(u8::MAX))
}

/// Kill and reap consumer processes (setup failed or was interrupted).
pub(super) fn reap(children: &mut Vec<Child>) {
    for c in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    children.clear();
}

/// Fails when every consumer is gone: nobody would see the frames.
pub(super) fn ensure_consumers(producer: &Producer) -> anyhow::Result<()> {
    if producer.attached() == 0 {
        let lost = producer.stats().lost_consumers;
        anyhow::bail!("every consumer is gone ({lost} lost): stopping instead of streaming to nobody");
    }
    Ok(())
}

/// Get a free buffer (waiting in slices, so that a signal or the loss of
/// every consumer ends the wait) and hand it to `use_slot`. `Ok(None)`: a
/// signal asked to stop.
pub(super) fn with_free_slot<T>(
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
pub(super) fn sleep_until(due: Instant, stop: &Stop) -> bool {
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
pub(super) fn produce_synthetic(
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
pub(super) const CAPTURE_TIMEOUT: Duration = Duration::from_secs(20);

/// The device fills the pool's buffers: each free buffer is lent to the
/// device (QBUF), each captured one (DQBUF) is checksummed under a CPU read
/// guard and handed to the consumers; once they all released it, it is free
/// in the pool again and goes back to the device.
pub(super) fn produce_v4l2(
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
pub(super) fn lend(
    producer: &mut Producer,
    queue: &Queue<'_>,
    length: u32,
    wait: Option<&Stop>,
) -> anyhow::Result<bool> {
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

pub(super) fn policy_blocks(producer: &Producer) -> bool {
    producer.options().backpressure == Backpressure::Block
}

pub(super) fn spawn_consumer(
    id: u32,
    transport: &DemoTransport,
    frames: u64,
    extra: &[String],
) -> anyhow::Result<Child> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(["demo", "--role", "consumer", "--id", &id.to_string(), "--frames", &frames.to_string()])
        .args(transport.consumer_args())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd.spawn().map_err(|e| anyhow::anyhow!("starting consumer {id} (/proc/self/exe): {e}"))
}
