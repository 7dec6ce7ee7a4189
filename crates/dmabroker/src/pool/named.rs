//! Pools by name through the broker (protocol version 3; the exchange is
//! drawn in [`crate::proto::pools`]).
//!
//! A producer registers its pool under a name with an ACL
//! ([`PoolRegistration::register`]) and, whenever its doorbell polls
//! readable, takes the sockets of the consumers the broker let in
//! ([`PoolRegistration::accept`]) and attaches them
//! ([`super::Producer::attach`]). A consumer asks the broker for the pool
//! by name ([`attach_by_name`]): it gets a socket connected to the producer
//! only when the ACL grants its uid (or one of its groups) access, and
//! otherwise the broker's refusal, which names the fix.
//!
//! ```no_run
//! use dmabroker::pool::{attach_by_name, ConsumerOptions, PoolOptions, PoolRegistration, Producer};
//! use dmabroker::Heaps;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = dmabroker::proto::default_client_socket();
//! let mut producer = Producer::allocate(&Heaps::discover(), "memfd", &PoolOptions::new(4, 4096))?;
//! let mut registration = PoolRegistration::register(&broker, "cam0", &["uid=1000:ro".parse()?], "NV12 1920x1080")?;
//! // ... in another process (uid 1000):
//! let (mut consumer, info) = attach_by_name(&broker, "cam0", &ConsumerOptions::default())?;
//! // producer, when registration.as_fd() polls readable:
//! while let Some((socket, who)) = registration.accept()? {
//!     println!("uid {} attached ({})", who.uid, who.access);
//!     producer.attach(socket)?;
//! }
//! # let _ = (&mut consumer, info); Ok(()) }
//! ```

use super::{AttachError, Consumer, ConsumerOptions};
use crate::client::{Client, ConnectError, TransportError};
use crate::proto::{self, wire, Access, ErrorCode, Grant, PoolPeer, RegisterPoolRequest, Request, Response};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// Why a pool could not be registered or attached by name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NamedPoolError {
    /// No broker at the socket path, or the broker refused the connection.
    #[error("broker: {0}")]
    Connect(#[from] ConnectError),
    /// The broker speaks a version without pools by name.
    #[error(
        "the broker at {path} speaks protocol version {version}; pools by name need version {need}: upgrade the broker",
        need = proto::POOLS_VERSION
    )]
    OldBroker {
        /// The broker socket.
        path: String,
        /// The version it negotiated.
        version: u16,
    },
    /// No live producer has registered that name.
    #[error("{0}")]
    NotFound(String),
    /// The ACL (attach) or the policy (register) does not allow it.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// A live producer has the name already.
    #[error("{0}")]
    AlreadyExists(String),
    /// Any other refusal (busy, limits).
    #[error("broker refused ({code}): {message}")]
    Refused {
        /// The code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// The pool handshake with the producer failed.
    #[error("attaching to the pool's producer: {0}")]
    Attach(#[from] AttachError),
    /// Talking to the broker failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A socket call failed.
    #[error("{op}: {source}")]
    Os {
        /// The call.
        op: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
}

impl NamedPoolError {
    fn from_refusal(code: ErrorCode, message: String) -> Self {
        match code {
            ErrorCode::NotFound => Self::NotFound(message),
            ErrorCode::NotAllowed => Self::NotAllowed(message),
            ErrorCode::AlreadyExists => Self::AlreadyExists(message),
            code => Self::Refused { code, message },
        }
    }
}

fn connect(broker: &Path) -> Result<Client, NamedPoolError> {
    let client = Client::connect(broker)?;
    if client.version() < proto::POOLS_VERSION {
        return Err(NamedPoolError::OldBroker { path: broker.display().to_string(), version: client.version() });
    }
    Ok(client)
}

/// A pool registered under a name: the producer's end of its doorbell.
/// Dropping it ends the registration (the broker frees the name).
#[derive(Debug)]
#[must_use = "dropping the registration ends it (the broker frees the name)"]
pub struct PoolRegistration {
    doorbell: OwnedFd,
    name: String,
    buf: Vec<u8>,
}

impl PoolRegistration {
    /// Register pool `name` with the broker at `broker`, attachable by the
    /// caller's uid, root and whoever `grants` name. The broker connection
    /// is closed again; the registration lives in the doorbell.
    ///
    /// # Errors
    /// [`NamedPoolError`]: no broker, an old broker, the name taken by a
    /// running producer, the policy forbids publishing, limits.
    pub fn register(broker: &Path, name: &str, grants: &[Grant], description: &str) -> Result<Self, NamedPoolError> {
        let mut client = connect(broker)?;
        let (doorbell, theirs) =
            rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
                .map_err(|source| NamedPoolError::Os { op: "socketpair", source })?;
        let request = Request::RegisterPool(RegisterPoolRequest {
            name: name.into(),
            grants: grants.to_vec(),
            description: description.chars().take(proto::MAX_NAME_LEN).collect(),
        });
        match client.call(&request, Some(theirs.as_fd()))? {
            (Response::PoolRegistered { .. }, _) => {}
            (Response::Error { code, message }, _) => return Err(NamedPoolError::from_refusal(code, message)),
            (other, _) => return Err(TransportError::Protocol(format!("unexpected reply {other:?}")).into()),
        }
        Ok(Self { doorbell, name: name.into(), buf: vec![0; 512] })
    }

    /// The registered name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Take one consumer the broker let in, without waiting: its socket
    /// (for [`super::Producer::attach`]) and who it is, as the broker saw
    /// it. `Ok(None)`: none waiting.
    ///
    /// # Errors
    /// [`NamedPoolError::Transport`] when the broker hung up (it exited:
    /// register again with the new one) or sent something malformed.
    pub fn accept(&mut self) -> Result<Option<(OwnedFd, PoolPeer)>, NamedPoolError> {
        loop {
            let received = match wire::recv(self.doorbell.as_fd(), &mut self.buf, true) {
                Ok(Some(r)) => r,
                Ok(None) => return Err(TransportError::Closed.into()),
                Err(Errno::AGAIN) => return Ok(None),
                Err(e) => return Err(TransportError::Io(e).into()),
            };
            let Ok(Response::PoolConsumer(peer)) = proto::decode_response(&self.buf[..received.len]) else {
                // Only the broker holds the other end: a message we do not
                // understand is from a newer broker; skip it.
                continue;
            };
            let Some(socket) = received.fds.into_iter().next() else { continue };
            return Ok(Some((socket, peer)));
        }
    }
}

impl AsFd for PoolRegistration {
    /// The doorbell: polls readable when a consumer waits in
    /// [`PoolRegistration::accept`], and hangs up when the broker exits.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.doorbell.as_fd()
    }
}

/// What the broker said about a pool attached by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedPool {
    /// The producer's uid.
    pub producer_uid: u32,
    /// What the ACL granted.
    pub access: Access,
    /// The producer's description.
    pub description: String,
}

/// Attach to the pool registered as `name` with the broker at `broker`,
/// under its ACL.
///
/// # Errors
/// [`NamedPoolError::NotAllowed`] with the broker's message when no grant
/// covers the caller; [`NamedPoolError::NotFound`] when no producer runs;
/// [`NamedPoolError::Attach`] when the pool handshake fails.
pub fn attach_by_name(
    broker: &Path,
    name: &str,
    options: &ConsumerOptions,
) -> Result<(Consumer, AttachedPool), NamedPoolError> {
    let mut client = connect(broker)?;
    let (info, socket) = match client.call(&Request::AttachPool { name: name.into() }, None)? {
        (Response::PoolAttached { producer_uid, access, description }, Some(fd)) => {
            (AttachedPool { producer_uid, access, description }, fd)
        }
        (Response::Error { code, message }, _) => return Err(NamedPoolError::from_refusal(code, message)),
        (other, _) => return Err(TransportError::Protocol(format!("unexpected reply {other:?}")).into()),
    };
    drop(client);
    Ok((Consumer::attach(socket, options)?, info))
}
