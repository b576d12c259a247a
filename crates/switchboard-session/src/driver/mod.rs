//! Thin tokio drivers for the [`Agent`](crate::Agent) and
//! [`Manager`](crate::Manager) state machines.
//!
//! A driver owns a transport (any `Stream<Item = Result<Frame, E>> +
//! Sink<Frame>`, such as `Framed<TcpStream, FrameCodec>` or an adapter over a
//! hub client), the timers, and the application's callbacks. It takes only
//! `Kind::Session` frames and ignores the
//! rest, so the same engine runs over a direct TCP connection or a hub.
//!
//! - [`spawn_agent`] runs an agent: it connects with a caller-given
//!   connector, reconnects after a lost connection (the session counts as
//!   failed and is retried per the table; nothing queued is lost), runs
//!   pushed RPCs through an [`RpcHandler`] one at a time, and keeps a journal
//!   of persistent events if asked.
//! - [`spawn_manager`] runs a manager for many agents: attach transports
//!   with [`ManagerHandle::attach`] (one agent per direct link, identified by
//!   its `Inform.device_id`, or many agents per hub link, told apart by
//!   `Session.peer`), and call [`ManagerHandle::rpc`] at any time.

mod agent;
mod manager;

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Sink, Stream};
use switchboard_wire::{proto, Frame, Kind};

pub use agent::{spawn_agent, AgentHandle, AgentOptions, Methods, RpcHandler};
pub use manager::{spawn_manager, LinkKind, ManagerHandle, ManagerOptions, PendingRpc};

/// A boxed error from a transport.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Errors of the drivers.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The agent answered the RPC with a fault.
    #[error("the agent answered with fault {code}: {message}")]
    Fault {
        /// Fault code (see [`crate::fault_code`]).
        code: u32,
        /// The agent's explanation.
        message: String,
    },
    /// No answer within the response timeout.
    #[error(
        "no answer within the response timeout: the rpc may or may not have run; check the agent"
    )]
    Timeout,
    /// A bounded queue is full.
    #[error("queue full ({limit} entries): wait for earlier rpcs to finish, or raise the limit")]
    QueueFull {
        /// The limit.
        limit: usize,
    },
    /// The manager already tracks its maximum number of agents.
    #[error("too many agents ({limit}): raise ManagerOptions::max_agents")]
    TooManyAgents {
        /// The limit.
        limit: usize,
    },
    /// The journal could not be read or written.
    #[error("session journal {path}: {source}: check the path and its permissions")]
    Journal {
        /// The journal's path.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The driver has stopped.
    #[error("the session driver has stopped: start a new one")]
    Closed,
}

impl From<crate::RpcError> for SessionError {
    fn from(e: crate::RpcError) -> Self {
        match e {
            crate::RpcError::Fault { code, message } => SessionError::Fault { code, message },
            crate::RpcError::Timeout => SessionError::Timeout,
        }
    }
}

/// Object-safe form of a frame transport.
trait FrameIo:
    Stream<Item = Result<Frame, BoxError>> + Sink<Frame, Error = BoxError> + Send + Unpin
{
}
impl<X> FrameIo for X where
    X: Stream<Item = Result<Frame, BoxError>> + Sink<Frame, Error = BoxError> + Send + Unpin
{
}

/// A transport with its errors boxed.
struct Boxed<T>(T);

impl<T, E> Stream for Boxed<T>
where
    T: Stream<Item = Result<Frame, E>> + Unpin,
    E: Into<BoxError>,
{
    type Item = Result<Frame, BoxError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|o| o.map(|r| r.map_err(Into::into)))
    }
}

impl<T> Sink<Frame> for Boxed<T>
where
    T: Sink<Frame> + Unpin,
    T::Error: Into<BoxError>,
{
    type Error = BoxError;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Pin::new(&mut self.0).poll_ready(cx).map_err(Into::into)
    }
    fn start_send(mut self: Pin<&mut Self>, item: Frame) -> Result<(), BoxError> {
        Pin::new(&mut self.0).start_send(item).map_err(Into::into)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Pin::new(&mut self.0).poll_flush(cx).map_err(Into::into)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Pin::new(&mut self.0).poll_close(cx).map_err(Into::into)
    }
}

fn boxed<T, E>(t: T) -> Box<dyn FrameIo>
where
    T: Stream<Item = Result<Frame, E>> + Sink<Frame> + Send + Unpin + 'static,
    E: Into<BoxError>,
    <T as Sink<Frame>>::Error: Into<BoxError>,
{
    Box::new(Boxed(t))
}

/// The session message in `frame`, if it is one.
fn session_of(frame: Frame) -> Option<proto::Session> {
    match frame.kind {
        Some(Kind::Session(s)) => Some(s),
        _ => None,
    }
}

/// The answer to a frame of a kind this version does not know (it decodes
/// without a kind): `Error{UNSUPPORTED}`, and the connection carries on.
fn unknown_kind_reply(frame: &Frame) -> Option<Frame> {
    frame.kind.is_none().then(|| {
        Frame::error(
            0,
            switchboard_wire::ErrorCode::Unsupported,
            "unknown frame kind: this peer understands session frames only",
        )
    })
}

/// Most frames handled per wake-up before yielding to other work.
const BATCH: usize = 256;
