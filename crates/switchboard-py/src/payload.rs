//! Payloads across the boundary: `bytes`, `bytearray` or `str` (UTF-8) in,
//! `bytes` out.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};
use switchboard::Bytes;

/// A payload given by Python code.
pub(crate) fn from_py(obj: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Bytes::copy_from_slice(b.as_bytes()));
    }
    if obj.is_instance_of::<PyString>() {
        let s: String = obj.extract()?;
        return Ok(Bytes::from(s));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Bytes::from(b.to_vec()));
    }
    Err(PyTypeError::new_err(format!(
        "a payload is bytes, bytearray or str, not {}",
        obj.get_type().name()?
    )))
}

/// A payload for Python code, as `bytes`.
pub(crate) fn to_py(py: Python<'_>, b: &Bytes) -> Py<PyBytes> {
    PyBytes::new(py, b).unbind()
}
