//! The `dmabroker._dmabroker` extension module (PyO3, abi3): the Python
//! package `dmabroker` (python/dmabroker/) re-exports it.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod alloc;
mod buffer;
mod client;
mod errors;
mod pool;
mod view;

use pyo3::prelude::*;

#[pymodule]
fn _dmabroker(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<buffer::PyBuffer>()?;
    m.add_class::<buffer::Access>()?;
    m.add_class::<alloc::Allocation>()?;
    m.add_class::<client::Client>()?;
    m.add_class::<pool::Producer>()?;
    m.add_class::<pool::Consumer>()?;
    m.add_class::<pool::Frame>()?;
    m.add_class::<pool::WriteFrame>()?;
    m.add_function(wrap_pyfunction!(alloc::heaps, m)?)?;
    m.add_function(wrap_pyfunction!(alloc::alloc, m)?)?;
    m.add_function(wrap_pyfunction!(alloc::alloc_for, m)?)?;
    Ok(())
}
