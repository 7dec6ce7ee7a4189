//! Closing descriptors another process sent, off the caller's thread.
//!
//! `close()` of the last reference to a file runs that file's release, and
//! some releases wait on somebody else: a TCP socket with `SO_LINGER` and
//! unsent data waits up to its linger time, a file on a FUSE mount waits for
//! the (hostile) server's `RELEASE` answer, in uninterruptible sleep. An
//! event loop that drops an fd a client sent can thus be frozen by that
//! client. Every fd received from another process that is not kept (and
//! every connection socket, whose receive queue may hold such fds) is handed
//! to [`close_later`]: a small pool of closer threads closes it. A close
//! that blocks occupies one thread; the next fd goes to a fresh thread, up
//! to [`MAX_CLOSERS`]; beyond that, fds wait in the queue (each still one
//! slot of the process's fd table) until a closer is free. Idle closers
//! beyond the first exit after [`IDLE_EXIT`].
//!
//! Pushing never blocks: the queue's mutex is never held across a close.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

/// Most closer threads at once.
pub const MAX_CLOSERS: usize = 16;
/// How long an idle closer (beyond the first) waits before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    queue: VecDeque<OwnedFd>,
    threads: usize,
    /// Threads waiting for work (not inside a close).
    idle: usize,
    /// Threads inside a close that has not returned.
    busy: usize,
}

struct Pool {
    state: Mutex<State>,
    work: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool { state: Mutex::new(State::default()), work: Condvar::new() })
}

/// Close `fd` on a closer thread: the caller never waits for the file's
/// release.
pub fn close_later(fd: OwnedFd) {
    close_all_later(std::iter::once(fd));
}

/// [`close_later`] for several fds.
pub fn close_all_later(fds: impl IntoIterator<Item = OwnedFd>) {
    let pool = pool();
    let Ok(mut state) = pool.state.lock() else {
        // Poisoned (a closer panicked, which dropping an OwnedFd cannot):
        // keep the fds open rather than close them here.
        fds.into_iter().for_each(std::mem::forget);
        return;
    };
    let before = state.queue.len();
    state.queue.extend(fds);
    if state.queue.len() == before {
        return;
    }
    // A thread for each queued fd that no idle closer will take, within the
    // cap: a close stuck in a hostile release holds up only its own thread.
    let spawn = state.queue.len().saturating_sub(state.idle).min(MAX_CLOSERS.saturating_sub(state.threads));
    for _ in 0..spawn {
        let spawned = std::thread::Builder::new().name("dmabroker-closer".into()).spawn(worker);
        if spawned.is_ok() {
            state.threads += 1;
        }
    }
    drop(state);
    pool.work.notify_all();
}

fn worker() {
    let pool = pool();
    let Ok(mut state) = pool.state.lock() else { return };
    loop {
        if let Some(fd) = state.queue.pop_front() {
            state.busy += 1;
            drop(state);
            drop(fd);
            state = match pool.state.lock() {
                Ok(s) => s,
                Err(_) => return,
            };
            state.busy -= 1;
            continue;
        }
        state.idle += 1;
        let Ok((s, timeout)) = pool.work.wait_timeout(state, IDLE_EXIT) else { return };
        state = s;
        state.idle -= 1;
        if timeout.timed_out() && state.queue.is_empty() && state.threads > 1 {
            state.threads -= 1;
            return;
        }
    }
}

/// An fd whose close is left to a closer thread when it is dropped: for a
/// connection socket, whose receive queue may hold fds a peer sent (they are
/// released when the socket is), or an fd a peer sent that is kept a while.
#[derive(Debug)]
pub struct CloseLater(Option<OwnedFd>, bool);

impl CloseLater {
    /// Wrap `fd`.
    pub fn new(fd: OwnedFd) -> Self {
        Self(Some(fd), false)
    }

    /// Wrap a connection socket of this process: on drop it is shut down at
    /// once (the peer sees the hang-up now), then closed on a closer thread.
    pub fn connection(fd: OwnedFd) -> Self {
        Self(Some(fd), true)
    }

    /// The fd itself, to be closed by the caller (only for a file whose
    /// close cannot block: one classified as a memfd or dma-buf).
    pub fn into_inner(mut self) -> OwnedFd {
        self.0.take().expect("present until dropped or taken")
    }
}

impl std::os::fd::AsFd for CloseLater {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_ref().expect("present until dropped or taken").as_fd()
    }
}

impl Drop for CloseLater {
    fn drop(&mut self) {
        if let Some(fd) = self.0.take() {
            if self.1 {
                let _ = rustix::net::shutdown(&fd, rustix::net::Shutdown::Both);
            }
            close_later(fd);
        }
    }
}

/// Fds waiting for a closer, and closes in progress (for tests and reports).
pub fn pending() -> (usize, usize) {
    pool().state.lock().map_or((0, 0), |s| (s.queue.len(), s.busy))
}

/// Wait until every fd handed over so far is closed, at most `timeout`;
/// whether it was (for leak checks in tests, and orderly exits).
pub fn wait_idle(timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if pending() == (0, 0) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn closes_happen_on_another_thread() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        close_later(OwnedFd::from(a));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 1];
        // The peer sees end of stream once the closer ran.
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(std::io::Read::read(&mut &b, &mut buf).unwrap(), 0);
        assert!(Instant::now() < deadline);
    }
}
