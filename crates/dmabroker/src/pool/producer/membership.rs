//! Membership: the listening socket, the WELCOME that ends an attach
//! handshake, and the periodic maintenance that attaches consumers while
//! frames flow (accepting and reading HELLOs is the door's: [`super::door`]).

use super::door::{Door, Hello, ATTACHES_PER_PASS};
use super::{nanos, Conn, Producer};

use crate::closer::CloseLater;
use crate::pool::error::AttachError;
use crate::pool::layout::{SLOT_ACTIVE, SLOT_FREE};
use crate::pool::now_ns;
use crate::pool::transport::{self, PoolListener};
use rustix::io::Errno;
use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Producer {
    /// Accept consumers on a socket at `path`. Connections are accepted and
    /// their HELLO read by the producer's door thread at any time (see
    /// [`door`](super::door)); they are attached only inside
    /// [`Producer::acquire`], [`Producer::wait_for_consumers`] and
    /// [`Producer::maintain_now`] (see [`Producer`]). A stale socket file of
    /// a dead producer is replaced; any other file at `path` is left alone
    /// and refused. The socket file is removed when the producer is dropped
    /// (if it is still the one this call created).
    ///
    /// # Errors
    /// [`crate::pool::ListenError`]: a live process listens there
    /// ([`AddressInUse`](crate::pool::ListenError::AddressInUse)), a regular file,
    /// FIFO, directory... is there ([`NotASocket`](crate::pool::ListenError::NotASocket)),
    /// an empty path ([`InvalidPath`](crate::pool::ListenError::InvalidPath)), the
    /// door thread cannot be started ([`Os`](crate::pool::ListenError::Os)), ...
    pub fn listen(&mut self, path: impl AsRef<Path>) -> Result<&Path, crate::pool::ListenError> {
        let listener = PoolListener::bind(path)?;
        let path = listener.path().to_path_buf();
        let door = self.door().map_err(|source| crate::pool::ListenError::Os {
            op: "start the door thread",
            path: path.clone(),
            source,
        })?;
        door.listen(listener);
        Ok(self.listen_path.insert(path))
    }

    /// The door thread, started on first use.
    fn door(&mut self) -> Result<&Door, Errno> {
        if self.door.is_none() {
            self.door = Some(Door::open()?);
        }
        Ok(self.door.as_ref().expect("just set"))
    }

    /// Take a connected `SOCK_SEQPACKET` socket whose other end belongs to a
    /// consumer (from [`crate::pool::socket_pair`], a broker, ...). Its HELLO
    /// is read by the door thread; the handshake completes during the next
    /// [`Producer::acquire`], [`Producer::wait_for_consumers`] or
    /// [`Producer::maintain_now`]; after [`Producer::close`] the consumer is
    /// told "closed" at once (by the door thread). Such sockets do not count
    /// against the per-uid bound of the listener's connections (their creator
    /// chose them).
    ///
    /// # Errors
    /// [`AttachError::Os`] when the socket cannot be made non-blocking or the
    /// door thread cannot be started.
    pub fn attach(&mut self, socket: OwnedFd) -> Result<(), AttachError> {
        rustix::io::ioctl_fionbio(&socket, true).map_err(|source| AttachError::Os { op: "FIONBIO", source })?;
        match self.door() {
            Ok(door) => door.attach(socket),
            Err(source) => {
                drop(CloseLater::connection(socket));
                return Err(AttachError::Os { op: "start the door thread", source });
            }
        }
        Ok(())
    }

    /// Accept and health-check consumers until `n` are attached.
    /// Returns whether `n` were reached within `timeout` (at once after
    /// [`Producer::close`]: no consumer can attach any more).
    pub fn wait_for_consumers(&mut self, n: usize, timeout: Duration) -> bool {
        if self.closed {
            self.service_connections(now_ns());
            return self.attached() >= n;
        }
        let deadline = now_ns().saturating_add(nanos(timeout));
        loop {
            self.maintain(now_ns());
            if self.attached() >= n {
                return true;
            }
            if now_ns() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Consumers attached and receiving frames now.
    pub fn attached(&self) -> usize {
        self.conns.iter().flatten().filter(|c| !c.evicted).count()
    }

    /// Attach consumers whose HELLO arrived, reap dead consumers, evict
    /// hung ones. Runs inside [`Producer::acquire`]; call it when the producer
    /// idles for long between frames.
    pub fn maintain_now(&mut self) {
        self.maintain(now_ns());
    }

    pub(super) fn maintain(&mut self, now: u64) {
        self.last_maintenance = now;
        // Reap first: the slot of a consumer that hung up is free again
        // before a newcomer (perhaps the same consumer reconnecting) asks.
        self.reap(now);
        self.service_connections(now);
    }

    /// Answer the consumers whose HELLO the door read: attach them, or
    /// refuse them (full, closed). At most [`ATTACHES_PER_PASS`] while
    /// open; every one once closed. Nothing else: accepting, reading HELLOs
    /// and their timeouts are the door's (no system call here when nobody
    /// is waiting).
    pub(super) fn service_connections(&mut self, _now: u64) {
        let Some(door) = &self.door else { return };
        let n = if self.closed { usize::MAX } else { ATTACHES_PER_PASS };
        for hello in door.take_ready(n) {
            self.finish_attach(hello);
        }
    }

    pub(super) fn finish_attach(&mut self, hello: Hello) {
        let Hello { socket, words, pid, pidfd, .. } = hello;
        let hello = &words[..];
        let refuse = |reason: u32| {
            let _ = transport::send(
                socket.as_fd(),
                &transport::encode(&[u64::from(reason)], transport::MSG_REFUSED),
                &[],
                true,
            );
        };
        if self.closed {
            return refuse(transport::REFUSED_CLOSED);
        }
        let Some(slot) = (0..self.conns.len() as u32)
            .find(|&c| self.conns[c as usize].is_none() && self.ctl.slot_state(c).load(Ordering::Acquire) == SLOT_FREE)
        else {
            return refuse(transport::REFUSED_FULL);
        };
        let want_sync = hello.first().is_some_and(|f| f & u64::from(transport::HELLO_WANT_SYNC_FILES) != 0);
        let want_properties = hello.first().is_some_and(|f| f & u64::from(transport::HELLO_WANT_PROPERTIES) != 0);
        self.ctl.reset_slot(slot, pid);
        self.ctl.slot_state(slot).store(SLOT_ACTIVE, Ordering::Release);
        let g = self.ctl.geometry();
        let ctl_len = self.ctl.len() as u64;
        let mut words = vec![
            u64::from(slot),
            u64::from(g.nbuf),
            u64::from(g.ring_cap),
            u64::from(g.max_consumers),
            u64::from(g.policy),
            g.buf_len,
            ctl_len,
        ];
        // The buffers' physical properties (all alike: allocated together),
        // so a non-coherent pool keeps its cache maintenance in consumers.
        if let (true, Some(m)) = (want_properties, self.maps.first()) {
            let p = m.buffer().properties();
            words.extend([
                p.contiguous_up_to,
                u64::from(p.cache == crate::buffer::CacheMode::Uncached),
                u64::from(p.coherency == crate::buffer::Coherency::NonCoherent),
            ]);
        }
        let mut fds = vec![self.ctl_fd.as_fd()];
        // Read-only reopens of memfds; dma-bufs as they are.
        fds.extend(
            self.maps.iter().zip(&self.shared).map(|(m, ro)| ro.as_ref().map_or(m.buffer().as_fd(), AsFd::as_fd)),
        );
        if transport::send(socket.as_fd(), &transport::encode(&words, transport::MSG_WELCOME), &fds, true).is_err() {
            self.ctl.slot_state(slot).store(SLOT_FREE, Ordering::Release);
            return;
        }
        tracing::debug!(slot, pid, "pool consumer attached");
        self.conns[slot as usize] = Some(Conn {
            socket,
            pidfd,
            pid,
            want_sync,
            evicted: false,
            queued: VecDeque::new(),
            received_at: vec![None; self.maps.len()],
            progress: 0,
            progress_ns: now_ns(),
        });
    }
}
