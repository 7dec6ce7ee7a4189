//! The operations (allocate, publish, import, unpublish, list, stats) on the
//! registry, under the policy; the sweep that ends charges; timers.

use crate::holders;
use crate::notify::Notifier;
use crate::peer::Peer;
use crate::policy::cgroup::CgroupAccess;
use crate::policy::{Limits, Policy};
use crate::refusal::{AllocateRefusal, Code};
use crate::registry::Registry;
use dmabroker::heap::Heaps;
use dmabroker::proto::{self, ErrorCode, Request, Response, Stats};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

mod allocation;
mod deferred;
mod publication;
mod timers;
pub use deferred::Handled;

/// Most publications one buffer may have.
const MAX_PUBLICATIONS_PER_BUFFER: u32 = 16;
/// Entries in one `List` reply: an entry encodes to at most ~290 bytes
/// (two 128-byte strings and some varints), so 200 fit 64 KiB.
const MAX_LIST_ENTRIES: usize = 200;
/// How long a change waits before the state memfd is rewritten: batches the
/// rewrites (each is O(publications)) of a burst of publications.
const STATE_SAVE_DELAY: Duration = Duration::from_millis(50);
/// How often queued notifications are retried when the notify socket's
/// EPOLLOUT does not come (see [`crate::notify`]).
const NOTIFY_RETRY: Duration = Duration::from_millis(50);
/// How often a background scan's answer is looked for.
const SCAN_POLL: Duration = Duration::from_millis(10);
/// Scan time that quota refusals may spend at once on sweeps (a burst);
/// beyond it they get `duty_factor`-th of the time: a client at its quota
/// that keeps asking must not keep the broker scanning `/proc`.
const PRESSURE_BURST: Duration = Duration::from_millis(200);

/// One client's session state.
#[derive(Debug)]
pub struct Session {
    /// Who.
    pub peer: Peer,
    /// What the policy allows it.
    pub limits: Limits,
    /// The negotiated version, once `Hello` was exchanged.
    pub version: Option<u16>,
    /// memfds handed out on this connection whose reply may not have been
    /// received yet (unpinned once it has been, or when it closes).
    pins: Vec<u64>,
    /// The client's cgroup, read at connect through its pidfd (`Err`: why
    /// it is not known).
    pub cgroup: Result<String, String>,
    /// What the `[[cgroup]]` rules make of it.
    pub cgroup_access: CgroupAccess,
    /// The cgroup as the registry records it on each buffer (shared, so
    /// that an allocation copies no path).
    pub(crate) cgroup_key: Option<std::sync::Arc<str>>,
}

impl Session {
    /// A session for `peer` under `policy`; reads the client's cgroup
    /// (`/proc/PID/cgroup`, checked against its pidfd; nothing is read
    /// without a pidfd).
    pub fn new(peer: Peer, policy: &Policy) -> Self {
        let limits = policy.limits(peer.uid, &peer.groups);
        let cgroup = crate::charge::cgroup::of_process(peer.pid, peer.pidfd.as_ref());
        let cgroup_access = policy.cgroup_access(&cgroup);
        if let Some(why) = cgroup_access.refused() {
            tracing::info!(uid = peer.uid, pid = peer.pid, "cgroup unknown ({why}): only importing is allowed");
        }
        let cgroup_key = cgroup.as_deref().ok().map(Into::into);
        Self { peer, limits, version: None, pins: Vec::new(), cgroup, cgroup_access, cgroup_key }
    }

    /// The client's cgroup, when known.
    pub fn cgroup_path(&self) -> Option<&str> {
        self.cgroup.as_deref().ok()
    }

    /// The negotiated version (0 before `Hello`).
    pub fn version(&self) -> u16 {
        self.version.unwrap_or(0)
    }

    /// Whether memfds handed out on this connection are still pinned.
    pub fn has_pins(&self) -> bool {
        !self.pins.is_empty()
    }
}

/// What to send back.
#[derive(Debug)]
pub struct Reply {
    /// The response.
    pub response: Response,
    /// The fd that goes with it.
    pub fd: Option<OwnedFd>,
    /// End the session once it is sent.
    pub close: bool,
}

impl Reply {
    fn ok(response: Response) -> Self {
        Self { response, fd: None, close: false }
    }

    /// An error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>, close: bool) -> Self {
        let mut message: String = message.into();
        // The chooser's explanation lists every heap: it gets more room.
        let max = if code == ErrorCode::NoSuitableHeap { proto::MAX_EXPLANATION_LEN } else { proto::MAX_TEXT_LEN };
        if message.len() > max {
            let mut cut = max;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Self { response: Response::Error { code, message }, fd: None, close }
    }

    fn refused<E: Code + std::fmt::Display>(e: E) -> Self {
        Self::error(e.code(), e.to_string(), false)
    }
}

/// Sweep timing: how often charges are re-checked without a trigger, and
/// how soon after one.
#[derive(Debug, Clone, Copy)]
pub struct SweepTiming {
    /// Period of the background sweep.
    pub interval: Duration,
    /// A sweep never starts sooner than this many times the last one's
    /// duration after it: bounds the time spent scanning `/proc` to ~1/N.
    pub duty_factor: u32,
}

impl Default for SweepTiming {
    fn default() -> Self {
        Self { interval: Duration::from_secs(2), duty_factor: 10 }
    }
}

/// The broker's state and operations (no I/O but the heaps, `/proc` and the
/// service manager).
#[derive(Debug)]
pub struct Service {
    pub(crate) policy: Policy,
    heaps: std::sync::Arc<Heaps>,
    pub(crate) registry: Registry,
    pub(crate) notifier: Option<Notifier>,
    pub(crate) state_dirty: bool,
    timing: SweepTiming,
    last_sweep_end: Instant,
    last_sweep_cost: Duration,
    sweep_requested: bool,
    next_expiry_check: Instant,
    /// Connected clients (kept by the server).
    pub clients: u64,
    /// Count this process's own fds and mappings as holders (clients inside it).
    pub scan_own_process: bool,
    /// Buffers held beyond which a sweep runs at once: each is an fd, and
    /// running out of fds would refuse every client.
    fd_pressure: usize,
    /// Buffers held after the last sweep: a pressure sweep runs only when
    /// that grew (published buffers cannot be released, so re-sweeping the
    /// same set would only burn CPU).
    len_after_sweep: usize,
    /// When the saved state became stale (saves are debounced).
    state_dirty_since: Option<Instant>,
    /// Mount ids of the kernel's internal memfd mounts (shmem, hugetlbfs).
    memfd_mounts: Vec<u64>,
    /// Scan time (seconds) quota-pressure sweeps may still spend; negative
    /// after a sweep that overdrew it (see [`PRESSURE_BURST`]).
    pressure_credit: f64,
    pressure_refilled_at: Instant,
    /// Pools by name (protocol version 3).
    pub(crate) pools: crate::pools::Pools,
    /// dma-heap allocations charged to the client's cgroup.
    pub(crate) charging: crate::charge::Charging,
    /// The timer sweep's `/proc` scan, running on a thread (finding 2).
    scan_in_flight: Option<ScanInFlight>,
    /// Sweeps started and finished (a parked request waits for one that
    /// started after it was parked).
    scans_started: u64,
    scans_finished: u64,
    /// Large allocations' thread (finding 2).
    pub(crate) offload: crate::offload::Offload,
    /// Requests answered off the loop, by connection token.
    deferred: std::collections::HashMap<u64, deferred::Deferred>,
    /// The connection of the request being handled, when it may be
    /// deferred ([`Service::submit`]; `None` in [`Service::handle`]).
    token: Option<u64>,
    /// Set while handling: defer this request.
    deferral: Option<deferred::Deferral>,
    /// A deferred request is being answered: quota pressure refuses, never parks again.
    resuming: bool,
}

/// A `/proc` scan running off the event loop: requests are served while it
/// reads other processes' tables, and its answer is applied only to
/// candidates still unpublished, unpinned and not handed out since.
#[derive(Debug)]
struct ScanInFlight {
    result: std::sync::mpsc::Receiver<holders::Scan>,
    /// Candidate ids and their hand-out count when the scan started.
    candidates: Vec<(u64, u64)>,
    started: Instant,
}

impl Service {
    /// A service with this policy and heaps.
    pub fn new(policy: Policy, heaps: Heaps, notifier: Option<Notifier>, timing: SweepTiming) -> Self {
        let now = Instant::now();
        let heaps = std::sync::Arc::new(heaps);
        Self {
            policy,
            offload: crate::offload::Offload::new(heaps.clone()),
            heaps,
            registry: Registry::new(),
            notifier,
            state_dirty: false,
            timing,
            last_sweep_end: now,
            last_sweep_cost: Duration::ZERO,
            sweep_requested: false,
            next_expiry_check: now,
            clients: 0,
            scan_own_process: false,
            fd_pressure: {
                let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(1 << 20);
                usize::try_from(limit / 4 * 3).unwrap_or(usize::MAX).max(64)
            },
            len_after_sweep: 0,
            state_dirty_since: None,
            memfd_mounts: holders::memfd_mounts().keys().copied().collect(),
            pressure_credit: PRESSURE_BURST.as_secs_f64(),
            pressure_refilled_at: now,
            pools: crate::pools::Pools::new(),
            charging: crate::charge::Charging::disabled(),
            scan_in_flight: None,
            scans_started: 0,
            scans_finished: 0,
            deferred: std::collections::HashMap::new(),
            token: None,
            deferral: None,
            resuming: false,
        }
    }

    /// The registry (for tests and reports).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Handle one decoded request (fd: the one that came with it, if any),
    /// all on the caller's thread (the server uses [`Service::submit`],
    /// which may answer later).
    pub fn handle(&mut self, session: &mut Session, request: Request, fd: Option<OwnedFd>) -> Reply {
        match (&session.version, request) {
            (None, Request::Hello { min_version, max_version }) => {
                let version = max_version.min(proto::PROTOCOL_VERSION);
                if version < min_version.max(proto::MIN_PROTOCOL_VERSION) {
                    return Reply::error(
                        ErrorCode::UnsupportedVersion,
                        format!(
                            "client speaks {min_version}..={max_version}, broker {}..={}: upgrade the older side",
                            proto::MIN_PROTOCOL_VERSION,
                            proto::PROTOCOL_VERSION
                        ),
                        true,
                    );
                }
                session.version = Some(version);
                // Its cgroup's worker, if it needs one, starts now rather
                // than on its first allocation.
                if session.cgroup_access.refused().is_none() {
                    self.charging.prepare(&session.cgroup);
                }
                Reply::ok(Response::Hello { version, server: format!("dmabroker {}", env!("CARGO_PKG_VERSION")) })
            }
            (None, _) => Reply::error(ErrorCode::BadRequest, "the session must open with Hello", true),
            (Some(_), Request::Hello { .. }) => Reply::error(ErrorCode::BadRequest, "Hello sent twice", true),
            (Some(_), Request::Allocate(a)) => {
                self.allocate(session, a).map_err(AllocateRefusal::at_fd_limit).unwrap_or_else(Reply::refused)
            }
            (Some(_), Request::Publish(p)) => self.publish(session, p, fd).unwrap_or_else(Reply::refused),
            (Some(_), Request::Import { key }) => self.import(session, &key).unwrap_or_else(Reply::refused),
            (Some(_), Request::Unpublish { key }) => self.unpublish(session, &key).unwrap_or_else(Reply::refused),
            (Some(_), Request::List) => self.list(session),
            (Some(_), Request::Stats) => self.stats(session),
            (Some(v), Request::AllocateFor(_)) if *v < proto::ALLOCATE_FOR_VERSION => Reply::error(
                ErrorCode::BadRequest,
                format!(
                    "AllocateFor needs protocol version {}; this session negotiated version {v}",
                    proto::ALLOCATE_FOR_VERSION
                ),
                true,
            ),
            (Some(_), Request::AllocateFor(a)) => self.allocate_for(session, a).unwrap_or_else(Reply::refused),
            (Some(v), r @ (Request::RegisterPool(_) | Request::AttachPool { .. })) => {
                crate::pools::handle(self, session, *v, r, fd)
            }
        }
    }

    fn stats(&self, session: &Session) -> Reply {
        let u = self.registry.usage(session.peer.uid);
        let t = self.registry.totals();
        let stats = Stats {
            uid: session.peer.uid,
            used_bytes: u.bytes,
            used_buffers: u.buffers,
            max_bytes: session.limits.max_bytes,
            max_buffers: session.limits.max_buffers,
            heaps: session.limits.heaps.clone(),
            may_publish: session.limits.publish,
            total_buffers: t.buffers,
            total_bytes: t.bytes,
            publications: self.registry.publication_count() as u64,
            clients: self.clients,
        };
        if session.version() < proto::CGROUP_STATS_VERSION {
            return Reply::ok(Response::Stats(stats));
        }
        Reply::ok(Response::StatsWithCgroup { stats, cgroup: self.cgroup_stats(session) })
    }

    /// The client's cgroup, what is charged to it, and each matching rule's
    /// quota and use (texts cut to the protocol's bounds).
    fn cgroup_stats(&self, session: &Session) -> proto::CgroupStats {
        use proto::cgroup::{for_wire, MAX_CGROUP_RULES, MAX_RULE_HEAPS};
        let cut = |s: &str| for_wire(s, proto::MAX_TEXT_LEN);
        let (path, unknown) = match &session.cgroup {
            Ok(p) => (Some(cut(p)), None),
            Err(why) => (None, Some(cut(why))),
        };
        let own = session.cgroup_path().map(|p| self.registry.cgroup_usage(p, false)).unwrap_or_default();
        let rules = session
            .cgroup_access
            .rules()
            .iter()
            .take(MAX_CGROUP_RULES)
            .map(|m| {
                let used = self.registry.cgroup_usage(&m.unit, m.rule.pattern.is_subtree());
                proto::CgroupRuleStats {
                    rule: cut(m.rule.pattern.as_str()),
                    line: u32::try_from(m.rule.line).unwrap_or(u32::MAX),
                    unit: cut(&m.unit),
                    used_bytes: used.bytes,
                    used_buffers: used.buffers,
                    max_bytes: m.rule.max_bytes,
                    max_buffers: m.rule.max_buffers,
                    heaps: m
                        .rule
                        .heaps
                        .as_ref()
                        .map(|h| h.iter().take(MAX_RULE_HEAPS).map(|h| for_wire(h, proto::MAX_NAME_LEN)).collect()),
                    publish: m.rule.publish,
                }
            })
            .collect();
        proto::CgroupStats {
            path,
            unknown,
            refused: session.cgroup_access.refused().is_some(),
            used_bytes: own.bytes,
            used_buffers: own.buffers,
            rules,
        }
    }

    /// Unpin what a connection was handed, once the caller has established
    /// that every reply sent on it has been received (`SIOCOUTQ` = 0): its
    /// fds then sit in the client's fd table, where a scan sees them.
    pub fn unpin_all(&mut self, session: &mut Session) {
        if session.pins.is_empty() {
            return;
        }
        for id in session.pins.drain(..) {
            if let Some(e) = self.registry.get_mut(id) {
                e.pins = e.pins.saturating_sub(1);
            }
        }
    }

    /// A connection closed (its unread replies died with it): unpin what it
    /// was handed, and look soon for buffers nobody holds any more.
    pub fn session_closed(&mut self, mut session: Session) {
        self.unpin_all(&mut session);
        self.sweep_requested = true;
    }
}

#[cfg(test)]
mod tests;
