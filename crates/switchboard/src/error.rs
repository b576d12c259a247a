//! The client's error type.

use switchboard_wire::WireError;

/// A protocol error code, as the hub reports it (see `docs/PROTOCOL.md`,
/// "Error codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No code, or one this version does not know.
    Unspecified,
    /// A frame could not be decoded or broke the protocol's order.
    BadFrame,
    /// The peer speaks an unsupported protocol version.
    UnsupportedVersion,
    /// The authentication proof was wrong.
    AuthFailed,
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// The target client id is not connected.
    NoSuchClient,
    /// No answer within the timeout.
    Timeout,
    /// The target left while a request to it was outstanding.
    TargetGone,
    /// The target's queue stayed full for the sender's whole timeout.
    QueueFull,
    /// A configured limit was reached.
    LimitExceeded,
    /// A pattern, key, id or size is not valid.
    InvalidArgument,
    /// Compare-and-set found another version.
    VersionMismatch,
    /// The key or object does not exist.
    NotFound,
    /// Another connection registered the same client id.
    IdTakenOver,
    /// The hub is shutting down.
    ShuttingDown,
    /// The epoch is older than one already seen.
    Fenced,
    /// The frame kind is unknown or not allowed in this direction.
    Unsupported,
    /// The client did not read fast enough.
    SlowConsumer,
    /// Not allowed.
    Forbidden,
    /// A bug or unexpected condition on the sending side.
    Internal,
    /// The target does not take this kind of message now.
    NotListening,
    /// A request to a service found no responder.
    NoResponders,
}

impl ErrorCode {
    /// The code carried in an `Error` frame's `code` field.
    pub fn from_wire(code: i32) -> ErrorCode {
        use switchboard_wire::ErrorCode as W;
        match W::from_wire(code) {
            W::Unspecified => ErrorCode::Unspecified,
            W::BadFrame => ErrorCode::BadFrame,
            W::UnsupportedVersion => ErrorCode::UnsupportedVersion,
            W::AuthFailed => ErrorCode::AuthFailed,
            W::HandshakeTimeout => ErrorCode::HandshakeTimeout,
            W::NoSuchClient => ErrorCode::NoSuchClient,
            W::Timeout => ErrorCode::Timeout,
            W::TargetGone => ErrorCode::TargetGone,
            W::QueueFull => ErrorCode::QueueFull,
            W::LimitExceeded => ErrorCode::LimitExceeded,
            W::InvalidArgument => ErrorCode::InvalidArgument,
            W::VersionMismatch => ErrorCode::VersionMismatch,
            W::NotFound => ErrorCode::NotFound,
            W::IdTakenOver => ErrorCode::IdTakenOver,
            W::ShuttingDown => ErrorCode::ShuttingDown,
            W::Fenced => ErrorCode::Fenced,
            W::Unsupported => ErrorCode::Unsupported,
            W::SlowConsumer => ErrorCode::SlowConsumer,
            W::Forbidden => ErrorCode::Forbidden,
            W::Internal => ErrorCode::Internal,
            W::NotListening => ErrorCode::NotListening,
            W::NoResponders => ErrorCode::NoResponders,
        }
    }

    /// The protocol's name of the code (`"NO_SUCH_CLIENT"`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::Unspecified => "ERROR_CODE_UNSPECIFIED",
            ErrorCode::BadFrame => "BAD_FRAME",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::HandshakeTimeout => "HANDSHAKE_TIMEOUT",
            ErrorCode::NoSuchClient => "NO_SUCH_CLIENT",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::TargetGone => "TARGET_GONE",
            ErrorCode::QueueFull => "QUEUE_FULL",
            ErrorCode::LimitExceeded => "LIMIT_EXCEEDED",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::VersionMismatch => "VERSION_MISMATCH",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::IdTakenOver => "ID_TAKEN_OVER",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::Fenced => "FENCED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::SlowConsumer => "SLOW_CONSUMER",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::NotListening => "NOT_LISTENING",
            ErrorCode::NoResponders => "NO_RESPONDERS",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a [`Client`](crate::Client) operation can fail with.
///
/// Errors the hub reports for one command (an unknown target, a timeout, a
/// failed compare-and-set...) map to their own variants so callers can match
/// on them; [`ClientError::code`] gives the protocol code where one applies.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Discovery found no hub serving the service.
    #[error("no hub found for service {service:?} ({detail}); start one with `switchboard hub --service {service}` or give its address")]
    NotFound {
        /// The service name that was looked up.
        service: String,
        /// What discovery tried.
        detail: String,
    },
    /// Discovery itself failed (for example the secret could not be read).
    #[error("discovery failed: {0}")]
    Discovery(String),
    /// The secret or token could not be loaded.
    #[error("cannot load the secret: {0}")]
    Secret(String),
    /// A TCP connection to the hub could not be made.
    #[error("cannot connect to {addr}: {source}; check that a hub is running there")]
    Connect {
        /// The address tried.
        addr: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A hub's Unix socket failed the checks that let the client trust it
    /// (its owner, its directory's permissions); nothing was sent to it.
    #[error("refusing the unix socket {}: {reason}", path.display())]
    UnsafeSocket {
        /// The socket's path.
        path: std::path::PathBuf,
        /// What is wrong, and the fix.
        reason: String,
    },
    /// The hub refused this client's proof: the secret or token differs.
    #[error("authentication failed: {0}; use the same token or secret as the hub")]
    AuthFailed(String),
    /// The peer did not prove that it knows the secret: it is not a genuine
    /// hub for this secret, and nothing was sent to it beyond the hello.
    #[error("the hub at {addr} failed to prove it knows the secret; refusing to use it (wrong token, or an impostor)")]
    HubUnverified {
        /// Address of the refused peer.
        addr: String,
    },
    /// The hub's epoch is below the highest this client has seen (it is an
    /// old primary that a standby replaced), or the hub found this client's
    /// epoch above its own and refused it. The client does not use such a
    /// hub; while reconnecting it keeps looking for the current one.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The hub does not speak this client's protocol version.
    #[error("protocol version not supported by the hub: {0}; upgrade the older side")]
    UnsupportedVersion(String),
    /// No answer arrived in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The target client id is not connected to the hub.
    #[error("{0}")]
    NoSuchClient(String),
    /// The target left while a request to it was outstanding.
    #[error("{0}")]
    TargetGone(String),
    /// The target's queue stayed full for the whole timeout.
    #[error("{0}")]
    QueueFull(String),
    /// A compare-and-set found a different version.
    #[error("{0}")]
    VersionMismatch(String),
    /// A pattern, key, id or size is not acceptable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A hub limit (subscriptions, watches, sizes...) was reached.
    #[error("{0}")]
    LimitExceeded(String),
    /// The key or object does not exist.
    #[error("{0}")]
    Missing(String),
    /// The target is connected but does not take this kind of message now
    /// (it has not asked for [`Client::messages`](crate::Client::messages)
    /// or is not serving requests); nothing was queued for it.
    #[error("{0}")]
    NotListening(String),
    /// A request to a service found no responder.
    #[error("{0}")]
    NoResponders(String),
    /// The hub does not allow this client to do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The replier's application answered with an error.
    #[error("the replier failed: {0}")]
    Remote(String),
    /// The hub reported another error.
    #[error("hub error {code:?}: {message}")]
    Hub {
        /// Protocol error code.
        code: ErrorCode,
        /// The hub's explanation.
        message: String,
    },
    /// The connection to the hub is down (a reconnect may be under way);
    /// commands in flight when it dropped fail with this.
    #[error(
        "not connected to the hub; wait for the connection state to become connected and retry"
    )]
    Disconnected,
    /// Another connection took over this client id.
    #[error("another connection took over the client id {0:?}")]
    TakenOver(String),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// A payload did not decode as the expected type: a reply to
    /// [`Client::request_typed`](crate::Client::request_typed) or
    /// [`TypedClient::request`](crate::TypedClient::request). The message
    /// names whose payload and the codec's explanation.
    #[error("cannot decode: {0}")]
    Decode(String),
    /// The hub broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Framing failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// I/O failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// TLS to the hub failed, or its setting could not be loaded: a
    /// certificate from an unknown CA, for another name or expired, a port
    /// that does not speak TLS, a refused client certificate.
    #[error(transparent)]
    Tls(#[from] switchboard_discovery::tls::TlsError),
}

impl ClientError {
    /// The protocol error code this error corresponds to, if any.
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            ClientError::AuthFailed(_) | ClientError::HubUnverified { .. } => ErrorCode::AuthFailed,
            ClientError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            ClientError::Timeout(_) => ErrorCode::Timeout,
            ClientError::NoSuchClient(_) => ErrorCode::NoSuchClient,
            ClientError::TargetGone(_) => ErrorCode::TargetGone,
            ClientError::QueueFull(_) => ErrorCode::QueueFull,
            ClientError::VersionMismatch(_) => ErrorCode::VersionMismatch,
            ClientError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            ClientError::LimitExceeded(_) => ErrorCode::LimitExceeded,
            ClientError::Missing(_) => ErrorCode::NotFound,
            ClientError::NotListening(_) => ErrorCode::NotListening,
            ClientError::NoResponders(_) => ErrorCode::NoResponders,
            ClientError::Forbidden(_) => ErrorCode::Forbidden,
            ClientError::TakenOver(_) => ErrorCode::IdTakenOver,
            ClientError::Fenced(_) => ErrorCode::Fenced,
            ClientError::Hub { code, .. } => *code,
            _ => return None,
        })
    }

    /// Whether the error means the hub (or a hub) could not be found.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::NotFound { .. })
    }

    /// Whether the hub refused the command (a bad argument, a limit, a
    /// permission, or another hub error): it then holds nothing of it,
    /// unlike a timeout or a lost connection, whose outcome is unknown.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ClientError::InvalidArgument(_)
                | ClientError::LimitExceeded(_)
                | ClientError::Forbidden(_)
                | ClientError::Hub { .. }
        )
    }

    /// Whether the error is [`ClientError::Fenced`]: a hub of an older
    /// epoch than one already seen.
    pub fn is_fenced(&self) -> bool {
        matches!(self, ClientError::Fenced(_))
    }

    /// Maps an `Error` frame from the hub to a typed error.
    pub(crate) fn from_hub(code: i32, message: String) -> ClientError {
        match ErrorCode::from_wire(code) {
            ErrorCode::AuthFailed => ClientError::AuthFailed(message),
            ErrorCode::UnsupportedVersion => ClientError::UnsupportedVersion(message),
            ErrorCode::Timeout => ClientError::Timeout(message),
            ErrorCode::NoSuchClient => ClientError::NoSuchClient(message),
            ErrorCode::TargetGone => ClientError::TargetGone(message),
            ErrorCode::QueueFull => ClientError::QueueFull(message),
            ErrorCode::VersionMismatch => ClientError::VersionMismatch(message),
            ErrorCode::InvalidArgument => ClientError::InvalidArgument(message),
            ErrorCode::LimitExceeded => ClientError::LimitExceeded(message),
            ErrorCode::NotFound => ClientError::Missing(message),
            ErrorCode::NotListening => ClientError::NotListening(message),
            ErrorCode::NoResponders => ClientError::NoResponders(message),
            ErrorCode::Forbidden => ClientError::Forbidden(message),
            ErrorCode::IdTakenOver => ClientError::TakenOver(message),
            ErrorCode::Fenced => ClientError::Fenced(message),
            code => ClientError::Hub { code, message },
        }
    }
}
