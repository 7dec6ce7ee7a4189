//! The broker wire protocol (the full specification is `docs/PROTOCOL.md`).
//!
//! One request or response is one `SOCK_SEQPACKET` datagram: a [postcard]
//! encoding of [`Request`] or [`Response`], with at most
//! [`MAX_FDS_PER_MESSAGE`] file descriptor attached by `SCM_RIGHTS`. Every
//! message and every field is bounded: requests by [`MAX_REQUEST_LEN`],
//! responses by [`MAX_RESPONSE_LEN`], names by [`MAX_NAME_LEN`], grant lists
//! by [`MAX_GRANTS`], texts by [`MAX_TEXT_LEN`]; [`Request::validate`] checks
//! them after decoding. A session opens with [`Request::Hello`], which
//! negotiates the version; anything else first is refused.
//!
//! ```
//! use dmabroker::proto::{self, Request};
//! let bytes = proto::encode_request(&Request::Import { key: "camera0".into() }).unwrap();
//! assert_eq!(proto::decode_request(&bytes).unwrap(), Request::Import { key: "camera0".into() });
//! ```
//!
//! [postcard]: https://postcard.jamesmunns.com/wire-format

pub mod alloc_for;
pub mod cgroup;
pub mod pools;
pub mod wire;

pub use alloc_for::{AllocateForRequest, ChoiceReport, DeviceRequirements, MAX_DEVICES, MAX_EXPLANATION_LEN};
pub use cgroup::{CgroupRuleStats, CgroupStats, CGROUP_STATS_VERSION};
pub use pools::{PoolPeer, RegisterPoolRequest, POOLS_VERSION};

use serde::{Deserialize, Serialize};
use std::fmt;

/// The protocol version this library speaks best (2 added
/// [`Request::AllocateFor`]; 3 added [`Response::WithProperties`] and pools
/// by name, [`Request::RegisterPool`] and [`Request::AttachPool`]; 4 added
/// [`Response::StatsWithCgroup`]; a broker still serves clients of
/// versions 1 to 3).
pub const PROTOCOL_VERSION: u16 = 4;
/// The first version whose buffer replies carry physical properties
/// ([`Response::WithProperties`]).
pub const PROPERTIES_VERSION: u16 = 3;
/// The first version with [`Request::AllocateFor`], [`Response::AllocatedFor`]
/// and [`ErrorCode::NoSuitableHeap`].
pub const ALLOCATE_FOR_VERSION: u16 = 2;
/// The oldest protocol version this library still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Largest request datagram, in bytes; a longer one ends the session.
pub const MAX_REQUEST_LEN: usize = 4096;
/// Largest response datagram, in bytes (a [`Response::List`] is cut to fit).
pub const MAX_RESPONSE_LEN: usize = 65536;
/// File descriptors one message may carry.
pub const MAX_FDS_PER_MESSAGE: usize = 1;
/// Longest publication name, heap name or buffer name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Most grants one publication may carry.
pub const MAX_GRANTS: usize = 32;
/// Longest free text (error messages, versions), in bytes.
pub const MAX_TEXT_LEN: usize = 1024;
/// Longest expiry a publication may ask for, in seconds (ten years, 365-day
/// years); a longer one is refused as out of bounds.
pub const MAX_EXPIRY_SECS: u64 = 10 * 365 * 86400;
/// Prefix that tells a token from a name: tokens are `@` and 32 hex digits.
pub const TOKEN_PREFIX: char = '@';

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// First message of every session: the versions the client speaks.
    Hello {
        /// Oldest version the client speaks.
        min_version: u16,
        /// Newest version the client speaks.
        max_version: u16,
    },
    /// Allocate a buffer; the reply carries its fd.
    Allocate(AllocateRequest),
    /// Publish the buffer whose fd comes with this message.
    Publish(PublishRequest),
    /// Import a published buffer by name or token; the reply carries its fd.
    Import {
        /// A publication name or a token (`@` + 32 hex digits).
        key: String,
    },
    /// Withdraw a publication (by name or token): its publisher, the owner
    /// of the buffer (the uid charged for it) or root.
    Unpublish {
        /// A publication name or a token.
        key: String,
    },
    /// The publications this client may import or has published, and every
    /// publication of a buffer it owns (is charged for), whoever published it.
    List,
    /// This client's usage and quota, and the broker's totals.
    Stats,
    /// Allocate a buffer that meets the requirements of every device that
    /// will touch it, from a heap the broker chooses (version 2); the reply
    /// ([`Response::AllocatedFor`]) carries its fd.
    AllocateFor(AllocateForRequest),
    /// Register a streaming pool under a name (version 3, see [`pools`]);
    /// the message carries the broker's end of the producer's doorbell
    /// socket pair.
    RegisterPool(RegisterPoolRequest),
    /// Attach to a registered pool by name (version 3); the reply
    /// ([`Response::PoolAttached`]) carries a socket connected to its producer.
    AttachPool {
        /// The pool's name.
        name: String,
    },
}

/// What [`Request::Allocate`] asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocateRequest {
    /// Heap name (`memfd`, `dma-heap/system`, `udmabuf`, ...).
    pub heap: String,
    /// Size in bytes (rounded up to the heap's page size).
    pub len: u64,
    /// Start alignment (power of two; 1 = none).
    pub align: u64,
    /// Whether the buffer must be physically contiguous.
    pub contiguous: bool,
    /// A name shown in `/proc` (memfd name or dma-buf name).
    pub name: Option<String>,
}

/// What [`Request::Publish`] asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRequest {
    /// A name, or `None` for an unguessable token chosen by the broker.
    pub name: Option<String>,
    /// Who else may import it, and how.
    pub grants: Vec<Grant>,
    /// Withdraw the publication after its first import by someone else.
    pub one_shot: bool,
    /// Withdraw the publication after this many seconds (at most
    /// [`MAX_EXPIRY_SECS`]).
    pub expires_in_secs: Option<u64>,
}

/// Who a grant is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Grantee {
    /// One user.
    Uid(u32),
    /// Members of a group (primary or supplementary).
    Gid(u32),
    /// Everyone who can reach the socket (sensible with tokens only).
    Anyone,
}

/// What a grantee may do with an imported buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Access {
    /// The fd cannot be mapped writable nor truncated (memfds only: a dma-buf
    /// carries the mode its exporter gave it, so read-only dma-bufs are refused).
    ReadOnly,
    /// Full access.
    ReadWrite,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ReadOnly => "ro",
            Self::ReadWrite => "rw",
        })
    }
}

/// One ACL entry of a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Grant {
    /// Who.
    pub who: Grantee,
    /// How.
    pub access: Access,
}

impl std::str::FromStr for Grant {
    type Err = String;

    /// Parse `uid=1000:ro`, `gid=44:rw`, `any:ro` (access defaults to `ro`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (who, access) = match s.rsplit_once(':') {
            Some((w, "ro")) => (w, Access::ReadOnly),
            Some((w, "rw")) => (w, Access::ReadWrite),
            Some((_, other)) => return Err(format!("access `{other}` in `{s}`: use ro or rw")),
            None => (s, Access::ReadOnly),
        };
        let number = |v: &str| v.parse::<u32>().map_err(|_| format!("`{v}` in `{s}` is not a number"));
        let who = if let Some(v) = who.strip_prefix("uid=") {
            Grantee::Uid(number(v)?)
        } else if let Some(v) = who.strip_prefix("gid=") {
            Grantee::Gid(number(v)?)
        } else if who == "any" {
            Grantee::Anyone
        } else {
            return Err(format!("grantee `{who}` in `{s}`: use uid=N, gid=N or any"));
        };
        Ok(Self { who, access })
    }
}

/// A broker's reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The version chosen for this session.
    Hello {
        /// The negotiated version.
        version: u16,
        /// The broker's software version, for diagnostics.
        server: String,
    },
    /// A buffer was allocated; its fd comes with this message.
    Allocated {
        /// The broker's id of the buffer (for `list`, `stats`, logs).
        id: u64,
        /// Length in bytes, after rounding.
        len: u64,
        /// The heap it came from.
        heap: String,
    },
    /// A buffer was published under this key.
    Published {
        /// The name, or the token (`@` + 32 hex digits) to pass to importers.
        key: String,
    },
    /// A buffer was imported; its fd comes with this message.
    Imported {
        /// Length in bytes.
        len: u64,
        /// The access the fd gives.
        access: Access,
        /// The heap or exporter it came from.
        heap: String,
        /// Who published it.
        publisher_uid: u32,
    },
    /// The publication was withdrawn.
    Unpublished,
    /// Publications visible to this client.
    List {
        /// Entries (at most what fits [`MAX_RESPONSE_LEN`]).
        entries: Vec<ListEntry>,
        /// True when entries were left out to fit.
        truncated: bool,
    },
    /// Usage and quota.
    Stats(Stats),
    /// The request failed.
    Error {
        /// What kind of failure (what the client can do about it).
        code: ErrorCode,
        /// A human-readable explanation with the fix.
        message: String,
    },
    /// A buffer was allocated by constraints (version 2); its fd comes with
    /// this message.
    AllocatedFor {
        /// The broker's id of the buffer.
        id: u64,
        /// Length in bytes, after rounding.
        len: u64,
        /// The heap it came from.
        heap: String,
        /// Why that heap.
        choice: ChoiceReport,
    },
    /// (version 3) `Allocated`, `AllocatedFor` or `Imported`, with the
    /// buffer's physical properties (which its fd cannot tell: coherency,
    /// cache mode, contiguity). A broker sends it in place of those three
    /// replies in every session that negotiated version 3 or later; the fd
    /// comes with this message.
    WithProperties {
        /// What the broker knows of the buffer's memory.
        properties: crate::buffer::PropertyHint,
        /// The reply itself: one of the three above, never this variant.
        reply: Box<Response>,
    },
    /// A pool was registered (version 3).
    PoolRegistered {
        /// Its name.
        name: String,
    },
    /// Attached to a pool (version 3); a socket connected to its producer
    /// comes with this message: run the pool's HELLO on it
    /// ([`crate::pool::Consumer::attach`]).
    PoolAttached {
        /// The producer's uid.
        producer_uid: u32,
        /// What the ACL granted.
        access: Access,
        /// The producer's description of the pool.
        description: String,
    },
    /// Sent on a producer's doorbell, never as a reply (version 3): a
    /// consumer attached; the other end of its socket comes with it
    /// ([`crate::pool::Producer::attach`]).
    PoolConsumer(PoolPeer),
    /// (version 4) The reply to [`Request::Stats`] in sessions that
    /// negotiated version 4 or later: [`Response::Stats`]'s fields and the
    /// client's cgroup with the policy rules matching it.
    StatsWithCgroup {
        /// What version 3 replies.
        stats: Stats,
        /// The client's cgroup.
        cgroup: CgroupStats,
    },
}

/// One publication, as [`Request::List`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    /// Name, or token (tokens are listed to their publisher only).
    pub key: String,
    /// Length in bytes.
    pub len: u64,
    /// Heap or exporter.
    pub heap: String,
    /// Publisher's uid.
    pub publisher_uid: u32,
    /// The access this client would get.
    pub access: Access,
    /// Withdrawn after its first import.
    pub one_shot: bool,
    /// Seconds until it expires, if it does.
    pub expires_in_secs: Option<u64>,
}

/// Usage and quota of the asking user, and broker totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// The asking user.
    pub uid: u32,
    /// Bytes charged to that user.
    pub used_bytes: u64,
    /// Buffers charged to that user.
    pub used_buffers: u64,
    /// The user's byte quota.
    pub max_bytes: u64,
    /// The user's buffer quota.
    pub max_buffers: u64,
    /// Heaps the user may allocate from (`*` = all).
    pub heaps: Vec<String>,
    /// Whether the user may publish.
    pub may_publish: bool,
    /// Buffers the broker holds, all users.
    pub total_buffers: u64,
    /// Bytes of those buffers.
    pub total_bytes: u64,
    /// Publications, all users.
    pub publications: u64,
    /// Connected clients.
    pub clients: u64,
}

/// Why a request failed, as the wire says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// Malformed, out-of-bounds or out-of-order request; the session ends.
    BadRequest,
    /// No common protocol version; the session ends.
    UnsupportedVersion,
    /// The policy or the ACL forbids it.
    NotAllowed,
    /// The user's byte or buffer quota would be exceeded.
    QuotaExceeded,
    /// The heap does not exist on the broker's machine.
    NoSuchHeap,
    /// The heap could not allocate (the message says why).
    AllocationFailed,
    /// No publication with that key (or it expired).
    NotFound,
    /// The name is already published.
    AlreadyExists,
    /// The fd sent is not a buffer, or a memfd without size seals.
    NotABuffer,
    /// A read-only grant for a buffer whose mode cannot be enforced (dma-buf).
    ReadOnlyUnsupported,
    /// The broker is at a limit (clients, publications, file descriptors).
    Busy,
    /// A fault inside the broker.
    Internal,
    /// No heap this client may use meets every requirement of
    /// [`Request::AllocateFor`] (version 2); the message (up to
    /// [`MAX_EXPLANATION_LEN`] bytes) names each unmet requirement, the
    /// devices behind it and what each heap lacks.
    NoSuitableHeap,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why a message could not be encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// The bytes are not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message exceeds its size limit.
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field is out of bounds.
    #[error("invalid field: {0}")]
    InvalidField(String),
}

/// Encode a request.
///
/// # Errors
/// [`CodecError::TooLong`] beyond [`MAX_REQUEST_LEN`]; [`CodecError::InvalidField`]
/// when [`Request::validate`] fails (checked here so a client learns early).
pub fn encode_request(request: &Request) -> Result<Vec<u8>, CodecError> {
    request.validate()?;
    encode(request, MAX_REQUEST_LEN)
}

/// Encode a request without [`Request::validate`]: for tests that play a
/// buggy or hostile client (the broker must refuse what this lets through).
///
/// # Errors
/// [`CodecError::TooLong`] beyond [`MAX_REQUEST_LEN`].
#[doc(hidden)]
pub fn encode_request_unchecked(request: &Request) -> Result<Vec<u8>, CodecError> {
    encode(request, MAX_REQUEST_LEN)
}

/// Decode and validate a request.
///
/// # Errors
/// [`CodecError`] for anything malformed or out of bounds.
pub fn decode_request(bytes: &[u8]) -> Result<Request, CodecError> {
    if bytes.len() > MAX_REQUEST_LEN {
        return Err(CodecError::TooLong { len: bytes.len(), max: MAX_REQUEST_LEN });
    }
    let request: Request = decode(bytes)?;
    request.validate()?;
    Ok(request)
}

/// Encode a response.
///
/// # Errors
/// [`CodecError::TooLong`] beyond [`MAX_RESPONSE_LEN`].
pub fn encode_response(response: &Response) -> Result<Vec<u8>, CodecError> {
    encode(response, MAX_RESPONSE_LEN)
}

/// Decode a response.
///
/// # Errors
/// [`CodecError`] for anything malformed or too long.
pub fn decode_response(bytes: &[u8]) -> Result<Response, CodecError> {
    if bytes.len() > MAX_RESPONSE_LEN {
        return Err(CodecError::TooLong { len: bytes.len(), max: MAX_RESPONSE_LEN });
    }
    let response: Response = decode(bytes)?;
    let inner = match &response {
        Response::WithProperties { reply, .. } => {
            if !reply.carries_buffer() {
                return Err(invalid(
                    "WithProperties: the reply inside is not Allocated, AllocatedFor or Imported".into(),
                ));
            }
            reply.as_ref()
        }
        other => other,
    };
    if let Response::AllocatedFor { heap, choice, .. } = inner {
        check_text("heap", heap, MAX_NAME_LEN)?;
        alloc_for::check_report(choice)?;
    }
    if let Response::PoolAttached { description, .. } = &response {
        check_text("description", description, MAX_NAME_LEN)?;
    }
    if let Response::StatsWithCgroup { cgroup, .. } = &response {
        cgroup::check(cgroup)?;
    }
    Ok(response)
}

fn encode<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, CodecError> {
    let bytes = postcard::to_stdvec(value).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if bytes.len() > max {
        return Err(CodecError::TooLong { len: bytes.len(), max });
    }
    Ok(bytes)
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    // Trailing bytes mean a confused or hostile peer: refuse them rather than
    // silently ignoring part of a message.
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

impl Response {
    /// True for the replies that carry a buffer's fd: `Allocated`,
    /// `AllocatedFor`, `Imported` (and `WithProperties` around one of them).
    pub fn carries_buffer(&self) -> bool {
        matches!(self, Self::Allocated { .. } | Self::Imported { .. } | Self::AllocatedFor { .. })
    }

    /// The reply for a session of `version`: from version 3 a reply that
    /// carries a buffer is wrapped in `WithProperties` with `properties`.
    pub fn for_version(self, version: u16, properties: crate::buffer::PropertyHint) -> Self {
        if version >= PROPERTIES_VERSION && self.carries_buffer() {
            Self::WithProperties { properties, reply: Box::new(self) }
        } else {
            self
        }
    }
}

impl Request {
    /// Check every field against its bound.
    ///
    /// # Errors
    /// [`CodecError::InvalidField`] naming the field.
    pub fn validate(&self) -> Result<(), CodecError> {
        match self {
            Self::Hello { min_version, max_version } if min_version > max_version => {
                Err(invalid(format!("hello: min_version {min_version} > max_version {max_version}")))
            }
            Self::Hello { .. } | Self::List | Self::Stats => Ok(()),
            Self::Allocate(a) => {
                check_text("heap", &a.heap, MAX_NAME_LEN)?;
                if a.heap.is_empty() {
                    return Err(invalid("heap: empty".into()));
                }
                if let Some(n) = &a.name {
                    check_text("name", n, MAX_NAME_LEN)?;
                }
                Ok(())
            }
            Self::Publish(p) => {
                if let Some(n) = &p.name {
                    validate_name(n)?;
                }
                if p.grants.len() > MAX_GRANTS {
                    return Err(invalid(format!("grants: {} entries, at most {MAX_GRANTS}", p.grants.len())));
                }
                match p.expires_in_secs {
                    Some(secs) if secs > MAX_EXPIRY_SECS => Err(invalid(format!(
                        "expires_in_secs: {secs}, at most {MAX_EXPIRY_SECS} (10 years); leave it out for no expiry"
                    ))),
                    _ => Ok(()),
                }
            }
            Self::Import { key } | Self::Unpublish { key } => validate_key(key),
            Self::AllocateFor(a) => a.validate(),
            Self::RegisterPool(r) => r.validate(),
            Self::AttachPool { name } => validate_name(name),
        }
    }

    /// Whether this request must carry exactly one fd (the others carry none).
    pub fn carries_fd(&self) -> bool {
        matches!(self, Self::Publish(_) | Self::RegisterPool(_))
    }
}

fn invalid(msg: String) -> CodecError {
    CodecError::InvalidField(msg)
}

fn check_text(field: &str, s: &str, max: usize) -> Result<(), CodecError> {
    if s.len() > max {
        return Err(invalid(format!("{field}: {} bytes, at most {max}", s.len())));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(format!("{field}: control characters are not allowed")));
    }
    Ok(())
}

/// Check a publication name: 1 to [`MAX_NAME_LEN`] bytes of `A-Z a-z 0-9 . _ - /`,
/// not starting with `@` (which marks tokens) or `.`.
///
/// # Errors
/// [`CodecError::InvalidField`] saying what is wrong.
pub fn validate_name(name: &str) -> Result<(), CodecError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(format!("name: {} bytes, must be 1 to {MAX_NAME_LEN}", name.len())));
    }
    if name.starts_with('.') {
        return Err(invalid(format!("name `{name}`: must not start with `.`")));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))) {
        return Err(invalid(format!("name: character {c:?} not allowed (use A-Z a-z 0-9 . _ - /)")));
    }
    Ok(())
}

/// Check an import/unpublish key: a valid name or a well-formed token.
///
/// # Errors
/// [`CodecError::InvalidField`].
pub fn validate_key(key: &str) -> Result<(), CodecError> {
    match key.strip_prefix(TOKEN_PREFIX) {
        Some(hex) if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        Some(_) => Err(invalid("token: must be `@` followed by 32 hex digits".into())),
        None => validate_name(key),
    }
}

/// Where clients look for the broker when no path is given: `$DMABROKER_SOCKET`,
/// else `$XDG_RUNTIME_DIR/dmabroker.sock` when it exists, else the system
/// broker's `/run/dmabroker/dmabroker.sock`.
pub fn default_client_socket() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("DMABROKER_SOCKET").filter(|p| !p.is_empty()) {
        return p.into();
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        let p = std::path::Path::new(&dir).join("dmabroker.sock");
        if p.exists() {
            return p;
        }
    }
    SYSTEM_SOCKET.into()
}

/// The system broker's socket (root, systemd).
pub const SYSTEM_SOCKET: &str = "/run/dmabroker/dmabroker.sock";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_bounds() {
        let req = Request::Publish(PublishRequest {
            name: Some("cam/0".into()),
            grants: vec!["uid=1000:ro".parse().unwrap(), "gid=44:rw".parse().unwrap(), "any".parse().unwrap()],
            one_shot: true,
            expires_in_secs: Some(5),
        });
        let bytes = encode_request(&req).unwrap();
        assert_eq!(decode_request(&bytes).unwrap(), req);
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(decode_request(&long), Err(CodecError::Malformed(_))));
        assert!(decode_request(&[0xff; 10]).is_err());
        assert!(decode_request(&vec![0; MAX_REQUEST_LEN + 1]).is_err());
        let grants = vec![Grant { who: Grantee::Anyone, access: Access::ReadOnly }; MAX_GRANTS + 1];
        let too_many = Request::Publish(PublishRequest { name: None, grants, one_shot: false, expires_in_secs: None });
        assert!(encode_request(&too_many).is_err());
        let expiry = |secs| {
            Request::Publish(PublishRequest {
                name: None,
                grants: vec![],
                one_shot: false,
                expires_in_secs: Some(secs),
            })
        };
        assert!(encode_request(&expiry(MAX_EXPIRY_SECS)).is_ok());
        let e = encode_request(&expiry(u64::MAX)).unwrap_err();
        assert!(e.to_string().contains("expires_in_secs"), "{e}");
        let bytes = postcard::to_stdvec(&expiry(MAX_EXPIRY_SECS + 1)).unwrap();
        assert!(matches!(decode_request(&bytes), Err(CodecError::InvalidField(_))));
    }

    #[test]
    fn a_full_list_fits_one_response() {
        let entry = ListEntry {
            key: "k".repeat(MAX_NAME_LEN),
            len: u64::MAX,
            heap: "h".repeat(MAX_NAME_LEN),
            publisher_uid: u32::MAX,
            access: Access::ReadWrite,
            one_shot: true,
            expires_in_secs: Some(u64::MAX),
        };
        // The broker lists at most 200 entries per reply.
        let list = Response::List { entries: vec![entry; 200], truncated: true };
        assert!(encode_response(&list).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }
    }

    #[test]
    fn names_and_tokens() {
        assert!(validate_key("camera0").is_ok());
        assert!(validate_key("@0123456789abcdef0123456789ABCDEF").is_ok());
        assert!(validate_key("@0123").is_err());
        assert!(validate_key("").is_err());
        assert!(validate_key("a b").is_err());
        assert!(validate_key(".hidden").is_err());
        assert!(validate_key(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!("uid=x:ro".parse::<Grant>().is_err());
        assert!("uid=1:rx".parse::<Grant>().is_err());
    }
}
