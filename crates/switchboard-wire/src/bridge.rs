//! Frames between a message transport and a byte stream.
//!
//! WebSocket carries one frame body per binary message; the client's
//! connection code reads and writes length-prefixed frames on a byte
//! stream. [`bridge`] joins the two through a `tokio::io::duplex` pipe, so
//! a WebSocket connection runs the very code a TCP connection runs. Used by
//! the client's WebSocket transport (the hub serves WebSocket messages
//! directly, as a message transport).

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::LENGTH_PREFIX_LEN;

/// The length-prefix codec of the byte side: a `u32` big-endian length,
/// then the body, at most `max_frame` bytes.
pub fn length_prefixed(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(LENGTH_PREFIX_LEN)
        .big_endian()
        .max_frame_length(max_frame)
        .new_codec()
}

/// Moves frames until either side ends: each body from `incoming` (one
/// message, already stripped of its transport's framing) is written to
/// `wr` with its length prefix; each length-prefixed frame read from `rd`
/// is sent to `outgoing` as one body. Returns when `rd` ends (the
/// connection code closed its side), fails, or holds a frame over
/// `max_frame`, or when `outgoing` refuses a body; when `incoming` ends,
/// `wr` is shut down first, so the connection code sees the end. The caller
/// then closes its transport.
pub async fn bridge<In, Out, R, W>(
    mut incoming: In,
    outgoing: &mut Out,
    rd: R,
    wr: W,
    max_frame: usize,
) where
    In: Stream<Item = Bytes> + Unpin,
    Out: Sink<Bytes> + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frames_in = FramedWrite::new(wr, length_prefixed(max_frame));
    let mut frames_out = FramedRead::new(rd, length_prefixed(max_frame));
    let inbound = async {
        while let Some(body) = incoming.next().await {
            if SinkExt::<Bytes>::send(&mut frames_in, body).await.is_err() {
                // The connection side is gone: the bridge is done.
                return;
            }
        }
        let _ = SinkExt::<Bytes>::close(&mut frames_in).await;
        // The connection code ends `rd` in turn; outbound finishes then.
        futures::future::pending::<()>().await;
    };
    let outbound = async {
        while let Some(Ok(frame)) = frames_out.next().await {
            if outgoing.send(frame.freeze()).await.is_err() {
                break;
            }
        }
    };
    tokio::pin!(inbound, outbound);
    tokio::select! {
        _ = &mut outbound => {}
        _ = &mut inbound => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn messages_become_prefixed_frames_and_back() {
        let (bridge_side, mut conn_side) = tokio::io::duplex(1024);
        let (rd, wr) = tokio::io::split(bridge_side);
        let incoming = futures::stream::iter(vec![Bytes::from_static(b"abc"), Bytes::new()]);
        let (mut out_tx, out_rx) = futures::channel::mpsc::unbounded::<Bytes>();
        let task = tokio::spawn(async move {
            bridge(incoming, &mut out_tx, rd, wr, 16).await;
        });
        // Two frames arrive with prefixes, then the end.
        let mut got = Vec::new();
        conn_side.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0]);
        // Frames written come out as bodies; an oversized one ends it.
        conn_side
            .write_all(&[0, 0, 0, 2, b'h', b'i'])
            .await
            .unwrap();
        conn_side.write_all(&[0, 0, 0, 17]).await.unwrap();
        task.await.unwrap();
        let sent: Vec<Bytes> = out_rx.collect().await;
        assert_eq!(sent, [Bytes::from_static(b"hi")]);
    }
}
