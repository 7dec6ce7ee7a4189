//! Why an operation was refused: one enum per operation, each variant
//! mapped to its wire [`ErrorCode`] and worded with what the client can do.

use dmabroker::proto::ErrorCode;
use dmabroker::size::format_size;

/// Refusals of `Allocate`.
#[derive(Debug, thiserror::Error)]
pub enum AllocateRefusal {
    /// The policy does not allow the heap.
    #[error("uid {uid} may not allocate from heap `{heap}` (allowed: {allowed}); ask the administrator to add it to the policy")]
    HeapNotAllowed {
        /// The user.
        uid: u32,
        /// The heap asked.
        heap: String,
        /// The heaps allowed.
        allowed: String,
    },
    /// A `[[cgroup]]` rule matching the client's cgroup does not allow the heap.
    #[error(
        "heap `{heap}` is not allowed in cgroup {cgroup} by {rule} (allowed there: {allowed}); allocate from one of \
         those, or ask the administrator to change the rule"
    )]
    HeapNotAllowedInCgroup {
        /// The client's cgroup.
        cgroup: String,
        /// The rule, described with its policy line.
        rule: String,
        /// The heap asked.
        heap: String,
        /// The heaps the rule allows.
        allowed: String,
    },
    /// The client's cgroup could not be read and the policy refuses such clients.
    #[error(transparent)]
    CgroupUnknown(#[from] CgroupUnknown),
    /// Quota (the uid's or a cgroup's).
    #[error(transparent)]
    Quota(#[from] QuotaRefusal),
    /// The heap failed.
    #[error(transparent)]
    Alloc(#[from] dmabroker::heap::AllocError),
    /// The broker itself is out of fds (its `RLIMIT_NOFILE`): it holds one
    /// per live buffer. Every client is refused alike until buffers are let go.
    #[error(
        "the broker is at its file descriptor limit (RLIMIT_NOFILE {limit}; it holds one fd per live buffer): \
         retry once buffers are let go; an administrator raises LimitNOFILE= of dmabroker.service"
    )]
    FdLimit {
        /// The broker's soft limit.
        limit: u64,
    },
    /// The client's cgroup has no room, or its allocation worker failed.
    #[error(transparent)]
    Charge(crate::charge::ChargeRefusal),
}

impl From<crate::charge::ChargeRefusal> for AllocateRefusal {
    fn from(e: crate::charge::ChargeRefusal) -> Self {
        match e {
            crate::charge::ChargeRefusal::Alloc(a) => Self::Alloc(a),
            other => Self::Charge(other),
        }
    }
}

/// Refusals of `AllocateFor`.
#[derive(Debug, thiserror::Error)]
pub enum AllocateForRefusal {
    /// No allowed heap meets every requirement: the chooser's explanation.
    #[error("{0}")]
    NoHeap(String),
    /// Impossible constraints or length (the wire decoder refuses most already).
    #[error("{0}")]
    BadRequest(String),
    /// Every suitable heap failed to allocate.
    #[error("every suitable heap failed: {0}")]
    Failed(String),
    /// Quota, or a failure shared with `Allocate`.
    #[error(transparent)]
    Allocate(#[from] AllocateRefusal),
}

impl From<QuotaRefusal> for AllocateForRefusal {
    fn from(e: QuotaRefusal) -> Self {
        Self::Allocate(e.into())
    }
}

impl From<dmabroker::heap::AllocError> for AllocateForRefusal {
    fn from(e: dmabroker::heap::AllocError) -> Self {
        Self::Allocate(e.into())
    }
}

/// A quota would be exceeded.
#[derive(Debug, thiserror::Error)]
#[error("uid {uid} holds {} in {buffers} buffer(s) through the broker; {} more would exceed its quota of {} / {max_buffers} buffers: close buffers (charges end when every holder has closed them) or ask for a larger quota", format_size(*bytes), format_size(*asked), format_size(*max_bytes))]
pub struct QuotaExceeded {
    /// The user.
    pub uid: u32,
    /// Bytes held.
    pub bytes: u64,
    /// Buffers held.
    pub buffers: u64,
    /// Bytes asked.
    pub asked: u64,
    /// Byte quota.
    pub max_bytes: u64,
    /// Buffer quota.
    pub max_buffers: u64,
}

/// A uid's or a cgroup's quota would be exceeded.
#[derive(Debug, thiserror::Error)]
pub enum QuotaRefusal {
    /// The uid's.
    #[error(transparent)]
    User(#[from] QuotaExceeded),
    /// A `[[cgroup]]` rule's (boxed: it carries three paths).
    #[error(transparent)]
    Cgroup(Box<CgroupQuotaExceeded>),
}

impl From<CgroupQuotaExceeded> for QuotaRefusal {
    fn from(e: CgroupQuotaExceeded) -> Self {
        Self::Cgroup(Box::new(e))
    }
}

/// A `[[cgroup]]` rule's quota would be exceeded.
#[derive(Debug, thiserror::Error)]
#[error(
    "cgroup {unit}{} holds {} in {buffers} buffer(s) through the broker (all its clients together); {} more would \
     exceed the quota of {rule}: {} / {}; close buffers held there (charges end when every holder has \
     closed them) or ask the administrator for a larger quota",
    if unit == cgroup { String::new() } else { format!(" (the client is in {cgroup}, below it)") },
    format_size(*bytes), format_size(*asked),
    max_bytes.map_or("no byte limit".to_owned(), format_size),
    max_buffers.map_or("no buffer limit".to_owned(), |b| format!("{b} buffers"))
)]
pub struct CgroupQuotaExceeded {
    /// The client's cgroup.
    pub cgroup: String,
    /// The cgroup charged (the client's, or a subtree rule's top).
    pub unit: String,
    /// The rule, described with its policy line.
    pub rule: String,
    /// Bytes held there.
    pub bytes: u64,
    /// Buffers held there.
    pub buffers: u64,
    /// Bytes asked.
    pub asked: u64,
    /// The rule's byte quota.
    pub max_bytes: Option<u64>,
    /// The rule's buffer quota.
    pub max_buffers: Option<u64>,
}

/// A client whose cgroup could not be read, under a policy with
/// `[[cgroup]]` rules and `cgroup_unknown = "refuse"`.
#[derive(Debug, thiserror::Error)]
#[error(
    "uid {uid}: the policy has [[cgroup]] rules and refuses clients whose cgroup cannot be read \
     (cgroup_unknown = \"refuse\"), and this one's cannot: {why}; run the client in the broker's pid and cgroup \
     namespaces, or ask the administrator to set cgroup_unknown = \"allow\""
)]
pub struct CgroupUnknown {
    /// The user.
    pub uid: u32,
    /// Why the cgroup is not known.
    pub why: String,
}

/// Refusals of `Publish`.
#[derive(Debug, thiserror::Error)]
pub enum PublishRefusal {
    /// The policy does not allow publishing.
    #[error("uid {0} may not publish; ask the administrator to set publish = true for it in the policy")]
    NotAllowed(u32),
    /// A `[[cgroup]]` rule matching the client's cgroup denies publishing.
    #[error("publishing is denied in cgroup {cgroup} by {rule} (publish = false); publish from another cgroup of yours, or ask the administrator to change the rule")]
    NotAllowedInCgroup {
        /// The client's cgroup.
        cgroup: String,
        /// The rule, described with its policy line.
        rule: String,
    },
    /// The client's cgroup could not be read and the policy refuses such clients.
    #[error(transparent)]
    CgroupUnknown(#[from] CgroupUnknown),
    /// The name is taken.
    #[error("`{0}` is already published: unpublish it first or choose another name")]
    AlreadyExists(String),
    /// Not a buffer, or an unsealed memfd.
    #[error("{0}")]
    NotABuffer(String),
    /// RO grant on a dma-buf, or on a memfd the broker cannot make private.
    #[error("{0}")]
    ReadOnlyUnsupported(String),
    /// Quota (publishing a buffer the broker does not hold yet charges it).
    #[error(transparent)]
    Quota(#[from] QuotaRefusal),
    /// Too many publications.
    #[error("{0}")]
    Busy(String),
    /// No fd came with the request.
    #[error("publish needs the buffer's fd attached (SCM_RIGHTS)")]
    MissingFd,
    /// A field out of bounds (the wire decoder refuses these already).
    #[error("{0}")]
    BadRequest(String),
    /// A read-only fd of a buffer the broker holds writable.
    #[error("this fd gives read-only access to the buffer: only a holder of a writable fd may publish it")]
    ReadOnlyFd,
    /// An rw grant on a buffer the broker holds only read-only.
    #[error(
        "the broker holds this buffer only through a read-only fd (it was published from an O_RDONLY fd): \
         an rw grant could not be honoured; grant ro, or publish a writable fd"
    )]
    ReadWriteFromReadOnlyFd,
    /// Another uid's namespace, or a name the policy reserves for another uid.
    #[error("{}", .0.message)]
    Name(crate::names::NameRefusal),
}

/// Refusals of `Import`.
#[derive(Debug, thiserror::Error)]
pub enum ImportRefusal {
    /// No such publication.
    #[error("nothing published as `{0}` (withdrawn, expired, already imported once, or mistyped); `dmabroker import --list` shows what you may import")]
    NotFound(String),
    /// Nobody the client trusts publishes the unqualified name; others do.
    #[error(
        "nothing published as `{key}` by a publisher this client trusts (itself, root, the broker, or the uid the \
         policy reserves the name for); other users publish it as {others}: import that qualified name if you \
         trust its publisher"
    )]
    Untrusted {
        /// The unqualified name asked for.
        key: String,
        /// Their qualified names, quoted.
        others: String,
    },
    /// The ACL does not match.
    #[error("`{key}` is not granted to uid {uid}; the publisher must add --allow uid={uid} (or a group of yours)")]
    NotGranted {
        /// The key.
        key: String,
        /// The user.
        uid: u32,
    },
    /// Reopening read-only failed.
    #[error("cannot make a read-only fd: {0}")]
    Reopen(rustix::io::Errno),
    /// The broker is out of fds.
    #[error("the broker is out of file descriptors: retry later")]
    Busy,
}

/// Refusals of `Unpublish`.
#[derive(Debug, thiserror::Error)]
pub enum UnpublishRefusal {
    /// No such publication.
    #[error("nothing published as `{0}`")]
    NotFound(String),
    /// Neither the publisher, nor the buffer's owner, nor root.
    #[error(
        "`{key}` was published by uid {publisher}; only it, the buffer's owner (uid {owner}) or root may withdraw it"
    )]
    NotPublisher {
        /// The key.
        key: String,
        /// The publisher.
        publisher: u32,
        /// The uid charged for the buffer.
        owner: u32,
    },
}

/// The wire code of a refusal.
pub trait Code {
    /// The code.
    fn code(&self) -> ErrorCode;
}

impl AllocateRefusal {
    /// An allocation or reopen that failed with `EMFILE`/`ENFILE` said as
    /// what it is: the broker's fd table is full.
    pub fn at_fd_limit(self) -> Self {
        use dmabroker::heap::AllocError as A;
        use rustix::io::Errno;
        match self {
            Self::Alloc(A::Os { source: Errno::MFILE | Errno::NFILE, .. }) => Self::FdLimit {
                limit: rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX),
            },
            other => other,
        }
    }
}

impl Code for AllocateRefusal {
    fn code(&self) -> ErrorCode {
        use dmabroker::heap::AllocError as A;
        match self {
            Self::HeapNotAllowed { .. } | Self::HeapNotAllowedInCgroup { .. } | Self::CgroupUnknown(_) => {
                ErrorCode::NotAllowed
            }
            Self::Quota(_) => ErrorCode::QuotaExceeded,
            Self::Alloc(A::NoSuchHeap { .. }) => ErrorCode::NoSuchHeap,
            Self::Alloc(_) | Self::FdLimit { .. } => ErrorCode::AllocationFailed,
            Self::Charge(crate::charge::ChargeRefusal::CgroupLimit { .. }) => ErrorCode::QuotaExceeded,
            Self::Charge(_) => ErrorCode::AllocationFailed,
        }
    }
}

impl Code for AllocateForRefusal {
    fn code(&self) -> ErrorCode {
        match self {
            Self::NoHeap(_) => ErrorCode::NoSuitableHeap,
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::Failed(_) => ErrorCode::AllocationFailed,
            Self::Allocate(a) => a.code(),
        }
    }
}

impl Code for PublishRefusal {
    fn code(&self) -> ErrorCode {
        match self {
            Self::NotAllowed(_) | Self::NotAllowedInCgroup { .. } | Self::CgroupUnknown(_) => ErrorCode::NotAllowed,
            Self::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Self::NotABuffer(_) => ErrorCode::NotABuffer,
            Self::ReadOnlyUnsupported(_) => ErrorCode::ReadOnlyUnsupported,
            Self::Quota(_) => ErrorCode::QuotaExceeded,
            Self::Busy(_) => ErrorCode::Busy,
            Self::MissingFd | Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::ReadOnlyFd | Self::ReadWriteFromReadOnlyFd => ErrorCode::NotAllowed,
            Self::Name(n) => n.code,
        }
    }
}

impl Code for ImportRefusal {
    fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound(_) | Self::Untrusted { .. } => ErrorCode::NotFound,
            Self::NotGranted { .. } => ErrorCode::NotAllowed,
            Self::Reopen(_) => ErrorCode::Internal,
            Self::Busy => ErrorCode::Busy,
        }
    }
}

impl Code for UnpublishRefusal {
    fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::NotPublisher { .. } => ErrorCode::NotAllowed,
        }
    }
}
