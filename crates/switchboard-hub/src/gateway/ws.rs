//! WebSocket transport, in one of two framings (docs/PROTOCOL.md,
//! "WebSocket"): by default each binary message carries exactly one native
//! protobuf `Frame` (no length prefix); a client that offers the
//! [`STREAM_PROTOCOL`] subprotocol gets it, and then the binary messages
//! concatenated are the length-prefixed byte stream of TCP. Either way the
//! socket is a [`Transport`](crate::transport::Transport) served by the
//! same connection code as TCP (handshake, pre-decode kind check, reader
//! and writer), so a WebSocket client is a full client.

use std::io;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};

use super::Gateway;
use crate::router::admission::Peer;
use crate::tls::HttpPeer;
use crate::transport::{FramedMessages, Messages};

/// The subprotocol (`Sec-WebSocket-Protocol`) of the stream framing.
pub(crate) const STREAM_PROTOCOL: &str = "switchboard.stream";

/// WebSocket connections in the handshake at once (each may buffer one
/// message of up to `max_frame` bytes before authentication).
pub(super) const MAX_HANDSHAKES: usize = 64;

/// Bytes a WebSocket buffers before it writes them out (the WebSocket
/// layer's default).
const WRITE_BUFFER: usize = 128 * 1024;

/// `GET /v1/ws`: upgrades to a WebSocket carrying native frames.
pub(super) async fn upgrade(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<HttpPeer>,
    ws: WebSocketUpgrade,
) -> Response {
    let Ok(permit) = gw.ws_handshakes.clone().try_acquire_owned() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many WebSocket connections in the handshake; retry shortly\n",
        )
            .into_response();
    };
    // A message holds at most one frame and its prefix; a frame over the
    // limit fails the socket (in the stream framing: from its prefix).
    let max = gw.shared.limits.max_frame;
    let max_message = max + switchboard_wire::LENGTH_PREFIX_LEN;
    // What the socket may buffer unsent: one outgoing message (a writer
    // batch, which may end in a frame of the largest size) beyond the
    // write buffer. The WebSocket layer answers every ping with a pong on
    // its own; unbounded, a peer that pings and never reads would grow
    // the buffer without end. At the bound, only the latest pong waits.
    let max_buffered = WRITE_BUFFER + gw.shared.limits.write_batch_bytes + max_message;
    ws.protocols([STREAM_PROTOCOL])
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(max_buffered)
        .on_upgrade(move |socket| async move {
            let stream = socket
                .protocol()
                .is_some_and(|p| p.as_bytes() == STREAM_PROTOCOL.as_bytes());
            let (incoming, outgoing) = frames(socket);
            let conn = gw.shared.alloc_conn();
            let peer = Peer {
                transport: if peer.tls { "wss" } else { "ws" },
                addr: peer.addr.to_string(),
                unix: None,
                cert: peer.cert,
            };
            let shared = gw.shared.clone();
            if stream {
                let transport = FramedMessages::new(incoming, outgoing);
                crate::conn::serve(transport, peer, conn, shared, permit, tracing::Span::none())
                    .await;
            } else {
                let transport = Messages::new(incoming, outgoing, max);
                crate::conn::serve(transport, peer, conn, shared, permit, tracing::Span::none())
                    .await;
            }
        })
        .into_response()
}

/// The socket as binary messages: binary messages are kept, pings and pongs
/// are skipped, and text, a close or an error end the stream (the hub sees
/// a disconnect); each `Bytes` sent is one binary message, and closing sends
/// a close message.
fn frames(
    socket: WebSocket,
) -> (
    impl Stream<Item = io::Result<Bytes>> + Unpin + Send + 'static,
    impl Sink<Bytes, Error = io::Error> + Unpin + Send + 'static,
) {
    let (tx, rx) = socket.split();
    let incoming = rx
        .take_while(|msg| {
            std::future::ready(matches!(
                msg,
                Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))
            ))
        })
        .filter_map(|msg| {
            std::future::ready(match msg {
                Ok(Message::Binary(data)) => Some(Ok(data)),
                _ => None,
            })
        });
    let outgoing = tx
        .with(|frame: Bytes| std::future::ready(Ok::<_, axum::Error>(Message::Binary(frame))))
        .sink_map_err(io::Error::other);
    (incoming, outgoing)
}
