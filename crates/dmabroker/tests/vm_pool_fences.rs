//! Pools carrying the producer's own fences (`WriteSlot::submit_with_fence`)
//! in the test VM.
//!
//! - Every kernel with a dma-buf heap: a sync_file exported from a dma-buf
//!   (`DMA_BUF_IOCTL_EXPORT_SYNC_FILE`, a real, signalled sync_file) goes
//!   through `submit_with_fence` with `FenceImport::Reservation` to a
//!   consumer, which waits on it (`Ok` at once) and reads its name; a memfd
//!   pool refuses `Reservation` and a second fence with typed errors.
//! - The project's kernel (`vm/run.sh --kernel proj`, CONFIG_SW_SYNC): the
//!   producer (this process) hands off frames whose fences come from a
//!   sw_sync timeline to a consumer process (this binary re-executed): a
//!   fence the timeline reaches D ms later is waited for about D ms; with
//!   `FenceImport::Reservation` a plain CPU read (`DMA_BUF_IOCTL_SYNC`)
//!   blocks about D ms too; a fence the timeline never reaches ends in
//!   `FenceError::Timeout` naming it within the timeout; a fence whose
//!   timeline is closed ends in `FenceError::Failed` (ENOENT).
//!   Debian's kernels have no sw_sync: there the test prints
//!   `SKIP <test>: <reason>` (vm_common::skip_unless_proj).

mod pool_support;
mod vm_common;

use dmabroker::fence::{FenceInfo, FenceStatus, SyncFile};
use dmabroker::pool::{
    now_ns, socket_pair, Consumer, ConsumerOptions, FenceError, FenceImport, FrameMeta, PoolOptions, Producer,
    SubmitError,
};
use dmabroker::{BufferKind, Heaps};
use dmabroker_sys::sw_sync;
use pool_support::{checksum, fill, role, socket_path, spawn_child, SOCKET};
use std::io::Read;
use std::time::{Duration, Instant};

const FRAME: u64 = 64 << 10;
const BUFFERS: usize = 4;
/// How long the producer waits before it moves the timeline.
const DELAY: Duration = Duration::from_millis(400);
/// The consumer's bound on the fence that never signals.
const BOUND: Duration = Duration::from_millis(500);
/// Scheduling slack allowed on top of a measured wait (TCG is slow).
const SLACK: Duration = Duration::from_millis(300);

/// Print past libtest's capture (the VM log keeps what ran).
fn show(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A fence exported from a dma-buf travels through `submit_with_fence`
/// into the reservation and to a consumer that waits on it; the typed
/// refusals of a memfd pool.
#[test]
fn exported_fence_through_submit_with_fence() {
    const T: &str = "exported_fence_through_submit_with_fence";
    if role().is_some() {
        return;
    }
    let (heap, buffers) = require!(T, vm_common::dma_bufs(BUFFERS, FRAME), "a dma-buf heap");
    let mut p = Producer::new(buffers, &PoolOptions::new(BUFFERS, FRAME).name("vm-fences")).expect("pool");
    let (ours, theirs) = socket_pair().expect("socketpair");
    p.attach(ours).expect("attach");
    let consumer = std::thread::spawn(move || {
        let options = ConsumerOptions { want_sync_files: true, ..Default::default() };
        let mut c = Consumer::attach(theirs, &options).expect("consumer attach");
        let f = c.recv(Some(Duration::from_secs(20))).expect("recv");
        let fence = FenceInfo::read(f.fence().expect("the producer's fence came with the frame")).expect("info");
        let waited = f.wait_fence(Duration::from_secs(5)).expect("a signalled fence");
        (fence, waited, f.info().seq)
    });
    assert!(p.wait_for_consumers(1, Duration::from_secs(10)), "consumer did not attach");
    let slot = p.acquire(Some(Duration::from_secs(10))).expect("acquire");
    let exported =
        dmabroker_sys::dma_buf::export_sync_file(slot.buffer(), dmabroker_sys::dma_buf::DMA_BUF_SYNC_READ as u32)
            .expect("DMA_BUF_IOCTL_EXPORT_SYNC_FILE");
    let fence = SyncFile::new(exported).expect("an exported sync_file is one");
    let seq = slot.submit_with_fence(FrameMeta::new(FRAME), fence, FenceImport::Reservation).expect("submit");
    let (info, waited, got) = consumer.join().expect("consumer");
    assert_eq!(got, seq);
    assert_eq!(info.status, FenceStatus::Signalled, "{info:?}");
    assert!(!info.name.is_empty(), "{info:?}");
    show(format_args!("{T}: {heap}: frame {seq} fence {info} waited {:.3} ms", ms(waited)));

    // The same fence may not ride with an exported one, nor into a memfd
    // pool's (absent) reservation.
    let mut memfd = Producer::allocate(&Heaps::discover(), "memfd", &PoolOptions::new(2, 4096)).expect("memfd pool");
    let again = || {
        let b = vm_common::allocate(&Heaps::discover(), &heap, FRAME).expect("dma-buf");
        let fd = dmabroker_sys::dma_buf::export_sync_file(&b, dmabroker_sys::dma_buf::DMA_BUF_SYNC_READ as u32);
        SyncFile::new(fd.expect("export")).expect("sync_file")
    };
    let err = memfd
        .acquire(None)
        .unwrap()
        .submit_with_fence(FrameMeta::new(1), again(), FenceImport::Reservation)
        .unwrap_err();
    assert!(matches!(err, SubmitError::ImportNeedsDmaBuf(BufferKind::Memfd)), "{err}");
    show(format_args!("{T}: memfd pool + Reservation: {err}"));
    let err = memfd
        .acquire(None)
        .unwrap()
        .submit_with_fence(FrameMeta::new(1).sync_file(true), again(), FenceImport::CarryOnly)
        .unwrap_err();
    assert!(matches!(err, SubmitError::TwoFences), "{err}");
    // Refusals give the buffer back: both are free again.
    memfd.acquire(Some(Duration::ZERO)).expect("buffer back after the refusals").submit(FrameMeta::new(1)).unwrap();
}

/// Child entry point: does nothing in a normal test run.
#[test]
fn vm_pool_fences_child() {
    let Some(role) = role() else { return };
    assert_eq!(role, "fence-consumer");
    let path = std::env::var(SOCKET).expect("socket path");
    let options = ConsumerOptions { want_sync_files: true, ..Default::default() };
    let mut c = Consumer::connect_with(&path, &options).expect("attach");
    let recv = Duration::from_secs(20);

    // Frame 0: an explicit, bounded wait the timeline ends DELAY later.
    let f = c.recv(Some(recv)).expect("frame 0");
    let waited = f.wait_fence(Duration::from_secs(10)).expect("frame 0's fence signals");
    println!("\nF0 seq={} waited_ns={} at_ns={}", f.info().seq, waited.as_nanos(), now_ns());
    drop(f);

    // Frame 1: the fence is in the reservation; a plain CPU read waits.
    let mut f = c.recv(Some(recv)).expect("frame 1");
    let start = Instant::now();
    let sum = {
        let data = f.read().expect("begin_read");
        checksum(&data[..FRAME as usize])
    };
    let blocked = start.elapsed();
    let at = now_ns();
    assert_eq!(sum, f.info().meta, "frame 1 read wrong bytes");
    let after = f.wait_fence(Duration::from_secs(1)).expect("signalled by then");
    println!(
        "\nF1 seq={} read_blocked_ns={} at_ns={at} wait_after_ns={}",
        f.info().seq,
        blocked.as_nanos(),
        after.as_nanos()
    );
    drop(f);

    // Frame 2: never signalled: the bounded wait ends in Timeout.
    let f = c.recv(Some(recv)).expect("frame 2");
    let start = Instant::now();
    let err = f.wait_fence(BOUND).expect_err("frame 2's fence never signals");
    let call = start.elapsed();
    let FenceError::Timeout { seq, waited, .. } = &err else { panic!("frame 2: not a timeout: {err}") };
    assert_eq!(*seq, f.info().seq);
    println!("\nF2 seq={seq} waited_ns={} call_ns={} msg={err}", waited.as_nanos(), call.as_nanos());
    drop(f);

    // Frame 3: its timeline was closed: signalled with an error.
    let f = c.recv(Some(recv)).expect("frame 3");
    let err = f.wait_fence(Duration::from_secs(10)).expect_err("frame 3's fence failed");
    let FenceError::Failed { error, .. } = &err else { panic!("frame 3: not a failure: {err}") };
    println!("\nF3 seq={} errno={} at_ns={} msg={err}", f.info().seq, error.raw_os_error(), now_ns());
    drop(f);
    std::process::exit(0);
}

/// One `key=value` of a child's line `tag ...`.
fn field(out: &str, tag: &str, key: &str) -> String {
    let line = out.lines().find(|l| l.starts_with(&format!("{tag} "))).unwrap_or_else(|| panic!("no {tag}:\n{out}"));
    let at = line.find(&format!(" {key}=")).unwrap_or_else(|| panic!("no {key} in {line}")) + key.len() + 2;
    let rest = &line[at..];
    if key == "msg" {
        return rest.to_owned();
    }
    rest.split(' ').next().unwrap().to_owned()
}

fn num(out: &str, tag: &str, key: &str) -> u64 {
    field(out, tag, key).parse().unwrap_or_else(|e| panic!("{tag} {key}: {e}\n{out}"))
}

/// sw_sync fences from the producer process, waited on in a consumer
/// process: signalled later, never, and with an error.
#[test]
fn sw_sync_fences_across_processes() {
    const T: &str = "sw_sync_fences_across_processes";
    if role().is_some() {
        return;
    }
    let timeline = match sw_sync::open_timeline() {
        Ok(t) => t,
        Err(e) => {
            vm_common::skip_unless_proj(T, &format!("no sw_sync timeline: open {}: {e}", sw_sync::SW_SYNC_PATH));
            return;
        }
    };
    let (heap, buffers) = require!(T, vm_common::dma_bufs(BUFFERS, FRAME), "a dma-buf heap");
    let path = socket_path("vm-fences");
    let options = PoolOptions::new(BUFFERS, FRAME).name("vm-fences").release_timeout(Some(Duration::from_secs(60)));
    let mut p = Producer::new(buffers, &options).expect("pool");
    p.listen(&path).expect("listen");
    let mut child = spawn_child("vm_pool_fences_child", "fence-consumer", &path, &[]);
    assert!(p.wait_for_consumers(1, Duration::from_secs(20)), "the consumer process did not attach");

    let mut submit = |value: u32, on: &std::os::fd::OwnedFd, import: FenceImport, seq: u64| {
        let fence = SyncFile::new(sw_sync::create_fence(on, value, "unused").expect("create fence")).unwrap();
        let info = fence.info().expect("SYNC_IOC_FILE_INFO");
        assert_eq!(info.status, FenceStatus::Pending, "{info:?}");
        let mut slot = p.acquire(Some(Duration::from_secs(10))).expect("acquire");
        let sum = {
            let mut w = slot.mapping().begin_write().expect("begin_write");
            fill(&mut w[..FRAME as usize], seq);
            checksum(&w[..FRAME as usize])
        };
        let got = slot.submit_with_fence(FrameMeta::new(FRAME).meta(sum), fence, import).expect("submit_with_fence");
        assert_eq!(got, seq);
        (info, now_ns())
    };
    // Frame 0: carried only; the timeline reaches it DELAY after handoff.
    let (_, sent0) = submit(1, &timeline, FenceImport::CarryOnly, 0);
    std::thread::sleep(DELAY);
    let inc0 = now_ns();
    sw_sync::inc(&timeline, 1).expect("SW_SYNC_IOC_INC");
    // Frame 1: in the reservation too; reached DELAY later.
    let (_, sent1) = submit(2, &timeline, FenceImport::Reservation, 1);
    std::thread::sleep(DELAY);
    let inc1 = now_ns();
    sw_sync::inc(&timeline, 1).expect("SW_SYNC_IOC_INC");
    // Frame 2: a point the timeline never reaches while the consumer waits.
    let (never, _) = submit(1000, &timeline, FenceImport::CarryOnly, 2);
    // Frame 3: on a timeline closed while the consumer waits on it (it
    // first spends BOUND on frame 2): its fence fails with ENOENT.
    let doomed = sw_sync::open_timeline().expect("a second timeline");
    let (failed, _) = submit(1, &doomed, FenceImport::CarryOnly, 3);
    std::thread::sleep(BOUND + DELAY);
    let closed3 = now_ns();
    drop(doomed);

    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let status = child.wait().unwrap();
    p.close();
    drop(timeline);
    let _ = std::fs::remove_file(&path);
    assert!(status.success(), "consumer process: {status}\n{out}");

    let d = DELAY.as_nanos() as u64;
    let slack = SLACK.as_nanos() as u64;
    // Frame 0: woke between the timeline's move and SLACK after it, and
    // waited about DELAY (minus its recv latency).
    let (w0, at0) = (num(&out, "F0", "waited_ns"), num(&out, "F0", "at_ns"));
    assert!(at0 >= inc0 && at0 - inc0 < slack, "frame 0 woke {} ms after the signal", (at0 as f64 - inc0 as f64) / 1e6);
    assert!(w0 + slack > d && w0 < d + slack, "frame 0 waited {} ms for a {} ms delay", w0 as f64 / 1e6, ms(DELAY));
    // Frame 1: the CPU read itself waited on the reservation.
    let (b1, at1) = (num(&out, "F1", "read_blocked_ns"), num(&out, "F1", "at_ns"));
    assert!(
        at1 >= inc1 && at1 - inc1 < slack,
        "frame 1's read returned {} ms after the signal",
        (at1 as f64 - inc1 as f64) / 1e6
    );
    assert!(
        b1 + slack > d,
        "frame 1's CPU read blocked only {} ms: the fence is not in the reservation",
        b1 as f64 / 1e6
    );
    // Frame 2: Timeout within the bound, naming frame, fence and timeline.
    let (w2, c2) = (num(&out, "F2", "waited_ns"), num(&out, "F2", "call_ns"));
    let bound = BOUND.as_nanos() as u64;
    assert!(
        w2 >= bound && c2 < bound + slack,
        "frame 2: waited {} ms, call {} ms, bound {} ms",
        w2 as f64 / 1e6,
        c2 as f64 / 1e6,
        ms(BOUND)
    );
    let msg2 = field(&out, "F2", "msg");
    assert!(
        msg2.contains("frame 2") && msg2.contains(&never.name),
        "frame 2's error names neither the frame nor {never}: {msg2}"
    );
    let timeline_name = &never.fences.first().expect("one fence").timeline;
    assert!(msg2.contains(timeline_name) && msg2.contains("sw_sync"), "frame 2's error does not name {never}: {msg2}");
    // Frame 3: ENOENT, named.
    assert_eq!(num(&out, "F3", "errno"), rustix::io::Errno::NOENT.raw_os_error() as u64, "{out}");
    let msg3 = field(&out, "F3", "msg");
    assert!(msg3.contains("frame 3") && msg3.contains(&failed.name), "frame 3's error does not name {failed}: {msg3}");
    let at3 = num(&out, "F3", "at_ns");
    assert!(
        at3 >= closed3 && at3 - closed3 < slack,
        "frame 3 failed {} ms after its timeline closed",
        (at3 as f64 - closed3 as f64) / 1e6
    );

    show(format_args!(
        "{T}: {heap}: delay {} ms: frame 0 waited {:.1} ms (woke {:.2} ms after the signal, {:.1} ms after handoff); \
         frame 1 CPU read blocked {:.1} ms (returned {:.2} ms after the signal, {:.1} ms after handoff); \
         frame 2 timed out after {:.1} ms (call {:.1} ms, bound {} ms): {msg2}; \
         frame 3 failed {:.2} ms after its timeline closed: {msg3}",
        ms(DELAY),
        w0 as f64 / 1e6,
        (at0 - inc0) as f64 / 1e6,
        (at0 - sent0) as f64 / 1e6,
        b1 as f64 / 1e6,
        (at1 - inc1) as f64 / 1e6,
        (at1 - sent1) as f64 / 1e6,
        w2 as f64 / 1e6,
        c2 as f64 / 1e6,
        ms(BOUND),
        (at3 - closed3) as f64 / 1e6,
    ));
}
