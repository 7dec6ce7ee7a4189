//! `dmabroker.Buffer`: an fd of buffer memory, its CPU access as context
//! managers that bracket the kernel's sync, and DLPack export.
//!
//! CPU access and the library's guards: a `with` block holds the library's
//! owned guard ([`OwnedCpuAccess`]) from entry to exit, so the kernel's sync
//! brackets exactly the block: `DMA_BUF_IOCTL_SYNC` START (caches
//! invalidated before the first read) at entry, END (what the block wrote is
//! written back before a device or another process looks) at exit. For
//! coherent memfd and hugetlb memory (the usual case) the guard does nothing
//! at all.
//!
//! [`OwnedCpuAccess`]: dmabroker::buffer::OwnedCpuAccess

use crate::errors::PyFail;
use crate::view::{self, Exporter};
use dmabroker::buffer::{BufferMapping, CpuAccessKind, OwnedCpuAccess};
use dmabroker::Buffer;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};

/// State behind the lock.
#[derive(Debug, Default)]
struct State {
    buffer: Option<Buffer>,
    /// The library's mapping, on which its CPU-access guards run (made at
    /// the first access; remade read-write when a write follows reads).
    /// Inside a block it lives in `guard`.
    map: Option<BufferMapping>,
    /// The open block's guard: the kernel's sync START ran at entry, its END
    /// runs at exit.
    guard: Option<OwnedCpuAccess>,
    /// The memory the views show (see `view.rs`), read-only and read-write.
    ro: Option<Exporter>,
    rw: Option<Exporter>,
    /// The open block's memoryviews.
    scope: Vec<Py<PyAny>>,
    /// `Some(write)` while a `with` block is open.
    active: Option<bool>,
    /// The open block's view (for `__dlpack__`).
    current: Option<Py<PyAny>>,
}

impl State {
    fn alive(&self, py: Python<'_>) -> bool {
        self.ro.as_ref().is_some_and(|e| e.alive(py)) || self.rw.as_ref().is_some_and(|e| e.alive(py))
    }
}

/// A buffer of memory behind a file descriptor (memfd, hugetlb memfd or
/// dma-buf). Close it (or use it as a context manager) to close the fd.
#[pyclass(module = "dmabroker", name = "Buffer", frozen)]
#[derive(Debug)]
pub struct PyBuffer {
    state: Mutex<State>,
    /// For imports: the access the grant gave ("ro"/"rw") and who published it.
    access: Option<String>,
    publisher_uid: Option<u32>,
    /// The broker's id (allocations through the broker).
    broker_id: Option<u64>,
}

impl PyBuffer {
    pub fn new(buffer: Buffer) -> Self {
        Self::with(buffer, None, None, None)
    }

    pub fn with(buffer: Buffer, access: Option<String>, publisher_uid: Option<u32>, broker_id: Option<u64>) -> Self {
        Self { state: Mutex::new(State { buffer: Some(buffer), ..State::default() }), access, publisher_uid, broker_id }
    }

    /// Lock without deadlocking with the GIL (the lock is held across
    /// Python calls that may let other threads run).
    fn lock(&self, py: Python<'_>) -> MutexGuard<'_, State> {
        crate::pool::plock(py, &self.state)
    }

    /// The library buffer (a cheap clone), or ValueError when closed.
    pub fn buffer(&self, py: Python<'_>) -> PyResult<Buffer> {
        self.lock(py).buffer.clone().ok_or_else(closed)
    }

    fn begin<'py>(&self, py: Python<'py>, write: bool) -> PyResult<Bound<'py, PyAny>> {
        let mut st = self.lock(py);
        let st = &mut *st;
        let buffer = st.buffer.clone().ok_or_else(closed)?;
        if st.active.is_some() {
            return Err(PyBufferError::new_err(
                "CPU access to this buffer is already open: one `with buf.read()` / `with buf.write()` at a time",
            ));
        }
        if write && st.map.as_ref().is_some_and(|m| !m.is_writable()) {
            st.map = None;
        }
        if st.map.is_none() {
            st.map = Some(if write { buffer.map_read_write() } else { buffer.map_read() }.map_err(PyFail::py)?);
        }
        let map = st.map.take().ok_or_else(closed)?;
        let len = map.len();
        // The library's guard, held until the block ends (see the module docs).
        let kind = if write { CpuAccessKind::Write } else { CpuAccessKind::Read };
        let guard = match map.into_access(kind) {
            Ok(guard) => guard,
            Err((map, e)) => {
                st.map = Some(map);
                return Err(PyFail::py(e));
            }
        };
        st.guard = Some(guard);
        let view = (|| {
            let slot = if write { &mut st.rw } else { &mut st.ro };
            if slot.is_none() {
                *slot = Some(Exporter::map(py, &buffer, buffer.len(), write)?);
            }
            let exporter = slot.as_ref().ok_or_else(closed)?;
            exporter.view(py, len, write, &mut st.scope)
        })();
        let mv = match view {
            Ok(mv) => mv,
            Err(e) => {
                // No block opened: end the access and keep the mapping.
                st.map = st.guard.take().map(OwnedCpuAccess::end);
                return Err(e);
            }
        };
        st.active = Some(write);
        st.current = Some(mv.clone().unbind());
        Ok(mv)
    }

    /// End the open block; `raising`: an exception leaves the block, which
    /// a `BufferError` about views it keeps alive (its traceback holds the
    /// block's locals) must not mask.
    fn end(&self, py: Python<'_>, raising: bool) -> PyResult<()> {
        let mut st = self.lock(py);
        if st.active.take().is_none() {
            return Ok(());
        }
        st.current = None;
        view::release(py, &mut st.scope);
        // The guard's END: for a write, what the block wrote is written back.
        if let Some(guard) = st.guard.take() {
            st.map = Some(guard.end());
        }
        if st.alive(py) && !raising {
            return Err(view::outlived("the buffer"));
        }
        Ok(())
    }
}

fn closed() -> PyErr {
    PyValueError::new_err("the buffer is closed")
}

/// Dup a file descriptor number given by Python code.
pub fn dup_raw(fd: i32) -> PyResult<OwnedFd> {
    if fd < 0 {
        return Err(crate::errors::raise_msg(crate::errors::Kind::Invalid, format!("bad file descriptor {fd}")));
    }
    // SAFETY: Python hands file descriptors around as plain ints (os, socket,
    // V4L2/DRM bindings), so the binding must accept one. The borrow lives
    // for one fcntl(F_DUPFD_CLOEXEC) call only; that call fails with EBADF
    // when `fd` is not open, and nothing is closed or read through it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_dupfd_cloexec(borrowed, 0).map_err(|e| std::io::Error::from(e).into())
}

#[pymethods]
impl PyBuffer {
    /// Adopt a buffer by file descriptor (a memfd, hugetlb memfd or dma-buf
    /// from V4L2, DRM, ``socket.recv_fds`` ...). The fd is duplicated: the
    /// caller keeps (and closes) its own.
    ///
    /// Raises InvalidArgument for fds that are not buffer memory.
    #[staticmethod]
    fn from_fd(fd: i32) -> PyResult<Self> {
        let owned = dup_raw(fd)?;
        Ok(Self::new(Buffer::from_fd(owned).map_err(PyFail::py)?))
    }

    /// The file descriptor (borrowed: valid until the buffer is closed).
    #[getter]
    fn fd(&self, py: Python<'_>) -> PyResult<i32> {
        Ok(self.buffer(py)?.as_fd().as_raw_fd())
    }

    /// The file descriptor, so the buffer drops into ``os``, ``select`` and
    /// ``socket.send_fds`` (borrowed: valid until the buffer is closed).
    fn fileno(&self, py: Python<'_>) -> PyResult<i32> {
        self.fd(py)
    }

    /// A new fd of the same buffer (``F_DUPFD_CLOEXEC``), owned by the caller.
    fn dup(&self, py: Python<'_>) -> PyResult<i32> {
        use std::os::fd::IntoRawFd;
        Ok(self.buffer(py)?.try_clone_fd()?.into_raw_fd())
    }

    /// Length in bytes.
    #[getter]
    fn size(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.buffer(py)?.len())
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        usize::try_from(self.buffer(py)?.len()).map_err(|_| PyValueError::new_err("length exceeds the address space"))
    }

    /// ``"memfd"``, ``"hugetlb-memfd"`` or ``"dma-buf"``.
    #[getter]
    fn kind(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.buffer(py)?.kind().to_string())
    }

    /// The heap (or dma-buf exporter) it came from.
    #[getter]
    fn heap(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.buffer(py)?.heap().to_owned())
    }

    /// Its name (memfd or dma-buf name), if any.
    #[getter]
    fn name(&self, py: Python<'_>) -> PyResult<Option<String>> {
        Ok(self.buffer(py)?.name().map(str::to_owned))
    }

    /// The inode number: the same for every fd of this buffer, in any process.
    #[getter]
    fn inode(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.buffer(py)?.inode())
    }

    /// True when the fd is opened read-only (a read-only grant).
    #[getter]
    fn readonly(&self, py: Python<'_>) -> PyResult<bool> {
        let b = self.buffer(py)?;
        let fl = rustix::fs::fcntl_getfl(&b).map_err(std::io::Error::from)?;
        Ok(fl & rustix::fs::OFlags::ACCMODE == rustix::fs::OFlags::RDONLY)
    }

    /// For imported buffers: the access granted (``"ro"`` or ``"rw"``).
    #[getter]
    fn access(&self) -> Option<String> {
        self.access.clone()
    }

    /// For imported buffers: the publisher's uid.
    #[getter]
    fn publisher_uid(&self) -> Option<u32> {
        self.publisher_uid
    }

    /// For allocations through the broker: the broker's id of the buffer.
    #[getter]
    fn broker_id(&self) -> Option<u64> {
        self.broker_id
    }

    /// True once closed.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        self.lock(py).buffer.is_none()
    }

    /// Everything about the buffer (length, kind, heap, name, inode,
    /// physical properties, seals) as a dict.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let json = serde_json::to_string(&self.buffer(py)?.info()).map_err(|e| PyValueError::new_err(e.to_string()))?;
        py.import("json")?.call_method1("loads", (json,))
    }

    /// CPU read access: ``with buf.read() as view:`` gives a read-only
    /// ``memoryview`` of the whole buffer (``numpy.asarray(view)`` is a
    /// numpy array over the same bytes). The view is released when the block
    /// ends: using it afterwards raises ``ValueError``; a numpy array made
    /// from it that is still alive at the end makes the exit raise
    /// ``BufferError`` (the memory stays mapped until it is gone).
    fn read(slf: Bound<'_, Self>) -> Access {
        Access { buffer: slf.unbind(), write: false }
    }

    /// CPU write access: like :meth:`read`, with a writable view; the
    /// block's end writes the CPU's caches back for devices
    /// (``DMA_BUF_IOCTL_SYNC`` END).
    fn write(slf: Bound<'_, Self>) -> Access {
        Access { buffer: slf.unbind(), write: true }
    }

    /// DLPack export of the bytes in place (``numpy.from_dlpack(buf)``,
    /// ``torch.from_dlpack(buf)``): a 1-D uint8 tensor of the view of the
    /// open ``with buf.read()`` / ``with buf.write()`` block. The tensor is
    /// a view like any other: it must be gone when the block ends. A
    /// read-only block's tensor needs a DLPack 1.0 consumer (numpy >= 2.1:
    /// older DLPack cannot mark a tensor read-only, and numpy then refuses).
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<Bound<'py, PyAny>>,
        max_version: Option<Bound<'py, PyAny>>,
        dl_device: Option<Bound<'py, PyAny>>,
        copy: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let current = self.lock(py).current.as_ref().map(|c| c.clone_ref(py)).ok_or_else(|| {
            PyBufferError::new_err(
                "DLPack export needs open CPU access: inside `with buf.read():` or `with buf.write():`",
            )
        })?;
        let np = py.import("numpy")?;
        let array = np.call_method1("frombuffer", (current, np.getattr("uint8")?))?;
        let kwargs = PyDict::new(py);
        if let Some(s) = stream {
            kwargs.set_item("stream", s)?;
        }
        if let Some(v) = max_version {
            kwargs.set_item("max_version", v)?;
        }
        if let Some(d) = dl_device {
            kwargs.set_item("dl_device", d)?;
        }
        if let Some(c) = copy {
            kwargs.set_item("copy", c)?;
        }
        array.call_method("__dlpack__", (), Some(&kwargs))
    }

    /// ``(kDLCPU, 0)``: the bytes are CPU memory.
    fn __dlpack_device__(&self) -> (i32, i32) {
        (1, 0)
    }

    /// Close the fd and unmap. Raises ``BufferError`` (and closes nothing)
    /// while views of the buffer are still alive.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let mut st = self.lock(py);
        if st.active.is_some() {
            return Err(PyBufferError::new_err("close() inside a `with buf.read()/write()` block"));
        }
        if st.alive(py) {
            return Err(view::outlived("the buffer"));
        }
        for e in [st.ro.take(), st.rw.take()].into_iter().flatten() {
            e.close(py);
        }
        st.map = None;
        st.buffer = None;
        Ok(())
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) -> PyResult<bool> {
        match self.close(py) {
            // An exception leaves the block: do not mask it; the fd closes
            // when the buffer is collected (views keep their own mapping).
            Err(_) if !t.is_none(py) => Ok(false),
            r => r.map(|()| false),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        match self.lock(py).buffer.as_ref() {
            Some(b) => format!(
                "<dmabroker.Buffer {} bytes, {} from {}, fd {}>",
                b.len(),
                b.kind(),
                b.heap(),
                b.as_fd().as_raw_fd()
            ),
            None => "<dmabroker.Buffer closed>".to_owned(),
        }
    }
}

/// The context manager of :meth:`Buffer.read` / :meth:`Buffer.write`.
#[pyclass(module = "dmabroker", frozen)]
pub struct Access {
    buffer: Py<PyBuffer>,
    write: bool,
}

#[pymethods]
impl Access {
    fn __enter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let b = self.buffer.bind(py).get();
        b.begin(py, self.write).map(|v| v.unbind().into_bound(py))
    }

    fn __exit__(&self, py: Python<'_>, t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) -> PyResult<bool> {
        self.buffer.bind(py).get().end(py, !t.is_none(py))?;
        Ok(false)
    }
}
