//! What a connection runs on: the seam between the connection code
//! ([`conn`](crate::conn): handshake, pre-decode kind check, reader and
//! writer; the standby link) and the things that carry frames.
//!
//! A [`Transport`] splits into a receiving half ([`FrameRx`]: whole frame
//! bodies, in order) and a sending half ([`FrameTx`]: batches of
//! length-prefixed frames, as [`Out::encode`](crate::Out::encode) writes
//! them). Two kinds of transport implement it:
//!
//! * **byte streams** ([`ByteStream`](stream::ByteStream): TCP, and the in-memory pipes of
//!   [`MemoryConnector`](crate::MemoryConnector)): frames carry their
//!   4-byte length prefix; the receiver finds frames in its read buffer
//!   with the wire crate's framing helpers, decoding large ones in place
//!   (zero-copy) and copying small ones out, and the sender writes a whole
//!   batch with one write;
//! * **message transports** ([`Messages`]: WebSocket): one message is one
//!   frame body, without a prefix; the sender strips the prefixes of a
//!   batch (no copy) and sends one message per frame, flushing once;
//! * **message transports carrying a byte stream** ([`FramedMessages`]:
//!   WebSocket with the `switchboard.stream` subprotocol): the messages
//!   concatenated are a byte stream, split with the byte streams' framing;
//!   the sender sends each batch as one message.
//!
//! Frames are counted as they travel on a byte stream (prefix included)
//! whatever the transport, so the counters mean the same for every
//! transport.
//!
//! # Adding a transport
//!
//! A transport that is a byte stream implements [`ByteStream`](stream::ByteStream) (split into
//! halves; a non-blocking write for a killed connection's last words;
//! readiness, where the stream can tell, so an idle connection holds no
//! read buffer). A Unix socket is `UnixStream::into_split` with
//! `try_write` and `readable`, exactly like TCP; TLS is the stream the TLS
//! library returns after its handshake, split with `tokio::io::split`
//! like the in-memory pipe. A transport that carries messages is adapted
//! to a `Stream` of bodies and a `Sink` of bodies and wrapped in
//! [`Messages`]. Either way its listener hands each accepted connection to
//! [`conn::serve`](crate::conn::serve) with a name for the registry;
//! nothing in the router changes, since the router sees only
//! [`Input`](crate::router::Input)s and [`Outbox`](crate::Outbox)es.
//!
//! [`drain`] is the other half of every writer: the loop that takes
//! batches from an outbox, shared by the connection writer and the HTTP
//! gateway's virtual clients.

use std::future::Future;
use std::io;

use bytes::{Bytes, BytesMut};
use switchboard_wire::WireError;

pub(crate) mod drain;
mod framed_messages;
mod guarded;
mod messages;
mod stream;

pub(crate) use drain::{drain, Drain};
pub(crate) use framed_messages::FramedMessages;
pub(crate) use messages::Messages;
pub(crate) use stream::ByteStream;

/// Largest read of a byte stream, and about the most a message transport
/// receives at once.
pub(crate) const READ_CHUNK: usize = 128 * 1024;

/// A connection's carrier of frames, split into its halves for the reader
/// and writer tasks.
pub(crate) trait Transport: Send + 'static {
    /// The receiving half.
    type Rx: FrameRx;
    /// The sending half.
    type Tx: FrameTx;
    /// Splits the transport.
    fn split(self) -> (Self::Rx, Self::Tx);
}

/// The body of one received frame (without its length prefix).
pub(crate) enum Body<'a> {
    /// In the receive buffer (a small frame on a byte stream).
    Borrowed(&'a [u8]),
    /// Its own buffer: split off the receive buffer without a copy, or a
    /// whole message.
    Owned(Bytes),
}

impl Body<'_> {
    /// The body's bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Body::Borrowed(b) => b,
            Body::Owned(b) => b,
        }
    }

    /// The body as [`Bytes`] (a copy when borrowed).
    pub(crate) fn into_bytes(self) -> Bytes {
        match self {
            Body::Borrowed(b) => Bytes::copy_from_slice(b),
            Body::Owned(b) => b,
        }
    }
}

/// The receiving half of a transport.
pub(crate) trait FrameRx: Send + 'static {
    /// Takes the next whole frame already received, if there is one,
    /// without waiting: refuses a body over `max` bytes (for a byte stream,
    /// from its length prefix, before buffering it), else hands the body to
    /// `decode`.
    fn next_frame<R>(
        &mut self,
        max: usize,
        decode: impl FnOnce(Body<'_>) -> R,
    ) -> Result<Option<R>, WireError>;

    /// Waits for more input and receives it: the bytes received (with a
    /// length prefix per frame, as on a byte stream), or 0 at the end of
    /// the input. Cancel-safe: nothing received is lost when the future is
    /// dropped.
    fn receive(&mut self) -> impl Future<Output = io::Result<usize>> + Send;

    /// Bytes received and not yet taken (at the end of the input: a frame
    /// cut short).
    fn buffered(&self) -> usize;
}

/// The sending half of a transport.
pub(crate) trait FrameTx: Send + 'static {
    /// Sends the length-prefixed frames in `batch`, in order, waiting for
    /// room; may leave `batch` empty or as it was. A failure leaves the
    /// transport unusable.
    fn send(&mut self, batch: &mut BytesMut) -> impl Future<Output = io::Result<()>> + Send;

    /// Sends what of `batch` fits without waiting (a killed connection's
    /// last words).
    fn try_send(&mut self, batch: &mut BytesMut);

    /// Ends the sending side.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}
