//! The memory behind every view the bindings hand out: a Python
//! `mmap.mmap` of the buffer's fd, so CPython's own machinery keeps the
//! memory mapped for as long as any view of it (a memoryview, a numpy array,
//! a DLPack tensor) exists: each such view holds a buffer export of the
//! `mmap`, and an `mmap` with exports is never unmapped. No raw pointer
//! crosses into Python.
//!
//! Scopes (`with` blocks, held frames) hand out memoryviews of the `mmap`
//! and release them when the scope ends: a released memoryview raises
//! `ValueError` on any use. Views made *from* them (numpy arrays, slices)
//! share their managed buffer, which holds one reference to the `mmap`; so
//! the `mmap`'s reference count, with the bindings holding exactly one, says
//! whether any view of the memory is still alive ([`Exporter::alive`]).
//! The library's mappings stay the ones its CPU-access guards work on.

use pyo3::prelude::*;
use std::os::fd::{AsFd, AsRawFd};

/// One `mmap.mmap` of a buffer; the bindings hold its only own reference.
#[derive(Debug)]
pub struct Exporter {
    mm: Py<PyAny>,
}

impl Exporter {
    /// `mmap.mmap(fd, len, MAP_SHARED, PROT_READ[|PROT_WRITE])` (CPython
    /// duplicates the fd for the mapping's lifetime).
    pub fn map(py: Python<'_>, fd: &impl AsFd, len: u64, writable: bool) -> PyResult<Self> {
        let mmap = py.import("mmap")?;
        let prot: i64 = mmap.getattr("PROT_READ")?.extract::<i64>()?
            | if writable { mmap.getattr("PROT_WRITE")?.extract::<i64>()? } else { 0 };
        let flags = mmap.getattr("MAP_SHARED")?;
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("flags", flags)?;
        kwargs.set_item("prot", prot)?;
        let mm = mmap.getattr("mmap")?.call((fd.as_fd().as_raw_fd(), len), Some(&kwargs))?;
        Ok(Self { mm: mm.unbind() })
    }

    /// A memoryview of the first `len` bytes, read-only unless `writable`
    /// (and the mapping is). Every memoryview made for it goes into `scope`,
    /// to be released when the scope ends.
    pub fn view<'py>(
        &self,
        py: Python<'py>,
        len: usize,
        writable: bool,
        scope: &mut Vec<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let whole = pyo3::types::PyMemoryView::from(self.mm.bind(py))?.into_any();
        scope.push(whole.clone().unbind());
        let mut view =
            whole.get_item(pyo3::types::PySlice::new(py, 0, isize::try_from(len).unwrap_or(isize::MAX), 1))?;
        scope.push(view.clone().unbind());
        if !writable {
            view = view.call_method0("toreadonly")?;
            scope.push(view.clone().unbind());
        }
        Ok(view)
    }

    /// True while a view of the memory exists (released memoryviews and
    /// the bindings' own reference do not count).
    // get_refcnt is deprecated in favour of the unsafe ffi::Py_REFCNT; the
    // safe method reads the same count.
    #[allow(deprecated)]
    pub fn alive(&self, py: Python<'_>) -> bool {
        self.mm.bind(py).get_refcnt() > 1
    }

    /// Unmap now, when no view is alive; else leave the mapping to the views
    /// (CPython unmaps it when the last one goes). True when unmapped.
    pub fn close(self, py: Python<'_>) -> bool {
        if self.alive(py) {
            return false;
        }
        self.mm.bind(py).call_method0("close").is_ok()
    }
}

/// Release the memoryviews of a scope: using them afterwards raises ValueError.
pub fn release(py: Python<'_>, scope: &mut Vec<Py<PyAny>>) {
    for v in scope.drain(..).rev() {
        let _ = v.bind(py).call_method0("release");
    }
}

/// The `BufferError` of a scope that ended while views made from its
/// memoryview were alive.
pub fn outlived(what: &str) -> PyErr {
    pyo3::exceptions::PyBufferError::new_err(format!(
        "a view of {what} (a numpy array, DLPack tensor, slice or other object made from its memoryview) \
         is still alive after its scope: delete it before the scope ends (the memory stays mapped until it is gone)"
    ))
}
