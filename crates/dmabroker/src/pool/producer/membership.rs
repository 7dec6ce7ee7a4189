//! Membership: the listening socket, attach handshakes and the periodic
//! maintenance that accepts consumers while frames flow.

use super::identity::{watch_consumer, PeerCred};
use super::{nanos, Conn, Pending, Producer};

use crate::closer::CloseLater;
use crate::pool::error::AttachError;
use crate::pool::layout::{SLOT_ACTIVE, SLOT_FREE};
use crate::pool::now_ns;
use crate::pool::transport::{self, PoolListener, HELLO_TIMEOUT_NS};
use rustix::io::Errno;
use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Producer {
    /// Accept consumers on a socket at `path`. Handshakes run only inside
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
    /// an empty path ([`InvalidPath`](crate::pool::ListenError::InvalidPath)), ...
    pub fn listen(&mut self, path: impl AsRef<Path>) -> Result<&Path, crate::pool::ListenError> {
        let listener = PoolListener::bind(path)?;
        Ok(self.listener.insert(listener).path())
    }

    /// Take a connected `SOCK_SEQPACKET` socket whose other end belongs to a
    /// consumer (from [`crate::pool::socket_pair`], a broker, ...). The handshake
    /// completes during the next [`Producer::acquire`],
    /// [`Producer::wait_for_consumers`] or [`Producer::maintain_now`]; after
    /// [`Producer::close`] the consumer is told "closed" at once.
    ///
    /// # Errors
    /// [`AttachError::Os`] when the socket cannot be made non-blocking.
    pub fn attach(&mut self, socket: OwnedFd) -> Result<(), AttachError> {
        rustix::io::ioctl_fionbio(&socket, true).map_err(|source| AttachError::Os { op: "FIONBIO", source })?;
        let refused = self.closed;
        if refused {
            transport::refuse_closed(socket.as_fd());
        }
        self.pending.push(Pending { socket: CloseLater::connection(socket), since: now_ns(), refused });
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

    /// Accept new consumers, finish handshakes, reap dead consumers, evict
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

    /// Accept new connections and answer those that said HELLO: attach
    /// them, or refuse them (full; closed, which is answered without
    /// waiting for the HELLO).
    pub(super) fn service_connections(&mut self, now: u64) {
        if let Some(listener) = &self.listener {
            while let Ok(Some(socket)) = listener.try_accept() {
                self.pending.push(Pending { socket: CloseLater::connection(socket), since: now, refused: false });
            }
        }
        for mut p in std::mem::take(&mut self.pending) {
            if self.closed && !p.refused {
                // Answered before its HELLO is even read: the consumer
                // finds the answer whenever it sent its HELLO.
                transport::refuse_closed(p.socket.as_fd());
                p.refused = true;
            }
            if p.refused {
                let (open, read_hello) = transport::drain(p.socket.as_fd());
                if open && !read_hello && now.saturating_sub(p.since) < HELLO_TIMEOUT_NS {
                    self.pending.push(p);
                }
                continue;
            }
            match transport::recv(p.socket.as_fd(), true) {
                Ok(Some((bytes, fds))) => {
                    // A HELLO carries no fd: whatever came along is closed
                    // off the frame path (its release may block).
                    crate::closer::close_all_later(fds);
                    match transport::decode(&bytes, Vec::new()) {
                        Ok(m) if m.kind == transport::MSG_HELLO => self.finish_attach(p.socket, &m.words),
                        // Not a pool consumer: hang up on it (off the frame path too).
                        _ => {}
                    }
                }
                Err(Errno::AGAIN) if now.saturating_sub(p.since) < HELLO_TIMEOUT_NS => self.pending.push(p),
                _ => {}
            }
        }
    }

    pub(super) fn finish_attach(&mut self, socket: CloseLater, hello: &[u64]) {
        let refuse = |reason: u32| {
            let _ = transport::send(
                socket.as_fd(),
                &transport::encode(&[reason as u64], transport::MSG_REFUSED),
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
        let hello_pid = hello.get(1).and_then(|&p| u32::try_from(p).ok()).filter(|&p| p != 0);
        let creds = rustix::net::sockopt::socket_peercred(&socket)
            .ok()
            .map(|c| PeerCred { pid: c.pid.as_raw_nonzero().get() as u32, uid: c.uid.as_raw() });
        // The pidfd catches a consumer that died while a forked child keeps
        // its socket open; the socket catches everything else.
        let (pid, pidfd) = watch_consumer(creds, hello_pid);
        self.ctl.reset_slot(slot, pid);
        self.ctl.slot_state(slot).store(SLOT_ACTIVE, Ordering::Release);
        let g = self.ctl.geometry();
        let ctl_len = self.ctl.len() as u64;
        let mut words = vec![
            slot as u64,
            g.nbuf as u64,
            g.ring_cap as u64,
            g.max_consumers as u64,
            g.policy as u64,
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
