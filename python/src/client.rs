//! `dmabroker.Client`: the broker's client (allocate, publish with grants,
//! import, unpublish, stats, cgroup stats).

use crate::buffer::PyBuffer;
use crate::errors::{raise_msg, Kind, PyFail};
use dmabroker::client::{Client as Inner, PublishOptions};
use dmabroker::proto::{default_client_socket, Grant};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::Mutex;
use std::time::Duration;

/// A connection to the dmabroker broker.
///
/// ``socket`` is the broker's socket path; None: ``$DMABROKER_SOCKET``,
/// else ``$XDG_RUNTIME_DIR/dmabroker.sock`` when it exists, else
/// ``/run/dmabroker/dmabroker.sock``. Use it as a context manager, or
/// :meth:`close` it.
#[pyclass(module = "dmabroker", frozen)]
pub struct Client {
    inner: Mutex<Option<Inner>>,
}

impl Client {
    fn call<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&mut Inner) -> PyResult<T> + Send) -> PyResult<T> {
        py.detach(|| {
            let mut g = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let c = g.as_mut().ok_or_else(|| PyValueError::new_err("the client is closed"))?;
            f(c)
        })
    }
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (socket=None))]
    fn new(py: Python<'_>, socket: Option<std::path::PathBuf>) -> PyResult<Self> {
        let path = socket.unwrap_or_else(default_client_socket);
        let inner = py.detach(|| Inner::connect(&path)).map_err(PyFail::py)?;
        Ok(Self { inner: Mutex::new(Some(inner)) })
    }

    /// Allocate ``size`` bytes from ``heap`` through the broker (charged to
    /// this user's quota; ``heap`` must be one its policy allows).
    #[pyo3(signature = (size, heap="memfd", *, name=None))]
    fn alloc(&self, py: Python<'_>, size: u64, heap: &str, name: Option<String>) -> PyResult<PyBuffer> {
        let heap = heap.to_owned();
        let b = self.call(py, move |c| c.allocate(&heap, size, name.as_deref()).map_err(PyFail::py))?;
        Ok(PyBuffer::new(b))
    }

    /// Publish ``buffer`` under ``name`` (None: an unguessable token) for
    /// the grantees in ``allow``: ``"uid=1000:ro"``, ``"gid=44:rw"``,
    /// ``"any:ro"`` (access defaults to ``ro``). Returns the key importers
    /// pass to :meth:`import_`. ``one_shot``: withdrawn after the first
    /// import; ``expires``: seconds until it is withdrawn.
    #[pyo3(signature = (buffer, name=None, *, allow=Vec::new(), one_shot=false, expires=None))]
    fn publish(
        &self,
        py: Python<'_>,
        buffer: &PyBuffer,
        name: Option<String>,
        allow: Vec<String>,
        one_shot: bool,
        expires: Option<f64>,
    ) -> PyResult<String> {
        let mut options = match name {
            Some(n) => PublishOptions::named(n),
            None => PublishOptions::token(),
        };
        for a in &allow {
            let grant: Grant = a.parse().map_err(|e: String| raise_msg(Kind::Invalid, format!("allow={a:?}: {e}")))?;
            options = options.grant(grant);
        }
        options = options.one_shot(one_shot);
        if let Some(secs) = expires {
            let d = Duration::try_from_secs_f64(secs).map_err(|_| {
                raise_msg(Kind::Invalid, format!("expires={secs}: must be a positive number of seconds"))
            })?;
            options = options.expires_in(d);
        }
        let b = buffer.buffer(py)?;
        self.call(py, move |c| c.publish(&b, options).map_err(PyFail::py))
    }

    /// Import the publication ``key`` (a name or a token). The buffer's
    /// ``access`` says what the grant allows; a read-only grant gives an fd
    /// that cannot be mapped writable.
    fn import_(&self, py: Python<'_>, key: String) -> PyResult<PyBuffer> {
        let imp = self.call(py, move |c| c.import(&key).map_err(PyFail::py))?;
        Ok(PyBuffer::with(imp.buffer, Some(imp.access.to_string()), Some(imp.publisher_uid), None))
    }

    /// Withdraw the publication ``key`` (importers keep what they imported).
    fn unpublish(&self, py: Python<'_>, key: String) -> PyResult<()> {
        self.call(py, move |c| c.unpublish(&key).map_err(PyFail::py))
    }

    /// This user's usage and quota and the broker's totals, as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let s = self.call(py, |c| c.stats().map_err(PyFail::py))?;
        crate::alloc::to_py(py, &s)
    }

    /// What the broker charges to this process's cgroup, as a dict: ``path``
    /// (None when unknown, with ``unknown`` saying why), ``refused``,
    /// ``used_bytes``, ``used_buffers`` and ``rules``, one dict per matching
    /// ``[[cgroup]]`` policy rule (``rule``, ``line``, ``unit``,
    /// ``used_bytes``, ``used_buffers``, ``max_bytes``, ``max_buffers``,
    /// ``heaps``, ``publish``; None where the rule sets nothing). None from
    /// a broker older than protocol version 4.
    fn cgroup_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (_, cgroup) = self.call(py, |c| c.stats_with_cgroup().map_err(PyFail::py))?;
        match cgroup {
            Some(c) => crate::alloc::to_py(py, &c),
            None => Ok(py.None().into_bound(py)),
        }
    }

    /// The publications this user can see, as dicts.
    fn list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (entries, _truncated) = self.call(py, |c| c.list().map_err(PyFail::py))?;
        crate::alloc::to_py(py, &entries)
    }

    /// The server's name and protocol version.
    #[getter]
    fn server(&self, py: Python<'_>) -> PyResult<(String, u16)> {
        self.call(py, |c| Ok((c.server().to_owned(), c.version())))
    }

    /// Close the connection.
    fn close(&self) {
        *self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(&self, _t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) -> bool {
        self.close();
        false
    }
}
