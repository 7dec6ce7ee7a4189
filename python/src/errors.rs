//! Library errors as Python exceptions. The classes live in
//! `dmabroker/_errors.py` (a small hierarchy under `dmabroker.Error`, each
//! also deriving from its builtin twin: `InvalidArgument` is a `ValueError`,
//! ...); each message is the library's own, with the causes it does not
//! already spell out.

use pyo3::prelude::*;
use pyo3::PyErr;

/// Which exception class (a name in `dmabroker._errors`).
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Other,
    Invalid,
    NotFound,
    Permission,
    Memory,
    Broker,
    Pool,
    Closed,
    Evicted,
    Timeout,
}

impl Kind {
    fn class(self) -> &'static str {
        match self {
            Self::Other => "Error",
            Self::Invalid => "InvalidArgument",
            Self::NotFound => "NotFound",
            Self::Permission => "PermissionDenied",
            Self::Memory => "OutOfMemory",
            Self::Broker => "BrokerError",
            Self::Pool => "PoolError",
            Self::Closed => "Closed",
            Self::Evicted => "Evicted",
            Self::Timeout => "Timeout",
        }
    }
}

/// The error's message with each cause it does not already spell out.
pub fn message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// `e` as the exception `kind` names.
pub fn raise(kind: Kind, e: &(dyn std::error::Error + 'static)) -> PyErr {
    raise_msg(kind, message(e))
}

/// A message as the exception `kind` names.
pub fn raise_msg(kind: Kind, msg: String) -> PyErr {
    Python::attach(|py| {
        match py.import("dmabroker._errors").and_then(|m| m.getattr(kind.class())).and_then(|c| c.call1((msg,))) {
            Ok(value) => PyErr::from_value(value),
            Err(e) => e,
        }
    })
}

/// A library error as its Python exception.
pub trait PyFail: std::error::Error + Sized + 'static {
    /// The class for this error.
    fn kind(&self) -> Kind;
    /// The exception.
    fn py(self) -> PyErr {
        raise(self.kind(), &self)
    }
}

use dmabroker::buffer::{FromFdError, MapError, SyncError};
use dmabroker::client as c;
use dmabroker::constraints::{AllocForError, ProbeError};
use dmabroker::format::LayoutError;
use dmabroker::heap::AllocError;
use dmabroker::pool as p;

impl PyFail for AllocError {
    fn kind(&self) -> Kind {
        use AllocError as E;
        match self {
            E::ZeroSize | E::SizeOverflow { .. } | E::BadAlignment(..) | E::AlignmentUnsatisfiable { .. } => {
                Kind::Invalid
            }
            E::NoSuchHeap { .. } => Kind::NotFound,
            E::PermissionDenied { .. } => Kind::Permission,
            E::NotContiguous { .. }
            | E::TooLarge { .. }
            | E::NoHugePages { .. }
            | E::LargerThanMemory { .. }
            | E::OutOfMemory { .. } => Kind::Memory,
            _ => Kind::Other,
        }
    }
}

impl PyFail for AllocForError {
    fn kind(&self) -> Kind {
        match self {
            AllocForError::Choose(_) => Kind::NotFound,
            _ => Kind::Memory,
        }
    }
}

impl PyFail for ProbeError {
    fn kind(&self) -> Kind {
        Kind::NotFound
    }
}

impl PyFail for LayoutError {
    fn kind(&self) -> Kind {
        Kind::Invalid
    }
}

impl PyFail for FromFdError {
    fn kind(&self) -> Kind {
        match self {
            FromFdError::NotABuffer { .. } | FromFdError::Empty => Kind::Invalid,
            _ => Kind::Other,
        }
    }
}

impl PyFail for MapError {
    fn py(self) -> PyErr {
        // The library's message, its fix in Python's words.
        raise_msg(self.kind(), message(&self).replace("map it with map_read()", "read it with `with buf.read()`"))
    }

    fn kind(&self) -> Kind {
        match self {
            MapError::ReadOnly | MapError::WriteSealed => Kind::Permission,
            MapError::TooLarge(_) | MapError::OutOfMemory(_) => Kind::Memory,
            _ => Kind::Other,
        }
    }
}

impl PyFail for SyncError {
    fn kind(&self) -> Kind {
        match self {
            SyncError::ReadOnlyMapping => Kind::Permission,
            _ => Kind::Other,
        }
    }
}

impl PyFail for c::ConnectError {
    fn kind(&self) -> Kind {
        match self {
            c::ConnectError::PermissionDenied { .. } => Kind::Permission,
            c::ConnectError::TimedOut { .. } | c::ConnectError::Transport(c::TransportError::TimedOut { .. }) => {
                Kind::Timeout
            }
            _ => Kind::Broker,
        }
    }
}

/// The class of a broker refusal named by its variant.
macro_rules! broker_kinds {
    ($ty:ident { $($variant:ident => $kind:ident),* $(,)? }) => {
        impl PyFail for c::$ty {
            fn kind(&self) -> Kind {
                #[allow(unreachable_patterns)]
                match self {
                    $(c::$ty::$variant { .. } => Kind::$kind,)*
                    _ => Kind::Broker,
                }
            }
        }
    };
}

broker_kinds!(AllocateError { NotAllowed => Permission, QuotaExceeded => Memory, NoSuchHeap => NotFound, AllocationFailed => Memory });
broker_kinds!(AllocateForError { Invalid => Invalid, NoSuitableHeap => NotFound, NotAllowed => Permission, QuotaExceeded => Memory, NoSuchHeap => NotFound, AllocationFailed => Memory });
broker_kinds!(PublishError { NotAllowed => Permission, AlreadyExists => Invalid, QuotaExceeded => Memory, NotABuffer => Invalid, ReadOnlyUnsupported => Invalid });
broker_kinds!(ImportError { NotFound => NotFound, NotAllowed => Permission });
broker_kinds!(UnpublishError { NotFound => NotFound, NotAllowed => Permission });
broker_kinds!(QueryError {});

impl PyFail for p::CreateError {
    fn kind(&self) -> Kind {
        use p::CreateError as E;
        match self {
            E::BufferCount(_) | E::ConsumerCount(_) | E::ZeroLength | E::BufferTooSmall { .. } | E::Unsealed(_) => {
                Kind::Invalid
            }
            E::Alloc { .. } => Kind::Memory,
            E::Listen(l) => l.kind(),
            _ => Kind::Pool,
        }
    }
}

impl PyFail for p::ListenError {
    fn kind(&self) -> Kind {
        Kind::Pool
    }
}

impl PyFail for p::AttachError {
    fn kind(&self) -> Kind {
        use p::AttachError as E;
        match self {
            E::NoProducer { .. } => Kind::NotFound,
            E::Closed | E::HungUp => Kind::Closed,
            E::Timeout(_) => Kind::Timeout,
            _ => Kind::Pool,
        }
    }
}

impl PyFail for p::AcquireError {
    fn kind(&self) -> Kind {
        match self {
            p::AcquireError::Timeout(_) => Kind::Timeout,
            _ => Kind::Closed,
        }
    }
}

impl PyFail for p::SubmitError {
    fn kind(&self) -> Kind {
        match self {
            p::SubmitError::TooLong { .. } | p::SubmitError::ReservedFlags(_) => Kind::Invalid,
            _ => Kind::Pool,
        }
    }
}

impl PyFail for p::PoolError {
    fn kind(&self) -> Kind {
        use p::PoolError as E;
        match self {
            E::Closed | E::ProducerGone => Kind::Closed,
            E::Timeout(_) => Kind::Timeout,
            E::Evicted => Kind::Evicted,
            _ => Kind::Pool,
        }
    }
}

impl PyFail for p::KeptError {
    fn kind(&self) -> Kind {
        match self {
            p::KeptError::Evicted => Kind::Evicted,
            p::KeptError::Foreign { .. } => Kind::Invalid,
            _ => Kind::Pool,
        }
    }
}
