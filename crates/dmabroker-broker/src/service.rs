//! The operations (allocate, publish, import, unpublish, list, stats) on the
//! registry, under the policy; the sweep that ends charges; timers.

use crate::holders;
use crate::notify::Notifier;
use crate::peer::Peer;
use crate::policy::{Limits, Policy};
use crate::refusal::{
    AllocateForRefusal, AllocateRefusal, Code, ImportRefusal, PublishRefusal, QuotaExceeded, UnpublishRefusal,
};
use crate::registry::{Entry, FileId, Publication, Registry};
use dmabroker::closer::CloseLater;
use dmabroker::constraints::{choose_heap, ChooseError, NoHeapError};
use dmabroker::heap::HeapInfo;
use dmabroker::heap::{AllocRequest, Heaps};
use dmabroker::proto::{
    self, Access, AllocateForRequest, AllocateRequest, ChoiceReport, ErrorCode, ListEntry, PublishRequest, Request,
    Response, Stats,
};
use dmabroker::{Buffer, BufferKind};
use std::collections::{BTreeSet, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime};

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
    /// The client's cgroup, read at its first charged allocation.
    cgroup: Option<Result<String, String>>,
}

impl Session {
    /// A session for `peer` under `policy`.
    pub fn new(peer: Peer, policy: &Policy) -> Self {
        let limits = policy.limits(peer.uid, &peer.groups);
        Self { peer, limits, version: None, pins: Vec::new(), cgroup: None }
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
    heaps: Heaps,
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
        Self {
            policy,
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
        }
    }

    /// The registry (for tests and reports).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Handle one decoded request (fd: the one that came with it, if any).
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
                Reply::ok(Response::Hello { version, server: format!("dmabroker {}", env!("CARGO_PKG_VERSION")) })
            }
            (None, _) => Reply::error(ErrorCode::BadRequest, "the session must open with Hello", true),
            (Some(_), Request::Hello { .. }) => Reply::error(ErrorCode::BadRequest, "Hello sent twice", true),
            (Some(_), Request::Allocate(a)) => self.allocate(session, a).unwrap_or_else(Reply::refused),
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

    fn check_quota(&mut self, uid: u32, limits: &Limits, len: u64) -> Result<(), QuotaExceeded> {
        let fits = |r: &Registry| {
            let u = r.usage(uid);
            u.buffers < limits.max_buffers && u.bytes.checked_add(len).is_some_and(|b| b <= limits.max_bytes)
        };
        if fits(&self.registry) {
            return Ok(());
        }
        // Pressure: look for buffers of this user that nobody holds any more
        // before refusing, within the budget; else the timer sweeps soon.
        if self.pressure_sweep_allowed() {
            let start = Instant::now();
            self.sweep(Some(uid));
            self.pressure_credit -= start.elapsed().as_secs_f64();
            if fits(&self.registry) {
                return Ok(());
            }
        } else {
            self.sweep_requested = true;
        }
        let u = self.registry.usage(uid);
        Err(QuotaExceeded {
            uid,
            bytes: u.bytes,
            buffers: u.buffers,
            asked: len,
            max_bytes: limits.max_bytes,
            max_buffers: limits.max_buffers,
        })
    }

    /// Refill the pressure-sweep budget (at `1 / duty_factor` of the time
    /// passed, up to [`PRESSURE_BURST`]) and say whether it covers a sweep.
    fn pressure_sweep_allowed(&mut self) -> bool {
        let now = Instant::now();
        let refill =
            now.duration_since(self.pressure_refilled_at).as_secs_f64() / f64::from(self.timing.duty_factor.max(1));
        self.pressure_credit = (self.pressure_credit + refill).min(PRESSURE_BURST.as_secs_f64());
        self.pressure_refilled_at = now;
        self.pressure_credit > 0.0
    }

    fn allocate(&mut self, session: &mut Session, a: AllocateRequest) -> Result<Reply, AllocateRefusal> {
        let uid = session.peer.uid;
        let heap = self.heaps.require(&a.heap)?;
        let heap_name = heap.name().to_owned();
        if !session.limits.allows_heap(&heap_name) {
            return Err(AllocateRefusal::HeapNotAllowed {
                uid,
                heap: heap_name,
                allowed: if session.limits.heaps.is_empty() { "none".into() } else { session.limits.heaps.join(", ") },
            });
        }
        let limits = session.limits.clone();
        self.check_quota(uid, &limits, a.len)?;
        let mut request = AllocRequest::new(a.len).align(a.align).contiguous(a.contiguous);
        if let Some(n) = a.name {
            request = request.name(n);
        }
        let cgroup = self.client_cgroup(session);
        let buffer = self.charging.allocate(cgroup, self.heaps.require(&heap_name)?, &request)?;
        let properties = buffer.properties().hint();
        let (id, fd, len) = self.hand_out(session, &limits, buffer, a.len)?;
        tracing::debug!(uid, id, len, heap = %heap_name, "allocated");
        let response = Response::Allocated { id, len, heap: heap_name }.for_version(session.version(), properties);
        Ok(Reply { response, fd: Some(fd), close: false })
    }

    /// The client's cgroup, read once per session and only when charging
    /// is active (a `/proc` read, off the path of other allocations).
    fn client_cgroup<'s>(&self, session: &'s mut Session) -> &'s Result<String, String> {
        let active = self.charging.active();
        session.cgroup.get_or_insert_with(|| {
            if active {
                crate::charge::cgroup::of_process(session.peer.pid, session.peer.pidfd.as_ref())
            } else {
                Err("charging is off".into())
            }
        })
    }

    /// The heap infos as `uid` may use them: heaps the policy does not allow
    /// stay in the list (so that explanations name them) but are unusable,
    /// with the policy as the reason.
    fn heap_infos_for(&self, session: &Session, only: Option<&str>) -> (Vec<HeapInfo>, Vec<String>) {
        let uid = session.peer.uid;
        let mut disallowed = Vec::new();
        let infos = self
            .heaps
            .infos()
            .into_iter()
            .filter(|h| only.is_none_or(|o| h.name == o))
            .map(|mut h| {
                if !session.limits.allows_heap(&h.name) {
                    disallowed.push(h.name.clone());
                    h.usable = false;
                    h.note = Some(format!("not allowed by policy for uid {uid}"));
                    // The policy is what matters: no shortage to report.
                    h.free_bytes = None;
                }
                h
            })
            .collect();
        (infos, disallowed)
    }

    fn allocate_for(&mut self, session: &mut Session, a: AllocateForRequest) -> Result<Reply, AllocateForRefusal> {
        let uid = session.peer.uid;
        let constraints = a.constraints().map_err(|e| AllocateForRefusal::BadRequest(e.to_string()))?;
        let only = match &a.heap {
            Some(h) => Some(self.heaps.require(h)?.name().to_owned()),
            None => None,
        };
        let (mut infos, disallowed) = self.heap_infos_for(session, only.as_deref());
        let limits = session.limits.clone();
        let mut attempts: Vec<String> = Vec::new();
        let (buffer, mut choice) = loop {
            let choice = match choose_heap(&infos, &constraints, a.len) {
                Ok(c) => c,
                Err(ChooseError::NoHeap(e)) if attempts.is_empty() => {
                    return Err(AllocateForRefusal::NoHeap(explain(e, uid, &disallowed, &limits.heaps)));
                }
                Err(e @ (ChooseError::ZeroSize | ChooseError::SizeOverflow { .. })) => {
                    return Err(AllocateForRefusal::BadRequest(e.to_string()));
                }
                Err(_) => return Err(AllocateForRefusal::Failed(attempts.join("; "))),
            };
            // As Allocate: the quota for the length asked, then (below) for
            // the length the heap gave.
            self.check_quota(uid, &limits, choice.len)?;
            let heap = self.heaps.require(&choice.heap)?;
            let cgroup = self.client_cgroup(session);
            match self.charging.allocate(cgroup, heap, &choice.request(a.name.as_deref())) {
                Ok(buffer) => break (buffer, choice),
                Err(crate::charge::ChargeRefusal::Alloc(e)) => {
                    tracing::debug!(uid, heap = %choice.heap, "allocation by constraints failed: {e}; trying the next");
                    infos.retain(|h| h.name != choice.heap);
                    attempts.push(format!("{}: {e}", choice.heap));
                }
                // The client's cgroup is full: no other heap changes that.
                Err(e) => return Err(AllocateRefusal::from(e).into()),
            }
        };
        for attempt in &attempts {
            choice.reasons.push(format!("fell back from {attempt}"));
        }
        let heap = choice.heap.clone();
        let properties = buffer.properties().hint();
        let (id, fd, len) = self.hand_out(session, &limits, buffer, choice.len)?;
        tracing::debug!(uid, id, len, heap = %heap, "allocated by constraints");
        let choice = ChoiceReport::from(&choice);
        let response = Response::AllocatedFor { id, len, heap, choice }.for_version(session.version(), properties);
        Ok(Reply { response, fd: Some(fd), close: false })
    }

    /// A buffer just allocated for the session's user (the quota checked for
    /// the `asked` length): the quota again when the heap gave more (rounding
    /// to pages may push it over the byte quota), then registered; its id,
    /// an fd for the reply, and its length.
    fn hand_out(
        &mut self,
        session: &mut Session,
        limits: &Limits,
        buffer: Buffer,
        asked: u64,
    ) -> Result<(u64, OwnedFd, u64), AllocateRefusal> {
        if buffer.len() > asked {
            self.check_quota(session.peer.uid, limits, buffer.len())?;
        }
        let len = buffer.len();
        let id = self.insert(buffer, session).map_err(|_| {
            AllocateRefusal::Alloc(dmabroker::heap::AllocError::Os { op: "fstat", source: rustix::io::Errno::BADF })
        })?;
        // A reopen, never a dup of the broker's own: see registry::Counting.
        let fd = self.registry.get(id).expect("just inserted").hand_out(true).map_err(|e| {
            self.registry.remove(id);
            AllocateRefusal::Alloc(dmabroker::heap::AllocError::Os {
                op: "reopen",
                source: rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::MFILE),
            })
        })?;
        Ok((id, fd, len))
    }

    /// Register a buffer charged to the session's user, pinned to it.
    fn insert(&mut self, buffer: Buffer, session: &mut Session) -> Result<u64, ()> {
        self.insert_as(buffer, session, false)
    }

    /// [`Self::insert`]; `adopted`: a client sent it (publish).
    fn insert_as(&mut self, buffer: Buffer, session: &mut Session, adopted: bool) -> Result<u64, ()> {
        let file = FileId::of(&buffer).ok_or(())?;
        if self.registry.find_file(&file).is_some() {
            // Inode numbers reused (hugetlbfs wraps at 2^32): two buffers
            // under one identity would be ambiguous (finding 6).
            tracing::warn!(?file, "a new buffer has the device and inode of one held: refused as ambiguous");
            return Err(());
        }
        let (buffer, counting) = crate::registry::own_description(buffer, adopted);
        let entry = Entry {
            len: buffer.len(),
            owner_uid: session.peer.uid,
            owner_pid: session.peer.pid,
            file,
            publications: 0,
            pins: 0,
            recipients: BTreeSet::from([session.peer.uid]),
            stored: false,
            handouts: 0,
            adopted,
            counting,
            buffer,
        };
        let id = self.registry.insert(entry);
        self.pin(id, session);
        Ok(id)
    }

    /// memfds handed out stay pinned until the reply has been received: while
    /// it sits unread in the client's queue no `/proc` scan can see it.
    fn pin(&mut self, id: u64, session: &mut Session) {
        if let Some(e) = self.registry.get_mut(id) {
            e.handouts += 1;
            e.recipients.insert(session.peer.uid);
            if e.needs_scan() {
                e.pins += 1;
                session.pins.push(id);
            }
        }
    }

    fn publish(
        &mut self,
        session: &mut Session,
        p: PublishRequest,
        fd: Option<OwnedFd>,
    ) -> Result<Reply, PublishRefusal> {
        // A client's fd: until it is known to be a buffer and adopted, it is
        // closed off the loop (a lingering socket's or FUSE file's release
        // would block it), whatever the refusal.
        let fd = fd.map(CloseLater::new);
        let uid = session.peer.uid;
        if !session.limits.publish {
            return Err(PublishRefusal::NotAllowed(uid));
        }
        let fd = fd.ok_or(PublishRefusal::MissingFd)?;
        if rustix::fs::fcntl_getfl(&fd).is_ok_and(|f| f.contains(rustix::fs::OFlags::PATH)) {
            return Err(PublishRefusal::NotABuffer(
                "the fd was opened with O_PATH, which gives no access to the buffer's memory: an O_PATH fd is not \
                 a buffer; send the fd the allocator or importer returned, or reopen it \
                 (open(\"/proc/self/fd/N\", O_RDWR))"
                    .into(),
            ));
        }
        // Bounded by proto::MAX_EXPIRY_SECS when decoded (which also keeps
        // the arithmetic sane); checked again for direct callers of handle().
        let expires_at = match p.expires_in_secs {
            None => None,
            Some(s) if s <= proto::MAX_EXPIRY_SECS => SystemTime::now().checked_add(Duration::from_secs(s)),
            Some(s) => {
                return Err(PublishRefusal::BadRequest(format!(
                    "expires_in_secs: {s}, at most {} (10 years)",
                    proto::MAX_EXPIRY_SECS
                )))
            }
        };
        // Names live in the publisher's namespace (crate::names).
        let key = match &p.name {
            Some(name) => {
                let key = crate::names::qualify(&self.policy, name, uid).map_err(PublishRefusal::Name)?;
                if self.registry.publication(&key).is_some() {
                    return Err(PublishRefusal::AlreadyExists(name.clone()));
                }
                Some(key)
            }
            None => None,
        };
        let limit = session.limits.max_buffers.saturating_mul(4).saturating_add(16);
        let mine = self.registry.publications().filter(|q| q.publisher_uid == uid).count() as u64;
        if mine >= limit {
            return Err(PublishRefusal::Busy(format!(
                "uid {uid} has {mine} publications, the most it may have: unpublish some"
            )));
        }
        check_inspectable(&fd, &self.memfd_mounts)?;
        let st = rustix::fs::fstat(&fd).map_err(|e| PublishRefusal::NotABuffer(format!("cannot fstat the fd: {e}")))?;
        let file = FileId { major: rustix::fs::major(st.st_dev), minor: rustix::fs::minor(st.st_dev), ino: st.st_ino };
        let id = match self.registry.find_same_file(&fd, &file).map_err(PublishRefusal::NotABuffer)? {
            Some(id) => {
                // A buffer the broker holds: the sender must hold it at least
                // as writable as the broker does, or a read-only importer
                // could publish its fd and import that publication
                // read-write (the publisher's access).
                let entry = self.registry.get(id).expect("found by file");
                if !writable(&fd) && writable(&entry.buffer) {
                    return Err(PublishRefusal::ReadOnlyFd);
                }
                id
            }
            None => {
                // Classified by check_inspectable: a memfd or a dma-buf,
                // whose close cannot block.
                let buffer = Buffer::from_fd(fd.into_inner()).map_err(|e| PublishRefusal::NotABuffer(e.to_string()))?;
                if !buffer.is_size_sealed() {
                    return Err(PublishRefusal::NotABuffer(
                        "the memfd is not sealed against resizing: add F_SEAL_SHRINK | F_SEAL_GROW (an importer mapping it would die of SIGBUS if it shrank)".into(),
                    ));
                }
                if !writable(&buffer) && p.grants.iter().any(|g| g.access == Access::ReadWrite) {
                    return Err(PublishRefusal::ReadWriteFromReadOnlyFd);
                }
                let limits = session.limits.clone();
                self.check_quota(uid, &limits, buffer.len())?;
                self.insert_as(buffer, session, true)
                    .map_err(|_| PublishRefusal::NotABuffer("cannot fstat the fd".into()))?
            }
        };
        let entry = self.registry.get(id).expect("just found or inserted");
        // The broker's fd is read-only (a buffer first published from an
        // O_RDONLY fd): every importer gets ro (see access_for), so an rw
        // grant would be a lie.
        if !writable(&entry.buffer) && p.grants.iter().any(|g| g.access == Access::ReadWrite) {
            return Err(PublishRefusal::ReadWriteFromReadOnlyFd);
        }
        if entry.publications >= MAX_PUBLICATIONS_PER_BUFFER {
            return Err(PublishRefusal::Busy(format!(
                "the buffer already has {MAX_PUBLICATIONS_PER_BUFFER} publications"
            )));
        }
        if p.grants.iter().any(|g| g.access == Access::ReadOnly) {
            make_private(entry, uid)?;
        }
        let key = match key {
            Some(k) => k,
            None => new_token().map_err(|e| PublishRefusal::Busy(format!("no randomness for a token: {e}")))?,
        };
        if let Some(name) = &p.name {
            name_after_publication(&entry.buffer, name);
        }
        self.registry.publish(Publication {
            key: key.clone(),
            buffer_id: id,
            publisher_uid: uid,
            grants: p.grants,
            one_shot: p.one_shot,
            expires_at,
        });
        self.store(id);
        tracing::debug!(uid, id, key = %key, "published");
        // The name as the client sent it (it resolves to this for its uid).
        Ok(Reply::ok(Response::Published { key: p.name.unwrap_or(key) }))
    }

    /// Put a published buffer in the service manager's fd store.
    fn store(&mut self, id: u64) {
        let Some(notifier) = &mut self.notifier else { return };
        let Some(entry) = self.registry.get_mut(id) else { return };
        if !entry.stored {
            // Sent now or queued (never blocking); refused only when the
            // queue is full or the manager is gone.
            match notifier.store(&format!("b{id}"), &entry.buffer) {
                Ok(()) => entry.stored = true,
                Err(e) => tracing::warn!(
                    "cannot hand buffer {id} to the fd store: {e}; its publications will not survive a restart"
                ),
            }
        }
        self.state_dirty = true;
    }

    fn import(&mut self, session: &mut Session, asked: &str) -> Result<Reply, ImportRefusal> {
        let uid = session.peer.uid;
        let now = SystemTime::now();
        let Some(key) = self.resolve(asked, uid) else {
            return Err(self.not_found(asked, session));
        };
        let key = key.as_str();
        let Some(publication) = self.registry.publication(key).cloned() else {
            return Err(ImportRefusal::NotFound(asked.to_owned()));
        };
        if publication.expired(now) {
            self.withdraw(key);
            return Err(ImportRefusal::NotFound(key.to_owned()));
        }
        let Some(entry) = self.registry.get(publication.buffer_id) else {
            return Err(ImportRefusal::NotFound(key.to_owned()));
        };
        let access = access_for(&publication, entry, uid, &session.peer.groups)
            .ok_or_else(|| ImportRefusal::NotGranted { key: key.to_owned(), uid })?;
        let fd = match access {
            // A reopen for memfds, never a dup: see registry::Counting.
            Access::ReadWrite => entry.hand_out(true).map_err(|_| ImportRefusal::Busy)?,
            // A new open file description with O_RDONLY: mmap(PROT_WRITE,
            // MAP_SHARED), write() and ftruncate() fail on it. dma-bufs never
            // get here: publish refuses read-only grants for them.
            Access::ReadOnly => entry.buffer.reopen_read_only().map_err(ImportRefusal::Reopen)?,
        };
        let (len, heap, properties) = (entry.len, entry.buffer.heap().to_owned(), entry.buffer.properties().hint());
        self.pin(publication.buffer_id, session);
        if publication.one_shot && uid != publication.publisher_uid {
            self.withdraw(key);
        }
        tracing::debug!(uid, key, %access, "imported");
        Ok(Reply {
            response: Response::Imported { len, access, heap, publisher_uid: publication.publisher_uid }
                .for_version(session.version(), properties),
            fd: Some(fd),
            close: false,
        })
    }

    /// Withdraw a publication: its publisher, root, or the owner of the
    /// buffer (the uid charged for it), so that nobody can keep another
    /// user's buffer, and its charge, alive by republishing an import.
    fn unpublish(&mut self, session: &mut Session, asked: &str) -> Result<Reply, UnpublishRefusal> {
        let uid = session.peer.uid;
        let key = self.resolve(asked, uid).ok_or_else(|| UnpublishRefusal::NotFound(asked.to_owned()))?;
        let key = key.as_str();
        let p = self.registry.publication(key).ok_or_else(|| UnpublishRefusal::NotFound(key.to_owned()))?;
        let owner = self.registry.get(p.buffer_id).map(|e| e.owner_uid);
        if p.publisher_uid != uid && uid != 0 && owner != Some(uid) {
            return Err(UnpublishRefusal::NotPublisher {
                key: key.to_owned(),
                publisher: p.publisher_uid,
                owner: owner.unwrap_or(p.publisher_uid),
            });
        }
        if p.publisher_uid != uid {
            tracing::info!(
                uid,
                key,
                publisher = p.publisher_uid,
                "publication withdrawn by the buffer's owner or root"
            );
        }
        self.withdraw(key);
        Ok(Reply::ok(Response::Unpublished))
    }

    /// Remove a publication; a buffer left with none leaves the fd store and
    /// becomes a candidate for release.
    ///
    /// The state is saved at once, before the reply goes out, not after
    /// `STATE_SAVE_DELAY`: a withdrawn publication (unpublished, a consumed
    /// one-shot, expired) must not come back if the broker crashes within
    /// the delay. (Saves are still batched for new publications: a crash
    /// then loses a publication its publisher can redo, never resurrects one.)
    pub(crate) fn withdraw(&mut self, key: &str) {
        if self.withdraw_unsaved(key) {
            self.save_now();
        }
    }

    /// Save the state for the fd store now (when there is a service manager).
    fn save_now(&mut self) {
        if self.notifier.is_some() {
            self.state_dirty_since = None;
            crate::persist::save(self);
        }
    }

    /// [`Self::withdraw`] without the save; whether there was a publication.
    fn withdraw_unsaved(&mut self, key: &str) -> bool {
        let Some(p) = self.registry.unpublish(key) else { return false };
        self.state_dirty |= self.notifier.is_some();
        if let Some(e) = self.registry.get_mut(p.buffer_id) {
            if e.publications == 0 {
                if e.stored {
                    if let Some(n) = &mut self.notifier {
                        if let Err(err) = n.remove(&format!("b{}", p.buffer_id)) {
                            tracing::warn!(
                                "cannot remove buffer {} from the fd store: {err}; the service manager keeps it until \
                                 the next start drops it",
                                p.buffer_id
                            );
                        }
                    }
                    e.stored = false;
                }
                self.sweep_requested = true;
            }
        }
        true
    }

    /// The publication key `asked` stands for, for `uid` (crate::names).
    fn resolve(&self, asked: &str, uid: u32) -> Option<String> {
        crate::names::resolve(&self.policy, asked, uid, |k| self.registry.publication(k).is_some())
    }

    /// `NotFound` for an unresolved key; `Untrusted` when others publish
    /// that name and grant `session` access (the qualified names to use).
    fn not_found(&self, asked: &str, session: &Session) -> ImportRefusal {
        if asked.starts_with(proto::TOKEN_PREFIX) || crate::names::split_namespace(asked).is_some() {
            return ImportRefusal::NotFound(asked.to_owned());
        }
        let others: Vec<String> = self
            .registry
            .publications()
            .filter(|p| crate::names::split_namespace(&p.key).is_some_and(|(_, bare)| bare == asked))
            .filter(|p| {
                let entry = self.registry.get(p.buffer_id);
                entry.and_then(|e| access_for(p, e, session.peer.uid, &session.peer.groups)).is_some()
            })
            .map(|p| format!("`{}`", p.key))
            .take(4)
            .collect();
        if others.is_empty() {
            return ImportRefusal::NotFound(asked.to_owned());
        }
        ImportRefusal::Untrusted { key: asked.to_owned(), others: others.join(", ") }
    }

    fn list(&self, session: &Session) -> Reply {
        let now = SystemTime::now();
        let uid = session.peer.uid;
        let mut entries = Vec::new();
        let mut truncated = false;
        for p in self.registry.publications().filter(|p| !p.expired(now)) {
            let e = self.registry.get(p.buffer_id);
            // The owner of the buffer (the uid charged) sees every
            // publication of it, whoever published it, tokens included:
            // it may withdraw them, and it holds the buffer anyway.
            let owns = e.is_some_and(|e| e.owner_uid == uid);
            let is_token = p.key.starts_with(proto::TOKEN_PREFIX);
            // A token is a capability: only its publisher (and the buffer's
            // owner) sees it listed.
            if is_token && p.publisher_uid != uid && !owns {
                continue;
            }
            let access = match e {
                Some(e) => access_for(p, e, uid, &session.peer.groups),
                None => p.access_for(uid, &session.peer.groups),
            };
            let Some(access) = access else { continue };
            if entries.len() == MAX_LIST_ENTRIES {
                truncated = true;
                break;
            }
            entries.push(ListEntry {
                key: crate::names::shown(&self.policy, &p.key, uid, |k| self.registry.publication(k).is_some()),
                len: e.map_or(0, |e| e.len),
                heap: e.map_or_else(String::new, |e| e.buffer.heap().chars().take(proto::MAX_NAME_LEN).collect()),
                publisher_uid: p.publisher_uid,
                access,
                one_shot: p.one_shot,
                expires_in_secs: p.expires_at.map(|t| t.duration_since(now).unwrap_or_default().as_secs()),
            });
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Reply::ok(Response::List { entries, truncated })
    }

    fn stats(&self, session: &Session) -> Reply {
        let u = self.registry.usage(session.peer.uid);
        let t = self.registry.totals();
        Reply::ok(Response::Stats(Stats {
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
        }))
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

    /// Release every buffer (of `uid`, or of everyone) that is neither
    /// published nor pinned and that no other process holds. Returns how
    /// many were released.
    pub fn sweep(&mut self, uid: Option<u32>) -> usize {
        let start = Instant::now();
        let candidates: Vec<u64> = self
            .registry
            .entries()
            .filter(|(_, e)| e.publications == 0 && e.pins == 0 && uid.is_none_or(|u| e.owner_uid == u))
            .map(|(id, _)| id)
            .collect();
        let mut release = Vec::new();
        let mut wanted = HashSet::new();
        let mut scanned = Vec::new();
        for &id in &candidates {
            let e = self.registry.get(id).expect("candidate exists");
            match holders::without_scan(e) {
                Some(true) => {}
                Some(false) => release.push(id),
                None => {
                    wanted.insert(e.file);
                    scanned.push(id);
                }
            }
        }
        if !wanted.is_empty() {
            let scan = holders::scan(&wanted, self.scan_own_process);
            for &id in &scanned {
                let e = self.registry.get(id).expect("candidate exists");
                if !scan.held(&e.file) && !holders::maybe_hidden(e, &scan) {
                    release.push(id);
                }
            }
        }
        for &id in &release {
            if let Some(e) = self.registry.remove(id) {
                tracing::debug!(id, uid = e.owner_uid, len = e.len, "released: no holder left");
            }
        }
        self.last_sweep_end = Instant::now();
        self.last_sweep_cost = self.last_sweep_end - start;
        self.len_after_sweep = self.registry.len();
        if uid.is_none() {
            self.sweep_requested = false;
        }
        release.len()
    }

    /// The timer's sweep: what needs no scan (dma-bufs, memfds with open
    /// counts) is decided here; the `/proc` scan for the rest runs on a
    /// thread, at most one at a time, and [`Self::finish_background_scan`]
    /// applies it. (Quota-pressure sweeps, [`Self::sweep`], still scan
    /// inline, within their budget.)
    fn sweep_in_background(&mut self) {
        if self.scan_in_flight.is_some() {
            return;
        }
        let start = Instant::now();
        let mut release = Vec::new();
        let mut wanted = HashSet::new();
        let mut scanned = Vec::new();
        for (id, e) in self.registry.entries().filter(|(_, e)| e.publications == 0 && e.pins == 0) {
            match holders::without_scan(e) {
                Some(true) => {}
                Some(false) => release.push(id),
                None => {
                    wanted.insert(e.file);
                    scanned.push((id, e.handouts));
                }
            }
        }
        for id in release {
            if let Some(e) = self.registry.remove(id) {
                tracing::debug!(id, uid = e.owner_uid, len = e.len, "released: no holder left");
            }
        }
        if !wanted.is_empty() {
            let (tx, rx) = std::sync::mpsc::channel();
            let include_self = self.scan_own_process;
            let spawned = std::thread::Builder::new().name("dmabroker-sweep".into()).spawn(move || {
                let _ = tx.send(holders::scan(&wanted, include_self));
            });
            match spawned {
                Ok(_) => self.scan_in_flight = Some(ScanInFlight { result: rx, candidates: scanned, started: start }),
                Err(e) => tracing::warn!("cannot start a sweep thread ({e}); charges are checked at the next sweep"),
            }
        }
        self.last_sweep_end = Instant::now();
        self.last_sweep_cost = self.last_sweep_end - start;
        self.len_after_sweep = self.registry.len();
        self.sweep_requested = false;
    }

    /// Apply a finished background scan (nothing while it runs).
    fn finish_background_scan(&mut self) {
        let Some(flight) = &self.scan_in_flight else { return };
        let scan = match flight.result.try_recv() {
            Ok(scan) => scan,
            Err(std::sync::mpsc::TryRecvError::Empty) => return,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                self.scan_in_flight = None;
                return;
            }
        };
        let flight = self.scan_in_flight.take().expect("checked above");
        for (id, handouts) in flight.candidates {
            let Some(e) = self.registry.get(id) else { continue };
            // Published, pinned or handed out meanwhile: the scan may have
            // passed the new holder already.
            if e.publications != 0 || e.pins != 0 || e.handouts != handouts {
                continue;
            }
            if !scan.held(&e.file) && !holders::maybe_hidden(e, &scan) {
                if let Some(e) = self.registry.remove(id) {
                    tracing::debug!(id, uid = e.owner_uid, len = e.len, "released: no holder left");
                }
            }
        }
        // The duty factor counts the scan's time, though the loop did not wait.
        self.last_sweep_end = Instant::now();
        self.last_sweep_cost = self.last_sweep_end - flight.started;
        self.len_after_sweep = self.registry.len();
    }

    /// When the next timer is due.
    pub fn next_deadline(&self) -> Instant {
        let gap = self.last_sweep_cost * self.timing.duty_factor;
        let sweep = if self.sweep_requested {
            self.last_sweep_end + gap.max(Duration::from_millis(20))
        } else {
            self.last_sweep_end + gap.max(self.timing.interval)
        };
        let mut next = sweep.min(self.next_expiry_check);
        if let Some(t) = self.charging.next_deadline() {
            next = next.min(t);
        }
        if self.scan_in_flight.is_some() {
            next = next.min(Instant::now() + SCAN_POLL);
        }
        if self.state_dirty {
            next = next.min(self.state_dirty_since.unwrap_or_else(Instant::now) + STATE_SAVE_DELAY);
        }
        if self.notifier.as_ref().is_some_and(|n| n.pending() > 0) {
            // Notifications the manager could not take yet: retried on the
            // socket's EPOLLOUT, and by this timer in case that never comes.
            next = next.min(Instant::now() + NOTIFY_RETRY);
        }
        next
    }

    /// Run what is due: expiries, sweeps, saving state for the fd store.
    pub fn tick(&mut self) {
        self.finish_background_scan();
        let now = Instant::now();
        self.charging.tick();
        if let Some(n) = &mut self.notifier {
            if n.pending() > 0 {
                n.flush();
            }
            // A queued state update was dropped for room: save it again.
            if n.take_state_lost() {
                self.state_dirty = true;
            }
        }
        if now >= self.next_expiry_check {
            let mut withdrawn = false;
            for key in self.registry.expired(SystemTime::now()) {
                withdrawn |= self.withdraw_unsaved(&key);
            }
            if withdrawn {
                // One save for every expiry of this check.
                self.save_now();
            }
            self.next_expiry_check = now + Duration::from_secs(1);
            self.pools.sweep();
        }
        let gap = self.last_sweep_cost * self.timing.duty_factor;
        let due = if self.sweep_requested { gap.max(Duration::from_millis(20)) } else { gap.max(self.timing.interval) };
        // Under fd pressure, sweep as often as half the time allows.
        let fd_pressure = self.registry.len() > self.fd_pressure
            && self.registry.len() > self.len_after_sweep
            && now >= self.last_sweep_end + self.last_sweep_cost.max(Duration::from_millis(5));
        if fd_pressure || now >= self.last_sweep_end + due {
            let has_candidates = self.registry.entries().any(|(_, e)| e.publications == 0 && e.pins == 0);
            if has_candidates {
                self.sweep_in_background();
            } else {
                self.last_sweep_end = now;
                self.sweep_requested = false;
            }
        }
        if self.state_dirty {
            let since = *self.state_dirty_since.get_or_insert(now);
            if now >= since + STATE_SAVE_DELAY {
                self.state_dirty_since = None;
                crate::persist::save(self);
            }
        }
    }
}

/// The chooser's explanation, with the heaps the policy keeps from `uid`
/// named as such (the chooser's own hints assume an in-process caller).
fn explain(mut e: NoHeapError, uid: u32, disallowed: &[String], allowed: &[String]) -> String {
    e.hints.retain(|h| !disallowed.iter().any(|d| h.starts_with(&format!("{d} "))));
    for h in &mut e.hints {
        // The in-process hint tells the user to get access or to come here;
        // here it is the broker that needs the access.
        if let Some(access) =
            h.split(", or allocate through the broker").next().filter(|_| h.contains("allocate through the broker"))
        {
            *h = access.replace("grant this user access to", "give the broker access to");
        }
        if h.starts_with("no dma-buf allocator usable here") {
            *h = "no dma-buf allocator the broker can use: `modprobe udmabuf`, or give the broker access to \
                  /dev/udmabuf or /dev/dma_heap/system, then restart it"
                .to_owned();
        }
    }
    if !disallowed.is_empty() {
        let allowed = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
        e.hints.push(format!(
            "heaps not allowed by policy for uid {uid}: {} (allowed: {allowed}); ask the administrator to add \
             the heap to the policy",
            disallowed.join(", ")
        ));
    }
    e.to_string()
}

/// Refuse, before any call that reaches a file system, an fd that is
/// neither a dma-buf nor a memfd: `fstat` on a file of a hostile FUSE mount
/// could block the broker forever. fdinfo is answered by the VFS alone.
fn check_inspectable(fd: &impl AsFd, memfd_mounts: &[u64]) -> Result<(), PublishRefusal> {
    let fd = fd.as_fd();
    let link = dmabroker::fdinfo::fd_link(None, fd.as_raw_fd()).unwrap_or_default();
    let info = dmabroker::fdinfo::FdInfo::read(None, fd.as_raw_fd())
        .map_err(|e| PublishRefusal::NotABuffer(format!("cannot inspect the fd: {e}")))?;
    if info.is_dma_buf() || info.get_u64("mnt_id").is_some_and(|m| memfd_mounts.contains(&m)) {
        return Ok(());
    }
    Err(PublishRefusal::NotABuffer(format!(
        "fd is {link}, not a buffer: publish a dma-buf or a memfd (sealed with F_SEAL_SHRINK | F_SEAL_GROW)"
    )))
}

/// The access `uid` gets to a publication: what its grants give
/// ([`Publication::access_for`]: publisher and root read-write), and
/// read-write for the owner of the buffer (the uid charged for it), which
/// allocated it or sent the broker its fd and may see and withdraw every
/// publication of it. The fd handed out is the broker's own (its mode, see
/// `import`), never more than the owner had.
///
/// Never more than the broker's own fd gives: a buffer it holds read-only
/// (first published from an `O_RDONLY` fd) is imported ro by everyone.
fn access_for(p: &Publication, entry: &Entry, uid: u32, groups: &[u32]) -> Option<Access> {
    let access = if entry.owner_uid == uid { Some(Access::ReadWrite) } else { p.access_for(uid, groups) };
    match access {
        Some(Access::ReadWrite) if !writable(&entry.buffer) => Some(Access::ReadOnly),
        other => other,
    }
}

/// Name an unnamed dma-buf after its first named publication
/// (`DMA_BUF_SET_NAME`, cut to 31 bytes), so that `/proc/PID/fdinfo` and
/// `dmabroker ps` show it. Tokens are never used (they are secrets); memfd
/// names are fixed at creation (pass the name when allocating); a failure
/// only logs, a name being a debugging aid.
fn name_after_publication(buffer: &Buffer, name: &str) {
    if buffer.kind() != BufferKind::DmaBuf {
        return;
    }
    let named = dmabroker::fdinfo::FdInfo::read(None, buffer.as_fd().as_raw_fd())
        .map(|info| info.dma_buf_name().is_some_and(|n| !n.is_empty()));
    if named.unwrap_or(true) {
        return;
    }
    let mut cut = name.len().min(dmabroker_sys::dma_buf::DMA_BUF_NAME_LEN - 1);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    if let Ok(c) = std::ffi::CString::new(&name[..cut]) {
        if let Err(e) = dmabroker_sys::dma_buf::set_name(buffer, &c) {
            tracing::debug!("DMA_BUF_SET_NAME {name:?}: {e}");
        }
    }
}

/// Whether an fd was opened for writing (not `O_RDONLY`, not `O_PATH`).
fn writable(fd: &impl AsFd) -> bool {
    use rustix::fs::OFlags;
    rustix::fs::fcntl_getfl(fd)
        .is_ok_and(|f| !f.contains(OFlags::PATH) && f.intersection(OFlags::ACCMODE) != OFlags::RDONLY)
}

/// Make a memfd's inode private to its owner (mode 0600) so that a
/// read-only importer of another uid cannot reopen `/proc/self/fd/N`
/// read-write; the owner and root can, and could anyway.
///
/// Only a file the broker allocated, or one the publisher owns (or root
/// publishes) has its mode changed: the broker never changes the mode of
/// another user's file on behalf of a publisher who could not. A memfd that
/// is already closed to others' writes (no `0o022` bits) needs no change
/// (its owner uid can still reopen it writable: it owns the file); any
/// other is refused, since a read-only grant could not be enforced.
fn make_private(entry: &Entry, publisher: u32) -> Result<(), PublishRefusal> {
    let buffer = &entry.buffer;
    if buffer.kind() == BufferKind::DmaBuf {
        return Err(PublishRefusal::ReadOnlyUnsupported(
            "read-only grants are refused for dma-bufs: a dma-buf fd carries the mode its exporter gave it and cannot be reopened read-only, and a device import can write it anyway; grant rw, or publish a memfd".into(),
        ));
    }
    let st = rustix::fs::fstat(buffer)
        .map_err(|e| PublishRefusal::ReadOnlyUnsupported(format!("cannot fstat the memfd: {e}")))?;
    if st.st_mode & 0o077 == 0 {
        return Ok(());
    }
    if entry.adopted && st.st_uid != publisher && publisher != 0 {
        if st.st_mode & 0o022 == 0 {
            return Ok(());
        }
        return Err(PublishRefusal::ReadOnlyUnsupported(format!(
            "the memfd belongs to uid {} and others may write it (mode {:o}): the broker does not change the mode \
             of a file the publisher does not own, so a read-only grant could not be enforced; have its owner \
             fchmod it 0600 first, or grant rw",
            st.st_uid,
            st.st_mode & 0o777
        )));
    }
    rustix::fs::fchmod(buffer, rustix::fs::Mode::from_raw_mode(0o600)).map_err(|e| {
        PublishRefusal::ReadOnlyUnsupported(format!(
            "cannot make the memfd private ({e}): the broker must own it or run as root to enforce read-only grants; allocate through the broker instead"
        ))
    })
}

/// A 128-bit token from the kernel's CSPRNG (`getrandom(2)`). `GRND_NONBLOCK`:
/// before the pool is initialized (early boot) this fails with `EAGAIN`
/// rather than stalling the event loop; the publish is then refused (`Busy`).
fn new_token() -> std::io::Result<String> {
    use rustix::rand::{getrandom, GetRandomFlags};
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        match getrandom(&mut bytes[filled..], GetRandomFlags::NONBLOCK) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{}{hex}", proto::TOKEN_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmabroker::proto::{Grant, Grantee};

    const OWNER: u32 = 4242;
    const OTHER: u32 = 4343;

    fn session(service: &mut Service, uid: u32) -> Session {
        let peer = Peer { uid, gid: uid, pid: std::process::id(), groups: vec![uid], pidfd: None };
        let mut s = Session::new(peer, &service.policy);
        let hello = service.handle(&mut s, Request::Hello { min_version: 1, max_version: 1 }, None);
        assert!(matches!(hello.response, Response::Hello { .. }));
        s
    }

    fn service() -> Service {
        let policy = Policy::parse(&format!("[[user]]\nuid = {OTHER}\npublish = true\n"), OWNER).unwrap();
        Service::new(policy, Heaps::discover(), None, SweepTiming::default())
    }

    fn publish(service: &mut Service, s: &mut Session, name: &str, grants: Vec<Grant>, fd: OwnedFd) -> Response {
        let p = PublishRequest { name: Some(name.into()), grants, one_shot: false, expires_in_secs: None };
        service.handle(s, Request::Publish(p), Some(fd)).response
    }

    #[test]
    fn a_read_only_import_cannot_be_republished_to_gain_write_access() {
        let mut service = service();
        let mut owner = session(&mut service, OWNER);
        let alloc = AllocateRequest { heap: "memfd".into(), len: 4096, align: 1, contiguous: false, name: None };
        let reply = service.handle(&mut owner, Request::Allocate(alloc), None);
        let fd = reply.fd.expect("allocated");
        let ro = vec![Grant { who: Grantee::Uid(OTHER), access: Access::ReadOnly }];
        assert_eq!(publish(&mut service, &mut owner, "ro", ro, fd), Response::Published { key: "ro".into() });

        let mut other = session(&mut service, OTHER);
        let reply = service.handle(&mut other, Request::Import { key: "ro".into() }, None);
        assert!(matches!(reply.response, Response::Imported { access: Access::ReadOnly, .. }), "{:?}", reply.response);
        let ro_fd = reply.fd.unwrap();
        assert!(!writable(&ro_fd));
        // Re-publishing the read-only fd (or an O_PATH reopen of it) would
        // make OTHER the publisher of a publication it imports read-write.
        let path = rustix::fs::open(
            format!("/proc/self/fd/{}", ro_fd.as_raw_fd()),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        for fd in [ro_fd, path] {
            match publish(&mut service, &mut other, "mine", Vec::new(), fd) {
                Response::Error { code: ErrorCode::NotAllowed | ErrorCode::NotABuffer, .. } => {}
                r => panic!("a read-only holder republished the buffer: {r:?}"),
            }
        }
        assert!(service.registry.publication("mine").is_none());
    }

    /// OTHER imports OWNER's buffer and republishes it as a token: OWNER
    /// must see that publication (marked as OTHER's) and may withdraw it,
    /// or OTHER could keep OWNER charged for good.
    #[test]
    fn the_owner_sees_and_withdraws_republications_of_its_buffer() {
        let mut service = service();
        let mut owner = session(&mut service, OWNER);
        let alloc = AllocateRequest { heap: "memfd".into(), len: 4096, align: 1, contiguous: false, name: None };
        let fd = service.handle(&mut owner, Request::Allocate(alloc), None).fd.expect("allocated");
        let rw = vec![Grant { who: Grantee::Uid(OTHER), access: Access::ReadWrite }];
        assert_eq!(publish(&mut service, &mut owner, "a", rw, fd), Response::Published { key: "a".into() });

        let mut other = session(&mut service, OTHER);
        let imported = service.handle(&mut other, Request::Import { key: "a".into() }, None).fd.expect("imported");
        let p = PublishRequest { name: None, grants: Vec::new(), one_shot: false, expires_in_secs: None };
        let Response::Published { key: token } =
            service.handle(&mut other, Request::Publish(p), Some(imported)).response
        else {
            panic!("republishing a rw import is allowed");
        };
        assert!(matches!(
            service.handle(&mut owner, Request::Unpublish { key: "a".into() }, None).response,
            Response::Unpublished
        ));
        assert_eq!(service.registry.usage(OWNER).buffers, 1, "OTHER's token keeps OWNER's buffer");

        // The owner sees the token, marked as OTHER's.
        let Response::List { entries, .. } = service.handle(&mut owner, Request::List, None).response else {
            panic!("list")
        };
        let entry = entries.iter().find(|e| e.key == token).expect("the owner sees publications of its buffer");
        assert_eq!((entry.publisher_uid, entry.access), (OTHER, Access::ReadWrite));
        // A third user neither sees nor withdraws it.
        let mut third = session(&mut service, OTHER + 1);
        let Response::List { entries, .. } = service.handle(&mut third, Request::List, None).response else {
            panic!("list")
        };
        assert!(entries.is_empty(), "{entries:?}");
        match service.handle(&mut third, Request::Unpublish { key: token.clone() }, None).response {
            Response::Error { code: ErrorCode::NotAllowed, message } => {
                assert!(message.contains(&format!("owner (uid {OWNER})")), "{message}")
            }
            r => panic!("a third user withdrew it: {r:?}"),
        }
        // The owner withdraws it; nothing holds the buffer any more.
        assert!(matches!(
            service.handle(&mut owner, Request::Unpublish { key: token }, None).response,
            Response::Unpublished
        ));
        assert_eq!(service.registry.get(1).map(|e| e.publications), Some(0));
    }

    #[test]
    fn an_o_path_fd_is_not_a_buffer() {
        let mut service = service();
        let mut owner = session(&mut service, OWNER);
        let memfd = rustix::fs::memfd_create("opath", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let path = rustix::fs::open(
            format!("/proc/self/fd/{}", memfd.as_raw_fd()),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        match publish(&mut service, &mut owner, "opath", Vec::new(), path) {
            Response::Error { code: ErrorCode::NotABuffer, message } => {
                assert!(message.contains("O_PATH") && message.contains("reopen"), "{message}")
            }
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn expiry_beyond_the_bound_is_refused() {
        let mut service = service();
        let mut owner = session(&mut service, OWNER);
        let memfd = rustix::fs::memfd_create("expiry", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let p = PublishRequest { name: None, grants: Vec::new(), one_shot: false, expires_in_secs: Some(u64::MAX) };
        match service.handle(&mut owner, Request::Publish(p), Some(memfd)).response {
            Response::Error { code: ErrorCode::BadRequest, message } => {
                assert!(message.contains("at most"), "{message}")
            }
            r => panic!("{r:?}"),
        }
        assert_eq!(service.registry.len(), 0, "nothing was adopted");
    }

    #[test]
    fn quota_pressure_sweeps_are_rationed() {
        let mut service = service();
        assert!(service.pressure_sweep_allowed(), "a burst is allowed at once");
        service.pressure_credit = -1.0;
        assert!(!service.pressure_sweep_allowed(), "an overdrawn budget waits for its refill");
    }

    /// [`service`] with a quota for OTHER (publishing a foreign fd charges it).
    fn service_with_quota() -> Service {
        let policy = Policy::parse(
            &format!("[[user]]\nuid = {OTHER}\npublish = true\nmax_bytes = \"1MiB\"\nmax_buffers = 8\n"),
            OWNER,
        )
        .unwrap();
        Service::new(policy, Heaps::discover(), None, SweepTiming::default())
    }

    /// A sealed memfd of this test, opened again with `flags`.
    fn foreign_memfd(flags: rustix::fs::OFlags) -> (OwnedFd, OwnedFd) {
        let memfd = rustix::fs::memfd_create(
            "foreign",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::fs::ftruncate(&memfd, 4096).unwrap();
        rustix::fs::fcntl_add_seals(&memfd, rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW).unwrap();
        let again = rustix::fs::open(
            format!("/proc/self/fd/{}", memfd.as_raw_fd()),
            flags | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        (memfd, again)
    }

    #[test]
    fn an_rw_grant_on_a_buffer_published_read_only_is_refused() {
        let mut service = service_with_quota();
        let mut other = session(&mut service, OTHER);
        let (_memfd, ro) = foreign_memfd(rustix::fs::OFlags::RDONLY);
        let rw = vec![Grant { who: Grantee::Uid(OWNER), access: Access::ReadWrite }];
        match publish(&mut service, &mut other, "rw", rw, ro) {
            Response::Error { code: ErrorCode::NotAllowed, message } => {
                assert!(message.contains("read-only"), "{message}")
            }
            r => panic!("an rw grant on an O_RDONLY fd was accepted: {r:?}"),
        }
        let (_memfd, ro) = foreign_memfd(rustix::fs::OFlags::RDONLY);
        assert_eq!(publish(&mut service, &mut other, "ro", Vec::new(), ro), Response::Published { key: "ro".into() });
        // The publisher itself gets what the broker holds: ro, and says so.
        let reply = service.handle(&mut other, Request::Import { key: "ro".into() }, None);
        assert!(matches!(reply.response, Response::Imported { access: Access::ReadOnly, .. }), "{:?}", reply.response);
    }

    #[test]
    fn the_mode_of_another_users_memfd_is_left_alone() {
        if !rustix::process::geteuid().is_root() {
            crate::test_skip::skip("the_mode_of_another_users_memfd_is_left_alone", "needs root (fchown)");
            return;
        }
        let mut service = service_with_quota();
        let mut other = session(&mut service, OTHER);
        let (memfd, rw) = foreign_memfd(rustix::fs::OFlags::RDWR);
        // Owned by a third uid, writable by everyone.
        rustix::fs::fchown(&memfd, Some(rustix::process::Uid::from_raw(4444)), None).unwrap();
        rustix::fs::fchmod(&memfd, rustix::fs::Mode::from_raw_mode(0o777)).unwrap();
        let ro = vec![Grant { who: Grantee::Uid(OWNER), access: Access::ReadOnly }];
        match publish(&mut service, &mut other, "ro", ro, rw) {
            Response::Error { code: ErrorCode::ReadOnlyUnsupported, message } => {
                assert!(message.contains("does not own"), "{message}")
            }
            r => panic!("{r:?}"),
        }
        assert_eq!(rustix::fs::fstat(&memfd).unwrap().st_mode & 0o777, 0o777, "the broker changed the mode");
        // Owned by the publisher: made private as before.
        let (memfd, rw) = foreign_memfd(rustix::fs::OFlags::RDWR);
        rustix::fs::fchown(&memfd, Some(rustix::process::Uid::from_raw(OTHER)), None).unwrap();
        let ro = vec![Grant { who: Grantee::Uid(OWNER), access: Access::ReadOnly }];
        assert_eq!(publish(&mut service, &mut other, "ro2", ro, rw), Response::Published { key: "ro2".into() });
        assert_eq!(rustix::fs::fstat(&memfd).unwrap().st_mode & 0o777, 0o600);
    }

    /// A consumed one-shot is saved before the import's reply: no
    /// `STATE_SAVE_DELAY` window in which a crash would bring it back.
    #[test]
    fn a_consumed_one_shot_is_saved_at_once() {
        let dir = std::env::temp_dir().join(format!("dmabroker-service-save-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let manager = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        manager.set_nonblocking(true).unwrap();
        let notifier = Notifier::new(rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
        let policy = Policy::parse(&format!("[[user]]\nuid = {OTHER}\npublish = true\n"), OWNER).unwrap();
        let mut service = Service::new(policy, Heaps::discover(), Some(notifier), SweepTiming::default());
        let mut owner = session(&mut service, OWNER);
        let alloc = AllocateRequest { heap: "memfd".into(), len: 4096, align: 1, contiguous: false, name: None };
        let fd = service.handle(&mut owner, Request::Allocate(alloc), None).fd.expect("allocated");
        let rw = vec![Grant { who: Grantee::Uid(OTHER), access: Access::ReadWrite }];
        let p = PublishRequest { name: Some("once".into()), grants: rw, one_shot: true, expires_in_secs: None };
        assert!(matches!(
            service.handle(&mut owner, Request::Publish(p), Some(fd)).response,
            Response::Published { .. }
        ));
        let mut buf = vec![0u8; 4096];
        let drain = |buf: &mut [u8]| {
            let mut texts = Vec::new();
            while let Ok(n) = manager.recv(buf) {
                texts.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            texts
        };
        drain(&mut buf);
        let mut other = session(&mut service, OTHER);
        let reply = service.handle(&mut other, Request::Import { key: "once".into() }, None);
        assert!(matches!(reply.response, Response::Imported { .. }));
        assert!(service.registry.publication("once").is_none(), "consumed");
        let sent = drain(&mut buf);
        let _ = std::fs::remove_dir_all(&dir);
        let state = format!("FDNAME={}", crate::persist::STATE_NAME);
        assert!(
            sent.iter().any(|t| t.contains("FDSTORE=1") && t.contains(&state)),
            "no state saved before the reply: {sent:?}"
        );
    }
}
