//! `heaps()`, `alloc()` and `alloc_for()`: allocation from this process.

use crate::buffer::PyBuffer;
use crate::errors::{raise_msg, Kind, PyFail};
use dmabroker::buffer::Coherency;
use dmabroker::constraints::{self, Constraints};
use dmabroker::format::{Layout, LayoutOptions, PixelFormat};
use dmabroker::{AllocRequest, Heaps};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

fn json<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

pub(crate) fn to_py<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    json(py, value)
}

/// The heaps this machine has, as dicts (``name``, ``kind``, ``usable``,
/// ``free_bytes``, ``page_size``, ``note`` ...), the same as
/// ``dmabroker heaps --json``.
#[pyfunction]
pub fn heaps(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    json(py, &Heaps::discover().infos())
}

/// Allocate ``size`` bytes from ``heap`` (``"memfd"`` when None;
/// ``"hugetlb"``, ``"dma-heap/system"``, ``"udmabuf"`` ... see
/// :func:`heaps`).
#[pyfunction]
#[pyo3(signature = (size, heap=None, *, contiguous=false, align=None, name=None, coherent=true))]
pub fn alloc(
    py: Python<'_>,
    size: u64,
    heap: Option<&str>,
    contiguous: bool,
    align: Option<u64>,
    name: Option<String>,
    coherent: bool,
) -> PyResult<PyBuffer> {
    let heap = heap.unwrap_or("memfd").to_owned();
    let mut request = AllocRequest::new(size).contiguous(contiguous);
    if let Some(a) = align {
        request = request.align(a);
    }
    if let Some(n) = name {
        request = request.name(n);
    }
    if !coherent {
        request = request.coherency(Coherency::NonCoherent);
    }
    let buffer = py.detach(move || Heaps::discover().allocate(&heap, &request)).map_err(PyFail::py)?;
    Ok(PyBuffer::new(buffer))
}

/// What :func:`alloc_for` returns: one buffer per memory plane of the
/// format (one for NV12, two for NV12M ...), where each plane lies, and
/// which heap was chosen and why.
#[pyclass(module = "dmabroker", frozen)]
pub struct Allocation {
    /// The buffers (``Buffer``), one per memory plane.
    #[pyo3(get)]
    buffers: Py<PyList>,
    /// One dict per plane: ``buffer`` (index into ``buffers``), ``offset``,
    /// ``bytesperline``, ``lines``, ``size``.
    #[pyo3(get)]
    planes: Py<PyList>,
    /// The pixel format's name (``"NV12"``).
    #[pyo3(get)]
    format: String,
    #[pyo3(get)]
    width: u32,
    #[pyo3(get)]
    height: u32,
    /// The heap chosen.
    #[pyo3(get)]
    heap: String,
    /// Why that heap (the chooser's reasons).
    #[pyo3(get)]
    reasons: Vec<String>,
}

#[pymethods]
impl Allocation {
    /// The first (often only) buffer.
    #[getter]
    fn buffer<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.buffers.bind(py).get_item(0)
    }

    /// Close every buffer.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        for b in self.buffers.bind(py).iter() {
            b.call_method0("close")?;
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

    fn __repr__(&self) -> String {
        format!("<dmabroker.Allocation {} {}x{} on {}>", self.format, self.width, self.height, self.heap)
    }
}

/// Allocate a ``width`` x ``height`` image of pixel ``format`` (``"NV12"``,
/// ``"YUYV"``, ``"NV12M"`` ...) from the cheapest heap that every device in
/// ``devices`` (paths such as ``"/dev/video0"``, ``"/dev/dri/card0"``) can
/// import, with its planes laid out for them. ``stride_align`` pads each
/// row. Returns an :class:`Allocation` with the buffers and plane layout.
#[pyfunction]
#[pyo3(signature = (format, width, height, *, devices=Vec::new(), stride_align=1, name=None))]
pub fn alloc_for(
    py: Python<'_>,
    format: &str,
    width: u32,
    height: u32,
    devices: Vec<String>,
    stride_align: u64,
    name: Option<String>,
) -> PyResult<Allocation> {
    let pixel: PixelFormat = format.parse().map_err(|e: dmabroker::format::ParseFormatError| {
        let names: Vec<&str> = dmabroker::format::ParseFormatError::valid_names().collect();
        raise_msg(Kind::Invalid, format!("{e} (known: {})", names.join(", ")))
    })?;
    let probed = devices.iter().map(Constraints::probe).collect::<Result<Vec<_>, _>>().map_err(PyFail::py)?;
    let merged = Constraints::merge_all(&probed).map_err(|e| crate::errors::raise(Kind::Invalid, &e))?;
    if !stride_align.is_power_of_two() {
        return Err(raise_msg(Kind::Invalid, format!("stride_align {stride_align} is not a power of two")));
    }
    let mut options = LayoutOptions::default().with_stride_align(stride_align);
    if let Some(a) = merged.align() {
        options = options.with_plane_align(a.value);
    }
    if let Some(g) = merged.granularity() {
        options = options.with_size_align(g.value);
    }
    let layout = Layout::new(pixel, width, height, &options).map_err(PyFail::py)?;
    let heaps = Heaps::discover();
    let mut buffers = Vec::new();
    let mut choice = None;
    for (i, &size) in layout.buffer_sizes().iter().enumerate() {
        let plane_name = name.as_ref().map(|n| if layout.buffer_count() > 1 { format!("{n}.{i}") } else { n.clone() });
        let (buffer, c) = py
            .detach(|| constraints::allocate_for(&heaps, &merged, size, plane_name.as_deref()))
            .map_err(PyFail::py)?;
        buffers.push(Py::new(py, PyBuffer::new(buffer))?);
        choice.get_or_insert(c);
    }
    let planes = PyList::empty(py);
    for p in layout.planes() {
        let d = PyDict::new(py);
        d.set_item("buffer", p.buffer)?;
        d.set_item("offset", p.offset)?;
        d.set_item("bytesperline", p.bytesperline)?;
        d.set_item("lines", p.lines)?;
        d.set_item("size", p.size)?;
        planes.append(d)?;
    }
    let choice = choice.ok_or_else(|| raise_msg(Kind::Invalid, "the layout has no buffers".into()))?;
    Ok(Allocation {
        buffers: PyList::new(py, buffers)?.unbind(),
        planes: planes.unbind(),
        format: pixel.name().to_owned(),
        width,
        height,
        heap: choice.heap,
        reasons: choice.reasons,
    })
}
