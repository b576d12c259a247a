//! Message transports: each message carries exactly one frame body, without
//! a length prefix (WebSocket binary messages).

use std::collections::VecDeque;
use std::io;

use bytes::{Bytes, BytesMut};
use futures::stream::Fuse;
use futures::{FutureExt, Sink, Stream, StreamExt};
use switchboard_wire::{split_frame, Direction, WireError, LENGTH_PREFIX_LEN};

use super::guarded::Guarded;
use super::{Body, FrameRx, FrameTx, Transport, READ_CHUNK};

/// A message transport: a stream of received bodies (ending at the end of
/// the connection) and a sink of bodies to send. Bodies over `max_frame`
/// bytes are refused both ways.
pub(crate) struct Messages<St, Si> {
    stream: St,
    sink: Si,
    max_frame: usize,
}

impl<St, Si> Messages<St, Si> {
    /// Wraps the two directions of one connection.
    pub(crate) fn new(stream: St, sink: Si, max_frame: usize) -> Messages<St, Si> {
        Messages {
            stream,
            sink,
            max_frame,
        }
    }
}

impl<St, Si> Transport for Messages<St, Si>
where
    St: Stream<Item = io::Result<Bytes>> + Unpin + Send + 'static,
    Si: Sink<Bytes, Error = io::Error> + Unpin + Send + 'static,
{
    type Rx = MessageRx<St>;
    type Tx = MessageTx<Si>;

    fn split(self) -> (MessageRx<St>, MessageTx<Si>) {
        let rx = MessageRx {
            stream: self.stream.fuse(),
            ready: VecDeque::new(),
            ready_bytes: 0,
            failed: None,
        };
        let tx = MessageTx {
            sink: Guarded::new(self.sink),
            max_frame: self.max_frame,
        };
        (rx, tx)
    }
}

/// The receiving half: messages received and not yet taken.
pub(crate) struct MessageRx<St> {
    stream: Fuse<St>,
    ready: VecDeque<Bytes>,
    /// Bytes in `ready`, counted with a length prefix per message.
    ready_bytes: usize,
    /// An error met after messages already received: reported by the
    /// next [`FrameRx::receive`].
    failed: Option<io::Error>,
}

impl<St> FrameRx for MessageRx<St>
where
    St: Stream<Item = io::Result<Bytes>> + Unpin + Send + 'static,
{
    fn next_frame<R>(
        &mut self,
        max: usize,
        decode: impl FnOnce(Body<'_>) -> R,
    ) -> Result<Option<R>, WireError> {
        let Some(body) = self.ready.pop_front() else {
            return Ok(None);
        };
        self.ready_bytes -= LENGTH_PREFIX_LEN + body.len();
        if body.len() > max {
            return Err(WireError::FrameTooLarge {
                direction: Direction::Inbound,
                len: body.len() as u64,
                limit: max,
            });
        }
        Ok(Some(decode(Body::Owned(body))))
    }

    /// Waits for one message, then takes the messages already waiting
    /// behind it, up to about [`READ_CHUNK`] bytes.
    async fn receive(&mut self) -> io::Result<usize> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let mut n = 0;
        let mut next = self.stream.next().await;
        loop {
            match next {
                Some(Ok(body)) => {
                    n += LENGTH_PREFIX_LEN + body.len();
                    self.ready.push_back(body);
                }
                Some(Err(e)) if n == 0 => return Err(e),
                Some(Err(e)) => self.failed = Some(e),
                // The end shows again (the stream is fused).
                None => {}
            }
            if n == 0 || n >= READ_CHUNK || self.failed.is_some() {
                break;
            }
            match self.stream.next().now_or_never() {
                Some(Some(item)) => next = Some(item),
                // Ended, or nothing more without waiting.
                Some(None) | None => break,
            }
        }
        self.ready_bytes += n;
        Ok(n)
    }

    fn buffered(&self) -> usize {
        self.ready_bytes
    }
}

/// The sending half. Once its sink has failed it is never touched again
/// ([`Guarded`]).
pub(crate) struct MessageTx<Si> {
    sink: Guarded<Si>,
    max_frame: usize,
}

impl<Si> FrameTx for MessageTx<Si>
where
    Si: Sink<Bytes, Error = io::Error> + Unpin + Send + 'static,
{
    /// One message per frame, split off the batch without a copy, then one
    /// flush. A frame over `max_frame` fails the connection.
    async fn send(&mut self, batch: &mut BytesMut) -> io::Result<()> {
        while let Some(body) = split_frame(batch, self.max_frame).map_err(io::Error::other)? {
            self.sink.feed(body).await?;
        }
        self.sink.flush().await
    }

    fn try_send(&mut self, batch: &mut BytesMut) {
        while let Ok(Some(body)) = split_frame(batch, self.max_frame) {
            if !self.sink.try_feed(body) {
                return;
            }
        }
        self.sink.try_flush();
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

    use super::*;

    #[tokio::test]
    async fn each_message_is_one_frame_both_ways() -> anyhow::Result<()> {
        let (incoming, received) = mpsc::unbounded::<io::Result<Bytes>>();
        let (sent, mut outgoing) = mpsc::unbounded::<Bytes>();
        let (mut rx, mut tx) =
            Messages::new(received, sent.sink_map_err(io::Error::other), 4).split();
        for body in ["one", "two", "fives"] {
            incoming.unbounded_send(Ok(Bytes::from(body)))?;
        }
        // One receive takes every message waiting, counted as prefixed
        // frames.
        assert_eq!(rx.receive().await?, 3 * LENGTH_PREFIX_LEN + 11);
        let body = |b: Body<'_>| b.into_bytes();
        assert_eq!(rx.next_frame(4, body)?, Some(Bytes::from("one")));
        assert_eq!(rx.next_frame(4, body)?, Some(Bytes::from("two")));
        assert!(matches!(
            rx.next_frame(4, body),
            Err(WireError::FrameTooLarge { len: 5, .. })
        ));
        assert_eq!((rx.next_frame(4, body)?, rx.buffered()), (None, 0));
        drop(incoming);
        assert_eq!(rx.receive().await?, 0);

        let mut batch = BytesMut::new();
        for body in [&b"abc"[..], b"de"] {
            batch.put_u32(body.len() as u32);
            batch.put_slice(body);
        }
        tx.send(&mut batch).await?;
        assert_eq!(outgoing.next().await, Some(Bytes::from("abc")));
        assert_eq!(outgoing.next().await, Some(Bytes::from("de")));
        batch.put_u32(5);
        batch.put_slice(b"fives");
        assert!(tx.send(&mut batch).await.is_err(), "over the frame limit");
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_sink_is_never_polled_again() -> anyhow::Result<()> {
        // `SinkMapErr` panics when polled into a second error; the sending
        // half must stop at the first.
        let (_incoming, received) = mpsc::unbounded::<io::Result<Bytes>>();
        let (sent, outgoing) = mpsc::unbounded::<Bytes>();
        drop(outgoing);
        let (_rx, mut tx) =
            Messages::new(received, sent.sink_map_err(io::Error::other), 64).split();
        let frame = |body: &[u8]| {
            let mut batch = BytesMut::new();
            batch.put_u32(body.len() as u32);
            batch.put_slice(body);
            batch
        };
        assert!(tx.send(&mut frame(b"one")).await.is_err());
        tx.try_send(&mut frame(b"two"));
        assert!(tx.send(&mut frame(b"three")).await.is_err());
        tx.close().await;
        Ok(())
    }
}
