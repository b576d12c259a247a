//! `ClientError` to Python exceptions: one class per error kind, defined in
//! `switchboard/_errors.py`, with the Rust message and the protocol code.

use pyo3::prelude::*;
use switchboard::ClientError;

/// The name of the `switchboard._errors` class an error maps to.
pub(crate) fn class_name(e: &ClientError) -> &'static str {
    match e {
        ClientError::Timeout(_) => "RequestTimeout",
        ClientError::NoSuchClient(_) => "NoSuchClient",
        ClientError::Forbidden(_) => "Forbidden",
        ClientError::Disconnected => "Disconnected",
        ClientError::AuthFailed(_) | ClientError::HubUnverified { .. } => "AuthFailed",
        ClientError::Fenced(_) => "Fenced",
        ClientError::Closed => "ClientClosed",
        ClientError::NotFound { .. } => "HubNotFound",
        ClientError::Connect { .. } => "ConnectFailed",
        ClientError::TargetGone(_) => "TargetGone",
        ClientError::QueueFull(_) => "QueueFull",
        ClientError::VersionMismatch(_) => "VersionMismatch",
        ClientError::InvalidArgument(_) => "InvalidArgument",
        ClientError::LimitExceeded(_) => "LimitExceeded",
        ClientError::Missing(_) => "Missing",
        ClientError::NotListening(_) => "NotListening",
        ClientError::NoResponders(_) => "NoResponders",
        ClientError::Remote(_) => "RemoteError",
        ClientError::TakenOver(_) => "TakenOver",
        ClientError::UnsupportedVersion(_) => "UnsupportedVersion",
        _ => "SwitchboardError",
    }
}

/// The Python exception for `e`: an instance of its class with the same
/// message (`str(exc)`) and `exc.code`, the protocol code's name or `None`.
pub(crate) fn to_py(e: ClientError) -> PyErr {
    let name = class_name(&e);
    let code = e.code().map(|c| c.as_str());
    let message = e.to_string();
    crate::glue::attach(|py| {
        let make = || -> PyResult<PyErr> {
            let class = py.import("switchboard._errors")?.getattr(name)?;
            let exc = class.call1((message,))?;
            exc.setattr("code", code)?;
            Ok(PyErr::from_value(exc))
        };
        make().unwrap_or_else(|err| err)
    })
}
