//! Bounds of application headers ([`proto::Header`]), checked in one place
//! by every side that accepts them (the hub, the HTTP gateway, the client).

use crate::proto;

/// Most headers one frame may carry.
pub const MAX_HEADERS: usize = 64;

/// Longest header key, in bytes.
pub const MAX_HEADER_KEY: usize = 256;

/// Most bytes of keys and values together in one frame.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Why a set of headers was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A key is empty, longer than [`MAX_HEADER_KEY`] or holds a control
    /// character (answered `INVALID_ARGUMENT`).
    #[error("header key {key:?} is not valid: keys are 1..={MAX_HEADER_KEY} bytes without control characters")]
    BadKey {
        /// The key, shortened to 64 characters.
        key: String,
    },
    /// More than [`MAX_HEADERS`] headers (answered `LIMIT_EXCEEDED`).
    #[error("{count} headers exceed the limit of {MAX_HEADERS}")]
    TooMany {
        /// How many were given.
        count: usize,
    },
    /// Keys and values exceed [`MAX_HEADER_BYTES`] together (answered
    /// `LIMIT_EXCEEDED`).
    #[error("headers of {bytes} bytes exceed the limit of {MAX_HEADER_BYTES} bytes")]
    TooLarge {
        /// Their size.
        bytes: usize,
    },
}

impl HeaderError {
    /// The error code a hub answers with.
    pub fn code(&self) -> proto::ErrorCode {
        match self {
            HeaderError::BadKey { .. } => proto::ErrorCode::InvalidArgument,
            HeaderError::TooMany { .. } | HeaderError::TooLarge { .. } => {
                proto::ErrorCode::LimitExceeded
            }
        }
    }
}

/// Checks `headers` against the bounds above.
pub fn check_headers(headers: &[proto::Header]) -> Result<(), HeaderError> {
    if headers.is_empty() {
        return Ok(());
    }
    if headers.len() > MAX_HEADERS {
        return Err(HeaderError::TooMany {
            count: headers.len(),
        });
    }
    let mut bytes = 0usize;
    for h in headers {
        if h.key.is_empty() || h.key.len() > MAX_HEADER_KEY || h.key.chars().any(char::is_control) {
            return Err(HeaderError::BadKey {
                key: h.key.chars().take(64).collect(),
            });
        }
        bytes = bytes.saturating_add(h.key.len() + h.value.len());
    }
    if bytes > MAX_HEADER_BYTES {
        return Err(HeaderError::TooLarge { bytes });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(key: &str, value: &[u8]) -> proto::Header {
        proto::Header {
            key: key.to_string(),
            value: bytes::Bytes::copy_from_slice(value),
        }
    }

    #[test]
    fn bounds() {
        assert_eq!(check_headers(&[]), Ok(()));
        assert_eq!(check_headers(&[h("a", b"1"), h("a", b"2")]), Ok(()));
        assert!(matches!(
            check_headers(&[h("", b"")]),
            Err(HeaderError::BadKey { .. })
        ));
        assert!(matches!(
            check_headers(&[h("a\nb", b"")]),
            Err(HeaderError::BadKey { .. })
        ));
        let long = "k".repeat(MAX_HEADER_KEY + 1);
        assert!(matches!(
            check_headers(&[h(&long, b"")]),
            Err(HeaderError::BadKey { .. })
        ));
        let many: Vec<_> = (0..=MAX_HEADERS).map(|i| h(&i.to_string(), b"")).collect();
        assert_eq!(
            check_headers(&many),
            Err(HeaderError::TooMany {
                count: MAX_HEADERS + 1
            })
        );
        let big = vec![0u8; MAX_HEADER_BYTES];
        let err = check_headers(&[h("k", &big)]).unwrap_err();
        assert_eq!(err.code(), proto::ErrorCode::LimitExceeded);
        assert_eq!(check_headers(&[h("k", &big[1..])]), Ok(()));
    }
}
