//! Status codes, the thread-local error message, and the guard every entry
//! point runs in (no Rust panic crosses into C).

use dmabroker_core::buffer::{FromFdError, MapError, SyncError};
use dmabroker_core::heap::AllocError;
use dmabroker_core::phys::PhysError;
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The result of every fallible call: `DMABROKER_OK` (0) or an error whose
/// details `dmabroker_last_error()` describes.
///
/// The values are part of the ABI: they never change, new ones are appended.
/// The variant names are the C names (no prefix is added to this enum).
///
/// cbindgen:prefix-with-name=false
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub enum Status {
    /// Success.
    DMABROKER_OK = 0,
    /// A NULL pointer, a negative or closed fd, a zero size, an alignment
    /// that is not a power of two, an unknown enum value, a string that is
    /// not UTF-8: the call was wrong, retrying it will not help.
    DMABROKER_ERROR_INVALID_ARGUMENT = 1,
    /// No heap of that name on this machine (`dmabroker heaps` lists them).
    DMABROKER_ERROR_NO_SUCH_HEAP = 2,
    /// The heap, the huge page pool or the address space has no room.
    DMABROKER_ERROR_OUT_OF_MEMORY = 3,
    /// Not allowed: a device node's permissions, or physical addresses
    /// hidden from processes without `CAP_SYS_ADMIN`.
    DMABROKER_ERROR_PERMISSION_DENIED = 4,
    /// The fd is not buffer memory (a pipe, a socket, a regular file, an
    /// empty memfd).
    DMABROKER_ERROR_NOT_A_BUFFER = 5,
    /// Write access to a read-only fd or a read-only mapping.
    DMABROKER_ERROR_READ_ONLY = 6,
    /// Another error from the kernel; the message names the call and errno.
    DMABROKER_ERROR_IO = 7,
    /// A bug in dmabroker: a Rust panic was caught at the C boundary.
    DMABROKER_ERROR_PANIC = 8,
    /// The heap exists but cannot meet the request (contiguity, alignment,
    /// per-buffer size limit), no heap meets a set of constraints
    /// (`dmabroker_alloc_for`), or the buffer cannot be mapped by the CPU;
    /// the message says which heap would, or what each heap lacks.
    DMABROKER_ERROR_UNSUPPORTED = 9,
    /// An output array is too small; the required count was stored.
    DMABROKER_ERROR_BUFFER_TOO_SMALL = 10,
    /// `dmabroker_mapping_begin` while an access is active on that mapping:
    /// call `dmabroker_mapping_end` first. Also: a producer call while a
    /// slot is still out (submit or cancel it first), a pool that
    /// serves as many consumers as it may, and a broker at one of its
    /// limits (clients, publications of a buffer or of a user: free some,
    /// or try later).
    DMABROKER_ERROR_BUSY = 11,
    /// `dmabroker_mapping_end` with no access active; a pool submit or
    /// cancel with no slot acquired.
    DMABROKER_ERROR_NOT_BEGUN = 12,
    /// No broker listens at the socket: start `dmabroker serve` (or
    /// `systemctl start dmabroker.socket`), or pass its socket path.
    DMABROKER_ERROR_NO_BROKER = 13,
    /// No publication with that key (withdrawn, expired, consumed, a typo),
    /// or no such device node (`dmabroker_constraints_probe`).
    DMABROKER_ERROR_NOT_FOUND = 14,
    /// A publication of that name exists: choose another or unpublish it.
    DMABROKER_ERROR_ALREADY_EXISTS = 15,
    /// The broker's quota for this user would be exceeded: free buffers.
    DMABROKER_ERROR_QUOTA_EXCEEDED = 16,
    /// The broker, or a pool's producer, refused or broke the session
    /// (closed connection, protocol or version mismatch); reconnect.
    DMABROKER_ERROR_BROKER = 17,
    /// Nothing happened within the timeout (no frame, no free buffer, not
    /// enough consumers); the stream goes on: try again. From a broker
    /// client call: the broker did not answer in time (stopped or wedged);
    /// that connection is unusable: free it and connect again.
    DMABROKER_ERROR_TIMEOUT = 18,
    /// The pool's stream ended in order (the producer closed it; every
    /// frame handed off before was received), or the producer was closed.
    DMABROKER_ERROR_CLOSED = 19,
    /// The pool's producer died without closing the stream.
    DMABROKER_ERROR_PRODUCER_GONE = 20,
    /// The producer cut this consumer off: it held a frame longer than the
    /// pool's release timeout. Reconnect.
    DMABROKER_ERROR_EVICTED = 21,
    /// Two devices' constraints contradict each other (one needs cached
    /// memory, the other uncached); the message names both.
    DMABROKER_ERROR_CONFLICT = 22,
    /// No pool producer listens at that socket path.
    DMABROKER_ERROR_NO_PRODUCER = 23,
}

impl Status {
    /// Every status, for `dmabroker_status_name` and the tests.
    pub(crate) const ALL: [Status; 24] = [
        Self::DMABROKER_OK,
        Self::DMABROKER_ERROR_INVALID_ARGUMENT,
        Self::DMABROKER_ERROR_NO_SUCH_HEAP,
        Self::DMABROKER_ERROR_OUT_OF_MEMORY,
        Self::DMABROKER_ERROR_PERMISSION_DENIED,
        Self::DMABROKER_ERROR_NOT_A_BUFFER,
        Self::DMABROKER_ERROR_READ_ONLY,
        Self::DMABROKER_ERROR_IO,
        Self::DMABROKER_ERROR_PANIC,
        Self::DMABROKER_ERROR_UNSUPPORTED,
        Self::DMABROKER_ERROR_BUFFER_TOO_SMALL,
        Self::DMABROKER_ERROR_BUSY,
        Self::DMABROKER_ERROR_NOT_BEGUN,
        Self::DMABROKER_ERROR_NO_BROKER,
        Self::DMABROKER_ERROR_NOT_FOUND,
        Self::DMABROKER_ERROR_ALREADY_EXISTS,
        Self::DMABROKER_ERROR_QUOTA_EXCEEDED,
        Self::DMABROKER_ERROR_BROKER,
        Self::DMABROKER_ERROR_TIMEOUT,
        Self::DMABROKER_ERROR_CLOSED,
        Self::DMABROKER_ERROR_PRODUCER_GONE,
        Self::DMABROKER_ERROR_EVICTED,
        Self::DMABROKER_ERROR_CONFLICT,
        Self::DMABROKER_ERROR_NO_PRODUCER,
    ];

    /// The C name, NUL-terminated.
    pub(crate) fn name(self) -> &'static CStr {
        match self {
            Self::DMABROKER_OK => c"DMABROKER_OK",
            Self::DMABROKER_ERROR_INVALID_ARGUMENT => c"DMABROKER_ERROR_INVALID_ARGUMENT",
            Self::DMABROKER_ERROR_NO_SUCH_HEAP => c"DMABROKER_ERROR_NO_SUCH_HEAP",
            Self::DMABROKER_ERROR_OUT_OF_MEMORY => c"DMABROKER_ERROR_OUT_OF_MEMORY",
            Self::DMABROKER_ERROR_PERMISSION_DENIED => c"DMABROKER_ERROR_PERMISSION_DENIED",
            Self::DMABROKER_ERROR_NOT_A_BUFFER => c"DMABROKER_ERROR_NOT_A_BUFFER",
            Self::DMABROKER_ERROR_READ_ONLY => c"DMABROKER_ERROR_READ_ONLY",
            Self::DMABROKER_ERROR_IO => c"DMABROKER_ERROR_IO",
            Self::DMABROKER_ERROR_PANIC => c"DMABROKER_ERROR_PANIC",
            Self::DMABROKER_ERROR_UNSUPPORTED => c"DMABROKER_ERROR_UNSUPPORTED",
            Self::DMABROKER_ERROR_BUFFER_TOO_SMALL => c"DMABROKER_ERROR_BUFFER_TOO_SMALL",
            Self::DMABROKER_ERROR_BUSY => c"DMABROKER_ERROR_BUSY",
            Self::DMABROKER_ERROR_NOT_BEGUN => c"DMABROKER_ERROR_NOT_BEGUN",
            Self::DMABROKER_ERROR_NO_BROKER => c"DMABROKER_ERROR_NO_BROKER",
            Self::DMABROKER_ERROR_NOT_FOUND => c"DMABROKER_ERROR_NOT_FOUND",
            Self::DMABROKER_ERROR_ALREADY_EXISTS => c"DMABROKER_ERROR_ALREADY_EXISTS",
            Self::DMABROKER_ERROR_QUOTA_EXCEEDED => c"DMABROKER_ERROR_QUOTA_EXCEEDED",
            Self::DMABROKER_ERROR_BROKER => c"DMABROKER_ERROR_BROKER",
            Self::DMABROKER_ERROR_TIMEOUT => c"DMABROKER_ERROR_TIMEOUT",
            Self::DMABROKER_ERROR_CLOSED => c"DMABROKER_ERROR_CLOSED",
            Self::DMABROKER_ERROR_PRODUCER_GONE => c"DMABROKER_ERROR_PRODUCER_GONE",
            Self::DMABROKER_ERROR_EVICTED => c"DMABROKER_ERROR_EVICTED",
            Self::DMABROKER_ERROR_CONFLICT => c"DMABROKER_ERROR_CONFLICT",
            Self::DMABROKER_ERROR_NO_PRODUCER => c"DMABROKER_ERROR_NO_PRODUCER",
        }
    }
}

/// An error on its way to C: the status to return and the message to keep.
#[derive(Debug)]
pub(crate) struct Error {
    pub(crate) status: Status,
    pub(crate) message: String,
}

impl Error {
    pub(crate) fn new(status: Status, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(Status::DMABROKER_ERROR_INVALID_ARGUMENT, message)
    }

    /// `what` is NULL.
    pub(crate) fn null(what: &str) -> Self {
        Self::invalid(format!("{what} is NULL"))
    }
}

pub(crate) type Result<T> = std::result::Result<T, Error>;

pub(crate) fn errno_status(e: rustix::io::Errno) -> Status {
    match e {
        rustix::io::Errno::NOMEM => Status::DMABROKER_ERROR_OUT_OF_MEMORY,
        rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => Status::DMABROKER_ERROR_PERMISSION_DENIED,
        rustix::io::Errno::BADF | rustix::io::Errno::INVAL => Status::DMABROKER_ERROR_INVALID_ARGUMENT,
        _ => Status::DMABROKER_ERROR_IO,
    }
}

fn io_status(e: &std::io::Error) -> Status {
    match e.raw_os_error() {
        Some(n) => errno_status(rustix::io::Errno::from_raw_os_error(n)),
        None => Status::DMABROKER_ERROR_IO,
    }
}

/// The status of an allocation error.
pub(crate) fn alloc_status(e: &AllocError) -> Status {
    match e {
        AllocError::ZeroSize | AllocError::SizeOverflow { .. } | AllocError::BadAlignment(_) => {
            Status::DMABROKER_ERROR_INVALID_ARGUMENT
        }
        AllocError::NoSuchHeap { .. } => Status::DMABROKER_ERROR_NO_SUCH_HEAP,
        AllocError::AlignmentUnsatisfiable { .. } | AllocError::NotContiguous { .. } | AllocError::TooLarge { .. } => {
            Status::DMABROKER_ERROR_UNSUPPORTED
        }
        AllocError::NoHugePages { .. }
        | AllocError::OutOfMemory { .. }
        | AllocError::CmaShort { .. }
        | AllocError::LargerThanMemory { .. } => Status::DMABROKER_ERROR_OUT_OF_MEMORY,
        AllocError::PermissionDenied { .. } => Status::DMABROKER_ERROR_PERMISSION_DENIED,
        AllocError::Os { source, .. } => errno_status(*source),
        // AllocError may grow variants; an unknown one is a kernel-side failure.
        #[allow(unreachable_patterns)]
        _ => Status::DMABROKER_ERROR_IO,
    }
}

impl From<AllocError> for Error {
    fn from(e: AllocError) -> Self {
        Self::new(alloc_status(&e), e.to_string())
    }
}

impl From<FromFdError> for Error {
    fn from(e: FromFdError) -> Self {
        let status = match &e {
            FromFdError::NotABuffer { .. } | FromFdError::Empty => Status::DMABROKER_ERROR_NOT_A_BUFFER,
            FromFdError::Os(io) => io_status(io),
            #[allow(unreachable_patterns)]
            _ => Status::DMABROKER_ERROR_IO,
        };
        Self::new(status, e.to_string())
    }
}

pub(crate) fn map_status(e: &MapError) -> Status {
    match e {
        MapError::ReadOnly => Status::DMABROKER_ERROR_READ_ONLY,
        MapError::NotMappable | MapError::NotSizeSealed => Status::DMABROKER_ERROR_UNSUPPORTED,
        MapError::TooLarge(_) | MapError::OutOfMemory(_) => Status::DMABROKER_ERROR_OUT_OF_MEMORY,
        MapError::Os(errno) => errno_status(*errno),
        #[allow(unreachable_patterns)]
        _ => Status::DMABROKER_ERROR_IO,
    }
}

impl From<MapError> for Error {
    fn from(e: MapError) -> Self {
        Self::new(map_status(&e), e.to_string())
    }
}

impl From<SyncError> for Error {
    fn from(e: SyncError) -> Self {
        let status = match &e {
            SyncError::ReadOnlyMapping => Status::DMABROKER_ERROR_READ_ONLY,
            SyncError::DmaBufSync(errno) => errno_status(*errno),
            #[allow(unreachable_patterns)]
            _ => Status::DMABROKER_ERROR_IO,
        };
        Self::new(status, e.to_string())
    }
}

impl From<PhysError> for Error {
    fn from(e: PhysError) -> Self {
        let status = match &e {
            PhysError::FramesHidden => Status::DMABROKER_ERROR_PERMISSION_DENIED,
            PhysError::NotResident { .. } => Status::DMABROKER_ERROR_IO,
            PhysError::TooLargeToPopulate { .. } => Status::DMABROKER_ERROR_OUT_OF_MEMORY,
            PhysError::Pagemap(io) => io_status(io),
            PhysError::Map(inner) => map_status(inner),
            #[allow(unreachable_patterns)]
            _ => Status::DMABROKER_ERROR_IO,
        };
        Self::new(status, e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// The C name of an errno (`ENOENT`), or `errno N` for a rare one.
pub(crate) fn errno_name(e: rustix::io::Errno) -> String {
    use rustix::io::Errno as E;
    let name = match e {
        E::PERM => "EPERM",
        E::NOENT => "ENOENT",
        E::SRCH => "ESRCH",
        E::INTR => "EINTR",
        E::IO => "EIO",
        E::NXIO => "ENXIO",
        E::TOOBIG => "E2BIG",
        E::BADF => "EBADF",
        E::AGAIN => "EAGAIN",
        E::NOMEM => "ENOMEM",
        E::ACCESS => "EACCES",
        E::FAULT => "EFAULT",
        E::BUSY => "EBUSY",
        E::EXIST => "EEXIST",
        E::NODEV => "ENODEV",
        E::NOTDIR => "ENOTDIR",
        E::ISDIR => "EISDIR",
        E::INVAL => "EINVAL",
        E::NFILE => "ENFILE",
        E::MFILE => "EMFILE",
        E::NOTTY => "ENOTTY",
        E::FBIG => "EFBIG",
        E::NOSPC => "ENOSPC",
        E::SPIPE => "ESPIPE",
        E::ROFS => "EROFS",
        E::PIPE => "EPIPE",
        E::RANGE => "ERANGE",
        E::NAMETOOLONG => "ENAMETOOLONG",
        E::NOSYS => "ENOSYS",
        E::OPNOTSUPP => "EOPNOTSUPP",
        E::NOTSOCK => "ENOTSOCK",
        E::CONNREFUSED => "ECONNREFUSED",
        E::CONNRESET => "ECONNRESET",
        E::TIMEDOUT => "ETIMEDOUT",
        E::OVERFLOW => "EOVERFLOW",
        E::NOTCONN => "ENOTCONN",
        _ => return format!("errno {}", e.raw_os_error()),
    };
    name.to_owned()
}

/// A message in a C caller's words: the library's and the broker's texts
/// name Rust methods and CLI flags, and std prints errno as "(os error N)".
pub(crate) fn c_words(message: &str) -> String {
    const WORDS: [(&str, &str); 7] = [
        ("map it with map_read()", "map it with DMABROKER_MAP_MODE_READ"),
        ("map with map_read_write()", "map it with DMABROKER_MAP_MODE_READ_WRITE"),
        ("map_read_write()", "DMABROKER_MAP_MODE_READ_WRITE"),
        ("map_read()", "DMABROKER_MAP_MODE_READ"),
        ("must add --allow ", "must add to dmabroker_publish_options.grants the grant "),
        ("or pass --socket / DMABROKER_SOCKET", "or pass its socket path to dmabroker_client_connect"),
        ("Client::set_timeout", "dmabroker_client_set_timeout"),
    ];
    let mut out = message.to_owned();
    for (rust, c) in WORDS {
        if out.contains(rust) {
            out = out.replace(rust, c);
        }
    }
    // "(os error 2)" -> "(ENOENT)"
    while let Some(at) = out.find("(os error ") {
        let rest = &out[at + "(os error ".len()..];
        let Some(end) = rest.find(')') else { break };
        let Ok(n) = rest[..end].parse::<i32>() else { break };
        let name = errno_name(rustix::io::Errno::from_raw_os_error(n));
        out.replace_range(at..=at + "(os error ".len() + end, &format!("({name})"));
    }
    out
}

/// Store `message` as this thread's last error, in C's words ([`c_words`]).
pub(crate) fn set_last_error(message: &str) {
    let message = c_words(message);
    // A message with a NUL inside would be cut short by C: replace it.
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = c);
}

/// A pointer to this thread's last error message (valid until the next
/// failing call on this thread).
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|slot| slot.borrow().as_ptr())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".to_owned());
    format!("internal error (a bug in dmabroker, please report it): panic: {what}")
}

/// Run an entry point: a returned error or a panic becomes a status and
/// this thread's message. Nothing unwinds out of this function.
pub(crate) fn guard(f: impl FnOnce() -> Result<()>) -> Status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Status::DMABROKER_OK,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.status
        }
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            // Dropping the payload could itself panic (a payload whose Drop
            // panics); never let that unwind into C.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            set_last_error(&message);
            Status::DMABROKER_ERROR_PANIC
        }
    }
}

/// Run an infallible entry point that returns a plain value; `fallback` is
/// returned (and the message set) if it panics.
pub(crate) fn guard_value<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            set_last_error(&message);
            fallback
        }
    }
}

#[cfg(test)]
mod c_words_tests {
    use super::c_words;

    #[test]
    fn messages_speak_c() {
        assert_eq!(
            c_words("cannot open /nope: No such file or directory (os error 2)"),
            "cannot open /nope: No such file or directory (ENOENT)"
        );
        assert_eq!(c_words("a (os error 13) and b (os error 4095)"), "a (EACCES) and b (errno 4095)");
        assert_eq!(c_words("broken (os error x)"), "broken (os error x)");
        assert_eq!(
            c_words("the buffer's fd is read-only (a read-only grant?): map it with map_read()"),
            "the buffer's fd is read-only (a read-only grant?): map it with DMABROKER_MAP_MODE_READ"
        );
        assert_eq!(
            c_words("write access through a read-only mapping: map with map_read_write()"),
            "write access through a read-only mapping: map it with DMABROKER_MAP_MODE_READ_WRITE"
        );
        let refusal =
            c_words("`k` is not granted to uid 7; the publisher must add --allow uid=7 (or a group of yours)");
        assert!(!refusal.contains("--allow") && refusal.contains("dmabroker_publish_options.grants the grant uid=7"));
    }
}
