//! `sd_notify(3)` without libsystemd: `READY=1`, `STOPPING=1`, and the fd
//! store (`FDSTORE=1`, `FDSTOREREMOVE=1`) that keeps published buffers alive
//! across a broker restart.
//!
//! The service manager's socket is `$NOTIFY_SOCKET`, a datagram socket given
//! by path or, with a leading `@`, in the abstract namespace. Messages are
//! newline-separated `KEY=VALUE` assignments; an fd rides along with
//! `SCM_RIGHTS`. Stored fds come back at the next start in `LISTEN_FDS`, named
//! by `LISTEN_FDNAMES` (see [`dmabroker_sys::inherited`]).
//!
//! Nothing here blocks the event loop. The socket is non-blocking and
//! connected to the manager, so it polls writable (`EPOLLOUT`) only while the
//! manager's receive queue has room (`net.unix.max_dgram_qlen`, 10 by
//! default). A message the manager cannot take at once is queued, in order,
//! and sent by [`Notifier::flush`] when the socket becomes writable (the
//! server watches it) or at the service's next timer. The queue holds at
//! most [`MAX_QUEUED`] messages:
//! - state updates are coalesced: only the newest state memfd is kept;
//! - `FDSTOREREMOVE=1` cancels a still-queued `FDSTORE=1` of the same name
//!   (the manager never saw it) instead of queuing;
//! - when full, the queued state update goes first (and is re-saved once
//!   there is room, see [`Notifier::take_state_lost`]); if there is none, a
//!   new `FDSTORE=1` or `FDSTOREREMOVE=1` is refused (logged by the caller:
//!   the publication will not survive a restart, or the manager keeps a
//!   buffer until the next start drops it as unknown to the state).
//!
//! `READY=1`, `STOPPING=1` and `STATUS=` are always queued (there are only a
//! few of them).

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use std::collections::VecDeque;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

/// Most messages kept while the manager does not read (each `FDSTORE=1` one
/// holds a duplicate of its fd, so at most a quarter of `RLIMIT_NOFILE`).
pub const MAX_QUEUED: usize = 4096;

/// The fd store name of the state memfd (see [`crate::persist`]).
const STATE_NAME: &str = crate::persist::STATE_NAME;

#[derive(Debug)]
enum Kind {
    /// `READY=1`, `STOPPING=1`, `STATUS=`…
    Control(String),
    /// `FDSTORE=1` of a buffer (the fd is in [`Queued::fd`]).
    Store(String),
    /// `FDSTOREREMOVE=1`.
    Remove(String),
    /// A state update: `FDSTOREREMOVE=1` of the old state, then `FDSTORE=1`
    /// of the new one; `removed` once the first half is sent.
    State { removed: bool },
}

#[derive(Debug)]
struct Queued {
    kind: Kind,
    fd: Option<OwnedFd>,
}

impl Queued {
    fn text(&self) -> String {
        match &self.kind {
            Kind::Control(text) => text.clone(),
            Kind::Store(name) => store_text(name),
            Kind::Remove(name) => remove_text(name),
            Kind::State { removed: false } => remove_text(STATE_NAME),
            Kind::State { removed: true } => store_text(STATE_NAME),
        }
    }
}

fn store_text(name: &str) -> String {
    format!("FDSTORE=1\nFDNAME={name}\nFDPOLL=0")
}

fn remove_text(name: &str) -> String {
    format!("FDSTOREREMOVE=1\nFDNAME={name}")
}

/// A connection to the service manager.
#[derive(Debug)]
pub struct Notifier {
    socket: OwnedFd,
    addr: SocketAddrUnix,
    /// `connect` succeeded: `EPOLLOUT` follows the manager's queue.
    connected: bool,
    queue: VecDeque<Queued>,
    /// A queued state update was dropped to make room.
    state_lost: bool,
    /// The queue was full (logged once per episode).
    full_logged: bool,
    /// [`MAX_QUEUED`], or less under a low fd limit.
    max_queued: usize,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; `None` when unset (not run by a service manager).
    /// The variable is removed so that children do not talk to the manager.
    pub fn from_env() -> Option<Self> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        std::env::remove_var("NOTIFY_SOCKET");
        let bytes = path.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddrUnix::new_abstract_name(name).ok()?,
            None => SocketAddrUnix::new(std::path::Path::new(&path)).ok()?,
        };
        Self::new(addr).ok()
    }

    /// A non-blocking datagram socket to `addr`, connected when possible so
    /// that it polls writable only while the manager's queue has room.
    ///
    /// # Errors
    /// `socket` failures.
    pub fn new(addr: SocketAddrUnix) -> rustix::io::Result<Self> {
        let socket = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        let connected = rustix::net::connect(&socket, &addr).is_ok();
        let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
        let max_queued = usize::try_from(nofile / 4).unwrap_or(usize::MAX).clamp(16, MAX_QUEUED);
        Ok(Self { socket, addr, connected, queue: VecDeque::new(), state_lost: false, full_logged: false, max_queued })
    }

    /// The socket, for the event loop to watch for `EPOLLOUT` while
    /// [`Notifier::pending`] is non-zero.
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Whether the socket's `EPOLLOUT` says when the manager has room (else
    /// only the timer retries).
    pub fn pollable(&self) -> bool {
        self.connected
    }

    /// Messages waiting for the manager.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Whether a queued state update was dropped for room and the queue
    /// has room again (the caller should save the state anew). Clears it.
    pub fn take_state_lost(&mut self) -> bool {
        if self.state_lost && self.queue.len() < self.max_queued {
            self.state_lost = false;
            return true;
        }
        false
    }

    /// One `sendmsg`, never blocking.
    fn send(&self, text: &str, fd: Option<BorrowedFd<'_>>) -> rustix::io::Result<()> {
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            control.push(SendAncillaryMessage::ScmRights(&fds));
        }
        let iov = [IoSlice::new(text.as_bytes())];
        let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
        loop {
            let sent = if self.connected {
                rustix::net::sendmsg(&self.socket, &iov, &mut control, flags)
            } else {
                rustix::net::sendmsg_addr(&self.socket, &self.addr, &iov, &mut control, flags)
            };
            match sent {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Send what is queued, in order, until the manager's queue is full.
    pub fn flush(&mut self) {
        while let Some(q) = self.queue.front() {
            let what = match &q.kind {
                Kind::Store(name) => format!("{name}: its publication will not survive a restart"),
                Kind::State { .. } => "the state: publications will not survive a restart".to_owned(),
                _ => q.text(),
            };
            match self.send_queued_front() {
                Ok(()) => {}
                Err(Errno::AGAIN) => return,
                Err(e) => {
                    tracing::warn!("the service manager refused a notification ({e}), {what}");
                    self.queue.pop_front();
                }
            }
        }
        self.full_logged = false;
    }

    /// Send the head of the queue (one datagram); pop it when complete.
    fn send_queued_front(&mut self) -> rustix::io::Result<()> {
        let q = self.queue.front().expect("front exists");
        let fd = match q.kind {
            Kind::State { removed: false } => None,
            _ => q.fd.as_ref().map(AsFd::as_fd),
        };
        self.send(&q.text(), fd)?;
        let q = self.queue.front_mut().expect("front exists");
        if let Kind::State { removed } = &mut q.kind {
            if !*removed {
                *removed = true;
                return Ok(());
            }
        }
        self.queue.pop_front();
        Ok(())
    }

    /// Send what is queued, waiting up to `limit` for the manager (at exit,
    /// when the loop no longer runs). True when nothing is left.
    pub fn flush_for(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            self.flush();
            if self.queue.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    "the service manager did not read {} notification(s) in {limit:?}; they are lost",
                    self.queue.len()
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Queue `q` (a copy of its fd is already in it), making room by
    /// dropping the queued state update when full.
    fn push(&mut self, q: Queued) -> rustix::io::Result<()> {
        if !matches!(q.kind, Kind::Control(_)) && self.queue.len() >= self.max_queued {
            // The state's first half may be sent already (then it is the
            // head): dropping it leaves the manager without a state until
            // the next save, which `take_state_lost` asks for.
            match self.queue.iter().position(|q| matches!(q.kind, Kind::State { .. })) {
                Some(i) => {
                    self.queue.remove(i);
                    self.state_lost = true;
                    tracing::warn!(
                        "the service manager is not reading notifications ({} queued): dropped the queued state \
                         update",
                        self.max_queued
                    );
                }
                None => {
                    if !self.full_logged {
                        self.full_logged = true;
                        tracing::warn!(
                            "the service manager is not reading notifications ({} queued): refusing more",
                            self.max_queued
                        );
                    }
                    return Err(Errno::NOBUFS);
                }
            }
        }
        self.queue.push_back(q);
        Ok(())
    }

    /// Send at once, or queue behind what is already queued.
    fn submit(&mut self, kind: Kind, fd: Option<BorrowedFd<'_>>) -> rustix::io::Result<()> {
        self.flush();
        if self.queue.is_empty() {
            let q = Queued { kind, fd: None };
            match self.send(&q.text(), fd) {
                Ok(()) => return Ok(()),
                Err(Errno::AGAIN) => {}
                Err(e) => return Err(e),
            }
            let fd = fd.map(|f| rustix::io::fcntl_dupfd_cloexec(f, 0)).transpose()?;
            return self.push(Queued { kind: q.kind, fd });
        }
        let fd = fd.map(|f| rustix::io::fcntl_dupfd_cloexec(f, 0)).transpose()?;
        self.push(Queued { kind, fd })
    }

    /// Send `state` (e.g. `READY=1`), with an fd when given; queued (never
    /// refused for room) when the manager's queue is full.
    ///
    /// # Errors
    /// The `sendmsg` errno (the manager is gone, or refused the fd).
    pub fn notify(&mut self, state: &str, fd: Option<BorrowedFd<'_>>) -> rustix::io::Result<()> {
        self.submit(Kind::Control(state.to_owned()), fd)
    }

    /// Store `fd` under `name` (`FDSTORE=1`, `FDPOLL=0` so that the manager
    /// does not drop a buffer whose poll says "hang-up"); sent now or queued.
    ///
    /// # Errors
    /// The `sendmsg` errno, or `ENOBUFS` when the queue is full of messages
    /// that cannot be dropped: the manager will not get the fd.
    pub fn store(&mut self, name: &str, fd: &impl AsFd) -> rustix::io::Result<()> {
        self.submit(Kind::Store(name.to_owned()), Some(fd.as_fd()))
    }

    /// Drop the stored fds named `name`; cancels a still-queued store of it.
    ///
    /// # Errors
    /// As [`Notifier::store`].
    pub fn remove(&mut self, name: &str) -> rustix::io::Result<()> {
        self.flush();
        // The newest queued message about `name`, if a store, was never
        // seen by the manager, which therefore holds no `name` after the
        // messages before it (a store is only sent for a name not stored).
        let last = self.queue.iter().rposition(|q| matches!(&q.kind, Kind::Store(n) | Kind::Remove(n) if n == name));
        if let Some(i) = last.filter(|&i| matches!(self.queue[i].kind, Kind::Store(_))) {
            self.queue.remove(i);
            return Ok(());
        }
        self.submit(Kind::Remove(name.to_owned()), None)
    }

    /// Replace the stored state memfd (`FDSTOREREMOVE=1` then `FDSTORE=1`
    /// of [`crate::persist::STATE_NAME`]); a queued older state is replaced.
    ///
    /// # Errors
    /// As [`Notifier::store`].
    pub fn store_state(&mut self, fd: OwnedFd) -> rustix::io::Result<()> {
        self.flush();
        if let Some(i) = self.queue.iter().position(|q| matches!(q.kind, Kind::State { .. })) {
            if matches!(self.queue[i].kind, Kind::State { removed: true }) {
                // Half sent (it is the head): its store sends this memfd.
                self.queue[i].fd = Some(fd);
                return Ok(());
            }
            self.queue.remove(i);
        }
        let mut q = Queued { kind: Kind::State { removed: false }, fd: Some(fd) };
        if self.queue.is_empty() {
            for _ in 0..2 {
                let fd = match q.kind {
                    Kind::State { removed: false } => None,
                    _ => q.fd.as_ref().map(AsFd::as_fd),
                };
                match self.send(&q.text(), fd) {
                    Ok(()) => q.kind = Kind::State { removed: true },
                    Err(Errno::AGAIN) => return self.push(q),
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        }
        self.push(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::epoll::{self, EventData, EventFlags};
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::io::IoSliceMut;

    struct Manager {
        socket: OwnedFd,
    }

    impl Manager {
        fn new(tag: &str) -> (Self, SocketAddrUnix) {
            let name = format!("dmabroker-notify-test-{tag}-{}", std::process::id());
            let addr = SocketAddrUnix::new_abstract_name(name.as_bytes()).unwrap();
            let socket =
                rustix::net::socket_with(AddressFamily::UNIX, SocketType::DGRAM, SocketFlags::CLOEXEC, None).unwrap();
            rustix::net::bind(&socket, &addr).unwrap();
            (Self { socket }, addr)
        }

        fn recv(&self) -> Option<(String, usize)> {
            let mut buf = [0u8; 4096];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let msg = rustix::net::recvmsg(
                &self.socket,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
            )
            .ok()?;
            let mut fds = 0;
            for m in control.drain() {
                if let RecvAncillaryMessage::ScmRights(r) = m {
                    fds += r.count();
                }
            }
            Some((String::from_utf8_lossy(&buf[..msg.bytes]).into_owned(), fds))
        }

        fn drain(&self) -> Vec<(String, usize)> {
            std::iter::from_fn(|| self.recv()).collect()
        }
    }

    fn memfd() -> OwnedFd {
        rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap()
    }

    fn name_of(text: &str) -> &str {
        text.lines().find_map(|l| l.strip_prefix("FDNAME=")).unwrap_or("")
    }

    /// The kernel's `unix_dgram_poll`: a connected sender polls writable
    /// again as soon as the receiver reads from its full queue.
    #[test]
    fn epollout_follows_the_managers_queue() {
        let (manager, addr) = Manager::new("pollout");
        let mut n = Notifier::new(addr).unwrap();
        assert!(n.pollable());
        let fd = memfd();
        let mut i = 0;
        while n.pending() == 0 {
            n.store(&format!("b{i}"), &fd).unwrap();
            i += 1;
            assert!(i < 100_000, "the manager's queue never filled");
        }
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        epoll::add(&ep, n.socket(), EventData::new_u64(7), EventFlags::OUT).unwrap();
        let wait = |ms: i64| {
            let mut events = Vec::with_capacity(4);
            let timeout = rustix::time::Timespec { tv_sec: 0, tv_nsec: ms * 1_000_000 };
            epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), Some(&timeout)).unwrap();
            events.len()
        };
        assert_eq!(wait(50), 0, "writable while the manager's queue is full");
        assert!(manager.recv().is_some());
        assert_eq!(wait(1000), 1, "not writable after the manager read");
        n.flush();
        assert_eq!(n.pending(), 0);
        let names: Vec<String> = manager.drain().iter().map(|(t, _)| name_of(t).to_owned()).collect();
        assert_eq!(names.len(), i - 1);
        assert!(names.iter().zip(1..).all(|(n, j)| *n == format!("b{j}")), "{names:?}");
    }

    #[test]
    fn queued_messages_keep_order_and_states_coalesce() {
        let (manager, addr) = Manager::new("order");
        let mut n = Notifier::new(addr).unwrap();
        let fd = memfd();
        let mut sent = 0;
        while n.pending() == 0 {
            n.notify("STATUS=filling", None).unwrap();
            sent += 1;
        }
        n.store("b1", &fd).unwrap();
        n.store_state(memfd()).unwrap();
        n.store("b2", &fd).unwrap();
        n.store("b3", &fd).unwrap();
        n.remove("b2").unwrap(); // cancels the queued store
        n.remove("b0").unwrap();
        n.store_state(memfd()).unwrap(); // replaces the first
        n.store("b4", &fd).unwrap();
        n.store_state(memfd()).unwrap();
        assert_eq!(manager.drain().len(), sent - 1);
        assert!(n.flush_for(Duration::from_secs(1)));
        let got: Vec<(String, usize)> = manager.drain();
        let summary: Vec<String> = got
            .iter()
            .map(|(t, fds)| {
                let verb = t.lines().next().unwrap();
                format!("{verb} {} {fds}", name_of(t))
            })
            .collect();
        assert_eq!(
            summary,
            [
                "STATUS=filling  0",
                "FDSTORE=1 b1 1",
                "FDSTORE=1 b3 1",
                "FDSTOREREMOVE=1 b0 0",
                "FDSTORE=1 b4 1",
                "FDSTOREREMOVE=1 state 0",
                "FDSTORE=1 state 1",
            ]
        );
    }

    #[test]
    fn a_full_queue_drops_the_state_first_then_refuses() {
        let (manager, addr) = Manager::new("full");
        let mut n = Notifier::new(addr).unwrap();
        let fd = memfd();
        while n.pending() == 0 {
            n.notify("STATUS=filling", None).unwrap();
        }
        n.store_state(memfd()).unwrap();
        while n.pending() < n.max_queued {
            let i = n.pending();
            n.remove(&format!("b{i}")).unwrap();
        }
        assert!(!n.take_state_lost());
        n.store("one-more", &fd).unwrap();
        assert_eq!(n.pending(), n.max_queued, "the state made room");
        assert!(!n.take_state_lost(), "no room yet");
        assert_eq!(n.store("refused", &fd), Err(Errno::NOBUFS));
        n.notify("STOPPING=1", None).unwrap();
        assert_eq!(n.pending(), n.max_queued + 1, "control messages are always queued");
        while n.pending() > 0 {
            manager.drain();
            n.flush();
        }
        assert!(n.take_state_lost());
        assert!(!n.take_state_lost());
    }
}
