//! Message transports carrying a byte stream (WebSocket with the
//! `switchboard.stream` subprotocol): the concatenation of the messages is
//! the length-prefixed byte stream of TCP, so a message may hold several
//! frames or part of one. Received messages are appended to a read buffer
//! split by the byte streams' framing ([`take_frame`]); each batch the
//! writer sends (already length-prefixed frames) leaves as one message.

use std::io;

use bytes::{Bytes, BytesMut};
use futures::stream::Fuse;
use futures::{FutureExt, Sink, Stream, StreamExt};
use switchboard_wire::WireError;

use super::guarded::Guarded;
use super::stream::take_frame;
use super::{Body, FrameRx, FrameTx, Transport, READ_CHUNK};

/// A message transport carrying a byte stream: a stream of received
/// messages (ending at the end of the connection) and a sink of messages to
/// send.
pub(crate) struct FramedMessages<St, Si> {
    stream: St,
    sink: Si,
}

impl<St, Si> FramedMessages<St, Si> {
    /// Wraps the two directions of one connection.
    pub(crate) fn new(stream: St, sink: Si) -> FramedMessages<St, Si> {
        FramedMessages { stream, sink }
    }
}

impl<St, Si> Transport for FramedMessages<St, Si>
where
    St: Stream<Item = io::Result<Bytes>> + Unpin + Send + 'static,
    Si: Sink<Bytes, Error = io::Error> + Unpin + Send + 'static,
{
    type Rx = FramedRx<St>;
    type Tx = FramedTx<Si>;

    fn split(self) -> (FramedRx<St>, FramedTx<Si>) {
        let rx = FramedRx {
            stream: self.stream.fuse(),
            buf: BytesMut::new(),
            failed: None,
        };
        let tx = FramedTx {
            sink: Guarded::new(self.sink),
        };
        (rx, tx)
    }
}

/// The receiving half: the bytes of the messages received, not yet taken as
/// frames. It holds at most a frame cut short plus about [`READ_CHUNK`]
/// bytes and one message (whose size the transport bounds).
pub(crate) struct FramedRx<St> {
    stream: Fuse<St>,
    buf: BytesMut,
    /// An error met after messages already received: reported by the next
    /// [`FrameRx::receive`].
    failed: Option<io::Error>,
}

impl<St> FrameRx for FramedRx<St>
where
    St: Stream<Item = io::Result<Bytes>> + Unpin + Send + 'static,
{
    fn next_frame<R>(
        &mut self,
        max: usize,
        decode: impl FnOnce(Body<'_>) -> R,
    ) -> Result<Option<R>, WireError> {
        take_frame(&mut self.buf, max, decode)
    }

    /// Waits for one message, then takes the messages already waiting
    /// behind it, up to about [`READ_CHUNK`] bytes.
    async fn receive(&mut self) -> io::Result<usize> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.buf.is_empty() && self.buf.capacity() > READ_CHUNK {
            // An idle connection does not keep a large buffer.
            self.buf = BytesMut::new();
        }
        let mut n = 0;
        let mut next = self.stream.next().await;
        loop {
            match next {
                Some(Ok(msg)) => {
                    n += msg.len();
                    self.buf.extend_from_slice(&msg);
                }
                Some(Err(e)) if n == 0 => return Err(e),
                Some(Err(e)) => self.failed = Some(e),
                // The end shows again (the stream is fused).
                None => break,
            }
            if n >= READ_CHUNK || self.failed.is_some() {
                break;
            }
            next = match self.stream.next().now_or_never() {
                Some(item) => item,
                // An empty message is not the end: wait for more.
                None if n == 0 => self.stream.next().await,
                // Nothing more without waiting.
                None => break,
            };
        }
        Ok(n)
    }

    fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// The sending half: each batch is one message. Once its sink has failed it
/// is never touched again ([`Guarded`]).
pub(crate) struct FramedTx<Si> {
    sink: Guarded<Si>,
}

impl<Si> FrameTx for FramedTx<Si>
where
    Si: Sink<Bytes, Error = io::Error> + Unpin + Send + 'static,
{
    /// The whole batch, prefixes included, as one message (no copy).
    async fn send(&mut self, batch: &mut BytesMut) -> io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.sink.feed(batch.split().freeze()).await?;
        self.sink.flush().await
    }

    fn try_send(&mut self, batch: &mut BytesMut) {
        if !batch.is_empty() && self.sink.try_feed(batch.split().freeze()) {
            self.sink.try_flush();
        }
    }

    async fn close(&mut self) {
        self.sink.close().await;
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;
    use futures::channel::mpsc;
    use futures::SinkExt;
    use switchboard_wire::LENGTH_PREFIX_LEN;

    use super::*;

    type Pair = (
        mpsc::UnboundedSender<io::Result<Bytes>>,
        FramedRx<mpsc::UnboundedReceiver<io::Result<Bytes>>>,
    );

    fn receiver() -> Pair {
        let (incoming, received) = mpsc::unbounded::<io::Result<Bytes>>();
        let (sent, _outgoing) = mpsc::unbounded::<Bytes>();
        let (rx, _tx) = FramedMessages::new(received, sent.sink_map_err(io::Error::other)).split();
        (incoming, rx)
    }

    fn prefixed(bodies: &[&[u8]]) -> Bytes {
        let mut b = BytesMut::new();
        for body in bodies {
            b.put_u32(body.len() as u32);
            b.put_slice(body);
        }
        b.freeze()
    }

    /// Every frame the receiver yields until its input ends.
    async fn drain(
        rx: &mut FramedRx<mpsc::UnboundedReceiver<io::Result<Bytes>>>,
        max: usize,
    ) -> Result<Vec<Bytes>, WireError> {
        let mut seen = Vec::new();
        loop {
            while let Some(body) = rx.next_frame(max, |b| b.into_bytes())? {
                seen.push(body);
            }
            if rx.receive().await.map_err(WireError::Io)? == 0 {
                return Ok(seen);
            }
        }
    }

    #[tokio::test]
    async fn many_frames_in_one_message() -> anyhow::Result<()> {
        let (incoming, mut rx) = receiver();
        incoming.unbounded_send(Ok(prefixed(&[b"one", b"two", b"three"])))?;
        drop(incoming);
        let seen = drain(&mut rx, 64).await?;
        assert_eq!(seen, [&b"one"[..], b"two", b"three"]);
        assert_eq!(rx.buffered(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_frame_split_across_messages() -> anyhow::Result<()> {
        let (incoming, mut rx) = receiver();
        let stream = prefixed(&[b"hello", &[7u8; 40_000], b"x"]);
        // Cut into pieces, one inside a length prefix, and an empty message.
        for piece in [
            &stream[..2],
            &stream[2..7],
            &[][..],
            &stream[7..20_000],
            &stream[20_000..],
        ] {
            incoming.unbounded_send(Ok(Bytes::copy_from_slice(piece)))?;
        }
        drop(incoming);
        let seen = drain(&mut rx, 1 << 20).await?;
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0], &b"hello"[..]);
        assert_eq!(seen[1].len(), 40_000);
        assert_eq!(seen[2], &b"x"[..]);
        Ok(())
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_fails_with_the_typed_error() -> anyhow::Result<()> {
        let (incoming, mut rx) = receiver();
        let mut msg = BytesMut::new();
        msg.put_u32(4097);
        msg.put_slice(b"the rest never comes");
        incoming.unbounded_send(Ok(msg.freeze()))?;
        assert!(matches!(
            drain(&mut rx, 4096).await,
            Err(WireError::FrameTooLarge {
                len: 4097,
                limit: 4096,
                ..
            })
        ));
        Ok(())
    }

    #[tokio::test]
    async fn garbage_is_a_cut_short_frame_or_an_oversized_one() -> anyhow::Result<()> {
        // Garbage read as a length: over the limit fails at once...
        let (incoming, mut rx) = receiver();
        incoming.unbounded_send(Ok(Bytes::from_static(b"\xff\xfegarbage")))?;
        assert!(matches!(
            drain(&mut rx, 1024).await,
            Err(WireError::FrameTooLarge { .. })
        ));
        // ...under it, waits for a body that never comes: at the end of the
        // input the bytes are a frame cut short, and no frame was yielded.
        let (incoming, mut rx) = receiver();
        incoming.unbounded_send(Ok(Bytes::from_static(b"\x00\x00\x01\x00abc")))?;
        drop(incoming);
        assert!(drain(&mut rx, 1024).await?.is_empty());
        assert_eq!(rx.buffered(), LENGTH_PREFIX_LEN + 3);
        Ok(())
    }

    #[tokio::test]
    async fn each_batch_is_one_message() -> anyhow::Result<()> {
        let (_incoming, received) = mpsc::unbounded::<io::Result<Bytes>>();
        let (sent, mut outgoing) = mpsc::unbounded::<Bytes>();
        let (_rx, mut tx) =
            FramedMessages::new(received, sent.sink_map_err(io::Error::other)).split();
        let batch = prefixed(&[b"abc", b"de"]);
        tx.send(&mut BytesMut::from(&batch[..])).await?;
        tx.send(&mut BytesMut::new()).await?;
        assert_eq!(outgoing.next().await, Some(batch));
        tx.close().await;
        assert_eq!(outgoing.next().await, None);
        Ok(())
    }
}
