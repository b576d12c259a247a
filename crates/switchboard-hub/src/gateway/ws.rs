//! WebSocket transport: each binary message carries exactly one native
//! protobuf `Frame` (no length prefix). The socket is bridged to an
//! in-memory byte stream carrying the same length-prefixed frames as TCP,
//! and served by the same connection code (handshake, pre-decode kind
//! check, reader and writer), so a WebSocket client is a full client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use tokio::io::DuplexStream;

use super::Gateway;

/// WebSocket connections in the handshake at once (each may buffer one
/// message of up to `max_frame` bytes before authentication).
pub(super) const MAX_HANDSHAKES: usize = 64;

/// Buffer of the in-memory stream between a socket and its connection.
const BRIDGE_BUFFER: usize = 256 * 1024;

/// `GET /v1/ws`: upgrades to a WebSocket carrying native frames.
pub(super) async fn upgrade(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let Ok(permit) = gw.ws_handshakes.clone().try_acquire_owned() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many WebSocket connections in the handshake; retry shortly\n",
        )
            .into_response();
    };
    // One message is one frame; a frame over the limit fails the socket.
    let max = gw.shared.limits.max_frame;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let (conn_side, bridge_side) = tokio::io::duplex(BRIDGE_BUFFER);
            let bridge = tokio::spawn(bridge(socket, bridge_side, max));
            let conn = gw.shared.alloc_conn();
            crate::conn::serve(conn_side, peer, conn, gw.shared.clone(), permit, "ws").await;
            let mut bridge = bridge;
            if tokio::time::timeout(Duration::from_secs(2), &mut bridge)
                .await
                .is_err()
            {
                // A peer that stopped reading holds the socket: cut it.
                bridge.abort();
            }
        })
        .into_response()
}

/// Moves frames between the socket and the connection's byte stream until
/// either side ends (`switchboard_wire::bridge`): binary messages are
/// frames; pings and pongs are skipped; text, a close or an error end the
/// connection (the hub sees a disconnect).
async fn bridge(socket: WebSocket, io: DuplexStream, max_frame: usize) {
    let (mut ws_tx, ws_rx) = socket.split();
    let incoming = ws_rx
        .take_while(|msg| {
            std::future::ready(matches!(
                msg,
                Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))
            ))
        })
        .filter_map(|msg| {
            std::future::ready(match msg {
                Ok(Message::Binary(data)) => Some(data),
                _ => None,
            })
        });
    let mut outgoing = (&mut ws_tx).with(|frame: bytes::Bytes| {
        std::future::ready(Ok::<_, axum::Error>(Message::Binary(frame)))
    });
    let (rd, wr) = tokio::io::split(io);
    switchboard_wire::bridge::bridge(Box::pin(incoming), &mut outgoing, rd, wr, max_frame).await;
    let _ = ws_tx.send(Message::Close(None)).await;
    let _ = ws_tx.close().await;
}
