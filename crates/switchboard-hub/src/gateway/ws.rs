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
use bytes::{Buf, BytesMut};
use futures::{SinkExt, StreamExt};
use switchboard_wire::LENGTH_PREFIX_LEN;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::http::Gateway;

/// Buffer of the in-memory stream between a socket and its connection.
const BRIDGE_BUFFER: usize = 256 * 1024;

/// `GET /v1/ws`: upgrades to a WebSocket carrying native frames.
pub(crate) async fn upgrade(
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
            let bridge = tokio::spawn(bridge(socket, bridge_side));
            let conn = gw.shared.alloc_conn();
            crate::conn::serve(conn_side, peer, conn, gw.shared.clone(), permit, "ws").await;
            let _ = tokio::time::timeout(Duration::from_secs(2), bridge).await;
        })
        .into_response()
}

/// Moves frames between the socket and the connection's byte stream until
/// either side ends.
async fn bridge(socket: WebSocket, io: DuplexStream) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut rd, mut wr) = tokio::io::split(io);
    let inbound = async move {
        while let Some(msg) = ws_rx.next().await {
            let data = match msg {
                Ok(Message::Binary(data)) => data,
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                // Text is not a frame: end the connection (the hub sees a
                // disconnect); a close or an error ends it too.
                Ok(Message::Text(_)) | Ok(Message::Close(_)) | Err(_) => break,
            };
            let Ok(len) = u32::try_from(data.len()) else {
                break;
            };
            let mut head = [0u8; LENGTH_PREFIX_LEN];
            head.copy_from_slice(&len.to_be_bytes());
            if wr.write_all(&head).await.is_err() || wr.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let outbound = async move {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        'read: loop {
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            while buf.len() >= LENGTH_PREFIX_LEN {
                let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if buf.len() < LENGTH_PREFIX_LEN + len {
                    buf.reserve(LENGTH_PREFIX_LEN + len - buf.len());
                    break;
                }
                buf.advance(LENGTH_PREFIX_LEN);
                let frame = buf.split_to(len).freeze();
                if ws_tx.send(Message::Binary(frame)).await.is_err() {
                    break 'read;
                }
            }
            if buf.capacity() > 4 * 1024 * 1024 && buf.is_empty() {
                buf = BytesMut::with_capacity(64 * 1024);
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
        let _ = ws_tx.close().await;
    };
    let inbound = tokio::spawn(inbound);
    // The connection closed its side: the socket is done.
    outbound.await;
    inbound.abort();
}
