//! The broker client: connect, allocate, publish, import, unpublish.

use crate::buffer::{AllocOptions, Buffer};
use crate::error::{guard, guard_value, Error, Result, Status};
use crate::{c_str, free_handle, handle, into_handle};
use dmabroker_core::client::{
    AllocateError, AllocateForError, Client as CoreClient, ConnectError, ImportError, PublishError,
    PublishOptions as CorePublishOptions, QueryError, TransportError, UnpublishError,
};
use dmabroker_core::proto::{Access, AllocateRequest, ErrorCode, Grant};
use std::ffi::{c_char, CString};
use std::ptr;
use std::sync::Mutex;
use std::time::Duration;

/// A connection to the broker daemon (opaque): made by
/// `dmabroker_client_connect`, closed by `dmabroker_client_free`. Its calls
/// are serialized (one request at a time on the connection), so threads may
/// share it; one connection per thread avoids the wait.
pub struct Client {
    client: Mutex<CoreClient>,
}

impl Client {
    /// The broker's `Stats` answer with the cgroup part (`None` from a
    /// broker before protocol version 4).
    pub(crate) fn stats_with_cgroup(
        &self,
    ) -> Result<(dmabroker_core::proto::Stats, Option<dmabroker_core::proto::CgroupStats>)> {
        self.with(dmabroker_core::client::Client::stats_with_cgroup).map_err(|e| {
            let status = match &e {
                QueryError::Refused { code, .. } => code_status(*code),
                QueryError::Transport(t) => transport_status(t),
                _ => Status::DMABROKER_ERROR_BROKER,
            };
            Error::new(status, e.to_string())
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut CoreClient) -> T) -> T {
        // A panic while locked (caught by the guard) leaves the connection
        // usable or closed; the next call finds out which.
        let mut c = self.client.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut c)
    }
}

/// How `dmabroker_client_publish` publishes. All-zero (`{0}`) means: as an
/// unguessable token, importable by this user only, until withdrawn.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct PublishOptions {
    /// The name to publish under; NULL: the broker chooses a token
    /// (`@` + 32 hex digits).
    pub name: *const c_char,
    /// Who else may import it and how, e.g. `"uid=1000:ro"`, `"gid=44:rw"`,
    /// `"any:ro"` (access defaults to `ro`);
    /// `grant_count` strings, or NULL when `grant_count` is 0.
    pub grants: *const *const c_char,
    /// The number of strings in `grants`.
    pub grant_count: usize,
    /// Withdraw it after this many seconds; 0: never.
    pub expires_in_secs: u64,
    /// Withdraw it after its first import.
    pub one_shot: bool,
}

fn transport_status(e: &TransportError) -> Status {
    match e {
        TransportError::InvalidRequest(_) => Status::DMABROKER_ERROR_INVALID_ARGUMENT,
        TransportError::TimedOut { .. } => Status::DMABROKER_ERROR_TIMEOUT,
        // This process's fd table, not the broker: the message says so.
        TransportError::FdLimit { .. } => Status::DMABROKER_ERROR_IO,
        _ => Status::DMABROKER_ERROR_BROKER,
    }
}

/// The status of each error code the broker can refuse a request with
/// (docs/PROTOCOL.md, "ErrorCode"), whatever the request: the client error
/// enums name the codes each call expects, and any other lands here.
pub(crate) fn code_status(code: ErrorCode) -> Status {
    match code {
        // The request broke a bound (a name with control characters, an
        // expiry past ten years): the call was wrong.
        ErrorCode::BadRequest => Status::DMABROKER_ERROR_INVALID_ARGUMENT,
        ErrorCode::UnsupportedVersion | ErrorCode::Internal => Status::DMABROKER_ERROR_BROKER,
        ErrorCode::NotAllowed => Status::DMABROKER_ERROR_PERMISSION_DENIED,
        ErrorCode::QuotaExceeded => Status::DMABROKER_ERROR_QUOTA_EXCEEDED,
        ErrorCode::NoSuchHeap => Status::DMABROKER_ERROR_NO_SUCH_HEAP,
        ErrorCode::AllocationFailed => Status::DMABROKER_ERROR_OUT_OF_MEMORY,
        ErrorCode::NotFound => Status::DMABROKER_ERROR_NOT_FOUND,
        ErrorCode::AlreadyExists => Status::DMABROKER_ERROR_ALREADY_EXISTS,
        ErrorCode::NotABuffer => Status::DMABROKER_ERROR_NOT_A_BUFFER,
        ErrorCode::ReadOnlyUnsupported | ErrorCode::NoSuitableHeap => Status::DMABROKER_ERROR_UNSUPPORTED,
        // A limit of the broker's (publications per buffer or per user,
        // clients): free some, or try later.
        ErrorCode::Busy => Status::DMABROKER_ERROR_BUSY,
        #[allow(unreachable_patterns)]
        _ => Status::DMABROKER_ERROR_BROKER,
    }
}

/// The message of a refusal the broker's session ended with (`BadRequest`):
/// the connection is closed, so say what a C caller does next.
fn refusal_message(code: ErrorCode, text: String) -> String {
    if code == ErrorCode::BadRequest {
        format!("{text} (the broker closed this connection: dmabroker_client_free it and connect again)")
    } else {
        text
    }
}

impl From<ConnectError> for Error {
    fn from(e: ConnectError) -> Self {
        let status = match &e {
            ConnectError::NoBroker { .. } => Status::DMABROKER_ERROR_NO_BROKER,
            ConnectError::PermissionDenied { .. } => Status::DMABROKER_ERROR_PERMISSION_DENIED,
            ConnectError::TimedOut { .. } => Status::DMABROKER_ERROR_TIMEOUT,
            ConnectError::Refused { code, .. } => code_status(*code),
            ConnectError::Transport(t) => transport_status(t),
            _ => Status::DMABROKER_ERROR_BROKER,
        };
        let message = match &e {
            ConnectError::NoBroker { path, source } => format!(
                "no broker at {} ({}): start one with `dmabroker serve` (or `systemctl start dmabroker.socket`), \
                 or pass its socket path to dmabroker_client_connect (NULL reads $DMABROKER_SOCKET)",
                path.display(),
                crate::error::errno_name(*source)
            ),
            ConnectError::TimedOut { path, after } => format!(
                "the broker at {} did not answer within {} ms: it is stopped (SIGSTOP, a debugger), wedged or not a \
                 dmabroker broker; check the process behind the socket (`systemctl status dmabroker`), or allow more \
                 time with dmabroker_client_connect_timeout",
                path.display(),
                after.as_millis()
            ),
            _ => e.to_string(),
        };
        Self::new(status, message)
    }
}

/// A refusal's status and message, or the transport's.
macro_rules! refusal {
    ($e:expr, $ty:ident) => {
        match $e {
            $ty::Refused { code, message } => {
                Some(Error::new(code_status(*code), refusal_message(*code, message.clone())))
            }
            $ty::Transport(t) => Some(transport_error(t)),
            _ => None,
        }
    };
}

fn transport_error(t: &TransportError) -> Error {
    let message = match t {
        TransportError::TimedOut { after } => format!(
            "the broker did not answer within {} ms: it is stopped (SIGSTOP, a debugger) or overloaded; check the \
             broker process (`systemctl status dmabroker`), then dmabroker_client_free this connection and connect \
             again (dmabroker_client_set_timeout allows more time)",
            after.as_millis()
        ),
        other => other.to_string(),
    };
    Error::new(transport_status(t), message)
}

impl From<AllocateError> for Error {
    fn from(e: AllocateError) -> Self {
        if let Some(err) = refusal!(&e, AllocateError) {
            return err;
        }
        let status = match &e {
            AllocateError::Invalid(_) => Status::DMABROKER_ERROR_INVALID_ARGUMENT,
            AllocateError::NotAllowed(_) => Status::DMABROKER_ERROR_PERMISSION_DENIED,
            AllocateError::QuotaExceeded(_) => Status::DMABROKER_ERROR_QUOTA_EXCEEDED,
            AllocateError::NoSuchHeap(_) => Status::DMABROKER_ERROR_NO_SUCH_HEAP,
            AllocateError::AllocationFailed(_) => Status::DMABROKER_ERROR_OUT_OF_MEMORY,
            AllocateError::BadBuffer(_) => Status::DMABROKER_ERROR_NOT_A_BUFFER,
            AllocateError::Transport(t) => transport_status(t),
            _ => Status::DMABROKER_ERROR_BROKER,
        };
        Self::new(status, e.to_string())
    }
}

impl From<PublishError> for Error {
    fn from(e: PublishError) -> Self {
        if let Some(err) = refusal!(&e, PublishError) {
            return err;
        }
        let status = match &e {
            PublishError::NotAllowed(_) => Status::DMABROKER_ERROR_PERMISSION_DENIED,
            PublishError::AlreadyExists(_) => Status::DMABROKER_ERROR_ALREADY_EXISTS,
            PublishError::QuotaExceeded(_) => Status::DMABROKER_ERROR_QUOTA_EXCEEDED,
            PublishError::NotABuffer(_) => Status::DMABROKER_ERROR_NOT_A_BUFFER,
            PublishError::ReadOnlyUnsupported(_) => Status::DMABROKER_ERROR_UNSUPPORTED,
            PublishError::Transport(t) => transport_status(t),
            _ => Status::DMABROKER_ERROR_BROKER,
        };
        Self::new(status, e.to_string())
    }
}

impl From<ImportError> for Error {
    fn from(e: ImportError) -> Self {
        if let Some(err) = refusal!(&e, ImportError) {
            return err;
        }
        let status = match &e {
            ImportError::NotFound(_) => Status::DMABROKER_ERROR_NOT_FOUND,
            ImportError::NotAllowed(_) => Status::DMABROKER_ERROR_PERMISSION_DENIED,
            ImportError::BadBuffer(_) => Status::DMABROKER_ERROR_NOT_A_BUFFER,
            ImportError::Transport(t) => transport_status(t),
            _ => Status::DMABROKER_ERROR_BROKER,
        };
        Self::new(status, e.to_string())
    }
}

impl From<UnpublishError> for Error {
    fn from(e: UnpublishError) -> Self {
        if let Some(err) = refusal!(&e, UnpublishError) {
            return err;
        }
        let status = match &e {
            UnpublishError::NotFound(_) => Status::DMABROKER_ERROR_NOT_FOUND,
            UnpublishError::NotAllowed(_) => Status::DMABROKER_ERROR_PERMISSION_DENIED,
            UnpublishError::Transport(t) => transport_status(t),
            _ => Status::DMABROKER_ERROR_BROKER,
        };
        Self::new(status, e.to_string())
    }
}

/// Connect to the broker at `socket_path`; NULL: the default socket
/// (`$DMABROKER_SOCKET`, else `$XDG_RUNTIME_DIR/dmabroker.sock`, else
/// `/run/dmabroker/dmabroker.sock`). Waits at most 5 s for the broker to
/// accept and answer, and so does every later call on the connection
/// (`dmabroker_client_connect_timeout` and `dmabroker_client_set_timeout`
/// change that).
///
/// # Errors
/// `DMABROKER_ERROR_NO_BROKER` (nothing listens there: start `dmabroker
/// serve`), `DMABROKER_ERROR_PERMISSION_DENIED`, `DMABROKER_ERROR_TIMEOUT`
/// (something listens but does not answer: a stopped or wedged broker),
/// `DMABROKER_ERROR_BUSY` (the broker is at its client limit),
/// `DMABROKER_ERROR_BROKER` (version mismatch, refused session),
/// `DMABROKER_ERROR_INVALID_ARGUMENT` (`out` NULL, an empty path, a path
/// over 107 bytes).
///
/// # Safety
/// `socket_path` is NULL or a C string; `out` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_client_connect(socket_path: *const c_char, out: *mut *mut Client) -> Status {
    // SAFETY: the caller's promises are this function's.
    unsafe { dmabroker_client_connect_timeout(socket_path, 0, out) }
}

/// `dmabroker_client_connect` with another bound, in milliseconds, on
/// connecting and on each later call: 0: 5000; negative: no limit (a
/// stopped broker then blocks the caller for ever).
///
/// # Errors
/// As `dmabroker_client_connect`.
///
/// # Safety
/// `socket_path` is NULL or a C string; `out` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_client_connect_timeout(
    socket_path: *const c_char,
    timeout_ms: i64,
    out: *mut *mut Client,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        let path = if socket_path.is_null() {
            dmabroker_core::proto::default_client_socket()
        } else {
            // SAFETY: non-NULL, and the caller passes a C string.
            crate::socket_path_arg(unsafe { c_str(socket_path, "socket_path") }?, "socket_path")?.into()
        };
        let client = CoreClient::connect_with_timeout(path, client_timeout(timeout_ms))?;
        *out = into_handle(Client { client: Mutex::new(client) });
        Ok(())
    })
}

fn client_timeout(ms: i64) -> Option<Duration> {
    match ms {
        0 => Some(dmabroker_core::client::DEFAULT_TIMEOUT),
        ms => crate::timeout_ms(ms),
    }
}

/// Bound each later call on `client` (sending the request, waiting for the
/// reply) by `timeout_ms` milliseconds: 0: 5000; negative: no limit. A call
/// that times out returns `DMABROKER_ERROR_TIMEOUT`, and the connection
/// refuses every later call (a late reply would answer the wrong request):
/// free it and connect again.
///
/// # Errors
/// `DMABROKER_ERROR_INVALID_ARGUMENT` (`client` NULL).
///
/// # Safety
/// `client` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_client_set_timeout(client: *const Client, timeout_ms: i64) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let client = unsafe { handle(client, "client") }?;
        client.with(|c| c.set_timeout(client_timeout(timeout_ms))).map_err(|t| transport_error(&t))
    })
}

/// Close the connection. NULL is ignored. Buffers it gave stay valid;
/// publications stay published (the broker holds them).
///
/// # Safety
/// `client` is NULL or a live handle not freed before, used by no other
/// thread during the call nor afterwards.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_client_free(client: *mut Client) {
    // SAFETY: the caller passes NULL or a live handle it gives up.
    guard_value((), || unsafe { free_handle(client) });
}

/// Allocate through the broker (`heap` and `options` as for
/// `dmabroker_alloc`; `options->non_coherent` is ignored here). The buffer
/// is charged to this user by the broker's quota until every holder has
/// closed it.
///
/// # Errors
/// `DMABROKER_ERROR_PERMISSION_DENIED` (policy), `DMABROKER_ERROR_QUOTA_EXCEEDED`,
/// `DMABROKER_ERROR_NO_SUCH_HEAP`, `DMABROKER_ERROR_OUT_OF_MEMORY`,
/// `DMABROKER_ERROR_BROKER`, `DMABROKER_ERROR_INVALID_ARGUMENT`.
///
/// # Safety
/// `client` is NULL or a live handle; `heap` is NULL or a C string;
/// `options` is NULL or readable; `out` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_client_alloc(
    client: *const Client,
    heap: *const c_char,
    len: u64,
    options: *const AllocOptions,
    out: *mut *mut Buffer,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        // SAFETY: the caller passes NULL or a live handle.
        let client = unsafe { handle(client, "client") }?;
        // SAFETY: the caller passes NULL or a C string.
        let heap = unsafe { c_str(heap, "heap") }?;
        if len == 0 {
            return Err(Error::invalid("size 0: a buffer needs at least one byte"));
        }
        // SAFETY: the caller passes NULL or a readable dmabroker_alloc_options.
        let options = unsafe { options.as_ref() };
        let name = match options.map(|o| o.name).filter(|n| !n.is_null()) {
            // SAFETY: non-NULL, and the caller passes a C string.
            Some(n) => Some(unsafe { c_str(n, "options->name") }?.to_owned()),
            None => None,
        };
        let request = AllocateRequest {
            heap: heap.to_owned(),
            len,
            align: options.map_or(1, |o| o.align.max(1)),
            contiguous: options.is_some_and(|o| o.contiguous),
            name,
        };
        let buffer = client.with(|c| c.allocate_with(request))?;
        *out = into_handle(Buffer::new(buffer));
        Ok(())
    })
}

impl From<AllocateForError> for Error {
    fn from(e: AllocateForError) -> Self {
        if let Some(err) = refusal!(&e, AllocateForError) {
            return err;
        }
        let status = match &e {
            AllocateForError::Unsupported { .. } | AllocateForError::NoSuitableHeap(_) => {
                Status::DMABROKER_ERROR_UNSUPPORTED
            }
            AllocateForError::Invalid(_) => Status::DMABROKER_ERROR_INVALID_ARGUMENT,
            AllocateForError::NotAllowed(_) => Status::DMABROKER_ERROR_PERMISSION_DENIED,
            AllocateForError::QuotaExceeded(_) => Status::DMABROKER_ERROR_QUOTA_EXCEEDED,
            AllocateForError::NoSuchHeap(_) => Status::DMABROKER_ERROR_NO_SUCH_HEAP,
            AllocateForError::AllocationFailed(_) => Status::DMABROKER_ERROR_OUT_OF_MEMORY,
            AllocateForError::BadBuffer(_) => Status::DMABROKER_ERROR_NOT_A_BUFFER,
            AllocateForError::Transport(t) => transport_status(t),
            _ => Status::DMABROKER_ERROR_BROKER,
        };
        Self::new(status, e.to_string())
    }
}

/// Allocate through the broker by constraints: the broker chooses the
/// cheapest heap that its policy allows this user and that meets every
/// requirement of `constraints` (as `dmabroker_alloc_for` does in-process),
/// allocates `len` bytes from it and charges them to this user's quota.
/// `name` (NULL: none) names the buffer. `choice_info` may be NULL;
/// otherwise it receives the heap and the reasons (free its strings with
/// `dmabroker_choice_info_clear`). Needs a broker speaking protocol version 2.
///
/// # Errors
/// `DMABROKER_ERROR_UNSUPPORTED` when no allowed heap meets the constraints
/// (the message names each unmet requirement, its devices, what each heap
/// lacks and the heaps the policy does not allow) or the broker is too old,
/// `DMABROKER_ERROR_QUOTA_EXCEEDED`, `DMABROKER_ERROR_OUT_OF_MEMORY`,
/// `DMABROKER_ERROR_BROKER`, `DMABROKER_ERROR_INVALID_ARGUMENT` (NULL
/// pointers, size 0, more than 16 devices).
///
/// # Safety
/// `client` and `constraints` are NULL or live handles; `name` is NULL or a
/// C string; `out` is NULL or writable for one pointer; `choice_info` is NULL
/// or writable for one `dmabroker_choice_info` (its old contents are
/// overwritten, not freed).
#[no_mangle]
pub unsafe extern "C" fn dmabroker_client_alloc_for(
    client: *const Client,
    constraints: *const crate::constraints::Constraints,
    len: u64,
    name: *const c_char,
    out: *mut *mut Buffer,
    choice_info: *mut crate::constraints::ChoiceInfo,
) -> Status {
    use crate::constraints::ChoiceInfo;
    guard(|| {
        // SAFETY: the caller passes NULL or a writable dmabroker_choice_info.
        let mut info = unsafe { choice_info.as_mut() };
        if let Some(i) = info.as_deref_mut() {
            *i = ChoiceInfo::EMPTY;
        }
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        // SAFETY: the caller passes NULL or a live handle.
        let client = unsafe { handle(client, "client") }?;
        // SAFETY: the caller passes NULL or a live handle.
        let constraints = unsafe { handle(constraints, "constraints") }?.effective()?;
        let name = if name.is_null() {
            None
        } else {
            // SAFETY: non-NULL, and the caller passes a C string.
            Some(unsafe { c_str(name, "name") }?)
        };
        if len == 0 {
            return Err(Error::invalid("size 0: a buffer needs at least one byte"));
        }
        let got = client.with(|c| c.allocate_for(&constraints, len, name))?;
        if let Some(i) = info {
            let c = &got.choice;
            *i = ChoiceInfo {
                heap: crate::owned_c_string(&c.heap),
                reasons: crate::owned_c_string(&c.reasons.join("; ")),
                len: c.len,
                allocated_len: c.allocated_len,
                align: c.align,
                contiguous: c.contiguous,
                non_coherent: c.coherency == "non-coherent",
                uncached: c.cache == "uncached",
            };
        }
        *out = into_handle(Buffer::new(got.buffer));
        Ok(())
    })
}

fn publish_options(options: Option<&PublishOptions>) -> Result<CorePublishOptions> {
    let Some(o) = options else {
        return Ok(CorePublishOptions::token());
    };
    let mut p = if o.name.is_null() {
        CorePublishOptions::token()
    } else {
        // SAFETY: non-NULL, and the caller passes a C string.
        CorePublishOptions::named(unsafe { c_str(o.name, "options->name") }?)
    };
    if o.grant_count > 0 {
        if o.grants.is_null() {
            return Err(Error::null("options->grants (with grant_count > 0)"));
        }
        // SAFETY: non-NULL, and the caller promises grant_count readable pointers.
        let grants = unsafe { std::slice::from_raw_parts(o.grants, o.grant_count) };
        for (i, g) in grants.iter().enumerate() {
            // SAFETY: each element is NULL or a C string, by the caller's promise.
            let text = unsafe { c_str(*g, &format!("options->grants[{i}]")) }?;
            let grant: Grant =
                text.parse().map_err(|e| Error::invalid(format!("options->grants[{i}] = {text:?}: {e}")))?;
            p = p.grant(grant);
        }
    }
    if o.expires_in_secs > 0 {
        p = p.expires_in(Duration::from_secs(o.expires_in_secs));
    }
    Ok(p.one_shot(o.one_shot))
}

/// Publish a buffer so other processes can import it by its key; the key
/// (the name, or a token) is stored in `*key_out`, a string the caller
/// owns and releases with `dmabroker_string_free`. The broker holds the
/// buffer while it is published: this process may exit.
///
/// A memfd must be size-sealed to be published (buffers from
/// `dmabroker_alloc` and `dmabroker_client_alloc` are).
///
/// # Errors
/// `DMABROKER_ERROR_ALREADY_EXISTS` (the name is taken),
/// `DMABROKER_ERROR_PERMISSION_DENIED`, `DMABROKER_ERROR_QUOTA_EXCEEDED`,
/// `DMABROKER_ERROR_NOT_A_BUFFER`, `DMABROKER_ERROR_UNSUPPORTED` (a
/// read-only grant the buffer cannot enforce), `DMABROKER_ERROR_BROKER`,
/// `DMABROKER_ERROR_INVALID_ARGUMENT` (NULLs, a grant that does not parse).
/// `*key_out` is NULL on failure.
///
/// # Safety
/// `client` and `buffer` are NULL or live handles; `options` is NULL or a
/// readable `dmabroker_publish_options` whose pointers follow its field
/// docs; `key_out` is NULL or writable for one pointer.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_client_publish(
    client: *const Client,
    buffer: *const Buffer,
    options: *const PublishOptions,
    key_out: *mut *mut c_char,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let key_out = unsafe { crate::out(key_out, "key_out") }?;
        *key_out = ptr::null_mut();
        // SAFETY: the caller passes NULL or a live handle.
        let client = unsafe { handle(client, "client") }?;
        // SAFETY: the caller passes NULL or a live handle.
        let buffer = unsafe { handle(buffer, "buffer") }?;
        // SAFETY: the caller passes NULL or a readable dmabroker_publish_options.
        let options = publish_options(unsafe { options.as_ref() })?;
        let key = client.with(|c| c.publish(&buffer.buffer, options))?;
        let key = CString::new(key)
            .map_err(|_| Error::new(Status::DMABROKER_ERROR_BROKER, "the broker sent a key with a NUL"))?;
        *key_out = key.into_raw();
        Ok(())
    })
}

/// Import a published buffer by name or token. `*read_only` (when not
/// NULL) says whether the grant is read-only: then map it with
/// `DMABROKER_MAP_MODE_READ` (a read-write mapping fails with
/// `DMABROKER_ERROR_READ_ONLY`).
///
/// # Errors
/// `DMABROKER_ERROR_NOT_FOUND` (withdrawn, expired, consumed, or a typo),
/// `DMABROKER_ERROR_PERMISSION_DENIED` (the ACL does not grant this user),
/// `DMABROKER_ERROR_BROKER`, `DMABROKER_ERROR_INVALID_ARGUMENT`.
///
/// # Safety
/// `client` is NULL or a live handle; `key` is NULL or a C string; `out`
/// is NULL or writable for one pointer; `read_only` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_client_import(
    client: *const Client,
    key: *const c_char,
    out: *mut *mut Buffer,
    read_only: *mut bool,
) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a writable pointer slot.
        let out = unsafe { crate::out(out, "out") }?;
        *out = ptr::null_mut();
        // SAFETY: the caller passes NULL or a live handle.
        let client = unsafe { handle(client, "client") }?;
        // SAFETY: the caller passes NULL or a C string.
        let key = unsafe { c_str(key, "key") }?;
        let imported = client.with(|c| c.import(key))?;
        // SAFETY: the caller passes NULL or a writable bool.
        if let Some(ro) = unsafe { read_only.as_mut() } {
            *ro = imported.access == Access::ReadOnly;
        }
        *out = into_handle(Buffer::new(imported.buffer));
        Ok(())
    })
}

/// Withdraw a publication (name or token). Holders keep their fds.
///
/// # Errors
/// `DMABROKER_ERROR_NOT_FOUND`, `DMABROKER_ERROR_PERMISSION_DENIED` (only
/// the publisher or root may), `DMABROKER_ERROR_BROKER`,
/// `DMABROKER_ERROR_INVALID_ARGUMENT`.
///
/// # Safety
/// `client` is NULL or a live handle; `key` is NULL or a C string.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_client_unpublish(client: *const Client, key: *const c_char) -> Status {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let client = unsafe { handle(client, "client") }?;
        // SAFETY: the caller passes NULL or a C string.
        let key = unsafe { c_str(key, "key") }?;
        client.with(|c| c.unpublish(key))?;
        Ok(())
    })
}

/// Release a string the library returned (`dmabroker_client_publish`'s
/// key). NULL is ignored.
///
/// # Safety
/// `s` is NULL or a string from this library not freed before.
#[no_mangle]
pub unsafe extern "C" fn dmabroker_string_free(s: *mut c_char) {
    guard_value((), || {
        if !s.is_null() {
            // SAFETY: by the contract, s came from CString::into_raw in this
            // library and is freed once.
            drop(unsafe { CString::from_raw(s) });
        }
    });
}
