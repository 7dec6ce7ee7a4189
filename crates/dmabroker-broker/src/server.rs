//! The event loop: one thread, one epoll set, non-blocking `SOCK_SEQPACKET`
//! connections. Each readable client gets at most [`BURST`] requests per
//! turn (fairness); a reply that cannot be sent at once is kept (one per
//! client) and the client is not read again until it is flushed, so a
//! client that stops reading costs one pending reply and is dropped after
//! [`STALL_LIMIT`]. Nothing a client sends can end the loop: every failure
//! ends that client's session only. Nor can the service manager block it:
//! notifications it cannot take yet are queued and sent when its socket
//! polls writable (see [`crate::notify`]).

use crate::peer;
use crate::service::{Handled, Reply, Service, Session};
use dmabroker::closer::{self, CloseLater};
use dmabroker::proto::{self, wire, ErrorCode};
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::io::Errno;
use rustix::net::SocketFlags;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

/// Requests handled per client per turn.
const BURST: usize = 16;
/// How long a reply may wait for a client that does not read.
const STALL_LIMIT: Duration = Duration::from_secs(10);
/// epoll tokens below this are the broker's own fds.
const LISTENER: u64 = 0;
const SHUTDOWN: u64 = 1;
/// The service manager's notify socket, watched for EPOLLOUT while
/// notifications are queued.
const NOTIFY: u64 = 2;
/// The service's eventfd: work done off the loop (large allocations).
const OFFLOAD: u64 = 3;
const FIRST_CLIENT: u64 = 16;
/// How often idle connections' pins are re-checked.
const PIN_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Connections accepted per turn of the loop.
const ACCEPT_BATCH: usize = 64;
/// How long a connection ended with an error reply (or refused with `Busy`)
/// is kept half-closed so that the client can read that reply (see
/// [`Server::retire`]).
const LINGER: Duration = Duration::from_millis(500);
/// Most connections kept lingering at once; beyond, they are closed at once
/// (after draining what they sent).
const MAX_LINGERING: usize = 256;
/// Datagrams drained from a lingering connection per event.
const DRAIN_BATCH: usize = 64;
/// How long a connection may stay without `Hello` (the default of
/// [`Server::handshake_timeout`]).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// When the table is full for a newcomer, a connection that sent nothing
/// for this long is closed to make room (the one idle longest, of the uid
/// with the most connections).
pub const IDLE_UNDER_PRESSURE: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Conn {
    /// Closed by a closer thread, as every fd a client sent: its receive
    /// queue may hold fds whose release blocks (see [`dmabroker::closer`]).
    socket: CloseLater,
    session: Session,
    pending: Option<(Vec<u8>, Option<OwnedFd>)>,
    pending_since: Option<Instant>,
    close_after_send: bool,
    /// When it was accepted (for the handshake timeout).
    accepted: Instant,
    /// When it last sent a request.
    last_active: Instant,
    /// Its request is being answered off the loop (see
    /// [`Service::submit`]): it is not read until that reply is sent, so
    /// its replies keep their order.
    deferred: bool,
}

/// A connection ended by the broker after its last reply: write side shut
/// down, still read (and discarded) until the client hangs up or
/// [`LINGER`] passes.
#[derive(Debug)]
struct Lingering {
    socket: CloseLater,
    until: Instant,
}

/// Why the loop stopped with an error (never because of a client).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// epoll itself failed.
    #[error("epoll: {0}")]
    Epoll(Errno),
}

/// The loop's state.
#[derive(Debug)]
pub struct Server {
    epoll: OwnedFd,
    listener: OwnedFd,
    shutdown: OwnedFd,
    conns: HashMap<u64, Conn>,
    /// Connections ended after an error reply, until the client has read it.
    lingering: HashMap<u64, Lingering>,
    /// Connections per uid: one user must not take every slot.
    per_uid: HashMap<u32, usize>,
    next_token: u64,
    max_clients: usize,
    max_clients_per_uid: usize,
    /// The per-user cap as configured: root and the broker's uid get it.
    max_clients_per_privileged_uid: usize,
    accept_paused_until: Option<Instant>,
    next_pin_check: Instant,
    /// The notify socket is registered for EPOLLOUT.
    notify_out: bool,
    /// A connection that has not sent `Hello` within this is closed.
    pub handshake_timeout: Duration,
    /// Slots only root and the broker's own uid may take: no number of
    /// other users' connections locks them out.
    reserved: usize,
    buf: Vec<u8>,
    /// The operations.
    pub service: Service,
}

impl Server {
    /// Watch `listener` (a listening SEQPACKET socket) and `shutdown` (any fd
    /// that becomes readable when the broker should stop). At most
    /// `max_clients` connections, `max_clients_per_uid` of them per user.
    ///
    /// # Errors
    /// epoll setup failures.
    pub fn new(
        listener: OwnedFd,
        shutdown: OwnedFd,
        service: Service,
        max_clients: usize,
        max_clients_per_uid: usize,
    ) -> Result<Self, RunError> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(RunError::Epoll)?;
        rustix::io::ioctl_fionbio(&listener, true).map_err(RunError::Epoll)?;
        epoll::add(&epoll, &listener, EventData::new_u64(LISTENER), EventFlags::IN).map_err(RunError::Epoll)?;
        epoll::add(&epoll, &shutdown, EventData::new_u64(SHUTDOWN), EventFlags::IN).map_err(RunError::Epoll)?;
        if let Some(n) = service.notifier.as_ref().filter(|n| n.pollable()) {
            // No events until something is queued (EPOLLOUT is level-triggered).
            epoll::add(&epoll, n.socket(), EventData::new_u64(NOTIFY), EventFlags::empty()).map_err(RunError::Epoll)?;
        }
        if let Some(fd) = service.offload.wake_fd() {
            epoll::add(&epoll, fd, EventData::new_u64(OFFLOAD), EventFlags::IN).map_err(RunError::Epoll)?;
        }
        Ok(Self {
            epoll,
            listener,
            shutdown,
            conns: HashMap::new(),
            lingering: HashMap::new(),
            per_uid: HashMap::new(),
            next_token: FIRST_CLIENT,
            max_clients,
            // Per-user caps that cannot add up to the table: at least four
            // users are needed to fill what is not reserved.
            max_clients_per_uid: max_clients_per_uid.min((max_clients - reserved(max_clients)) / 4).max(1),
            max_clients_per_privileged_uid: max_clients_per_uid,
            reserved: reserved(max_clients),
            handshake_timeout: HANDSHAKE_TIMEOUT,
            accept_paused_until: None,
            next_pin_check: Instant::now(),
            notify_out: false,
            buf: vec![0; proto::MAX_REQUEST_LEN],
            service,
        })
    }

    /// Serve until `shutdown` becomes readable.
    ///
    /// # Errors
    /// Only if epoll itself fails.
    pub fn run(&mut self) -> Result<(), RunError> {
        let mut events = Vec::with_capacity(256);
        loop {
            let now = Instant::now();
            let mut deadline = self.service.next_deadline();
            if let Some(t) = self.accept_paused_until {
                deadline = deadline.min(t);
            }
            if let Some(t) = self.conns.values().filter_map(|c| c.pending_since).min() {
                deadline = deadline.min(t + STALL_LIMIT);
            }
            if let Some(t) = self.lingering.values().map(|l| l.until).min() {
                deadline = deadline.min(t);
            }
            if let Some(t) = self.conns.values().filter(|c| c.session.version.is_none()).map(|c| c.accepted).min() {
                deadline = deadline.min(t + self.handshake_timeout);
            }
            let wait = deadline.saturating_duration_since(now);
            let timeout =
                rustix::time::Timespec { tv_sec: wait.as_secs() as i64, tv_nsec: i64::from(wait.subsec_nanos()) };
            events.clear();
            match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut events), Some(&timeout)) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(RunError::Epoll(e)),
            }
            for event in events.iter().copied() {
                let (token, flags) = (event.data.u64(), event.flags);
                match token {
                    LISTENER => self.accept_all(),
                    SHUTDOWN => {
                        tracing::info!("shutting down: {} client(s) disconnected", self.conns.len());
                        for (_, conn) in self.conns.drain() {
                            self.service.session_closed(conn.session);
                        }
                        self.lingering.clear();
                        let _ = self.shutdown.as_fd();
                        return Ok(());
                    }
                    NOTIFY => {
                        if let Some(n) = &mut self.service.notifier {
                            if flags.contains(EventFlags::ERR) {
                                // Clear it (EPOLLERR is reported even unasked).
                                let _ = rustix::net::sockopt::socket_error(n.socket());
                            }
                            n.flush();
                        }
                    }
                    // Answered below, after the events.
                    OFFLOAD => {}
                    token if self.lingering.contains_key(&token) => self.lingering_event(token, flags),
                    token => self.client_event(token, flags),
                }
            }
            self.housekeeping();
        }
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
            let _ = epoll::modify(&self.epoll, &self.listener, EventData::new_u64(LISTENER), EventFlags::IN);
        }
        let stalled: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.pending_since.is_some_and(|t| now >= t + STALL_LIMIT))
            .map(|(t, _)| *t)
            .collect();
        for token in stalled {
            tracing::info!("dropping a client that stopped reading replies");
            self.close(token);
        }
        let silent: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.session.version.is_none() && now >= c.accepted + self.handshake_timeout)
            .map(|(t, _)| *t)
            .collect();
        for token in silent {
            tracing::debug!("closing a connection that sent no Hello");
            let message = format!(
                "no Hello within {} ms of connecting: a session opens with Hello (docs/PROTOCOL.md)",
                self.handshake_timeout.as_millis()
            );
            self.send(token, Reply::error(ErrorCode::BadRequest, message, true));
        }
        let expired: Vec<u64> = self.lingering.iter().filter(|(_, l)| now >= l.until).map(|(t, _)| *t).collect();
        for token in expired {
            self.end_lingering(token);
        }
        if now >= self.next_pin_check {
            // Idle clients that were handed memfds: unpin once received.
            for conn in self.conns.values_mut().filter(|c| c.session.has_pins()) {
                unpin_if_received(&mut self.service, conn);
            }
            self.next_pin_check = now + PIN_CHECK_INTERVAL;
        }
        self.service.clients = self.conns.len() as u64;
        self.service.tick();
        self.resume_deferred();
        self.watch_notify();
    }

    /// Send the replies of requests answered off the loop, and read those
    /// connections again.
    fn resume_deferred(&mut self) {
        for token in self.service.finished() {
            let Some(conn) = self.conns.get_mut(&token) else {
                self.service.abandon(token);
                continue;
            };
            match self.service.resume(token, &mut conn.session) {
                Handled::Later => {}
                Handled::Now(reply) => {
                    conn.deferred = false;
                    let _ = epoll::modify(
                        &self.epoll,
                        &conn.socket,
                        EventData::new_u64(token),
                        EventFlags::IN | EventFlags::RDHUP,
                    );
                    self.send(token, reply);
                }
            }
        }
    }

    /// Watch the notify socket for EPOLLOUT exactly while notifications are
    /// queued.
    fn watch_notify(&mut self) {
        let Some(n) = self.service.notifier.as_ref().filter(|n| n.pollable()) else { return };
        let want = n.pending() > 0;
        if want != self.notify_out {
            let flags = if want { EventFlags::OUT } else { EventFlags::empty() };
            if epoll::modify(&self.epoll, n.socket(), EventData::new_u64(NOTIFY), flags).is_ok() {
                self.notify_out = want;
            }
        }
    }

    /// Accept what is pending, at most [`ACCEPT_BATCH`] per turn: the
    /// hang-ups of clients that already left are handled in between, so
    /// that dead connections do not fill the client slots during a flood.
    fn accept_all(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            match rustix::net::accept_with(&self.listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
                Ok(socket) => self.admit(socket),
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR | Errno::CONNABORTED) => continue,
                Err(e) => {
                    // EMFILE/ENFILE/ENOMEM: the pending connection stays
                    // queued; stop polling the listener for a moment instead
                    // of spinning on it.
                    tracing::warn!("accept: {e}; pausing new connections for 100 ms");
                    self.accept_paused_until = Some(Instant::now() + Duration::from_millis(100));
                    let _ =
                        epoll::modify(&self.epoll, &self.listener, EventData::new_u64(LISTENER), EventFlags::empty());
                    return;
                }
            }
        }
    }

    fn admit(&mut self, socket: OwnedFd) {
        let socket = CloseLater::connection(socket);
        let peer = match peer::identify(&socket) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("cannot identify a peer: {e}");
                return;
            }
        };
        // Root and the broker's own uid may use the reserved slots.
        let privileged = peer.uid == 0 || peer.uid == rustix::process::geteuid().as_raw();
        let limit = if privileged { self.max_clients } else { self.max_clients - self.reserved };
        if self.conns.len() >= limit {
            self.close_one_idle(Instant::now());
        }
        if self.conns.len() >= limit {
            refuse(&socket, format!("the broker serves {} clients, its maximum: retry later", self.conns.len()));
            self.retire(socket);
            return;
        }
        let mine = self.per_uid.get(&peer.uid).copied().unwrap_or(0);
        let cap = if privileged { self.max_clients_per_privileged_uid } else { self.max_clients_per_uid };
        if mine >= cap {
            refuse(
                &socket,
                format!("uid {} has {mine} connections to the broker, the maximum per user: close some", peer.uid),
            );
            self.retire(socket);
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        if epoll::add(&self.epoll, &socket, EventData::new_u64(token), EventFlags::IN | EventFlags::RDHUP).is_err() {
            return;
        }
        tracing::debug!(uid = peer.uid, pid = peer.pid, "client connected");
        *self.per_uid.entry(peer.uid).or_default() += 1;
        let session = Session::new(peer, &self.service.policy);
        let now = Instant::now();
        self.conns.insert(
            token,
            Conn {
                socket,
                session,
                pending: None,
                pending_since: None,
                close_after_send: false,
                accepted: now,
                last_active: now,
                deferred: false,
            },
        );
        self.service.clients = self.conns.len() as u64;
    }

    fn client_event(&mut self, token: u64, flags: EventFlags) {
        if !self.conns.contains_key(&token) {
            return;
        }
        if flags.contains(EventFlags::OUT) && !self.flush(token) {
            return;
        }
        if flags.intersects(EventFlags::IN) {
            for _ in 0..BURST {
                if !self.read_one(token) {
                    return;
                }
            }
        } else if flags.intersects(EventFlags::HUP | EventFlags::ERR | EventFlags::RDHUP) {
            self.close(token);
        }
    }

    /// Read and answer one request. False when the client must not be read
    /// again this turn (nothing queued, a reply pending, or it is gone).
    fn read_one(&mut self, token: u64) -> bool {
        let Some(conn) = self.conns.get_mut(&token) else { return false };
        if conn.pending.is_some() || conn.deferred {
            return false;
        }
        conn.last_active = Instant::now();
        let mut received = match wire::recv(conn.socket.as_fd(), &mut self.buf, true) {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.close(token);
                return false;
            }
            Err(Errno::AGAIN) => return false,
            Err(e) => {
                tracing::debug!("recv: {e}");
                self.close(token);
                return false;
            }
        };
        let reply = if received.len == 0 && received.fds.is_empty() && !received.truncated {
            Reply::error(
                ErrorCode::BadRequest,
                "empty datagram: every request is one postcard-encoded Request (docs/PROTOCOL.md)",
                true,
            )
        } else if received.truncated {
            Reply::error(ErrorCode::BadRequest, format!("request longer than {} bytes", proto::MAX_REQUEST_LEN), true)
        } else if received.control_truncated || received.fds.len() > proto::MAX_FDS_PER_MESSAGE {
            Reply::error(ErrorCode::BadRequest, format!("at most {} fd per message", proto::MAX_FDS_PER_MESSAGE), true)
        } else {
            match proto::decode_request(&self.buf[..received.len]) {
                Err(e) => Reply::error(ErrorCode::BadRequest, e.to_string(), true),
                Ok(request) if request.carries_fd() != (received.fds.len() == 1) => Reply::error(
                    ErrorCode::BadRequest,
                    if request.carries_fd() { "this request needs exactly one fd" } else { "this request takes no fd" },
                    true,
                ),
                Ok(request) => {
                    // A client that sends again has usually read every reply.
                    unpin_if_received(&mut self.service, conn);
                    // Unexpected fds were refused above; the expected one is
                    // handed over (the service closes it off the loop unless
                    // it keeps it).
                    let fd = received.fds.pop();
                    match self.service.submit(token, &mut conn.session, request, fd) {
                        Handled::Now(reply) => reply,
                        Handled::Later => {
                            // Not read again (nor woken by its next request)
                            // until the reply is sent; a hang-up still ends it.
                            conn.deferred = true;
                            let _ =
                                epoll::modify(&self.epoll, &conn.socket, EventData::new_u64(token), EventFlags::RDHUP);
                            closer::close_all_later(received.fds);
                            return false;
                        }
                    }
                }
            }
        };
        // Whatever the request did not take: never closed on the loop (a
        // lingering socket's or a FUSE file's release would freeze it).
        closer::close_all_later(received.fds);
        self.send(token, reply)
    }

    /// Send a reply, or keep it until the client reads. False when the
    /// client must not be read again this turn.
    fn send(&mut self, token: u64, reply: Reply) -> bool {
        let Some(conn) = self.conns.get_mut(&token) else { return false };
        let bytes = match proto::encode_response(&reply.response) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("cannot encode a reply: {e}");
                let fallback = Reply::error(ErrorCode::Internal, "reply too large", false);
                proto::encode_response(&fallback.response).unwrap_or_default()
            }
        };
        conn.close_after_send = reply.close;
        match wire::send(conn.socket.as_fd(), &bytes, reply.fd.as_ref().map(AsFd::as_fd), true) {
            Ok(()) if reply.close => {
                self.close_after_reply(token);
                false
            }
            Ok(()) => true,
            Err(Errno::AGAIN) => {
                conn.pending = Some((bytes, reply.fd));
                conn.pending_since = Some(Instant::now());
                let _ = epoll::modify(
                    &self.epoll,
                    &conn.socket,
                    EventData::new_u64(token),
                    EventFlags::OUT | EventFlags::RDHUP,
                );
                false
            }
            Err(e) => {
                tracing::debug!("send: {e}");
                self.close(token);
                false
            }
        }
    }

    /// Retry a pending reply. False when the client is gone or still full.
    fn flush(&mut self, token: u64) -> bool {
        let Some(conn) = self.conns.get_mut(&token) else { return false };
        let Some((bytes, fd)) = &conn.pending else { return true };
        match wire::send(conn.socket.as_fd(), bytes, fd.as_ref().map(AsFd::as_fd), true) {
            Ok(()) => {
                conn.pending = None;
                conn.pending_since = None;
                if conn.close_after_send {
                    self.close_after_reply(token);
                    return false;
                }
                let _ = epoll::modify(
                    &self.epoll,
                    &conn.socket,
                    EventData::new_u64(token),
                    EventFlags::IN | EventFlags::RDHUP,
                );
                true
            }
            Err(Errno::AGAIN) => false,
            Err(_) => {
                self.close(token);
                false
            }
        }
    }

    fn close(&mut self, token: u64) {
        drop(self.end_session(token));
    }

    /// End a session whose last reply (an error that ends it) was sent:
    /// the client must still be able to read that reply (see [`Self::retire`]).
    fn close_after_reply(&mut self, token: u64) {
        if let Some(socket) = self.end_session(token) {
            self.retire(socket);
        }
    }

    /// Keep a connection the broker has ended half-open for a moment.
    /// Closing a Unix socket whose receive queue holds unread requests makes
    /// the kernel report `ECONNRESET` to the peer, ahead of the reply already
    /// queued for it: a client that sent its request before reading (a raw
    /// client sending `Hello` at once, refused with `Busy`) would see the
    /// reset, not the reason. So: shut the write side down (the client reads
    /// the reply, then end of stream), discard what it sent, and close when it
    /// hangs up or after [`LINGER`], draining once more; at most
    /// [`MAX_LINGERING`] such connections, beyond which they are drained and
    /// closed at once.
    fn retire(&mut self, socket: CloseLater) {
        let _ = rustix::net::shutdown(&socket, rustix::net::Shutdown::Write);
        if drain(&socket, &mut self.buf) || self.lingering.len() >= MAX_LINGERING {
            return; // hung up already, or too many lingering: closed now
        }
        let token = self.next_token;
        self.next_token += 1;
        if epoll::add(&self.epoll, &socket, EventData::new_u64(token), EventFlags::IN | EventFlags::RDHUP).is_ok() {
            self.lingering.insert(token, Lingering { socket, until: Instant::now() + LINGER });
        }
    }

    fn lingering_event(&mut self, token: u64, flags: EventFlags) {
        let Some(l) = self.lingering.get(&token) else { return };
        let gone = drain(&l.socket, &mut self.buf);
        if gone || flags.intersects(EventFlags::HUP | EventFlags::ERR) {
            self.end_lingering(token);
        }
    }

    fn end_lingering(&mut self, token: u64) {
        if let Some(l) = self.lingering.remove(&token) {
            let _ = epoll::delete(&self.epoll, &l.socket);
            drain(&l.socket, &mut self.buf);
        }
    }

    /// Forget a session and return its socket (not yet closed).
    fn end_session(&mut self, token: u64) -> Option<CloseLater> {
        let conn = self.conns.remove(&token)?;
        let _ = epoll::delete(&self.epoll, &conn.socket);
        if conn.deferred {
            self.service.abandon(token);
        }
        let uid = conn.session.peer.uid;
        if let Some(n) = self.per_uid.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.per_uid.remove(&uid);
            }
        }
        tracing::debug!(uid, "client disconnected");
        self.service.session_closed(conn.session);
        self.service.clients = self.conns.len() as u64;
        Some(conn.socket)
    }

    /// The table is full for a newcomer: close the connection idle longest
    /// (at least [`IDLE_UNDER_PRESSURE`], no reply pending) of the uid with
    /// the most connections, telling it why. Whether one was closed.
    fn close_one_idle(&mut self, now: Instant) -> bool {
        let Some(&top_uid) = self.per_uid.iter().max_by_key(|(_, n)| **n).map(|(u, _)| u) else { return false };
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| c.session.peer.uid == top_uid && c.pending.is_none() && !c.deferred)
            .filter(|(_, c)| now.saturating_duration_since(c.last_active) >= IDLE_UNDER_PRESSURE)
            .min_by_key(|(_, c)| c.last_active)
            .map(|(t, _)| *t);
        let Some(token) = victim else { return false };
        tracing::info!(uid = top_uid, "closing an idle connection: the client table is full");
        let message = format!(
            "closed after {} s idle: the broker's client table is full; reconnect when needed",
            IDLE_UNDER_PRESSURE.as_secs()
        );
        self.send(token, Reply::error(ErrorCode::Busy, message, true));
        true
    }

    /// Connected clients.
    pub fn clients(&self) -> usize {
        self.conns.len()
    }
}

/// Slots kept for root and the broker's own uid out of `max_clients`.
fn reserved(max_clients: usize) -> usize {
    (max_clients / 32).clamp(1, 64).min(max_clients.saturating_sub(1))
}

/// Tell a connection that is not admitted why (`Busy`), without blocking;
/// the caller then retires it ([`Server::retire`]).
fn refuse(socket: &impl AsFd, message: String) {
    let reply = Reply::error(ErrorCode::Busy, message, true);
    if let Ok(bytes) = proto::encode_response(&reply.response) {
        let _ = wire::send(socket.as_fd(), &bytes, None, true);
    }
}

/// Read and discard what a connection the broker has ended still sent (fds
/// that came along are closed), at most [`DRAIN_BATCH`] datagrams. True when
/// the peer is gone (end of stream or an error).
fn drain(socket: &impl AsFd, buf: &mut [u8]) -> bool {
    for _ in 0..DRAIN_BATCH {
        match wire::recv(socket.as_fd(), buf, true) {
            Ok(Some(r)) => closer::close_all_later(r.fds),
            Err(Errno::AGAIN) => return false,
            Ok(None) | Err(_) => return true,
        }
    }
    false
}

/// Unpin a connection's memfds when `SIOCOUTQ` says the client has received
/// every reply sent to it (and so every fd they carried).
fn unpin_if_received(service: &mut Service, conn: &mut Conn) {
    if conn.session.has_pins()
        && conn.pending.is_none()
        && dmabroker_sys::socket::unreceived_bytes(&conn.socket) == Ok(0)
    {
        service.unpin_all(&mut conn.session);
    }
}

#[cfg(test)]
mod tests {
    use crate::{Broker, Config, Listener};
    use dmabroker::client::Client;
    use std::io::Write;
    use std::time::{Duration, Instant};

    #[test]
    fn one_user_cannot_take_every_slot() {
        let dir = std::env::temp_dir().join(format!("dmabroker-server-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("broker.sock");
        let mut config = Config::new(Listener::Path(path.clone()));
        config.notify = false;
        config.max_clients_per_uid = 2;
        let (mut stop, stop_rx) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut broker = Broker::start(config, Vec::new(), stop_rx.into()).unwrap();
        let thread = std::thread::spawn(move || broker.run().unwrap());
        let a = Client::connect(&path).unwrap();
        let _b = Client::connect(&path).unwrap();
        let e = Client::connect(&path).unwrap_err();
        assert!(e.to_string().contains("maximum per user"), "{e}");
        drop(a);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Client::connect(&path).is_err() {
            assert!(Instant::now() < deadline, "a freed slot was not reused");
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.write_all(b"x").unwrap();
        thread.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
