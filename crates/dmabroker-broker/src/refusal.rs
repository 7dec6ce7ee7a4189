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
    /// Quota.
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    /// The heap failed.
    #[error(transparent)]
    Alloc(#[from] dmabroker::heap::AllocError),
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

impl From<QuotaExceeded> for AllocateForRefusal {
    fn from(e: QuotaExceeded) -> Self {
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

/// Refusals of `Publish`.
#[derive(Debug, thiserror::Error)]
pub enum PublishRefusal {
    /// The policy does not allow publishing.
    #[error("uid {0} may not publish; ask the administrator to set publish = true for it in the policy")]
    NotAllowed(u32),
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
    Quota(#[from] QuotaExceeded),
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

impl Code for AllocateRefusal {
    fn code(&self) -> ErrorCode {
        use dmabroker::heap::AllocError as A;
        match self {
            Self::HeapNotAllowed { .. } => ErrorCode::NotAllowed,
            Self::Quota(_) => ErrorCode::QuotaExceeded,
            Self::Alloc(A::NoSuchHeap { .. }) => ErrorCode::NoSuchHeap,
            Self::Alloc(_) => ErrorCode::AllocationFailed,
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
            Self::NotAllowed(_) => ErrorCode::NotAllowed,
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
