//! `dmabroker.Producer` / `dmabroker.Consumer`: zero-copy pools. Frames are
//! memoryviews (and numpy arrays) over the pool's shared buffers.
//!
//! Sync: as for `Buffer` (see `buffer.rs`), a library guard cannot be held
//! across Python calls, so the guards run at the edges: a consumer opens and
//! closes a read guard when it receives a frame (caches invalidated before
//! the first read; the producer does not touch a held buffer), a producer
//! opens and closes a write guard when it gets a slot and again just before
//! it submits the frame (the END writes the CPU's caches back).
//!
//! Lifetimes: a frame's views point into the consumer's mappings, which live
//! as long as the library consumer. A frame is released (its buffer goes
//! back to the producer) only once its views are released: explicitly
//! (`release()`, `with frame:`; `BufferError` while a numpy array made from
//! it is alive) or implicitly (the iterator moving on, the frame object
//! collected: then a frame whose views are still alive stays held until
//! they are gone, checked at every receive). The library consumer is
//! dropped only when no view is left (else it is parked, see `view.rs`).

use crate::errors::{raise_msg, Kind, PyFail};
use crate::view::{self, Exporter};
use dmabroker::pool::{self as p, Backpressure, ConsumerOptions, FrameMeta, KeptFrame, PoolOptions, WaitMode};
use dmabroker::Heaps;
use pyo3::exceptions::{PyBufferError, PyStopIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::MutexExt;
use pyo3::types::PyDict;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

fn secs(what: &str, s: Option<f64>) -> PyResult<Option<Duration>> {
    s.map(|v| {
        Duration::try_from_secs_f64(v)
            .map_err(|_| raise_msg(Kind::Invalid, format!("{what}={v}: must be a non-negative number of seconds")))
    })
    .transpose()
}

/// Lock while detached from Python (inside `py.detach`).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lock while attached, without deadlocking with the GIL: the state locks
/// are held across Python calls, which may let other threads run.
/// Uncontended (the usual case) it is a plain `try_lock`.
pub(crate) fn plock<'a, T>(py: Python<'_>, m: &'a Mutex<T>) -> MutexGuard<'a, T> {
    match m.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            m.lock_py_attached(py).unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }
}

// ---------------------------------------------------------------- producer

#[derive(Default)]
struct PState {
    inner: Option<p::Producer>,
    /// The memory views of each buffer show (index -> mmap).
    maps: HashMap<u32, Exporter>,
    /// The open frames' memoryviews (index -> scope).
    scopes: HashMap<u32, Vec<Py<PyAny>>>,
    /// Lent slots whose views outlived their block: returned to the pool
    /// when the views are gone.
    pending: Vec<u32>,
}

/// The producing end of a pool: ``buffers`` buffers of ``size`` bytes from
/// ``heap``, served at the socket ``path`` (consumers connect with
/// :class:`Consumer`). Fill frames with ``with producer.frame() as view:``.
///
/// A producer is single-threaded: consumers' attach handshakes are served
/// inside :meth:`frame`, :meth:`wait_for_consumers` and :meth:`maintain`.
#[pyclass(module = "dmabroker", frozen)]
pub struct Producer {
    st: Mutex<PState>,
    path: Option<String>,
    size: u64,
    count: usize,
}

impl Producer {
    fn with_inner<T>(&self, f: impl FnOnce(&mut p::Producer) -> PyResult<T>) -> PyResult<T> {
        let mut st = lock(&self.st);
        let inner = st.inner.as_mut().ok_or_else(|| PyValueError::new_err("the producer is closed"))?;
        f(inner)
    }

    fn sweep(&self, py: Python<'_>) {
        let mut st = plock(py, &self.st);
        let st = &mut *st;
        let mut still = Vec::new();
        for index in std::mem::take(&mut st.pending) {
            let done = !st.maps.get(&index).is_some_and(|e| e.alive(py));
            if done {
                if let Some(inner) = st.inner.as_mut() {
                    // Dropping the reclaimed slot unsubmitted returns it to the pool.
                    drop(inner.reclaim(index));
                }
            } else {
                still.push(index);
            }
        }
        st.pending = still;
    }
}

#[pymethods]
impl Producer {
    #[new]
    #[pyo3(signature = (path=None, *, size, buffers=4, heap="memfd", backpressure="block", release_timeout=5.0, max_consumers=8, name=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: Option<String>,
        size: u64,
        buffers: usize,
        heap: &str,
        backpressure: &str,
        release_timeout: Option<f64>,
        max_consumers: u32,
        name: Option<String>,
    ) -> PyResult<Self> {
        let bp = match backpressure {
            "block" => Backpressure::Block,
            "drop-oldest" | "drop_oldest" => Backpressure::DropOldest,
            other => {
                return Err(raise_msg(
                    Kind::Invalid,
                    format!("backpressure={other:?}: must be \"block\" or \"drop-oldest\""),
                ))
            }
        };
        let mut options = PoolOptions::new(buffers, size)
            .backpressure(bp)
            .release_timeout(secs("release_timeout", release_timeout)?)
            .max_consumers(max_consumers);
        if let Some(n) = name {
            options = options.name(n);
        }
        let heap = heap.to_owned();
        let listen = path.clone();
        let inner = py.detach(move || -> PyResult<p::Producer> {
            let mut producer = p::Producer::allocate(&Heaps::discover(), &heap, &options).map_err(PyFail::py)?;
            if let Some(path) = listen {
                producer.listen(&path).map_err(PyFail::py)?;
            }
            Ok(producer)
        })?;
        let size = inner.buffers().next().map_or(size, dmabroker::Buffer::len);
        Ok(Self { st: Mutex::new(PState { inner: Some(inner), ..PState::default() }), path, size, count: buffers })
    }

    /// The socket path consumers connect to.
    #[getter]
    fn path(&self) -> Option<String> {
        self.path.clone()
    }

    /// Bytes per buffer (after the heap's rounding).
    #[getter]
    fn size(&self) -> u64 {
        self.size
    }

    /// Number of buffers.
    #[getter]
    fn buffers(&self) -> usize {
        self.count
    }

    /// Consumers attached now.
    #[getter]
    fn attached(&self, py: Python<'_>) -> PyResult<usize> {
        py.detach(|| self.with_inner(|p| Ok(p.attached())))
    }

    /// Serve attach handshakes until ``n`` consumers are attached; False
    /// after ``timeout`` seconds.
    #[pyo3(signature = (n=1, timeout=5.0))]
    fn wait_for_consumers(&self, py: Python<'_>, n: usize, timeout: f64) -> PyResult<bool> {
        let t = secs("timeout", Some(timeout))?.unwrap_or_default();
        py.detach(|| self.with_inner(|p| Ok(p.wait_for_consumers(n, t))))
    }

    /// Serve attach handshakes and health checks now (call it while idle).
    fn maintain(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            self.with_inner(|p| {
                p.maintain_now();
                Ok(())
            })
        })
    }

    /// A frame to fill: ``with producer.frame(meta=42) as view:`` gives a
    /// writable memoryview of a free buffer (waiting up to ``timeout``
    /// seconds while consumers hold every buffer); the frame goes to every
    /// consumer when the block ends without an exception (``bytes_used``:
    /// the whole buffer when None; ``meta``: one 64-bit word for the
    /// consumers). ``frame.seq`` is its sequence number afterwards.
    #[pyo3(signature = (*, meta=0, bytes_used=None, timeout=None))]
    fn frame(slf: Bound<'_, Self>, meta: u64, bytes_used: Option<u64>, timeout: Option<f64>) -> PyResult<WriteFrame> {
        let timeout = secs("timeout", timeout)?;
        Ok(WriteFrame { producer: slf.unbind(), meta, bytes_used, timeout, state: Mutex::new((None, None)) })
    }

    /// Pool counters: ``produced``, ``dropped``, ``lost_consumers`` and one
    /// dict per consumer (``pid``, ``delivered``, ``received``,
    /// ``released``, ``dropped``, ``evicted`` ...).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = py.detach(|| self.with_inner(|p| Ok(p.stats())))?;
        let d = PyDict::new(py);
        d.set_item("produced", s.produced)?;
        d.set_item("dropped", s.dropped)?;
        d.set_item("lost_consumers", s.lost_consumers)?;
        let consumers = pyo3::types::PyList::empty(py);
        for c in &s.consumers {
            let cd = PyDict::new(py);
            cd.set_item("slot", c.slot)?;
            cd.set_item("pid", c.pid)?;
            cd.set_item("delivered", c.delivered)?;
            cd.set_item("received", c.received)?;
            cd.set_item("released", c.released)?;
            cd.set_item("dropped", c.dropped)?;
            cd.set_item("wakes", c.wakes)?;
            cd.set_item("evicted", c.evicted)?;
            consumers.append(cd)?;
        }
        d.set_item("consumers", consumers)?;
        Ok(d)
    }

    /// Close the pool: consumers see the end of the stream after the frames
    /// already handed off. Raises ``BufferError`` while views of a frame
    /// being filled are alive.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.sweep(py);
        let mut st = plock(py, &self.st);
        if !st.pending.is_empty() {
            return Err(PyBufferError::new_err("views of a frame being filled are still alive: delete them first"));
        }
        for (_, e) in st.maps.drain() {
            e.close(py);
        }
        if let Some(mut inner) = st.inner.take() {
            py.detach(|| inner.close());
        }
        Ok(())
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) -> PyResult<bool> {
        match self.close(py) {
            // An exception leaves the block: do not mask it with an error about
            // views its traceback keeps alive.
            Err(_) if !t.is_none(py) => Ok(false),
            r => r.map(|()| false),
        }
    }
}

/// The context manager of :meth:`Producer.frame`.
#[pyclass(module = "dmabroker", frozen)]
pub struct WriteFrame {
    producer: Py<Producer>,
    meta: u64,
    bytes_used: Option<u64>,
    timeout: Option<Duration>,
    /// (lent buffer index, sequence number once submitted)
    state: Mutex<(Option<u32>, Option<u64>)>,
}

#[pymethods]
impl WriteFrame {
    fn __enter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let producer = self.producer.bind(py).get();
        producer.sweep(py);
        let timeout = self.timeout;
        let (index, len, fd) = py.detach(|| {
            let mut st = lock(&producer.st);
            let st = &mut *st;
            let p = st.inner.as_mut().ok_or_else(|| PyValueError::new_err("the producer is closed"))?;
            let mut slot = p.acquire(timeout).map_err(PyFail::py)?;
            // The library's write guard at the frame's start (see the module docs).
            let len = slot.mapping().len();
            drop(slot.mapping().begin_write().map_err(PyFail::py)?);
            // An fd for the buffer's Python mapping, the first time only.
            let fd = if st.maps.contains_key(&slot.index()) { None } else { Some(slot.buffer().try_clone_fd()?) };
            PyResult::Ok((slot.lend(), len, fd))
        })?;
        let mut st = plock(py, &producer.st);
        let st = &mut *st;
        if let Some(fd) = fd {
            st.maps.insert(index, Exporter::map(py, &fd, len as u64, true)?);
        }
        let exporter = st.maps.get(&index).ok_or_else(|| PyValueError::new_err("no mapping"))?;
        let scope = st.scopes.entry(index).or_default();
        let mv = exporter.view(py, len, true, scope)?;
        plock(py, &self.state).0 = Some(index);
        Ok(mv)
    }

    fn __exit__(&self, py: Python<'_>, t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) -> PyResult<bool> {
        let producer = self.producer.bind(py).get();
        let Some(index) = plock(py, &self.state).0.take() else { return Ok(false) };
        {
            let mut st = plock(py, &producer.st);
            if let Some(mut scope) = st.scopes.remove(&index) {
                view::release(py, &mut scope);
            }
            if st.maps.get(&index).is_some_and(|e| e.alive(py)) {
                st.pending.push(index);
                if !t.is_none(py) {
                    return Ok(false); // do not mask the exception leaving the block
                }
                return Err(PyBufferError::new_err(
                    "a view of the frame (a numpy array or other object made from the memoryview) is still alive: \
                     delete it before the block ends; the frame was not sent, and its buffer returns to the pool \
                     once the view is gone",
                ));
            }
        }
        let submit = t.is_none(py);
        let meta = FrameMeta::new(self.bytes_used.unwrap_or(producer.size)).meta(self.meta);
        let seq = py.detach(|| {
            producer.with_inner(|p| {
                let Some(mut slot) = p.reclaim(index) else { return Ok(None) };
                if !submit {
                    return Ok(None); // dropped unsubmitted: back to the pool
                }
                drop(slot.mapping().begin_write().map_err(PyFail::py)?);
                slot.submit(meta).map(Some).map_err(PyFail::py)
            })
        })?;
        plock(py, &self.state).1 = seq;
        Ok(false)
    }

    /// The frame's sequence number once submitted.
    #[getter]
    fn seq(&self, py: Python<'_>) -> Option<u64> {
        plock(py, &self.state).1
    }
}

// ---------------------------------------------------------------- consumer

struct Held {
    kept: KeptFrame,
    /// The frame's memoryviews.
    scope: Vec<Py<PyAny>>,
}

#[derive(Default)]
struct CState {
    inner: Option<p::Consumer>,
    /// The memory frames' views show (buffer index -> read-only mmap).
    maps: HashMap<u32, Exporter>,
    held: HashMap<u64, Held>,
    next_id: u64,
    /// The frame the iterator handed out last (released at the next step).
    current: Option<u64>,
    /// Frames released implicitly whose views are still alive.
    pending: Vec<u64>,
}

impl CState {
    /// Give frame `id` back if its views are released; true when done.
    fn try_release(&mut self, py: Python<'_>, id: u64) -> bool {
        let Some(h) = self.held.get_mut(&id) else { return true };
        view::release(py, &mut h.scope);
        let index = h.kept.info().index;
        if self.maps.get(&index).is_some_and(|e| e.alive(py)) {
            return false;
        }
        if let Some(h) = self.held.remove(&id) {
            if let Some(inner) = self.inner.as_mut() {
                let _ = inner.release_kept(h.kept);
            }
        }
        true
    }

    fn release_lenient(&mut self, py: Python<'_>, id: u64) {
        if !self.try_release(py, id) && !self.pending.contains(&id) {
            self.pending.push(id);
        }
    }

    fn sweep(&mut self, py: Python<'_>) {
        for id in std::mem::take(&mut self.pending) {
            self.release_lenient(py, id);
        }
    }
}

/// The consuming end of a pool at the socket ``path``. Iterate it for
/// frames (``for frame in consumer:``; the iteration ends when the
/// producer closes the pool), or call :meth:`recv`.
///
/// ``wait``: ``"block"`` (spin ``spin_us`` then sleep on a futex) or
/// ``"busy-poll"``; ``attach_timeout``: seconds to wait for the producer's
/// welcome.
#[pyclass(module = "dmabroker", frozen)]
pub struct Consumer {
    st: Mutex<CState>,
    /// Kept frames collected unreleased (see `Frame`'s drop); a plain lock
    /// never held across a Python call.
    deferred: Mutex<Vec<u64>>,
}

impl Consumer {
    fn drain_deferred(&self, py: Python<'_>) {
        let ids = std::mem::take(&mut *lock(&self.deferred));
        if !ids.is_empty() {
            let mut st = plock(py, &self.st);
            for id in ids {
                st.release_lenient(py, id);
            }
        }
    }

    fn receive(slf: &Bound<'_, Self>, timeout: Option<Duration>) -> PyResult<Frame> {
        let py = slf.py();
        let this = slf.get();
        this.drain_deferred(py);
        {
            let mut st = plock(py, &this.st);
            if let Some(id) = st.current.take() {
                st.release_lenient(py, id);
            }
            st.sweep(py);
        }
        let (kept, len, fd) = py.detach(|| -> PyResult<_> {
            let mut st = lock(&this.st);
            let st = &mut *st;
            let inner = st.inner.as_mut().ok_or_else(|| PyValueError::new_err("the consumer is closed"))?;
            let kept = inner.recv(timeout).map_err(PyFail::py)?.keep();
            // The library's read guard at receipt (see the module docs).
            let len = inner.read_kept(&kept).map_err(PyFail::py)?.len();
            let index = kept.info().index;
            let fd = if st.maps.contains_key(&index) {
                None
            } else {
                Some(inner.kept_buffer(&kept).map_err(PyFail::py)?.try_clone_fd()?)
            };
            Ok((kept, len, fd))
        })?;
        let info = *kept.info();
        let used = usize::try_from(info.bytes_used).unwrap_or(len).min(len);
        let mut st = plock(py, &this.st);
        let st = &mut *st;
        if let Some(fd) = fd {
            st.maps.insert(info.index, Exporter::map(py, &fd, len as u64, false)?);
        }
        let exporter = st.maps.get(&info.index).ok_or_else(|| PyValueError::new_err("no mapping"))?;
        let mut scope = Vec::new();
        let data = exporter.view(py, used, false, &mut scope)?.unbind();
        let id = st.next_id;
        st.next_id += 1;
        st.held.insert(id, Held { kept, scope });
        Ok(Frame { consumer: slf.clone().unbind(), id, info, data, state: Mutex::new(FState::Current) })
    }
}

#[pymethods]
impl Consumer {
    #[new]
    #[pyo3(signature = (path, *, wait="block", spin_us=20, attach_timeout=5.0))]
    fn new(py: Python<'_>, path: String, wait: &str, spin_us: u64, attach_timeout: f64) -> PyResult<Self> {
        let wait = match wait {
            "block" => WaitMode::Block { spin: Duration::from_micros(spin_us) },
            "busy-poll" | "busy_poll" => WaitMode::BusyPoll,
            other => {
                return Err(raise_msg(Kind::Invalid, format!("wait={other:?}: must be \"block\" or \"busy-poll\"")))
            }
        };
        let options = ConsumerOptions {
            wait,
            attach_timeout: secs("attach_timeout", Some(attach_timeout))?.unwrap_or_default(),
            ..ConsumerOptions::default()
        };
        let inner = py.detach(|| p::Consumer::connect_with(&path, &options)).map_err(PyFail::py)?;
        Ok(Self {
            st: Mutex::new(CState { inner: Some(inner), ..CState::default() }),
            deferred: Mutex::new(Vec::new()),
        })
    }

    /// The next frame, waiting up to ``timeout`` seconds (None: forever).
    /// Raises ``Closed`` at the end of the stream, ``Timeout``, ``Evicted``.
    #[pyo3(signature = (timeout=None))]
    fn recv(slf: &Bound<'_, Self>, timeout: Option<f64>) -> PyResult<Frame> {
        let t = secs("timeout", timeout)?;
        let frame = Self::receive(slf, t)?;
        // A frame from recv() is the caller's to release, not the iterator's.
        plock(slf.py(), &slf.get().st).current = None;
        *plock(slf.py(), &frame.state) = FState::Kept;
        Ok(frame)
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Frame> {
        match Self::receive(slf, None) {
            Ok(frame) => {
                plock(slf.py(), &slf.get().st).current = Some(frame.id);
                Ok(frame)
            }
            Err(e) if e.is_instance_of::<PyStopIteration>(slf.py()) => Err(e),
            Err(e) => {
                let closed = slf.py().import("dmabroker._errors")?.getattr("Closed")?;
                if e.is_instance(slf.py(), &closed) {
                    Err(PyStopIteration::new_err(()))
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Buffers this consumer holds now.
    #[getter]
    fn held(&self, py: Python<'_>) -> usize {
        plock(py, &self.st).held.len()
    }

    /// Frames the producer dropped for this consumer (drop-oldest).
    #[getter]
    fn dropped(&self, py: Python<'_>) -> PyResult<u64> {
        plock(py, &self.st).inner.as_ref().map(p::Consumer::dropped).ok_or_else(|| PyValueError::new_err("closed"))
    }

    /// Bytes per buffer.
    #[getter]
    fn buffer_size(&self, py: Python<'_>) -> PyResult<u64> {
        plock(py, &self.st).inner.as_ref().map(p::Consumer::buffer_len).ok_or_else(|| PyValueError::new_err("closed"))
    }

    /// Detach: every held frame goes back. Raises ``BufferError`` while
    /// views of a frame are alive (nothing is closed then).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.drain_deferred(py);
        let mut st = plock(py, &self.st);
        st.current = None;
        let ids: Vec<u64> = st.held.keys().copied().collect();
        let mut alive = 0;
        for id in ids {
            if !st.try_release(py, id) {
                alive += 1;
            }
        }
        if alive > 0 {
            return Err(PyBufferError::new_err(format!(
                "views of {alive} frame(s) are still alive (numpy arrays or other objects made from frame.data): \
                 delete them before closing the consumer"
            )));
        }
        st.pending.clear();
        for (_, e) in st.maps.drain() {
            e.close(py);
        }
        st.inner = None;
        Ok(())
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) -> PyResult<bool> {
        match self.close(py) {
            // An exception leaves the block: do not mask it with an error about
            // views its traceback keeps alive.
            Err(_) if !t.is_none(py) => Ok(false),
            r => r.map(|()| false),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FState {
    /// Handed out by the iterator: released at its next step.
    Current,
    /// The caller's to release (recv() or keep()).
    Kept,
    Released,
}

/// A received frame. ``data`` is a read-only memoryview of its bytes in the
/// pool's buffer, ``array()`` a read-only numpy view of them; both are
/// valid while the frame is held: until the iterator moves on (or, after
/// :meth:`keep`, until :meth:`release` / the end of ``with frame:``).
#[pyclass(module = "dmabroker", frozen)]
pub struct Frame {
    consumer: Py<Consumer>,
    id: u64,
    info: p::FrameInfo,
    data: Py<PyAny>,
    state: Mutex<FState>,
}

#[pymethods]
impl Frame {
    /// Read-only memoryview of the frame's bytes (``bytes_used`` long).
    #[getter]
    fn data(&self, py: Python<'_>) -> Py<PyAny> {
        self.data.clone_ref(py)
    }

    /// A read-only numpy array over the frame's bytes, zero copy:
    /// ``dtype`` (default uint8) and ``shape`` as for ``numpy.frombuffer``
    /// + ``reshape``.
    #[pyo3(signature = (dtype=None, shape=None))]
    fn array<'py>(
        &self,
        py: Python<'py>,
        dtype: Option<Bound<'py, PyAny>>,
        shape: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let np = py.import("numpy")?;
        let dtype = match dtype {
            Some(d) => d,
            None => np.getattr("uint8")?,
        };
        let a = np.call_method1("frombuffer", (self.data.bind(py), dtype))?;
        match shape {
            Some(s) => a.call_method1("reshape", (s,)),
            None => Ok(a),
        }
    }

    /// Buffer index in the pool.
    #[getter]
    fn index(&self) -> u32 {
        self.info.index
    }
    /// Sequence number (gaps: frames dropped for this consumer).
    #[getter]
    fn seq(&self) -> u64 {
        self.info.seq
    }
    /// ``CLOCK_MONOTONIC`` nanoseconds when the producer handed it off
    /// (``time.monotonic_ns()`` in the same clock).
    #[getter]
    fn timestamp_ns(&self) -> u64 {
        self.info.timestamp_ns
    }
    /// Bytes of the buffer the frame occupies.
    #[getter]
    fn bytes_used(&self) -> u64 {
        self.info.bytes_used
    }
    /// The producer's 64-bit word for this frame.
    #[getter]
    fn meta(&self) -> u64 {
        self.info.meta
    }
    /// The frame's flags (bits).
    #[getter]
    fn flags(&self) -> u32 {
        self.info.flags.bits()
    }

    /// True while the bytes are this frame's: check **after** reading; False
    /// when the consumer was evicted (the bytes may be torn: discard them).
    #[getter]
    fn valid(&self, py: Python<'_>) -> bool {
        let c = self.consumer.bind(py).get();
        let st = plock(py, &c.st);
        match (st.inner.as_ref(), st.held.get(&self.id)) {
            (Some(inner), Some(h)) => inner.check_kept(&h.kept).is_ok(),
            _ => false,
        }
    }

    /// Keep the frame past the iterator's next step: it stays held until
    /// :meth:`release` (or the end of ``with frame:``). Returns the frame.
    fn keep(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        {
            let this = slf.get();
            let mut s = plock(slf.py(), &this.state);
            if *s == FState::Current {
                *s = FState::Kept;
                let mut st = plock(slf.py(), &this.consumer.bind(slf.py()).get().st);
                if st.current == Some(this.id) {
                    st.current = None;
                }
            }
        }
        slf
    }

    /// Give the buffer back to the producer. Raises ``BufferError`` (and
    /// keeps the frame held) while a numpy array or other object made from
    /// ``data`` is alive; ``data`` raises ``ValueError`` afterwards.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let c = self.consumer.bind(py).get();
        let mut st = plock(py, &c.st);
        if !st.try_release(py, self.id) {
            return Err(PyBufferError::new_err(
                "a view of the frame (a numpy array or other object made from frame.data) is still alive: \
                 delete it first; the frame stays held",
            ));
        }
        if st.current == Some(self.id) {
            st.current = None;
        }
        *plock(py, &self.state) = FState::Released;
        Ok(())
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        Self::keep(slf)
    }

    fn __exit__(&self, py: Python<'_>, t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) -> PyResult<bool> {
        match self.release(py) {
            // An exception leaves the block: do not mask it with an error about
            // views its traceback keeps alive.
            Err(_) if !t.is_none(py) => Ok(false),
            r => r.map(|()| false),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "<dmabroker.Frame seq {} buffer {} {} bytes meta {:#x}>",
            self.info.seq, self.info.index, self.info.bytes_used, self.info.meta
        )
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        let state = *self.state.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state == FState::Kept {
            // A kept frame collected unreleased: give it back once its views
            // are gone. Only queued here: this drop can run inside any Python
            // allocation (the garbage collector), also while this thread holds
            // the consumer's state lock; the next receive or close takes it.
            Python::attach(|py| lock(&self.consumer.bind(py).get().deferred).push(self.id));
        }
    }
}
