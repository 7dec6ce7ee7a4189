//! Streaming pools over real dma-bufs (dma-heap/system, else udmabuf) in
//! the test VM: a consumer that asks for sync_files receives one valid
//! sync_file fd per frame (`DMA_BUF_IOCTL_EXPORT_SYNC_FILE` on the
//! producer's side; `/proc/self/fd/N` reads `anon_inode:sync_file`, and it
//! has signalled: no device writes these buffers) while a consumer that did
//! not ask receives none; and a dma-buf pool fanned out to two consumer
//! processes (this test binary re-executed) that verify every frame.
//!
//! On a host without a dma-buf heap each test prints `SKIP <test>: <reason>`
//! and passes, unless `DMABROKER_VM=1`, where it fails instead.

mod pool_support;
mod vm_common;

use dmabroker::pool::{
    socket_pair, Consumer, ConsumerOptions, FrameFlags, FrameMeta, PoolError, PoolOptions, Producer, WaitMode,
};
use dmabroker::BufferKind;
use pool_support::{checksum, fill, role, socket_path, spawn_child, SOCKET};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

const FRAME: u64 = 256 << 10;
const BUFFERS: usize = 4;
const FRAMES: u64 = 40;
const TIMEOUT: Duration = Duration::from_secs(20);

/// What `/proc/self/fd/N` points at.
fn fd_link(fd: &OwnedFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_or_else(|e| format!("readlink: {e}"), |p| p.to_string_lossy().into_owned())
}

/// Whether a sync_file has signalled (poll: readable).
fn signalled(fd: &OwnedFd) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let t = Timespec { tv_sec: 5, tv_nsec: 0 };
    poll(&mut fds, Some(&t)).is_ok() && fds[0].revents().contains(PollFlags::IN)
}

/// Produce `FRAMES` frames (pattern + checksum in `meta`), each asking for a
/// sync_file, into a pool whose consumers are already attaching.
fn produce(p: &mut Producer, consumers: usize) {
    assert!(p.wait_for_consumers(consumers, Duration::from_secs(10)), "consumers did not attach");
    for seq in 0..FRAMES {
        let mut slot = p.acquire(Some(TIMEOUT)).expect("acquire");
        let sum = {
            let mut w = slot.mapping().begin_write().expect("begin_write");
            fill(&mut w[..FRAME as usize], seq);
            checksum(&w[..FRAME as usize])
        };
        slot.submit(FrameMeta::new(FRAME).meta(sum).sync_file(true)).expect("submit with a sync_file");
    }
    p.close();
}

/// Receive until the end. Returns (frames, bad checksums, sync_files).
/// Every sync_file must be one (`anon_inode:sync_file`) and signalled.
fn consume(c: &mut Consumer, expect_sync: bool) -> (u64, u64, u64) {
    let (mut frames, mut bad, mut syncs) = (0, 0, 0);
    loop {
        let mut f = match c.recv(Some(TIMEOUT)) {
            Ok(f) => f,
            Err(PoolError::Closed) => break,
            Err(e) => panic!("recv after {frames} frames: {e}"),
        };
        assert_eq!(f.buffer().kind(), BufferKind::DmaBuf);
        let info = *f.info();
        match f.take_sync_file() {
            Some(fd) => {
                assert!(expect_sync, "frame {}: a sync_file nobody asked for", info.seq);
                assert!(info.flags.contains(FrameFlags::SYNC_FILE));
                let link = fd_link(&fd);
                assert_eq!(link, "anon_inode:sync_file", "frame {}: fd {} is {link}", info.seq, fd.as_raw_fd());
                assert!(signalled(&fd), "frame {}: the sync_file never signalled", info.seq);
                syncs += 1;
            }
            None => assert!(!info.flags.contains(FrameFlags::SYNC_FILE), "flag without a sync_file"),
        }
        let data = f.read().expect("begin_read");
        if checksum(&data[..info.bytes_used as usize]) != info.meta {
            bad += 1;
        }
        frames += 1;
    }
    (frames, bad, syncs)
}

/// One consumer asks for sync_files and gets one per frame; another does
/// not and gets none; both verify every frame.
#[test]
fn sync_file_per_frame_over_dma_bufs() {
    const T: &str = "sync_file_per_frame_over_dma_bufs";
    if role().is_some() {
        return;
    }
    let (heap, buffers) = require!(T, vm_common::dma_bufs(BUFFERS, FRAME), "a dma-buf heap");
    let mut p = Producer::new(buffers, &PoolOptions::new(BUFFERS, FRAME).name("vm-pool")).expect("pool");
    let mut threads = Vec::new();
    for want in [true, false] {
        let (ours, theirs) = socket_pair().expect("socketpair");
        p.attach(ours).expect("attach");
        threads.push(std::thread::spawn(move || {
            let options = ConsumerOptions { want_sync_files: want, ..Default::default() };
            let mut c = Consumer::attach(theirs, &options).expect("consumer attach");
            consume(&mut c, want)
        }));
    }
    produce(&mut p, 2);
    let with = threads.remove(0).join().expect("consumer with sync_files");
    let without = threads.remove(0).join().expect("consumer without");
    show(format_args!("{T}: {heap}: with sync_files {with:?}, without {without:?}"));
    assert_eq!(with, (FRAMES, 0, FRAMES), "(frames, bad, sync_files) of the consumer that asked");
    assert_eq!(without, (FRAMES, 0, 0), "(frames, bad, sync_files) of the consumer that did not");
}

/// Child entry point: does nothing in a normal test run.
#[test]
fn vm_pool_child() {
    let Some(role) = role() else { return };
    let path = std::env::var(SOCKET).expect("socket path");
    let want = role == "verify-sync";
    let options = ConsumerOptions { want_sync_files: want, wait: WaitMode::default(), ..Default::default() };
    let mut c = Consumer::connect_with(&path, &options).expect("attach");
    let (frames, bad, syncs) = consume(&mut c, want);
    println!("\nREPORT {frames} {bad} {syncs}");
    std::process::exit(0);
}

/// A dma-buf pool with two consumer processes (one asking for
/// sync_files): each receives every frame intact, through the dma-bufs it
/// received once at attach.
#[test]
fn dma_buf_pool_two_consumer_processes() {
    const T: &str = "dma_buf_pool_two_consumer_processes";
    if role().is_some() {
        return;
    }
    let (heap, buffers) = require!(T, vm_common::dma_bufs(BUFFERS, FRAME), "a dma-buf heap");
    let path = socket_path("vm-pool");
    let mut p = Producer::new(buffers, &PoolOptions::new(BUFFERS, FRAME).name("vm-pool")).expect("pool");
    p.listen(&path).expect("listen");
    let mut children: Vec<_> =
        ["verify-sync", "verify"].iter().map(|r| spawn_child("vm_pool_child", r, &path, &[])).collect();
    produce(&mut p, 2);
    let stats = p.stats();
    drop(p);
    for (i, child) in children.iter_mut().enumerate() {
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "child {i}: {status}\n{out}");
        let report = out.lines().find_map(|l| l.strip_prefix("REPORT ")).unwrap_or_else(|| panic!("child {i}: {out}"));
        let v: Vec<u64> = report.split_whitespace().map(|x| x.parse().unwrap()).collect();
        let syncs = if i == 0 { FRAMES } else { 0 };
        assert_eq!(v, [FRAMES, 0, syncs], "child {i}: (frames, bad, sync_files)");
    }
    assert_eq!(stats.produced, FRAMES);
    show(format_args!("{T}: {heap}: 2 processes x {FRAMES} frames verified; {stats:?}"));
}

/// Print past libtest's capture (shown for passing tests too: the VM log
/// keeps what ran).
fn show(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}
