//! Floors for the benches: the bare kernel mechanism each dmabroker path is
//! built on, between the same two kinds of process (this process and a
//! child `/proc/self/exe bench pool --role ...`), with nothing of dmabroker
//! in between.
//!
//! - `futex`: a wake ping-pong on one shared memory page. The parent stores
//!   a timestamp, bumps `ping` and `futex_wake`s it; the child, asleep in
//!   `futex_wait(ping)`, records `now - timestamp`, bumps `pong` and wakes
//!   the parent, which waits for it before the next paced round. The
//!   one-way half is the floor of the blocking pool's handoff latency.
//! - `eventfd`: the same with a `write`/`read` on two eventfds.
//! - `spin`: the same with both sides spinning on the shared words (the
//!   floor of the busy-polling pool).
//! - [`FdEcho`]: a bare `SCM_RIGHTS` round trip over `SOCK_SEQPACKET`, the
//!   floor of an allocation through the broker: the client sends a small
//!   request, the child answers with an fd (a memfd created once), the
//!   client receives and closes it. Both ends block in `recvmsg`; the same
//!   `dmabroker::proto::wire` functions as the broker and its client.

use super::bench_pool::{collect, socket_path, spawn, ChildReport};
use super::measure::{p50_p99, quantile};
use dmabroker::pool::now_ns;
use dmabroker::proto::wire;
use dmabroker_sys::mmap::AtomicMapping;
use rustix::event::{eventfd, EventfdFlags};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage};
use rustix::thread::futex;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Offsets in the shared page: each word on its own cache line.
const PING: usize = 0;
const PONG: usize = 64;
const STAMP: usize = 128;
/// `ping` value that ends the child's loop.
const END: u32 = u32::MAX;

/// The shared page and the two eventfds, as both sides hold them.
struct Shared {
    map: AtomicMapping,
    fds: Vec<OwnedFd>,
}

impl Shared {
    fn word(&self, offset: usize) -> anyhow::Result<&AtomicU32> {
        self.map.atomic_u32(offset).ok_or_else(|| anyhow::anyhow!("shared page too small"))
    }
    fn stamp(&self) -> anyhow::Result<&AtomicU64> {
        self.map.atomic_u64(STAMP).ok_or_else(|| anyhow::anyhow!("shared page too small"))
    }
    /// `[memfd, ping eventfd, pong eventfd]`.
    fn efd(&self, i: usize) -> BorrowedFd<'_> {
        self.fds[i].as_fd()
    }
}

fn timeout(d: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec { tv_sec: d.as_secs() as i64, tv_nsec: i64::from(d.subsec_nanos()) }
}

/// Wait until `word != seen` (futex, or spinning); returns the new value.
fn await_change(word: &AtomicU32, seen: u32, spin: bool) -> anyhow::Result<u32> {
    let deadline = now_ns() + 30_000_000_000;
    loop {
        let v = word.load(Ordering::Acquire);
        if v != seen {
            return Ok(v);
        }
        anyhow::ensure!(now_ns() < deadline, "the other side of the floor ping-pong stopped answering");
        if spin {
            std::hint::spin_loop();
        } else {
            match futex::wait(word, futex::Flags::empty(), seen, Some(&timeout(Duration::from_secs(1)))) {
                Ok(()) | Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR | rustix::io::Errno::TIMEDOUT) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn efd_write(fd: BorrowedFd<'_>) -> anyhow::Result<()> {
    rustix::io::write(fd, &1u64.to_ne_bytes())?;
    Ok(())
}

fn efd_read(fd: BorrowedFd<'_>) -> anyhow::Result<()> {
    let mut b = [0u8; 8];
    loop {
        match rustix::io::read(fd, &mut b) {
            Err(rustix::io::Errno::INTR) => continue,
            other => {
                other?;
                return Ok(());
            }
        }
    }
}

/// Send fds over a connected Unix socket with one byte.
fn send_fds(socket: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) -> anyhow::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    anyhow::ensure!(control.push(SendAncillaryMessage::ScmRights(fds)), "too many fds for one message");
    rustix::net::sendmsg(socket, &[IoSlice::new(b"f")], &mut control, rustix::net::SendFlags::NOSIGNAL)?;
    Ok(())
}

fn recv_fds(socket: BorrowedFd<'_>) -> anyhow::Result<Vec<OwnedFd>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    rustix::net::recvmsg(socket, &mut [IoSliceMut::new(&mut byte)], &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(r) = m {
            fds.extend(r);
        }
    }
    Ok(fds)
}

/// Parent side of one floor (`futex`, `eventfd`, `spin`): `frames` paced
/// ping-pongs `gap_us` apart; returns the child's one-way latency report.
pub(crate) fn run(kind: &str, frames: u64, gap_us: u64) -> anyhow::Result<ChildReport> {
    let memfd = rustix::fs::memfd_create(
        "dmabroker-bench-floor",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&memfd, 4096)?;
    // Size-sealed, so both sides may map it without risking SIGBUS.
    rustix::fs::fcntl_add_seals(&memfd, rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW)?;
    let map = AtomicMapping::map(&memfd, 4096, false)?;
    let ping_efd = eventfd(0, EventfdFlags::CLOEXEC)?;
    let pong_efd = eventfd(0, EventfdFlags::CLOEXEC)?;
    let path = socket_path(&format!("floor-{kind}"));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let child = spawn(&format!("{kind}-consumer"), &path, "block")?;
    let (stream, _) = listener.accept()?;
    let _ = std::fs::remove_file(&path);
    send_fds(stream.as_fd(), &[memfd.as_fd(), ping_efd.as_fd(), pong_efd.as_fd()])?;
    let shared = Shared { map, fds: vec![memfd, ping_efd, pong_efd] };
    let result = drive(kind, &shared, frames, gap_us);
    // End the child whatever happened (it may be asleep on either side).
    shared.word(PING)?.store(END, Ordering::Release);
    let _ = futex::wake(shared.word(PING)?, futex::Flags::empty(), 1);
    let _ = efd_write(shared.efd(1));
    result?;
    collect(child)
}

fn drive(kind: &str, shared: &Shared, frames: u64, gap_us: u64) -> anyhow::Result<()> {
    let (ping, pong, stamp) = (shared.word(PING)?, shared.word(PONG)?, shared.stamp()?);
    let gap = Duration::from_micros(gap_us);
    for i in 1..=frames.min(u64::from(END - 1)) as u32 {
        stamp.store(now_ns(), Ordering::Relaxed);
        ping.store(i, Ordering::Release);
        match kind {
            "eventfd" => {
                efd_write(shared.efd(1))?;
                efd_read(shared.efd(2))?;
            }
            "spin" => {
                await_change(pong, i - 1, true)?;
            }
            _ => {
                futex::wake(ping, futex::Flags::empty(), 1)?;
                await_change(pong, i - 1, false)?;
            }
        }
        std::thread::sleep(gap);
    }
    Ok(())
}

/// Child side of a floor: connect, take the fds, answer until `END`.
pub(crate) fn consumer(role: &str, socket: Option<&Path>) -> anyhow::Result<std::process::ExitCode> {
    let path = socket.ok_or_else(|| anyhow::anyhow!("--socket missing"))?;
    let stream = UnixStream::connect(path)?;
    let fds = recv_fds(stream.as_fd())?;
    anyhow::ensure!(fds.len() == 3, "expected 3 fds from the bench, got {}", fds.len());
    let map = AtomicMapping::map(&fds[0], 4096, false)?;
    let shared = Shared { map, fds };
    let (ping, pong, stamp) = (shared.word(PING)?, shared.word(PONG)?, shared.stamp()?);
    let mut latencies = Vec::new();
    let mut placement = Placement::default();
    let mut seen = 0u32;
    loop {
        let v = match role {
            "eventfd-consumer" => {
                efd_read(shared.efd(1))?;
                ping.load(Ordering::Acquire)
            }
            "spin-consumer" => await_change(ping, seen, true)?,
            _ => await_change(ping, seen, false)?,
        };
        let now = now_ns();
        if v == END {
            break;
        }
        let lat = now.saturating_sub(stamp.load(Ordering::Relaxed));
        latencies.push(lat);
        placement.record_parent(lat);
        seen = v;
        pong.store(v, Ordering::Release);
        match role {
            "eventfd-consumer" => efd_write(shared.efd(2))?,
            "spin-consumer" => {}
            _ => {
                futex::wake(pong, futex::Flags::empty(), 1)?;
            }
        }
    }
    let mut report = ChildReport { samples: latencies.len() as u64, ..Default::default() };
    (report.p50_ns, report.p99_ns) = p50_p99(&mut latencies);
    placement.fill(&mut report);
    println!("{}", serde_json::to_string(&report)?);
    Ok(std::process::ExitCode::SUCCESS)
}

/// The CPU a process last ran on (`/proc/PID/stat` field 39).
pub(crate) fn last_cpu(pid: u32) -> Option<usize> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(36)?.parse().ok()
}

/// Samples split by whether the two processes last ran on one CPU.
#[derive(Default)]
pub(crate) struct Placement {
    pub same: Vec<u64>,
    pub apart: Vec<u64>,
}

impl Placement {
    pub(crate) fn record(&mut self, ns: u64, mine: usize, other: Option<usize>) {
        match other {
            Some(c) if c == mine => self.same.push(ns),
            Some(_) => self.apart.push(ns),
            None => {}
        }
    }

    /// A consumer's sample against its parent (the producer), read after
    /// the timestamp so that it does not delay it.
    pub(crate) fn record_parent(&mut self, ns: u64) {
        self.record(ns, rustix::thread::sched_getcpu(), last_cpu(std::os::unix::process::parent_id()));
    }

    pub(crate) fn fill(&mut self, report: &mut ChildReport) {
        self.same.sort_unstable();
        self.apart.sort_unstable();
        report.same_cpu = self.same.len() as u64;
        report.apart = self.apart.len() as u64;
        report.p50_same_ns = quantile(&self.same, 0.5);
        report.p50_apart_ns = quantile(&self.apart, 0.5);
    }

    pub(crate) fn describe(&mut self) -> String {
        self.same.sort_unstable();
        self.apart.sort_unstable();
        describe(self.same.len() as u64, quantile(&self.same, 0.5), self.apart.len() as u64, quantile(&self.apart, 0.5))
    }
}

/// `62% on one CPU: 19.4 us / apart: 33.1 us`.
pub(crate) fn describe(same: u64, p50_same: u64, apart: u64, p50_apart: u64) -> String {
    let total = (same + apart).max(1) as f64;
    format!(
        "{:.0}% one CPU: {:.1} us / apart: {:.1} us",
        same as f64 * 100.0 / total,
        p50_same as f64 / 1e3,
        p50_apart as f64 / 1e3
    )
}

/// A child answering every datagram with an fd over `SOCK_SEQPACKET`: the
/// floor of a broker round trip.
pub(crate) struct FdEcho {
    child: Child,
    socket: OwnedFd,
    buf: Vec<u8>,
}

impl FdEcho {
    /// Start the child (`bench broker --role fd-echo`) and connect to it.
    pub(crate) fn start(dir: &Path) -> anyhow::Result<Self> {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        let path = dir.join("fd-echo.sock");
        let _ = std::fs::remove_file(&path);
        let listener =
            rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
        rustix::net::bind(&listener, &SocketAddrUnix::new(&path)?)?;
        rustix::net::listen(&listener, 1)?;
        let child = Command::new("/proc/self/exe")
            .args(["bench", "broker", "--role", "fd-echo", "--role-socket"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting the fd echo process: {e}"))?;
        let socket = rustix::net::accept_with(&listener, SocketFlags::CLOEXEC)?;
        let _ = std::fs::remove_file(&path);
        Ok(Self { child, socket, buf: vec![0; 256] })
    }

    /// One round trip: a 32-byte request out, one fd back, closed.
    pub(crate) fn round_trip(&mut self) -> anyhow::Result<()> {
        wire::send(self.socket.as_fd(), &[7u8; 32], None, false)?;
        let got = wire::recv(self.socket.as_fd(), &mut self.buf, false)?
            .ok_or_else(|| anyhow::anyhow!("the fd echo process hung up"))?;
        anyhow::ensure!(got.fds.len() == 1, "the fd echo process sent {} fds", got.fds.len());
        Ok(())
    }

    /// The child's pid (for its CPU in /proc).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for FdEcho {
    fn drop(&mut self) {
        let _ = rustix::net::shutdown(&self.socket, rustix::net::Shutdown::Both);
        let _ = self.child.wait();
    }
}

/// The echo child: answer each datagram with the same memfd until hang-up.
pub(crate) fn fd_echo(path: &Path) -> anyhow::Result<std::process::ExitCode> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let socket = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
    rustix::net::connect(&socket, &SocketAddrUnix::new(path)?)?;
    let memfd = rustix::fs::memfd_create("dmabroker-bench-echo", rustix::fs::MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&memfd, 4096)?;
    let mut buf = vec![0u8; 256];
    let reply = [9u8; 48];
    while let Some(got) = wire::recv(socket.as_fd(), &mut buf, false)? {
        if got.len == 0 {
            break;
        }
        wire::send(socket.as_fd(), &reply, Some(memfd.as_fd()), false)?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}
