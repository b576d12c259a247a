//! Error codes, the thread-local last message, and the panic boundary.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use facade::{ClientError, ErrorCode};

/// The result of every `sb_*` call: `SB_OK` (0) or an error code.
///
/// The codes from `SB_ERR_AUTH_FAILED` to `SB_ERR_NO_RESPONDERS` are the
/// hub's protocol error codes (docs/PROTOCOL.md); the others are the
/// client's or this library's own. After an error,
/// `sb_last_error_message()` gives the explanation.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sb_error {
    /// Success.
    SB_OK = 0,
    /// A required pointer argument was NULL.
    SB_ERR_NULL = 1,
    /// A string argument was not valid UTF-8.
    SB_ERR_UTF8 = 2,
    /// The handle is closed (or was never valid): use after close.
    SB_ERR_CLOSED = 3,
    /// A panic inside the library was caught at the boundary (a bug).
    SB_ERR_PANIC = 4,
    /// An error this version does not name more precisely.
    SB_ERR_OTHER = 5,
    /// Discovery found no hub serving the service.
    SB_ERR_NO_HUB = 10,
    /// Discovery failed, or the secret or token could not be loaded.
    SB_ERR_DISCOVERY = 11,
    /// A connection to the hub could not be made, or i/o failed.
    SB_ERR_CONNECT = 12,
    /// The connection to the hub is down (a reconnect may be under way).
    SB_ERR_DISCONNECTED = 13,
    /// TLS to the hub failed, or a Unix socket was not trusted.
    SB_ERR_TLS = 14,
    /// The hub broke the protocol, or framing failed.
    SB_ERR_PROTOCOL = 15,
    /// The replier's application answered with an error.
    SB_ERR_REMOTE = 16,
    /// The hub refused the proof (wrong token or secret), or the hub did
    /// not prove it knows the secret.
    SB_ERR_AUTH_FAILED = 20,
    /// The hub does not speak this client's protocol version.
    SB_ERR_UNSUPPORTED_VERSION = 21,
    /// No answer within the timeout.
    SB_ERR_TIMEOUT = 22,
    /// The target client id is not connected.
    SB_ERR_NO_SUCH_CLIENT = 23,
    /// The target left while a request to it was outstanding.
    SB_ERR_TARGET_GONE = 24,
    /// The target's queue stayed full for the whole timeout.
    SB_ERR_QUEUE_FULL = 25,
    /// A configured limit was reached.
    SB_ERR_LIMIT_EXCEEDED = 26,
    /// A pattern, key, id or size is not valid.
    SB_ERR_INVALID_ARGUMENT = 27,
    /// Compare-and-set found another version.
    SB_ERR_VERSION_MISMATCH = 28,
    /// The key or object does not exist.
    SB_ERR_NOT_FOUND = 29,
    /// Another connection took over this client id.
    SB_ERR_ID_TAKEN_OVER = 30,
    /// The hub is an older epoch than one already seen (failover).
    SB_ERR_FENCED = 31,
    /// The hub does not allow this client to do this.
    SB_ERR_FORBIDDEN = 32,
    /// The target does not take this kind of message now.
    SB_ERR_NOT_LISTENING = 33,
    /// A request to a service found no responder.
    SB_ERR_NO_RESPONDERS = 34,
    /// Another protocol error code reported by the hub.
    SB_ERR_HUB = 35,
}

/// An error crossing the boundary: its code and message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: sb_error,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: sb_error, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure::new(code_of(&e), e.to_string())
    }
}

/// The code of a client error.
pub(crate) fn code_of(e: &ClientError) -> sb_error {
    use sb_error::*;
    if let Some(code) = e.code() {
        return match code {
            ErrorCode::AuthFailed => SB_ERR_AUTH_FAILED,
            ErrorCode::UnsupportedVersion => SB_ERR_UNSUPPORTED_VERSION,
            ErrorCode::Timeout | ErrorCode::HandshakeTimeout => SB_ERR_TIMEOUT,
            ErrorCode::NoSuchClient => SB_ERR_NO_SUCH_CLIENT,
            ErrorCode::TargetGone => SB_ERR_TARGET_GONE,
            ErrorCode::QueueFull => SB_ERR_QUEUE_FULL,
            ErrorCode::LimitExceeded => SB_ERR_LIMIT_EXCEEDED,
            ErrorCode::InvalidArgument => SB_ERR_INVALID_ARGUMENT,
            ErrorCode::VersionMismatch => SB_ERR_VERSION_MISMATCH,
            ErrorCode::NotFound => SB_ERR_NOT_FOUND,
            ErrorCode::IdTakenOver => SB_ERR_ID_TAKEN_OVER,
            ErrorCode::Fenced => SB_ERR_FENCED,
            ErrorCode::Forbidden => SB_ERR_FORBIDDEN,
            ErrorCode::NotListening => SB_ERR_NOT_LISTENING,
            ErrorCode::NoResponders => SB_ERR_NO_RESPONDERS,
            _ => SB_ERR_HUB,
        };
    }
    match e {
        ClientError::NotFound { .. } => SB_ERR_NO_HUB,
        ClientError::Discovery(_) | ClientError::Secret(_) => SB_ERR_DISCOVERY,
        ClientError::Connect { .. } | ClientError::Io(_) => SB_ERR_CONNECT,
        ClientError::Disconnected => SB_ERR_DISCONNECTED,
        ClientError::Closed => SB_ERR_CLOSED,
        ClientError::Remote(_) => SB_ERR_REMOTE,
        ClientError::Tls(_) | ClientError::UnsafeSocket { .. } => SB_ERR_TLS,
        ClientError::Protocol(_) | ClientError::Wire(_) | ClientError::Decode(_) => SB_ERR_PROTOCOL,
        _ => SB_ERR_OTHER,
    }
}

thread_local! {
    static LAST: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last(message: &str) {
    // An interior NUL would end the C string early; replace it.
    let text = CString::new(message.replace('\0', "\u{FFFD}")).unwrap_or_default();
    LAST.with(|last| *last.borrow_mut() = text);
}

/// The message of the last error on the calling thread, as a NUL-terminated
/// UTF-8 string owned by the library ("" before any error). It stays valid
/// until the next `sb_*` call that fails on the same thread; copy it to
/// keep it. A successful call does not clear it. Never NULL.
///
/// Threads: any thread; each thread has its own last error, so an error on
/// another thread (a callback's, say) never changes it. Ownership: the
/// string is the library's; do not free it.
#[no_mangle]
pub extern "C" fn sb_last_error_message() -> *const c_char {
    LAST.with(|last| last.borrow().as_ptr())
}

/// Runs `body` behind the panic boundary: its error, or a panic, becomes a
/// code and the thread's last message.
pub(crate) fn boundary(body: impl FnOnce() -> Result<(), Failure>) -> sb_error {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => sb_error::SB_OK,
        Ok(Err(failure)) => {
            set_last(&failure.message);
            failure.code
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            set_last(&format!(
                "internal error (a panic in libswitchboard): {what}"
            ));
            sb_error::SB_ERR_PANIC
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_code_and_a_message() {
        let code = boundary(|| panic!("boom"));
        assert_eq!(code, sb_error::SB_ERR_PANIC);
        let msg = unsafe { std::ffi::CStr::from_ptr(sb_last_error_message()) };
        assert!(msg.to_str().unwrap().contains("boom"));
    }

    #[test]
    fn client_errors_map_one_to_one() {
        assert_eq!(
            code_of(&ClientError::NoSuchClient("x".into())),
            sb_error::SB_ERR_NO_SUCH_CLIENT
        );
        assert_eq!(code_of(&ClientError::Closed), sb_error::SB_ERR_CLOSED);
        assert_eq!(
            code_of(&ClientError::Timeout("t".into())),
            sb_error::SB_ERR_TIMEOUT
        );
        assert_eq!(
            code_of(&ClientError::Missing("k".into())),
            sb_error::SB_ERR_NOT_FOUND
        );
    }
}
