//! The blocking client of the broker daemon (`dmabroker serve`).
//!
//! ```no_run
//! use dmabroker::client::{Client, PublishOptions};
//! use dmabroker::proto::Grant;
//! let mut client = Client::connect(dmabroker::proto::default_client_socket()).unwrap();
//! let buffer = client.allocate("memfd", 1 << 20, Some("frame")).unwrap();
//! let key = client
//!     .publish(&buffer, PublishOptions::token().grant("uid=1000:ro".parse::<Grant>().unwrap()))
//!     .unwrap();
//! // Another process: Client::connect(..)?.import(&key)?
//! # let _ = key;
//! ```
//!
//! Every call is one request datagram and one reply on a `SOCK_SEQPACKET`
//! connection; fds travel with `SCM_RIGHTS` (see `docs/PROTOCOL.md`). A
//! `Client` is not `Sync`: use one per thread.
//!
//! Every call is bounded in time: connecting, the hello exchange and each
//! request give up after [`DEFAULT_TIMEOUT`] (5 s) with
//! [`ConnectError::TimedOut`] or [`TransportError::TimedOut`], so a stopped
//! (`SIGSTOP`) or wedged broker cannot hang its clients.
//! [`Client::connect_with_timeout`] and [`Client::set_timeout`] change the
//! bound (`None`: wait for ever).

use crate::buffer::{Buffer, FromFdError};
use crate::constraints::Constraints;
use crate::proto::{
    self, wire, AllocateForRequest, AllocateRequest, CgroupStats, ChoiceReport, ErrorCode, Grant, ListEntry,
    PublishRequest, Request, Response, Stats,
};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long [`Client::connect`] and each call wait for the broker by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Failures of the connection itself, common to every call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A socket call failed.
    #[error("broker connection: {0}")]
    Io(#[from] Errno),
    /// The broker did not take the request or did not answer it within the
    /// client's timeout. The connection is unusable afterwards (a late reply
    /// would answer the wrong request): connect again.
    #[error(
        "the broker did not answer within {} ms: it is stopped (SIGSTOP, a debugger) or overloaded; \
         check the broker process (`systemctl status dmabroker`), then connect again \
         (or allow more time with Client::set_timeout)",
        after.as_millis()
    )]
    TimedOut {
        /// The timeout that passed.
        after: Duration,
    },
    /// The broker closed the connection.
    #[error("the broker closed the connection (it restarted or ended this session)")]
    Closed,
    /// The broker sent something this client does not understand.
    #[error("protocol violation by the broker: {0}")]
    Protocol(String),
    /// The request is invalid before it is even sent.
    #[error("invalid request: {0}")]
    InvalidRequest(#[from] proto::CodecError),
    /// The reply carried a buffer's fd that the kernel could not give this
    /// process: its fd table is at `RLIMIT_NOFILE`. The broker ends that
    /// buffer's charge once nothing holds it; the connection stays usable.
    #[error(
        "the broker's reply carried a buffer this process could not receive: it is at its file descriptor limit \
         (RLIMIT_NOFILE {limit}); close fds it no longer needs or raise the limit (`ulimit -n`, LimitNOFILE=), \
         then retry"
    )]
    FdLimit {
        /// The soft limit when the reply came.
        limit: u64,
    },
}

/// Why [`Client::connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Nothing listens at the path.
    #[error("no broker at {path}: start one with `dmabroker serve` (or `systemctl start dmabroker.socket`), or pass --socket / DMABROKER_SOCKET ({source})")]
    NoBroker {
        /// The socket path.
        path: PathBuf,
        /// `ENOENT` or `ECONNREFUSED`.
        source: Errno,
    },
    /// The socket exists but this user may not connect to it.
    #[error("permission denied connecting to {path}: ask the administrator to make the socket reachable")]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
    },
    /// The broker speaks no version this client speaks.
    #[error("the broker speaks no protocol version in {min}..={max}: {message}")]
    VersionMismatch {
        /// Oldest version of this client.
        min: u16,
        /// Newest version of this client.
        max: u16,
        /// The broker's explanation.
        message: String,
    },
    /// The broker refused the session (`Busy`: too many clients, ...).
    #[error("the broker refused the session: {message}")]
    Refused {
        /// The code (`Busy` at the client limits).
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// Something listens at the path but did not accept the connection or
    /// answer the hello within the timeout: a stopped (`SIGSTOP`) or wedged
    /// broker, or a socket that is not a broker's.
    #[error(
        "the broker at {path} did not answer within {} ms: it is stopped (SIGSTOP, a debugger), \
         wedged or not a dmabroker broker; check the process behind the socket \
         (`systemctl status dmabroker`, `ss -xlp | grep dmabroker`) or restart it",
        after.as_millis()
    )]
    TimedOut {
        /// The socket path.
        path: PathBuf,
        /// The timeout that passed.
        after: Duration,
    },
    /// Connection failure.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Why [`Client::allocate`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AllocateError {
    /// The request is wrong before it is sent (size 0, an alignment that is
    /// not a power of two); the broker was not asked.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The policy does not let this user allocate from that heap.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The allocation would exceed this user's quota.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The broker's machine has no such heap.
    #[error("{0}")]
    NoSuchHeap(String),
    /// The heap could not allocate.
    #[error("allocation failed: {0}")]
    AllocationFailed(String),
    /// Any other refusal.
    #[error("broker refused ({code}): {message}")]
    Refused {
        /// The code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// The fd received is not usable as a buffer.
    #[error("the broker sent an unusable buffer: {0}")]
    BadBuffer(#[from] FromFdError),
    /// Connection failure.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Why [`Client::allocate_for`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AllocateForError {
    /// The broker speaks protocol version 1, which cannot allocate by constraints.
    #[error(
        "the broker speaks protocol version {version}: allocation by constraints needs version {}; \
         upgrade the broker, or allocate from a named heap",
        proto::ALLOCATE_FOR_VERSION
    )]
    Unsupported {
        /// The negotiated version.
        version: u16,
    },
    /// The request is invalid (an impossible value, conflicting devices, size 0).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No heap this user may use meets every requirement: the broker's
    /// explanation (each unmet requirement, the devices behind it, what each
    /// heap lacks, heaps the policy does not allow).
    #[error("{0}")]
    NoSuitableHeap(String),
    /// `heap` was given and the policy does not allow it.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The allocation would exceed this user's quota.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// `heap` was given and the broker's machine has no such heap.
    #[error("{0}")]
    NoSuchHeap(String),
    /// Every suitable heap failed to allocate.
    #[error("allocation failed: {0}")]
    AllocationFailed(String),
    /// Any other refusal.
    #[error("broker refused ({code}): {message}")]
    Refused {
        /// The code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// The fd received is not usable as a buffer.
    #[error("the broker sent an unusable buffer: {0}")]
    BadBuffer(#[from] FromFdError),
    /// Connection failure.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// What [`Client::allocate_for`] returns: the buffer and why its heap.
#[derive(Debug)]
pub struct AllocatedFor {
    /// The buffer (charged to this user until every holder has closed it).
    pub buffer: Buffer,
    /// The broker's id of the buffer.
    pub id: u64,
    /// The heap chosen and why.
    pub choice: ChoiceReport,
}

/// Why [`Client::publish`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The policy does not let this user publish.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The name is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// Holding the buffer would exceed this user's quota.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The fd is not a shareable buffer (or a memfd without size seals).
    #[error("{0}")]
    NotABuffer(String),
    /// A read-only grant on a buffer whose mode cannot be enforced.
    #[error("{0}")]
    ReadOnlyUnsupported(String),
    /// Any other refusal.
    #[error("broker refused ({code}): {message}")]
    Refused {
        /// The code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// Connection failure.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Why [`Client::import`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// No publication with that key (withdrawn, expired, consumed, or a typo).
    #[error("{0}")]
    NotFound(String),
    /// The ACL does not grant this user access.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// Any other refusal.
    #[error("broker refused ({code}): {message}")]
    Refused {
        /// The code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// The fd received is not usable as a buffer.
    #[error("the broker sent an unusable buffer: {0}")]
    BadBuffer(#[from] FromFdError),
    /// Connection failure.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Why [`Client::unpublish`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnpublishError {
    /// No publication with that key.
    #[error("{0}")]
    NotFound(String),
    /// Only the publisher (or root) may withdraw it.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// Any other refusal.
    #[error("broker refused ({code}): {message}")]
    Refused {
        /// The code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// Connection failure.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Why [`Client::list`] or [`Client::stats`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The broker refused.
    #[error("broker refused ({code}): {message}")]
    Refused {
        /// The code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// Connection failure.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// How to publish: under a name or as a token, who may import, for how long.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// The name; `None` asks the broker for an unguessable token.
    pub name: Option<String>,
    /// Who else may import it and how (the publisher's own uid always may).
    pub grants: Vec<Grant>,
    /// Withdraw it after its first import.
    pub one_shot: bool,
    /// Withdraw it after this long (whole seconds).
    pub expires_in: Option<Duration>,
}

impl PublishOptions {
    /// Publish under `name`.
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: Some(name.into()), ..Self::default() }
    }

    /// Publish as a 128-bit token chosen by the broker.
    pub fn token() -> Self {
        Self::default()
    }

    /// Add a grant.
    pub fn grant(mut self, grant: Grant) -> Self {
        self.grants.push(grant);
        self
    }

    /// Withdraw after the first import.
    pub fn one_shot(mut self, yes: bool) -> Self {
        self.one_shot = yes;
        self
    }

    /// Withdraw after `after`.
    pub fn expires_in(mut self, after: Duration) -> Self {
        self.expires_in = Some(after);
        self
    }
}

/// What [`Client::import`] returns: the buffer and how it may be used.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The buffer (a read-only grant gives an fd that cannot be mapped writable).
    pub buffer: Buffer,
    /// The access granted.
    pub access: proto::Access,
    /// Who published it.
    pub publisher_uid: u32,
}

/// A connection to the broker.
#[derive(Debug)]
pub struct Client {
    socket: OwnedFd,
    version: u16,
    server: String,
    buf: Vec<u8>,
    /// The physical properties around the last reply (version 3).
    properties: Option<crate::buffer::PropertyHint>,
    /// The bound on each send and receive (`SO_SNDTIMEO`/`SO_RCVTIMEO`).
    timeout: Option<Duration>,
    /// A call timed out: a late reply may still come, so the connection
    /// cannot be trusted to pair requests with replies any more.
    poisoned: bool,
}

impl Client {
    /// `socket(AF_UNIX, SOCK_SEQPACKET)` + `connect(path)` + the hello exchange.
    ///
    /// Waits at most [`DEFAULT_TIMEOUT`] for the broker to accept and to
    /// answer, and so does every later call (see [`Client::set_timeout`]).
    ///
    /// # Errors
    /// [`ConnectError`] saying whether no broker runs there, access is denied,
    /// versions do not match, or the broker did not answer in time.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ConnectError> {
        Self::connect_with_timeout(path, Some(DEFAULT_TIMEOUT))
    }

    /// [`Client::connect`] with another bound on connecting, the hello and
    /// each later call; `None` waits for ever (a stopped broker then hangs
    /// the caller). A zero duration is taken as 1 ms.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub fn connect_with_timeout(path: impl AsRef<Path>, timeout: Option<Duration>) -> Result<Self, ConnectError> {
        let path = path.as_ref();
        let socket = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
            .map_err(TransportError::Io)?;
        let timeout = timeout.map(|t| t.max(Duration::from_millis(1)));
        // SO_SNDTIMEO bounds a Unix connect() too: it waits for room in the
        // listener's backlog for at most that long, then fails with EAGAIN.
        set_timeouts(&socket, timeout).map_err(TransportError::Io)?;
        let addr = SocketAddrUnix::new(path).map_err(TransportError::Io)?;
        let timed_out = |after| ConnectError::TimedOut { path: path.to_owned(), after };
        match rustix::net::connect(&socket, &addr) {
            Ok(()) => {}
            Err(e @ (Errno::NOENT | Errno::CONNREFUSED)) => {
                return Err(ConnectError::NoBroker { path: path.to_owned(), source: e })
            }
            Err(Errno::ACCESS | Errno::PERM) => return Err(ConnectError::PermissionDenied { path: path.to_owned() }),
            Err(Errno::AGAIN) if timeout.is_some() => return Err(timed_out(timeout.unwrap_or_default())),
            Err(e) => return Err(TransportError::Io(e).into()),
        }
        let mut client = Self {
            socket,
            version: 0,
            server: String::new(),
            buf: vec![0; proto::MAX_RESPONSE_LEN],
            properties: None,
            timeout,
            poisoned: false,
        };
        let hello = Request::Hello { min_version: proto::MIN_PROTOCOL_VERSION, max_version: proto::PROTOCOL_VERSION };
        let reply = match client.call(&hello, None) {
            Err(TransportError::TimedOut { after }) => return Err(timed_out(after)),
            other => other?,
        };
        match reply {
            (Response::Hello { version, server }, _) => {
                client.version = version;
                client.server = server;
                Ok(client)
            }
            (Response::Error { code: ErrorCode::UnsupportedVersion, message }, _) => {
                Err(ConnectError::VersionMismatch {
                    min: proto::MIN_PROTOCOL_VERSION,
                    max: proto::PROTOCOL_VERSION,
                    message,
                })
            }
            (Response::Error { code, message }, _) => Err(ConnectError::Refused { code, message }),
            (other, _) => Err(unexpected(&other).into()),
        }
    }

    /// The bound on each call ([`DEFAULT_TIMEOUT`] unless changed).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Bound each later call (sending the request, waiting for the reply) by
    /// `timeout`; `None` waits for ever. A zero duration is taken as 1 ms.
    ///
    /// # Errors
    /// The `setsockopt` errno (not expected on a live socket).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        let timeout = timeout.map(|t| t.max(Duration::from_millis(1)));
        set_timeouts(&self.socket, timeout)?;
        self.timeout = timeout;
        Ok(())
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The broker's software version.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Allocate `len` bytes from `heap` through the broker; the buffer is
    /// charged to this user until every holder has closed it.
    ///
    /// # Errors
    /// [`AllocateError`].
    pub fn allocate(&mut self, heap: &str, len: u64, name: Option<&str>) -> Result<Buffer, AllocateError> {
        self.allocate_with(AllocateRequest {
            heap: heap.to_owned(),
            len,
            align: 1,
            contiguous: false,
            name: name.map(str::to_owned),
        })
    }

    /// [`Client::allocate`] with every requirement spelled out.
    ///
    /// # Errors
    /// [`AllocateError`].
    pub fn allocate_with(&mut self, request: AllocateRequest) -> Result<Buffer, AllocateError> {
        // The broker refuses these too, but as AllocationFailed, the code it
        // shares with running out of memory: say it here, as what it is.
        if request.len == 0 {
            return Err(AllocateError::Invalid("size 0: a buffer needs at least one byte".into()));
        }
        if !request.align.is_power_of_two() {
            return Err(AllocateError::Invalid(format!(
                "alignment {} is not a power of two: pass 1 (no requirement), 4096, 2 MiB, ...",
                request.align
            )));
        }
        match self.call(&Request::Allocate(request), None)? {
            (Response::Allocated { .. }, Some(fd)) => Ok(self.adopt(fd)?),
            (Response::Error { code, message }, _) => Err(match code {
                ErrorCode::NotAllowed => AllocateError::NotAllowed(message),
                ErrorCode::QuotaExceeded => AllocateError::QuotaExceeded(message),
                ErrorCode::NoSuchHeap => AllocateError::NoSuchHeap(message),
                ErrorCode::AllocationFailed => AllocateError::AllocationFailed(message),
                code => AllocateError::Refused { code, message },
            }),
            (other, _) => Err(unexpected(&other).into()),
        }
    }

    /// Allocate `len` bytes that meet `constraints` (merged from every
    /// device that will touch the buffer) through the broker, which chooses
    /// the cheapest heap its policy allows this user and says why. Needs
    /// protocol version 2 ([`AllocateForError::Unsupported`] otherwise).
    ///
    /// # Errors
    /// [`AllocateForError`]; [`AllocateForError::NoSuitableHeap`] explains
    /// which requirement no allowed heap meets.
    pub fn allocate_for(
        &mut self,
        constraints: &Constraints,
        len: u64,
        name: Option<&str>,
    ) -> Result<AllocatedFor, AllocateForError> {
        let mut request = AllocateForRequest::new(constraints, len);
        request.name = name.map(str::to_owned);
        self.allocate_for_with(request)
    }

    /// [`Client::allocate_for`] with the request spelled out (e.g. with
    /// `heap` set to consider one heap only).
    ///
    /// # Errors
    /// [`AllocateForError`].
    pub fn allocate_for_with(&mut self, request: AllocateForRequest) -> Result<AllocatedFor, AllocateForError> {
        if self.version < proto::ALLOCATE_FOR_VERSION {
            return Err(AllocateForError::Unsupported { version: self.version });
        }
        request.validate().map_err(|e| AllocateForError::Invalid(e.to_string()))?;
        match self.call(&Request::AllocateFor(request), None)? {
            (Response::AllocatedFor { id, choice, .. }, Some(fd)) => {
                Ok(AllocatedFor { buffer: self.adopt(fd)?, id, choice })
            }
            (Response::Error { code, message }, _) => Err(match code {
                ErrorCode::NoSuitableHeap => AllocateForError::NoSuitableHeap(message),
                ErrorCode::NotAllowed => AllocateForError::NotAllowed(message),
                ErrorCode::QuotaExceeded => AllocateForError::QuotaExceeded(message),
                ErrorCode::NoSuchHeap => AllocateForError::NoSuchHeap(message),
                ErrorCode::AllocationFailed => AllocateForError::AllocationFailed(message),
                ErrorCode::BadRequest => AllocateForError::Invalid(message),
                code => AllocateForError::Refused { code, message },
            }),
            (other, _) => Err(unexpected(&other).into()),
        }
    }

    /// Publish a buffer (one allocated through the broker, or any sealed
    /// memfd or dma-buf of this process). Returns the key importers use: the
    /// name, or a token `@` + 32 hex digits. The broker holds the buffer while
    /// it is published, so this process may exit.
    ///
    /// # Errors
    /// [`PublishError`].
    pub fn publish(&mut self, buffer: &impl AsFd, options: PublishOptions) -> Result<String, PublishError> {
        let request = Request::Publish(PublishRequest {
            name: options.name,
            grants: options.grants,
            one_shot: options.one_shot,
            expires_in_secs: options.expires_in.map(|d| d.as_secs().max(1)),
        });
        match self.call(&request, Some(buffer.as_fd()))? {
            (Response::Published { key }, _) => Ok(key),
            (Response::Error { code, message }, _) => Err(match code {
                ErrorCode::NotAllowed => PublishError::NotAllowed(message),
                ErrorCode::AlreadyExists => PublishError::AlreadyExists(message),
                ErrorCode::QuotaExceeded => PublishError::QuotaExceeded(message),
                ErrorCode::NotABuffer => PublishError::NotABuffer(message),
                ErrorCode::ReadOnlyUnsupported => PublishError::ReadOnlyUnsupported(message),
                code => PublishError::Refused { code, message },
            }),
            (other, _) => Err(unexpected(&other).into()),
        }
    }

    /// Import a published buffer by name or token.
    ///
    /// # Errors
    /// [`ImportError`].
    pub fn import(&mut self, key: &str) -> Result<Imported, ImportError> {
        match self.call(&Request::Import { key: key.to_owned() }, None)? {
            (Response::Imported { access, publisher_uid, .. }, Some(fd)) => {
                Ok(Imported { buffer: self.adopt(fd)?, access, publisher_uid })
            }
            (Response::Error { code, message }, _) => Err(match code {
                ErrorCode::NotFound => ImportError::NotFound(message),
                ErrorCode::NotAllowed => ImportError::NotAllowed(message),
                code => ImportError::Refused { code, message },
            }),
            (other, _) => Err(unexpected(&other).into()),
        }
    }

    /// Withdraw a publication (name or token): this user's own, or any of a
    /// buffer this user owns (is charged for). Holders keep their fds.
    ///
    /// # Errors
    /// [`UnpublishError`].
    pub fn unpublish(&mut self, key: &str) -> Result<(), UnpublishError> {
        match self.call(&Request::Unpublish { key: key.to_owned() }, None)? {
            (Response::Unpublished, _) => Ok(()),
            (Response::Error { code, message }, _) => Err(match code {
                ErrorCode::NotFound => UnpublishError::NotFound(message),
                ErrorCode::NotAllowed => UnpublishError::NotAllowed(message),
                code => UnpublishError::Refused { code, message },
            }),
            (other, _) => Err(unexpected(&other).into()),
        }
    }

    /// The publications this user may import or has published, and those of
    /// buffers it owns whoever published them (`publisher_uid` says who), and
    /// whether the list was cut to fit one message.
    ///
    /// # Errors
    /// [`QueryError`].
    pub fn list(&mut self) -> Result<(Vec<ListEntry>, bool), QueryError> {
        match self.call(&Request::List, None)? {
            (Response::List { entries, truncated }, _) => Ok((entries, truncated)),
            (Response::Error { code, message }, _) => Err(QueryError::Refused { code, message }),
            (other, _) => Err(unexpected(&other).into()),
        }
    }

    /// This user's usage and quota.
    ///
    /// # Errors
    /// [`QueryError`].
    pub fn stats(&mut self) -> Result<Stats, QueryError> {
        Ok(self.stats_with_cgroup()?.0)
    }

    /// This user's usage and quota, and from a broker speaking protocol
    /// version 4 the client's cgroup with the policy's rules for it
    /// (`None` from older brokers).
    ///
    /// # Errors
    /// [`QueryError`].
    pub fn stats_with_cgroup(&mut self) -> Result<(Stats, Option<CgroupStats>), QueryError> {
        match self.call(&Request::Stats, None)? {
            (Response::Stats(stats), _) => Ok((stats, None)),
            (Response::StatsWithCgroup { stats, cgroup }, _) => Ok((stats, Some(cgroup))),
            (Response::Error { code, message }, _) => Err(QueryError::Refused { code, message }),
            (other, _) => Err(unexpected(&other).into()),
        }
    }

    /// One round trip. An fd in the reply is returned only alongside the
    /// responses that carry one; any other is closed.
    pub(crate) fn call(
        &mut self,
        request: &Request,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<(Response, Option<OwnedFd>), TransportError> {
        let bytes = proto::encode_request(request)?;
        if self.poisoned {
            // A reply to the request that timed out may still arrive and be
            // taken for this one's.
            return Err(TransportError::TimedOut { after: self.timeout.unwrap_or_default() });
        }
        let result = self.round_trip(&bytes, fd);
        if matches!(result, Err(TransportError::TimedOut { .. })) {
            self.poisoned = true;
        }
        result
    }

    fn round_trip(
        &mut self,
        bytes: &[u8],
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<(Response, Option<OwnedFd>), TransportError> {
        let timed_out = TransportError::TimedOut { after: self.timeout.unwrap_or_default() };
        let nonblocking = match wire::send(self.socket.as_fd(), bytes, fd, false) {
            Ok(()) => false,
            // The broker may have said why before closing (too many clients):
            // read that instead of reporting a bare EPIPE.
            Err(Errno::PIPE | Errno::CONNRESET) => true,
            // SO_SNDTIMEO passed with the broker's queue still full.
            Err(Errno::AGAIN) if self.timeout.is_some() => return Err(timed_out),
            Err(e) => return Err(e.into()),
        };
        let received = match wire::recv(self.socket.as_fd(), &mut self.buf, nonblocking) {
            Ok(Some(r)) => r,
            // A broker that closes with our request still unread makes the
            // kernel report ECONNRESET once (sk_err, cleared by reading it)
            // ahead of the reply it queued before closing (e.g. "too many
            // clients"): look once more for that reply.
            Err(Errno::CONNRESET) => match wire::recv(self.socket.as_fd(), &mut self.buf, true) {
                Ok(Some(r)) => r,
                _ => return Err(TransportError::Closed),
            },
            // SO_RCVTIMEO passed with no reply.
            Err(Errno::AGAIN) if !nonblocking && self.timeout.is_some() => return Err(timed_out),
            Ok(None) | Err(Errno::AGAIN) => return Err(TransportError::Closed),
            Err(e) => return Err(e.into()),
        };
        if received.truncated {
            return Err(TransportError::Protocol(format!("response longer than {} bytes", self.buf.len())));
        }
        let response =
            proto::decode_response(&self.buf[..received.len]).map_err(|e| TransportError::Protocol(e.to_string()))?;
        // Version 3: the properties come around the reply; keep them for the
        // buffer this reply's fd becomes (see `adopt`).
        self.properties = None;
        let response = match response {
            Response::WithProperties { properties, reply } => {
                self.properties = Some(properties);
                *reply
            }
            other => other,
        };
        let carries = response.carries_buffer() || matches!(response, Response::PoolAttached { .. });
        let mut fds = received.fds.into_iter();
        let fd = if carries { fds.next() } else { None };
        if carries && fd.is_none() {
            // MSG_CTRUNC with a full fd table: the kernel dropped the fd.
            if received.control_truncated {
                let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
                return Err(TransportError::FdLimit { limit });
            }
            return Err(TransportError::Protocol("reply without its file descriptor".into()));
        }
        Ok((response, fd))
    }
}

impl Client {
    /// The buffer of the last reply's fd: with the properties the broker
    /// sent (version 3), or what the fd alone tells (versions 1 and 2).
    fn adopt(&mut self, fd: OwnedFd) -> Result<Buffer, FromFdError> {
        match self.properties.take() {
            Some(hint) => Buffer::from_fd_with(fd, hint),
            None => Buffer::from_fd(fd),
        }
    }
}

/// `SO_SNDTIMEO` and `SO_RCVTIMEO` (`None`: block for ever).
fn set_timeouts(socket: &OwnedFd, timeout: Option<Duration>) -> Result<(), Errno> {
    use rustix::net::sockopt::{set_socket_timeout, Timeout};
    set_socket_timeout(socket, Timeout::Send, timeout)?;
    set_socket_timeout(socket, Timeout::Recv, timeout)
}

fn unexpected(response: &Response) -> TransportError {
    let name = format!("{response:?}");
    let short: String = name.chars().take(80).collect();
    TransportError::Protocol(format!("unexpected reply {short}"))
}
