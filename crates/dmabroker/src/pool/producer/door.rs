//! The door: a thread of the producer that accepts consumers' connections,
//! reads their HELLO and identifies them, so that the frame path never
//! accepts, polls or times out a connection (finding 8).
//!
//! Before, every maintenance pass of [`Producer::acquire`](super::Producer::acquire)
//! (every 10 ms while frames flow, and each time it was starved) called
//! `accept4` and one `recvmsg` per connection that had not said HELLO yet:
//! a few hundred idle connections of any user that may connect made each
//! frame cost hundreds of system calls, and their number had no bound but
//! the producer's fd limit. Now the door does that work, and bounds it:
//! connections from the listener that are not attached yet (waiting for
//! their HELLO, or read and waiting for the producer) are at most
//! [`PENDING_PER_UID`] per uid and [`MAX_PENDING`] in all; beyond, a
//! newcomer is refused at once with "busy"
//! ([`AttachError::Busy`](crate::pool::AttachError::Busy)). The producer
//! only takes the HELLOs that are ready (one atomic load when there are
//! none), at most [`ATTACHES_PER_PASS`] per pass, and answers with the
//! WELCOME: slots and the control block stay the producer's alone.
//!
//! Sockets given to [`Producer::attach`](super::Producer::attach) come in
//! here too, without the per-uid bound (their creator chose them).

use super::identity::{watch_consumer, PeerCred};
use crate::closer::CloseLater;
use crate::pool::now_ns;
use crate::pool::transport::{self, PoolListener, HELLO_TIMEOUT_NS};
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Connections of one uid accepted from the listener and not attached yet.
pub(crate) const PENDING_PER_UID: usize = 8;
/// Connections not attached yet, all uids together (each is an fd of the
/// producer's process).
pub(crate) const MAX_PENDING: usize = 256;
/// HELLOs the producer answers per maintenance pass: the frame path's
/// share of attach work is bounded whatever arrives.
pub(super) const ATTACHES_PER_PASS: usize = 4;
/// Connections accepted per turn of the door's loop.
const ACCEPT_BATCH: usize = 64;
/// How long a connection refused "busy" is kept, so that it reads the
/// answer before the close (closing with its HELLO unread would reset it).
const BUSY_LINGER_NS: u64 = 500_000_000;
/// Most refused connections kept lingering; beyond, closed at once.
const MAX_LINGERING: usize = 64;

/// A consumer that said HELLO, identified, waiting for its WELCOME.
#[derive(Debug)]
pub(super) struct Hello {
    pub(super) socket: CloseLater,
    pub(super) words: Vec<u64>,
    /// The process watched for this consumer and its pidfd.
    pub(super) pid: u32,
    pub(super) pidfd: Option<OwnedFd>,
    /// `SO_PEERCRED`'s uid; `None` for sockets given to `attach`.
    uid: Option<u32>,
}

#[derive(Debug, Default)]
struct Inbox {
    listener: Option<PoolListener>,
    sockets: Vec<OwnedFd>,
}

#[derive(Debug, Default)]
struct Shared {
    inbox: Mutex<Inbox>,
    ready: Mutex<VecDeque<Hello>>,
    /// `ready.len()`, read without the lock on the frame path.
    ready_len: AtomicUsize,
    closed: AtomicBool,
    stop: AtomicBool,
}

/// The producer's handle on its door thread.
#[derive(Debug)]
pub(super) struct Door {
    shared: Arc<Shared>,
    /// An eventfd: written to wake the thread.
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one is still consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Door {
    /// Start the thread.
    ///
    /// # Errors
    /// `eventfd` or thread creation failures.
    pub(super) fn open() -> Result<Self, Errno> {
        let wake = Arc::new(rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?);
        let shared = Arc::new(Shared::default());
        let (s, w) = (shared.clone(), wake.clone());
        let thread = std::thread::Builder::new()
            .name("dmabroker-pool-door".into())
            .spawn(move || run(&s, &w))
            .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::AGAIN))?;
        Ok(Self { shared, wake, thread: Some(thread) })
    }

    fn wake(&self) {
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
    }

    /// Accept consumers on `listener` (replacing any earlier one).
    pub(super) fn listen(&self, listener: PoolListener) {
        lock(&self.shared.inbox).listener = Some(listener);
        self.wake();
    }

    /// Take a connected socket (non-blocking already).
    pub(super) fn attach(&self, socket: OwnedFd) {
        lock(&self.shared.inbox).sockets.push(socket);
        self.wake();
    }

    /// From now on every connection is answered "closed".
    pub(super) fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// At most `n` consumers that said HELLO, oldest first. No lock and no
    /// system call when there are none.
    pub(super) fn take_ready(&self, n: usize) -> Vec<Hello> {
        if self.shared.ready_len.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let mut ready = lock(&self.shared.ready);
        let n = n.min(ready.len());
        let taken: Vec<Hello> = ready.drain(..n).collect();
        self.shared.ready_len.store(ready.len(), Ordering::Release);
        taken
    }
}

impl Drop for Door {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake();
        // The thread never blocks but in its poll (which the wake ends):
        // closes go to closer threads, sockets are non-blocking.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // HELLOs the producer did not take: "closed", not a hang-up.
        for h in lock(&self.shared.ready).drain(..) {
            transport::refuse_closed(h.socket.as_fd());
        }
    }
}

/// A connection waiting for its HELLO.
#[derive(Debug)]
struct Waiting {
    socket: CloseLater,
    /// When it is dropped if it has not said HELLO (or, refused, hung up).
    deadline: u64,
    uid: Option<u32>,
    /// REFUSED(closed) was sent: kept only until its HELLO is read (closing
    /// a socket with unread data would reset the peer before it reads the
    /// answer), it hangs up, or the HELLO timeout.
    refused: bool,
}

fn run(shared: &Shared, wake: &OwnedFd) {
    let mut listener: Option<PoolListener> = None;
    let mut waiting: Vec<Waiting> = Vec::new();
    loop {
        let now = now_ns();
        let closed = shared.closed.load(Ordering::SeqCst);
        {
            let mut inbox = lock(&shared.inbox);
            if let Some(l) = inbox.listener.take() {
                listener = Some(l);
            }
            for socket in inbox.sockets.drain(..) {
                let deadline = now.saturating_add(HELLO_TIMEOUT_NS);
                waiting.push(Waiting { socket: CloseLater::connection(socket), deadline, uid: None, refused: false });
            }
        }
        if closed {
            for w in waiting.iter_mut().filter(|w| !w.refused) {
                // Answered before its HELLO is even read: the consumer finds
                // the answer whenever it sent its HELLO.
                transport::refuse_closed(w.socket.as_fd());
                w.refused = true;
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            // Whoever connected since: "closed", then drained and closed
            // (off this thread, by the closer).
            if let Some(l) = &listener {
                while let Ok(Some(socket)) = l.try_accept() {
                    transport::refuse_closed(socket.as_fd());
                    transport::drain(socket.as_fd());
                    drop(CloseLater::connection(socket));
                }
            }
            for w in &waiting {
                transport::drain(w.socket.as_fd());
            }
            return;
        }
        waiting.retain(|w| now < w.deadline);
        let timeout = waiting
            .iter()
            .map(|w| w.deadline.saturating_sub(now))
            .min()
            .map(|ns| crate::pool::timespec(std::time::Duration::from_nanos(ns)));
        let mut fds = Vec::with_capacity(waiting.len() + 2);
        fds.push(PollFd::new(wake, PollFlags::IN));
        if let Some(l) = &listener {
            fds.push(PollFd::new(l, PollFlags::IN));
        }
        for w in &waiting {
            fds.push(PollFd::new(&w.socket, PollFlags::IN));
        }
        if rustix::event::poll(&mut fds, timeout.as_ref()).is_err() {
            continue;
        }
        let base = if listener.is_some() { 2 } else { 1 };
        let readable: Vec<bool> = fds[base..].iter().map(|f| !f.revents().is_empty()).collect();
        let (woken, accept) = (!fds[0].revents().is_empty(), listener.is_some() && !fds[1].revents().is_empty());
        drop(fds);
        if woken {
            let mut counter = [0u8; 8];
            let _ = rustix::io::read(wake, &mut counter);
        }
        let now = now_ns();
        let mut kept = Vec::with_capacity(waiting.len());
        for (w, readable) in waiting.into_iter().zip(readable) {
            match readable {
                false => kept.push(w),
                true => {
                    if let Some(w) = serve(shared, w, closed) {
                        kept.push(w);
                    }
                }
            }
        }
        waiting = kept;
        if let (true, Some(l)) = (accept, &listener) {
            for _ in 0..ACCEPT_BATCH {
                match l.try_accept() {
                    Ok(Some(socket)) => admit(shared, &mut waiting, socket, now, closed),
                    Ok(None) => break,
                    Err(e) => {
                        // EMFILE/ENFILE: the connection stays queued; do not
                        // spin on the listener meanwhile.
                        tracing::warn!("pool accept: {e}; pausing new connections for 100 ms");
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        break;
                    }
                }
            }
        }
    }
}

/// A connection from the listener: kept, or refused when its uid (or
/// everyone) has too many connections not yet attached.
fn admit(shared: &Shared, waiting: &mut Vec<Waiting>, socket: OwnedFd, now: u64, closed: bool) {
    let uid = rustix::net::sockopt::socket_peercred(&socket).ok().map(|c| c.uid.as_raw());
    let socket = CloseLater::connection(socket);
    let ready: Vec<Option<u32>> = lock(&shared.ready).iter().map(|h| h.uid).collect();
    let lingering = waiting.iter().filter(|w| w.refused).count();
    let total = waiting.len() - lingering + ready.len();
    let pending = waiting.iter().filter(|w| !w.refused).map(|w| w.uid).chain(ready);
    let mine = pending.filter(|u| u.is_some() && *u == uid).count();
    let (answer, linger) = if closed {
        (transport::REFUSED_CLOSED, HELLO_TIMEOUT_NS)
    } else if total >= MAX_PENDING || mine >= PENDING_PER_UID {
        tracing::debug!(?uid, mine, total, "pool consumer refused: too many attaches pending");
        (transport::REFUSED_BUSY, BUSY_LINGER_NS)
    } else {
        waiting.push(Waiting { socket, deadline: now.saturating_add(HELLO_TIMEOUT_NS), uid, refused: false });
        return;
    };
    let _ =
        transport::send(socket.as_fd(), &transport::encode(&[u64::from(answer)], transport::MSG_REFUSED), &[], true);
    // Kept until its HELLO is read (closing with unread data would reset
    // the peer before it reads the answer), a bounded number of them.
    let (open, read_hello) = transport::drain(socket.as_fd());
    if open && !read_hello && lingering < MAX_LINGERING {
        waiting.push(Waiting { socket, deadline: now.saturating_add(linger), uid, refused: true });
    }
}

/// A waiting connection is readable: its HELLO goes to the producer; a
/// refused one is drained. Returns it when it must wait on.
fn serve(shared: &Shared, w: Waiting, closed: bool) -> Option<Waiting> {
    if w.refused {
        let (open, read_hello) = transport::drain(w.socket.as_fd());
        return (open && !read_hello).then_some(w);
    }
    match transport::recv(w.socket.as_fd(), true) {
        Ok(Some((bytes, fds))) => {
            // A HELLO carries no fd: whatever came along is closed off this
            // thread (its release may block).
            crate::closer::close_all_later(fds);
            let Ok(m) = transport::decode(&bytes, Vec::new()) else { return None };
            if m.kind != transport::MSG_HELLO {
                return None; // not a pool consumer: hang up on it
            }
            if closed {
                transport::refuse_closed(w.socket.as_fd());
                return None;
            }
            let hello_pid = m.words.get(1).and_then(|&p| u32::try_from(p).ok()).filter(|&p| p != 0);
            let creds = rustix::net::sockopt::socket_peercred(&w.socket)
                .ok()
                .map(|c| PeerCred { pid: c.pid.as_raw_nonzero().get() as u32, uid: c.uid.as_raw() });
            // The pidfd catches a consumer that died while a forked child
            // keeps its socket open; the socket catches everything else.
            let (pid, pidfd) = watch_consumer(creds, hello_pid);
            let hello = Hello { socket: w.socket, words: m.words, pid, pidfd, uid: w.uid };
            let mut ready = lock(&shared.ready);
            ready.push_back(hello);
            shared.ready_len.store(ready.len(), Ordering::Release);
            None
        }
        Err(Errno::AGAIN) => Some(w),
        _ => None,
    }
}
