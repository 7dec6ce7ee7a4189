//! Allocation for a client: quota, the heap chooser under the policy,
//! charging to the client's cgroup, and handing the buffer out.

use super::{Reply, Service, Session, PRESSURE_BURST};
use crate::policy::cgroup::within;
use crate::refusal::{
    AllocateForRefusal, AllocateRefusal, CgroupQuotaExceeded, CgroupUnknown, QuotaExceeded, QuotaRefusal,
};
use crate::registry::{Entry, FileId, Registry};
use dmabroker::constraints::{choose_heap, ChooseError, NoHeapError};
use dmabroker::heap::AllocRequest;
use dmabroker::heap::HeapInfo;
use dmabroker::proto::{AllocateForRequest, AllocateRequest, ChoiceReport, Response};
use dmabroker::Buffer;
use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::time::Instant;

impl Service {
    /// The quotas a buffer of `len` more bytes must fit: the uid's, then
    /// every matching `[[cgroup]]` rule's (charged to its cgroup, whoever
    /// holds there). Before refusing, a sweep within the pressure budget
    /// looks for buffers nobody holds any more.
    pub(super) fn check_quota(&mut self, session: &Session, len: u64) -> Result<(), QuotaRefusal> {
        let uid = session.peer.uid;
        let limits = &session.limits;
        let fits = |r: &Registry| {
            let u = r.usage(uid);
            u.buffers < limits.max_buffers && u.bytes.checked_add(len).is_some_and(|b| b <= limits.max_bytes)
        };
        if !fits(&self.registry) && !self.pressure_sweep(|e| e.owner_uid == uid, &fits) {
            let u = self.registry.usage(uid);
            return Err(QuotaExceeded {
                uid,
                bytes: u.bytes,
                buffers: u.buffers,
                asked: len,
                max_bytes: limits.max_bytes,
                max_buffers: limits.max_buffers,
            }
            .into());
        }
        for m in session.cgroup_access.rules() {
            let rule = &m.rule;
            if rule.max_bytes.is_none() && rule.max_buffers.is_none() {
                continue;
            }
            let subtree = rule.pattern.is_subtree();
            let fits = |r: &Registry| {
                let u = r.cgroup_usage(&m.unit, subtree);
                rule.max_buffers.is_none_or(|max| u.buffers < max)
                    && rule.max_bytes.is_none_or(|max| u.bytes.checked_add(len).is_some_and(|b| b <= max))
            };
            let inside = |e: &Entry| e.cgroup.as_deref().is_some_and(|c| within(c, &m.unit, subtree));
            if fits(&self.registry) || self.pressure_sweep(inside, &fits) {
                continue;
            }
            let u = self.registry.cgroup_usage(&m.unit, subtree);
            return Err(CgroupQuotaExceeded {
                cgroup: session.cgroup_path().unwrap_or("?").to_owned(),
                unit: m.unit.clone(),
                rule: rule.describe(),
                bytes: u.bytes,
                buffers: u.buffers,
                asked: len,
                max_bytes: rule.max_bytes,
                max_buffers: rule.max_buffers,
            }
            .into());
        }
        Ok(())
    }

    /// Under quota pressure: sweep the buffers `which` selects, if the
    /// budget allows (else let the timer sweep soon), and say whether the
    /// request `fits` now.
    ///
    /// For the server ([`Service::submit`]) no `/proc` scan runs here: what
    /// needs none (open counts, dma-buf counts) is decided at once, and if
    /// that is not enough while some buffers need a scan, the request is
    /// parked until the sweep thread's next scan (finding 2), unless it is
    /// being answered after one already, or the next scan is not due soon.
    fn pressure_sweep(&mut self, which: impl Fn(&Entry) -> bool, fits: &impl Fn(&Registry) -> bool) -> bool {
        if !self.pressure_sweep_allowed() {
            self.sweep_requested = true;
            return false;
        }
        let start = Instant::now();
        let inline_scan = self.token.is_none();
        let unscanned = self.sweep_matching(which, false, inline_scan).1;
        self.pressure_credit -= start.elapsed().as_secs_f64();
        if fits(&self.registry) {
            return true;
        }
        if unscanned > 0 && !self.resuming && self.next_scan_due() <= Instant::now() + super::deferred::PARK_LIMIT / 2 {
            self.deferral = Some(super::deferred::Deferral::Park);
        }
        false
    }

    /// Refill the pressure-sweep budget (at `1 / duty_factor` of the time
    /// passed, up to [`PRESSURE_BURST`]) and say whether it covers a sweep.
    pub(super) fn pressure_sweep_allowed(&mut self) -> bool {
        let now = Instant::now();
        let refill =
            now.duration_since(self.pressure_refilled_at).as_secs_f64() / f64::from(self.timing.duty_factor.max(1));
        self.pressure_credit = (self.pressure_credit + refill).min(PRESSURE_BURST.as_secs_f64());
        self.pressure_refilled_at = now;
        self.pressure_credit > 0.0
    }

    pub(super) fn allocate(&mut self, session: &mut Session, a: AllocateRequest) -> Result<Reply, AllocateRefusal> {
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
        cgroup_allows(session, &heap_name)?;
        self.check_quota(session, a.len)?;
        let mut request = AllocRequest::new(a.len).align(a.align).contiguous(a.contiguous);
        if let Some(n) = a.name {
            request = request.name(n);
        }
        // Large and allocated here (not by a cgroup's worker): on the
        // allocation thread, so that the loop serves others meanwhile.
        if a.len >= crate::offload::LARGE
            && self.token.is_some()
            && self.charging.allocates_here(&session.cgroup, self.heaps.require(&heap_name)?)
        {
            let token = self.token.unwrap_or_default();
            match self.offload.submit(token, &heap_name, request) {
                Ok(()) => {
                    self.deferral = Some(super::deferred::Deferral::Alloc { heap: heap_name, asked: a.len });
                    // Never sent: `submit` answers later.
                    return Ok(Reply::error(dmabroker::proto::ErrorCode::Internal, "deferred", false));
                }
                Err(r) => request = r,
            }
        }
        let buffer = self.charging.allocate(&session.cgroup, self.heaps.require(&heap_name)?, &request)?;
        let properties = buffer.properties().hint();
        let (id, fd, len) = self.hand_out(session, buffer, a.len)?;
        tracing::debug!(uid, id, len, heap = %heap_name, "allocated");
        let response = Response::Allocated { id, len, heap: heap_name }.for_version(session.version(), properties);
        Ok(Reply { response, fd: Some(fd), close: false })
    }

    /// The heap infos as `uid` may use them: heaps the policy does not allow
    /// stay in the list (so that explanations name them) but are unusable,
    /// with the policy as the reason.
    pub(super) fn heap_infos_for(&self, session: &Session, only: Option<&str>) -> (Vec<HeapInfo>, Vec<String>) {
        let uid = session.peer.uid;
        let cgroup = session.cgroup_path().unwrap_or("?");
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
                } else if let Some(m) = session.cgroup_access.heap_denied(&h.name) {
                    disallowed.push(h.name.clone());
                    h.usable = false;
                    h.note = Some(format!("not allowed in cgroup {cgroup} by {}", m.rule.describe()));
                    h.free_bytes = None;
                }
                h
            })
            .collect();
        (infos, disallowed)
    }

    pub(super) fn allocate_for(
        &mut self,
        session: &mut Session,
        a: AllocateForRequest,
    ) -> Result<Reply, AllocateForRefusal> {
        let uid = session.peer.uid;
        let constraints = a.constraints().map_err(|e| AllocateForRefusal::BadRequest(e.to_string()))?;
        if let Some(why) = session.cgroup_access.refused() {
            return Err(AllocateRefusal::from(CgroupUnknown { uid, why: why.to_owned() }).into());
        }
        let only = match &a.heap {
            Some(h) => Some(self.heaps.require(h)?.name().to_owned()),
            None => None,
        };
        let (mut infos, disallowed) = self.heap_infos_for(session, only.as_deref());
        let allowed = session.limits.heaps.clone();
        let mut attempts: Vec<String> = Vec::new();
        let (buffer, mut choice) = loop {
            let choice = match choose_heap(&infos, &constraints, a.len) {
                Ok(c) => c,
                Err(ChooseError::NoHeap(e)) if attempts.is_empty() => {
                    return Err(AllocateForRefusal::NoHeap(explain(e, uid, &disallowed, &allowed)));
                }
                Err(e @ (ChooseError::ZeroSize | ChooseError::SizeOverflow { .. })) => {
                    return Err(AllocateForRefusal::BadRequest(e.to_string()));
                }
                Err(_) => return Err(AllocateForRefusal::Failed(attempts.join("; "))),
            };
            // As Allocate: the quota for the length asked, then (below) for
            // the length the heap gave.
            self.check_quota(session, choice.len)?;
            let heap = self.heaps.require(&choice.heap)?;
            match self.charging.allocate(&session.cgroup, heap, &choice.request(a.name.as_deref())) {
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
        let (id, fd, len) = self.hand_out(session, buffer, choice.len)?;
        tracing::debug!(uid, id, len, heap = %heap, "allocated by constraints");
        let choice = ChoiceReport::from(&choice);
        let response = Response::AllocatedFor { id, len, heap, choice }.for_version(session.version(), properties);
        Ok(Reply { response, fd: Some(fd), close: false })
    }

    /// A buffer just allocated for the session's user (the quota checked for
    /// the `asked` length): the quota again when the heap gave more (rounding
    /// to pages may push it over the byte quota), then registered; its id,
    /// an fd for the reply, and its length.
    pub(super) fn hand_out(
        &mut self,
        session: &mut Session,
        buffer: Buffer,
        asked: u64,
    ) -> Result<(u64, OwnedFd, u64), AllocateRefusal> {
        if buffer.len() > asked {
            self.check_quota(session, buffer.len())?;
        }
        let len = buffer.len();
        let id = self.insert(buffer, session).map_err(|()| {
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
    pub(super) fn insert(&mut self, buffer: Buffer, session: &mut Session) -> Result<u64, ()> {
        self.insert_as(buffer, session, false)
    }

    /// [`Self::insert`]; `adopted`: a client sent it (publish).
    pub(super) fn insert_as(&mut self, buffer: Buffer, session: &mut Session, adopted: bool) -> Result<u64, ()> {
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
            cgroup: session.cgroup_key.clone(),
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
    pub(super) fn pin(&mut self, id: u64, session: &mut Session) {
        if let Some(e) = self.registry.get_mut(id) {
            e.handouts += 1;
            e.recipients.insert(session.peer.uid);
            if e.needs_scan() {
                e.pins += 1;
                session.pins.push(id);
            }
        }
    }
}

/// Whether the session's `[[cgroup]]` rules let it allocate from `heap`.
fn cgroup_allows(session: &Session, heap: &str) -> Result<(), AllocateRefusal> {
    if let Some(why) = session.cgroup_access.refused() {
        return Err(CgroupUnknown { uid: session.peer.uid, why: why.to_owned() }.into());
    }
    if let Some(m) = session.cgroup_access.heap_denied(heap) {
        let allowed = m.rule.heaps.as_deref().unwrap_or_default();
        return Err(AllocateRefusal::HeapNotAllowedInCgroup {
            cgroup: session.cgroup_path().unwrap_or("?").to_owned(),
            rule: m.rule.describe(),
            heap: heap.to_owned(),
            allowed: if allowed.is_empty() { "none".into() } else { allowed.join(", ") },
        });
    }
    Ok(())
}

/// The chooser's explanation, with the heaps the policy keeps from `uid`
/// named as such (the chooser's own hints assume an in-process caller).
pub(super) fn explain(mut e: NoHeapError, uid: u32, disallowed: &[String], allowed: &[String]) -> String {
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
            "heaps not allowed by policy for uid {uid} (or by a [[cgroup]] rule of its cgroup, as each heap's note \
             says): {} (allowed for the uid: {allowed}); ask the administrator to add the heap to the policy",
            disallowed.join(", ")
        ));
    }
    e.to_string()
}
