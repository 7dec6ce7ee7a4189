//! Requests answered off the event loop (finding 2): large allocations on
//! the allocation thread ([`crate::offload`]), and requests refused for
//! quota that wait for a `/proc` scan on the sweep thread instead of
//! scanning on the loop. The server does not read a connection while its
//! request is deferred, so each client's replies keep their order.

use super::{Reply, Service, Session};
use crate::refusal::AllocateRefusal;
use dmabroker::heap::AllocError;
use dmabroker::proto::{Request, Response};
use dmabroker::Buffer;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Longest a request refused for quota waits for its scan; past it, the
/// refusal is given (the client's own call timeout is 5 s by default).
pub(super) const PARK_LIMIT: Duration = Duration::from_secs(2);

/// What [`Service::submit`] did with a request.
// Returned once per request and matched at once, never stored: boxing the
// reply would cost an allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Handled {
    /// The reply, now.
    Now(Reply),
    /// Off the loop: [`Service::finished`] names the connection when
    /// [`Service::resume`] has its reply.
    Later,
}

/// What a request handled now asks to be deferred as (set while handling).
#[derive(Debug)]
pub(super) enum Deferral {
    /// Allocating on the worker thread.
    Alloc { heap: String, asked: u64 },
    /// Refused for quota while some candidates need a scan: retry after one.
    Park,
}

/// A deferred request, by connection token.
#[derive(Debug)]
pub(super) enum Deferred {
    Alloc { heap: String, asked: u64, result: Option<Result<Buffer, AllocError>> },
    Parked { request: Request, after: u64, deadline: Instant },
}

impl Service {
    /// Handle a request of connection `token`: answered now, or deferred
    /// (large allocations, quota refusals that wait for a scan). Until it is
    /// answered, the caller must send the connection nothing else.
    pub fn submit(&mut self, token: u64, session: &mut Session, request: Request, fd: Option<OwnedFd>) -> Handled {
        let again = matches!(request, Request::Allocate(_) | Request::AllocateFor(_)).then(|| request.clone());
        self.token = Some(token);
        self.deferral = None;
        let reply = self.handle(session, request, fd);
        self.token = None;
        match self.deferral.take() {
            None => Handled::Now(reply),
            Some(Deferral::Alloc { heap, asked }) => {
                self.deferred.insert(token, Deferred::Alloc { heap, asked, result: None });
                Handled::Later
            }
            Some(Deferral::Park) => match again {
                Some(request) => {
                    tracing::debug!(token, "quota refusal waits for a scan off the loop");
                    let deadline = Instant::now() + PARK_LIMIT;
                    self.deferred.insert(token, Deferred::Parked { request, after: self.scans_started + 1, deadline });
                    self.sweep_requested = true;
                    Handled::Later
                }
                // Not re-runnable (it carried an fd): the refusal stands, and
                // the timer's sweep comes soon.
                None => Handled::Now(reply),
            },
        }
    }

    /// Connections whose deferred request can be resumed now.
    pub fn finished(&mut self) -> Vec<u64> {
        for (token, result) in self.offload.take_done() {
            match self.deferred.get_mut(&token) {
                Some(Deferred::Alloc { result: slot, .. }) => *slot = Some(result),
                // Its connection closed meanwhile.
                _ => discard(result),
            }
        }
        let now = Instant::now();
        self.deferred
            .iter()
            .filter(|(_, d)| match d {
                Deferred::Alloc { result, .. } => result.is_some(),
                Deferred::Parked { after, deadline, .. } => self.scans_finished >= *after || now >= *deadline,
            })
            .map(|(t, _)| *t)
            .collect()
    }

    /// The reply of a deferred request [`Service::finished`] named (or
    /// `Later` again: a parked allocation that is large).
    pub fn resume(&mut self, token: u64, session: &mut Session) -> Handled {
        match self.deferred.remove(&token) {
            None => Handled::Now(Reply::error(
                dmabroker::proto::ErrorCode::Internal,
                "no deferred request on this connection",
                false,
            )),
            Some(Deferred::Alloc { heap, asked, result: None }) => {
                self.deferred.insert(token, Deferred::Alloc { heap, asked, result: None });
                Handled::Later
            }
            Some(Deferred::Alloc { heap, asked, result: Some(result) }) => {
                let reply = self.finish_allocation(session, &heap, asked, result);
                Handled::Now(reply.map_err(AllocateRefusal::at_fd_limit).unwrap_or_else(Reply::refused))
            }
            Some(Deferred::Parked { request, .. }) => {
                // Once: this time a quota refusal is the answer.
                self.resuming = true;
                let handled = self.submit(token, session, request, None);
                self.resuming = false;
                handled
            }
        }
    }

    /// The connection closed: forget its deferred request (a buffer still
    /// being allocated for it is closed when it comes).
    pub fn abandon(&mut self, token: u64) {
        if let Some(Deferred::Alloc { result: Some(result), .. }) = self.deferred.remove(&token) {
            discard(result);
        }
    }

    /// When a parked request's wait ends, at the latest.
    pub(super) fn next_park_deadline(&self) -> Option<Instant> {
        self.deferred
            .values()
            .filter_map(|d| match d {
                Deferred::Parked { deadline, .. } => Some(*deadline),
                Deferred::Alloc { .. } => None,
            })
            .min()
    }

    /// A buffer allocated off the loop: the quota again (others may have
    /// allocated meanwhile), then handed out as `Allocate` would.
    fn finish_allocation(
        &mut self,
        session: &mut Session,
        heap: &str,
        asked: u64,
        result: Result<Buffer, AllocError>,
    ) -> Result<Reply, AllocateRefusal> {
        let buffer = result?;
        self.resuming = true;
        let quota = self.check_quota(session, buffer.len());
        self.resuming = false;
        if let Err(e) = quota {
            discard(Ok(buffer));
            return Err(e.into());
        }
        let properties = buffer.properties().hint();
        let len = buffer.len();
        let (id, fd, len) = self.hand_out(session, buffer, len)?;
        tracing::debug!(uid = session.peer.uid, id, len, asked, heap, "allocated off the loop");
        let response =
            Response::Allocated { id, len, heap: heap.to_owned() }.for_version(session.version(), properties);
        Ok(Reply { response, fd: Some(fd), close: false })
    }
}

/// Drop a buffer nobody will get: its last close frees its pages (tens of
/// milliseconds for a large dma-buf), so it is closed off the loop.
fn discard(result: Result<Buffer, AllocError>) {
    if let Ok(buffer) = result {
        if let Ok(fd) = buffer.into_fd() {
            dmabroker::closer::close_later(fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Handled;
    use crate::peer::Peer;
    use crate::policy::Policy;
    use crate::service::{Service, Session, SweepTiming};
    use dmabroker::heap::Heaps;
    use dmabroker::proto::{AllocateRequest, PublishRequest, Request, Response};
    use std::time::{Duration, Instant};

    const OWNER: u32 = 4242;
    const OTHER: u32 = 4343;

    fn session(service: &mut Service, uid: u32) -> Session {
        let peer = Peer { uid, gid: uid, pid: std::process::id(), groups: vec![uid], pidfd: None };
        let mut s = Session::new(peer, &service.policy);
        service.handle(&mut s, Request::Hello { min_version: 1, max_version: 1 }, None);
        s
    }

    fn alloc(len: u64) -> Request {
        Request::Allocate(AllocateRequest { heap: "memfd".into(), len, align: 1, contiguous: false, name: None })
    }

    /// Wait (ticking as the loop does) until `token`'s deferred request is answered.
    fn answer(service: &mut Service, token: u64, s: &mut Session) -> Response {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            service.tick();
            if service.finished().contains(&token) {
                if let Handled::Now(reply) = service.resume(token, s) {
                    return reply.response;
                }
            }
            assert!(Instant::now() < deadline, "the deferred request was never answered");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Finding 2: a large allocation ran on the loop, so every other client
    /// waited for the kernel to allocate (and zero, reserve or pin) it. Now
    /// it goes to the allocation thread: the request is deferred, another
    /// client is answered meanwhile, then the reply comes (quota checked again).
    #[test]
    fn a_large_allocation_is_answered_off_the_loop() {
        let policy = Policy::parse(
            &format!("[[user]]\nuid = {OTHER}\nheaps = [\"memfd\"]\nmax_bytes = \"1MiB\"\nmax_buffers = 8\n"),
            OWNER,
        )
        .unwrap();
        let mut service = Service::new(policy, Heaps::discover(), None, SweepTiming::default());
        let mut owner = session(&mut service, OWNER);
        let mut other = session(&mut service, OTHER);
        let len = crate::offload::LARGE * 4;
        assert!(matches!(service.submit(1, &mut owner, alloc(len), None), Handled::Later), "allocated on the loop");
        match service.submit(2, &mut other, alloc(4096), None) {
            Handled::Now(r) => assert!(matches!(r.response, Response::Allocated { len: 4096, .. }), "{:?}", r.response),
            Handled::Later => panic!("a small allocation was deferred"),
        }
        match answer(&mut service, 1, &mut owner) {
            Response::Allocated { len: got, .. } => assert_eq!(got, len),
            r => panic!("{r:?}"),
        }
        assert_eq!(service.registry().usage(OWNER).buffers, 1);
    }

    /// A deferred allocation whose connection closed is dropped, not charged.
    #[test]
    fn an_abandoned_large_allocation_is_not_charged() {
        let policy = Policy::parse("", OWNER).unwrap();
        let mut service = Service::new(policy, Heaps::discover(), None, SweepTiming::default());
        let mut owner = session(&mut service, OWNER);
        assert!(matches!(service.submit(7, &mut owner, alloc(crate::offload::LARGE), None), Handled::Later));
        service.abandon(7);
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            assert!(service.finished().is_empty());
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(service.registry().usage(OWNER).buffers, 0);
    }

    /// Finding 2: a request refused for quota swept `/proc` on the loop
    /// (any user can make a scan slow: many processes, fds, threads). Now it
    /// waits for the sweep thread's scan, the loop serving others meanwhile,
    /// and is answered after it. (The slowness is injected: a scan for the
    /// test's buffer takes a second more.)
    #[test]
    fn a_quota_refusal_waits_for_its_scan_off_the_loop() {
        use crate::registry::FileId;
        use rustix::fs::{MemfdFlags, SealFlags};
        let policy = Policy::parse(
            &format!(
                "[[user]]\nuid = {OWNER}\nheaps = [\"memfd\"]\nmax_bytes = \"1MiB\"\nmax_buffers = 1\npublish = true\n"
            ),
            0,
        )
        .unwrap();
        let timing = SweepTiming { interval: Duration::from_secs(3600), duty_factor: 1 };
        let mut service = Service::new(policy, Heaps::discover(), None, timing);
        service.scan_own_process = true;
        let mut owner = session(&mut service, OWNER);
        let mut other = session(&mut service, OTHER);
        // A memfd the client made: only a scan can tell its creator let go.
        let memfd = rustix::fs::memfd_create("pressure", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&memfd, 4096).unwrap();
        rustix::fs::fcntl_add_seals(&memfd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        let st = rustix::fs::fstat(&memfd).unwrap();
        let file = FileId { major: rustix::fs::major(st.st_dev), minor: rustix::fs::minor(st.st_dev), ino: st.st_ino };
        let p = PublishRequest { name: Some("p".into()), grants: Vec::new(), one_shot: false, expires_in_secs: None };
        let r = service.handle(&mut owner, Request::Publish(p), Some(memfd)).response;
        assert!(matches!(r, Response::Published { .. }), "{r:?}");
        service.unpin_all(&mut owner);
        service.handle(&mut owner, Request::Unpublish { key: "p".into() }, None);
        *crate::holders::SLOW_SCAN_FOR.lock().unwrap() = Some(file);
        let start = Instant::now();
        let handled = service.submit(1, &mut owner, alloc(4096), None);
        let submitted = start.elapsed();
        let served = service.submit(2, &mut other, Request::Stats, None);
        let response = match handled {
            Handled::Later => answer(&mut service, 1, &mut owner),
            Handled::Now(r) => r.response,
        };
        *crate::holders::SLOW_SCAN_FOR.lock().unwrap() = None;
        assert!(submitted < Duration::from_millis(300), "the loop scanned for the quota refusal: {submitted:?}");
        assert!(matches!(served, Handled::Now(_)));
        assert!(matches!(response, Response::Allocated { .. }), "answered after the scan: {response:?}");
    }
}
