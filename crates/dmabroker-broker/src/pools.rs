//! Pools by name (protocol version 3): the table of registered streaming
//! pools, their ACLs, and the attach that joins a consumer to a producer.
//!
//! A registration is a name, the producer's uid, its grants and the
//! broker's end of the producer's doorbell (a `SOCK_SEQPACKET` socket pair
//! the producer made; see [`dmabroker::proto::pools`]). On an attach that
//! the ACL allows, the broker makes a socket pair, pushes one end to the
//! producer on the doorbell (non-blocking: a producer that does not read
//! gets the consumer refused as busy, the broker never waits) and replies
//! to the consumer with the other end. From then on the two talk the pool
//! protocol directly; the broker keeps nothing of the attachment.
//!
//! A registration ends when the producer closes its end of the doorbell:
//! the table checks for hang-ups lazily (on every register, attach and
//! sweep), so a restarted producer can take its name again at once.

use dmabroker::closer::CloseLater;
use dmabroker::proto::{Access, ErrorCode, Grant, PoolPeer, RegisterPoolRequest, Response};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

/// Registered pools the broker keeps at most (each costs one fd).
pub const MAX_POOLS: usize = 256;
/// Registered pools one uid may have at once.
pub const MAX_POOLS_PER_UID: usize = 16;

/// One registered pool.
#[derive(Debug)]
struct Registration {
    owner_uid: u32,
    grants: Vec<Grant>,
    description: String,
    /// The producer's socket: closed by a closer thread (its receive queue
    /// may hold fds the producer sent, whose release can block).
    doorbell: CloseLater,
}

impl Registration {
    /// The producer closed its end (or exited).
    fn hung_up(&self) -> bool {
        let mut fds = [PollFd::new(&self.doorbell, PollFlags::RDHUP)];
        let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
        match poll(&mut fds, Some(&zero)) {
            Ok(_) => fds[0].revents().intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
            Err(_) => false,
        }
    }

    /// The owner and root get read-write; others what their grants say.
    fn access_for(&self, uid: u32, groups: &[u32]) -> Option<Access> {
        crate::registry::granted_access(self.owner_uid, &self.grants, uid, groups)
    }
}

/// Why a pool operation was refused: the wire code and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRefusal {
    /// What the client can do about it.
    pub code: ErrorCode,
    /// Cause and fix.
    pub message: String,
}

fn refuse(code: ErrorCode, message: String) -> PoolRefusal {
    PoolRefusal { code, message }
}

/// Who asks (from the session's peer).
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// pid (0 when outside the broker's pid namespace).
    pub pid: u32,
    /// Primary and supplementary groups.
    pub groups: &'a [u32],
    /// Whether the policy lets this uid publish (registering is publishing).
    pub may_publish: bool,
}

/// The registered pools.
#[derive(Debug, Default)]
pub struct Pools {
    by_name: HashMap<String, Registration>,
}

impl Pools {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registered pools (live or not yet swept).
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// No pool registered.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Forget every pool whose producer hung up; returns how many.
    pub fn sweep(&mut self) -> usize {
        let before = self.by_name.len();
        self.by_name.retain(|name, r| {
            let keep = !r.hung_up();
            if !keep {
                tracing::info!(pool = %name, uid = r.owner_uid, "pool producer gone: name released");
            }
            keep
        });
        before - self.by_name.len()
    }

    /// Register `request.name` for `asker`, keeping `doorbell`.
    ///
    /// # Errors
    /// `NotAllowed` (the policy forbids publishing), `BadRequest` (the fd
    /// is not a Unix `SOCK_SEQPACKET` socket), `AlreadyExists` (a live
    /// producer has the name), `Busy` (the limits).
    pub fn register(
        &mut self,
        asker: Asker<'_>,
        request: RegisterPoolRequest,
        doorbell: OwnedFd,
    ) -> Result<Response, PoolRefusal> {
        // Until kept, refused or not, a client's fd is closed off the loop.
        let doorbell = CloseLater::connection(doorbell);
        if !asker.may_publish {
            return Err(refuse(
                ErrorCode::NotAllowed,
                format!(
                    "uid {} may not register pools (the policy does not let it publish); ask the administrator to set publish = true for it",
                    asker.uid
                ),
            ));
        }
        check_doorbell(&doorbell)?;
        if let Some(existing) = self.by_name.get(&request.name) {
            if !existing.hung_up() {
                return Err(refuse(
                    ErrorCode::AlreadyExists,
                    format!(
                        "pool `{}` is already registered by uid {} and its producer is running; choose another name or stop that producer",
                        request.name, existing.owner_uid
                    ),
                ));
            }
            self.by_name.remove(&request.name);
        }
        if self.by_name.len() >= MAX_POOLS
            || self.by_name.values().filter(|r| r.owner_uid == asker.uid).count() >= MAX_POOLS_PER_UID
        {
            self.sweep();
        }
        if self.by_name.len() >= MAX_POOLS {
            return Err(refuse(
                ErrorCode::Busy,
                format!("the broker holds {MAX_POOLS} pools, its limit; retry after some producers stop"),
            ));
        }
        if self.by_name.values().filter(|r| r.owner_uid == asker.uid).count() >= MAX_POOLS_PER_UID {
            return Err(refuse(
                ErrorCode::Busy,
                format!(
                    "uid {} has {MAX_POOLS_PER_UID} pools registered, the per-user limit; stop a producer first",
                    asker.uid
                ),
            ));
        }
        tracing::info!(pool = %request.name, uid = asker.uid, grants = request.grants.len(), "pool registered");
        let name = request.name.clone();
        self.by_name.insert(
            request.name,
            Registration { owner_uid: asker.uid, grants: request.grants, description: request.description, doorbell },
        );
        Ok(Response::PoolRegistered { name })
    }

    /// Attach `asker` to pool `name`: the reply and the consumer's end.
    ///
    /// # Errors
    /// `NotFound` (no live producer has the name), `NotAllowed` (the ACL
    /// grants `asker` nothing), `Busy` (the producer does not take
    /// consumers now), `Internal` (no socket pair).
    pub fn attach(&mut self, asker: Asker<'_>, name: &str) -> Result<(Response, OwnedFd), PoolRefusal> {
        let not_found = || {
            refuse(
                ErrorCode::NotFound,
                format!("no pool named `{name}` is registered with this broker: is its producer running (with the same broker socket)?"),
            )
        };
        let registration = self.by_name.get(name).ok_or_else(not_found)?;
        if registration.hung_up() {
            self.by_name.remove(name);
            return Err(not_found());
        }
        let Some(access) = registration.access_for(asker.uid, asker.groups) else {
            return Err(refuse(
                ErrorCode::NotAllowed,
                format!(
                    "pool `{name}` of uid {} grants nothing to uid {} (groups {:?}); its producer must grant it, e.g. grants=uid={}:ro",
                    registration.owner_uid, asker.uid, asker.groups, asker.uid
                ),
            ));
        };
        let (producer_end, consumer_end) =
            rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
                .map_err(|e| refuse(ErrorCode::Internal, format!("socketpair: {e}")))?;
        let push = Response::PoolConsumer(PoolPeer { uid: asker.uid, gid: asker.gid, pid: asker.pid, access });
        let bytes = dmabroker::proto::encode_response(&push)
            .map_err(|e| refuse(ErrorCode::Internal, format!("encoding the push: {e}")))?;
        match dmabroker::proto::wire::send(registration.doorbell.as_fd(), &bytes, Some(producer_end.as_fd()), true) {
            Ok(()) => {}
            Err(Errno::AGAIN | Errno::NOBUFS) => {
                return Err(refuse(
                    ErrorCode::Busy,
                    format!(
                        "the producer of pool `{name}` is not taking consumers now (its doorbell is full); retry later"
                    ),
                ))
            }
            Err(_) => {
                self.by_name.remove(name);
                return Err(not_found());
            }
        }
        tracing::info!(pool = %name, uid = asker.uid, pid = asker.pid, %access, "consumer attached to pool");
        let reply = Response::PoolAttached {
            producer_uid: registration.owner_uid,
            access,
            description: registration.description.clone(),
        };
        Ok((reply, consumer_end))
    }
}

/// The doorbell must be a Unix `SOCK_SEQPACKET` socket: the broker sends
/// fds on it.
fn check_doorbell(fd: &impl AsFd) -> Result<(), PoolRefusal> {
    let bad = |what: String| {
        refuse(
            ErrorCode::BadRequest,
            format!("the fd sent with RegisterPool is {what}, not one end of a Unix SOCK_SEQPACKET socket pair; send a socketpair end"),
        )
    };
    match rustix::net::sockopt::socket_type(fd) {
        Ok(SocketType::SEQPACKET) => {}
        Ok(other) => return Err(bad(format!("a socket of type {other:?}"))),
        Err(_) => return Err(bad("not a socket".into())),
    }
    match rustix::net::sockopt::socket_domain(fd) {
        Ok(AddressFamily::UNIX) => Ok(()),
        Ok(other) => Err(bad(format!("a socket of family {other:?}"))),
        Err(e) => Err(bad(format!("a socket whose family is unknown ({e})"))),
    }
}

/// Serve a `RegisterPool` or `AttachPool` request of a session that
/// negotiated `version`.
pub(crate) fn handle(
    service: &mut crate::service::Service,
    session: &mut crate::service::Session,
    version: u16,
    request: dmabroker::proto::Request,
    fd: Option<OwnedFd>,
) -> crate::service::Reply {
    use crate::service::Reply;
    use dmabroker::proto::{Request, POOLS_VERSION};
    if version < POOLS_VERSION {
        return Reply::error(
            ErrorCode::BadRequest,
            format!("pools by name need protocol version {POOLS_VERSION}; this session negotiated version {version}: upgrade the client"),
            false,
        );
    }
    let peer = &session.peer;
    let asker = Asker {
        uid: peer.uid,
        gid: peer.gid,
        pid: peer.pid,
        groups: &peer.groups,
        may_publish: session.limits.publish,
    };
    let refused = |e: PoolRefusal| Reply::error(e.code, e.message, false);
    match request {
        // Names have owners, as publications' (crate::names): kept as
        // `uid/NAME`, the reply names the pool as the producer asked.
        Request::RegisterPool(mut r) => match fd {
            Some(doorbell) => {
                // Registering publishes a stream: the cgroup rules' publish
                // right (and an unknown cgroup's refusal) apply.
                let cgroup = session.cgroup_path().unwrap_or("?");
                let denied = if let Some(why) = session.cgroup_access.refused() {
                    Some(crate::refusal::CgroupUnknown { uid: peer.uid, why: why.to_owned() }.to_string())
                } else {
                    session.cgroup_access.publish_denied().map(|m| {
                        format!(
                            "registering pools is denied in cgroup {cgroup} by {} (publish = false); register from \
                             another cgroup of yours, or ask the administrator to change the rule",
                            m.rule.describe()
                        )
                    })
                };
                if let Some(message) = denied.filter(|_| asker.may_publish) {
                    drop(CloseLater::connection(doorbell));
                    return refused(refuse(ErrorCode::NotAllowed, message));
                }
                let asked = r.name.clone();
                match crate::names::qualify(&service.policy, &asked, peer.uid) {
                    Ok(key) => r.name = key,
                    Err(e) => {
                        drop(CloseLater::connection(doorbell));
                        return refused(refuse(e.code, e.message));
                    }
                }
                match service.pools.register(asker, r, doorbell) {
                    Ok(_) => Reply { response: Response::PoolRegistered { name: asked }, fd: None, close: false },
                    Err(e) => refused(e),
                }
            }
            // The server refuses fd-less RegisterPool before it gets here.
            None => Reply::error(ErrorCode::BadRequest, "RegisterPool needs its doorbell fd", false),
        },
        Request::AttachPool { name } => {
            let pools = &service.pools;
            let key = crate::names::resolve(&service.policy, &name, peer.uid, |k| pools.by_name.contains_key(k));
            let Some(key) = key else {
                return refused(refuse(
                    ErrorCode::NotFound,
                    format!(
                        "no pool named `{name}` is registered with this broker by a producer this client trusts \
                         (itself, root, the broker, or the uid the policy reserves the name for): is its producer \
                         running (with the same broker socket)? Another user's pool is attached as `<uid>/{name}`"
                    ),
                ));
            };
            match service.pools.attach(asker, &key) {
                Ok((response, end)) => Reply { response, fd: Some(end), close: false },
                Err(e) => refused(e),
            }
        }
        _ => Reply::error(ErrorCode::Internal, "not a pool request", false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asker(uid: u32, groups: &[u32]) -> Asker<'_> {
        Asker { uid, gid: uid, pid: 1, groups, may_publish: true }
    }

    fn doorbell() -> (OwnedFd, OwnedFd) {
        rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap()
    }

    fn request(name: &str, grants: &[&str]) -> RegisterPoolRequest {
        RegisterPoolRequest {
            name: name.into(),
            grants: grants.iter().map(|g| g.parse().unwrap()).collect(),
            description: "test".into(),
        }
    }

    #[test]
    fn acl_decides_and_the_producer_hears_who_attached() {
        let mut pools = Pools::new();
        let (mine, theirs) = doorbell();
        pools.register(asker(1000, &[1000]), request("cam0", &["uid=2000:ro", "gid=44:ro"]), theirs).unwrap();
        let e = pools.attach(asker(3000, &[3000]), "cam0").unwrap_err();
        assert_eq!(e.code, ErrorCode::NotAllowed);
        assert!(e.message.contains("grants=uid=3000:ro"), "{}", e.message);
        let (reply, _end) = pools.attach(asker(2000, &[2000]), "cam0").unwrap();
        assert!(matches!(reply, Response::PoolAttached { producer_uid: 1000, access: Access::ReadOnly, .. }));
        let mut buf = [0u8; 256];
        let got = dmabroker::proto::wire::recv(mine.as_fd(), &mut buf, true).unwrap().unwrap();
        assert_eq!(got.fds.len(), 1);
        let push = dmabroker::proto::decode_response(&buf[..got.len]).unwrap();
        assert!(matches!(push, Response::PoolConsumer(PoolPeer { uid: 2000, access: Access::ReadOnly, .. })));
        // By group.
        assert!(pools.attach(asker(5000, &[5000, 44]), "cam0").is_ok());
    }

    #[test]
    fn a_name_is_free_again_once_its_producer_hangs_up() {
        let mut pools = Pools::new();
        let (mine, theirs) = doorbell();
        pools.register(asker(1000, &[]), request("cam0", &[]), theirs).unwrap();
        let (_m2, t2) = doorbell();
        let e = pools.register(asker(1001, &[]), request("cam0", &[]), t2).unwrap_err();
        assert_eq!(e.code, ErrorCode::AlreadyExists);
        drop(mine);
        assert_eq!(pools.attach(asker(1000, &[]), "cam0").unwrap_err().code, ErrorCode::NotFound);
        let (_m3, t3) = doorbell();
        assert!(pools.register(asker(1001, &[]), request("cam0", &[]), t3).is_ok());
        assert_eq!(pools.attach(asker(1000, &[]), "nope").unwrap_err().code, ErrorCode::NotFound);
    }

    #[test]
    fn a_doorbell_must_be_a_seqpacket_socket() {
        let mut pools = Pools::new();
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert_eq!(pools.register(asker(1, &[]), request("p", &[]), r).unwrap_err().code, ErrorCode::BadRequest);
        let (_a, b) =
            rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None).unwrap();
        assert_eq!(pools.register(asker(1, &[]), request("p", &[]), b).unwrap_err().code, ErrorCode::BadRequest);
        let mut no = asker(1, &[]);
        no.may_publish = false;
        let (_a, b) = doorbell();
        assert_eq!(pools.register(no, request("p", &[]), b).unwrap_err().code, ErrorCode::NotAllowed);
    }

    #[test]
    fn a_producer_that_does_not_read_makes_attaches_busy_not_the_broker_wait() {
        let mut pools = Pools::new();
        let (_mine, theirs) = doorbell();
        pools.register(asker(1000, &[]), request("cam0", &[]), theirs).unwrap();
        let mut busy = false;
        for _ in 0..10_000 {
            match pools.attach(asker(1000, &[]), "cam0") {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::Busy, "{}", e.message);
                    busy = true;
                    break;
                }
            }
        }
        assert!(busy);
    }
}
