//! Byte streams carrying length-prefixed frames: TCP, and the in-memory
//! pipes of [`MemoryConnector`](crate::MemoryConnector).

use std::io;

use bytes::{Buf, BytesMut};
use switchboard_wire::{whole_frame, WireError, LENGTH_PREFIX_LEN};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf,
};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::{Body, FrameRx, FrameTx, Transport, READ_CHUNK};

/// Frames at least this large are decoded in place from the read buffer;
/// smaller ones are copied out, so a small payload retained in a slow
/// client's queue never pins a large read buffer.
const ZERO_COPY_MIN: usize = 32 * 1024;

/// Smallest read, and the step a light connection reads with.
const MIN_READ_CHUNK: usize = 8 * 1024;

/// A byte stream carrying length-prefixed frames.
pub(crate) trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The reading half.
    type Read: AsyncRead + Unpin + Send + 'static;
    /// The writing half.
    type Write: AsyncWrite + Unpin + Send + 'static;
    /// Splits the stream for the reader and writer tasks.
    fn halves(self) -> (Self::Read, Self::Write);
    /// Writes what fits without waiting (a closing connection's last words).
    fn try_write(w: &mut Self::Write, buf: &[u8]);
    /// Waits until the reading half has bytes (or an error or the end) to
    /// read, so an idle connection needs no read buffer while it waits;
    /// returns at once where the stream cannot tell.
    fn readable(r: &Self::Read) -> impl std::future::Future<Output = ()> + Send;
    /// Reads into `buf` without waiting (`WouldBlock` when the readiness
    /// [`readable`](Self::readable) saw was spurious); `None` where the
    /// stream cannot (the caller reads and waits instead).
    fn try_read_buf(_r: &mut Self::Read, _buf: &mut BytesMut) -> Option<io::Result<usize>> {
        None
    }
}

impl ByteStream for TcpStream {
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;
    fn halves(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }
    fn try_write(w: &mut OwnedWriteHalf, buf: &[u8]) {
        let _ = w.try_write(buf);
    }
    fn readable(r: &OwnedReadHalf) -> impl std::future::Future<Output = ()> + Send {
        // Waits in the socket's reader slot, which only the connection's
        // task polls: the future is a reference, where `readable()` would
        // hold tokio's waiter node (184 bytes) in every idle connection's
        // task. An error shows again in the read that follows.
        std::future::poll_fn(move |cx| r.as_ref().poll_read_ready(cx).map(|_| ()))
    }
    fn try_read_buf(r: &mut OwnedReadHalf, buf: &mut BytesMut) -> Option<io::Result<usize>> {
        Some(r.try_read_buf(buf))
    }
}

impl ByteStream for DuplexStream {
    type Read = ReadHalf<DuplexStream>;
    type Write = WriteHalf<DuplexStream>;
    fn halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
    fn try_write(w: &mut Self::Write, buf: &[u8]) {
        use futures::FutureExt;
        let _ = w.write(buf).now_or_never();
    }
    async fn readable(_: &Self::Read) {}
}

impl<S: ByteStream> Transport for S {
    type Rx = ByteRx<S>;
    type Tx = ByteTx<S>;

    fn split(self) -> (ByteRx<S>, ByteTx<S>) {
        let (rd, wr) = self.halves();
        let rx = ByteRx {
            rd,
            buf: BytesMut::new(),
            chunk: MIN_READ_CHUNK,
        };
        (rx, ByteTx { wr })
    }
}

/// Takes the next whole frame off a buffer of length-prefixed frames, the
/// one home of byte-stream framing on the receiving side (byte streams, and
/// WebSocket's stream framing): refuses a length over `max` before its body
/// is buffered; decodes a large body split off the buffer (zero-copy), a
/// small one in place.
pub(super) fn take_frame<R>(
    buf: &mut BytesMut,
    max: usize,
    decode: impl FnOnce(Body<'_>) -> R,
) -> Result<Option<R>, WireError> {
    let Some(len) = whole_frame(buf, max)? else {
        return Ok(None);
    };
    if len >= ZERO_COPY_MIN {
        buf.advance(LENGTH_PREFIX_LEN);
        let body = buf.split_to(len).freeze();
        return Ok(Some(decode(Body::Owned(body))));
    }
    let total = LENGTH_PREFIX_LEN + len;
    let r = decode(Body::Borrowed(&buf[LENGTH_PREFIX_LEN..total]));
    buf.advance(total);
    Ok(Some(r))
}

/// The reading half of a byte stream and its read buffer.
pub(crate) struct ByteRx<S: ByteStream> {
    rd: S::Read,
    buf: BytesMut,
    /// Bytes the next read asks for: doubled while reads fill it, halved
    /// while they use less than a quarter.
    chunk: usize,
}

impl<S: ByteStream> FrameRx for ByteRx<S> {
    fn next_frame<R>(
        &mut self,
        max: usize,
        decode: impl FnOnce(Body<'_>) -> R,
    ) -> Result<Option<R>, WireError> {
        take_frame(&mut self.buf, max, decode)
    }

    async fn receive(&mut self) -> io::Result<usize> {
        if self.buf.is_empty() && self.chunk == MIN_READ_CHUNK {
            // A light or idle connection holds no read buffer while it
            // waits (a busy one keeps its large buffer), not even after a
            // spurious wake-up: the buffer is taken only for a read that
            // does not wait.
            loop {
                if self.buf.capacity() > 0 {
                    self.buf = BytesMut::new();
                }
                S::readable(&self.rd).await;
                self.buf.reserve(self.chunk);
                let spare = self.buf.capacity() - self.buf.len();
                match S::try_read_buf(&mut self.rd, &mut self.buf) {
                    None => break,
                    Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Some(r) => return Ok(self.adapt(r?, spare)),
                }
            }
        }
        self.buf.reserve(self.chunk);
        let spare = self.buf.capacity() - self.buf.len();
        let n = self.rd.read_buf(&mut self.buf).await?;
        Ok(self.adapt(n, spare))
    }

    fn buffered(&self) -> usize {
        self.buf.len()
    }
}

impl<S: ByteStream> ByteRx<S> {
    /// Adapts the read size to a read of `n` bytes into `spare` bytes of
    /// room; returns `n`.
    fn adapt(&mut self, n: usize, spare: usize) -> usize {
        if n == 0 {
            return 0;
        }
        if n >= spare {
            self.chunk = (self.chunk * 2).min(READ_CHUNK);
        } else if n < self.chunk / 4 {
            self.chunk = (self.chunk / 2).max(MIN_READ_CHUNK);
        }
        n
    }
}

/// The writing half of a byte stream.
pub(crate) struct ByteTx<S: ByteStream> {
    wr: S::Write,
}

impl<S: ByteStream> FrameTx for ByteTx<S> {
    /// One write of the whole batch, as it is (flushed: a TLS stream may
    /// hold records back until then; for TCP it costs nothing).
    async fn send(&mut self, batch: &mut BytesMut) -> io::Result<()> {
        self.wr.write_all(batch).await?;
        self.wr.flush().await
    }

    fn try_send(&mut self, batch: &mut BytesMut) {
        S::try_write(&mut self.wr, batch);
    }

    async fn close(&mut self) {
        let _ = self.wr.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;

    #[tokio::test]
    async fn small_frames_are_read_in_place_large_ones_split_off() -> anyhow::Result<()> {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let (mut rx, _tx) = Transport::split(ours);
        let mut bytes = BytesMut::new();
        for len in [10, ZERO_COPY_MIN] {
            bytes.put_u32(len as u32);
            bytes.put_bytes(7, len);
        }
        // A frame cut short by the end of the stream.
        bytes.put_u32(5);
        bytes.put_slice(b"ab");
        peer.write_all(&bytes).await?;
        drop(peer);
        let mut seen = Vec::new();
        let shape = |b: Body<'_>| (matches!(b, Body::Owned(_)), b.as_slice().len());
        loop {
            while let Some(frame) = rx.next_frame(1 << 20, shape)? {
                seen.push(frame);
            }
            if rx.receive().await? == 0 {
                break;
            }
        }
        assert_eq!(seen, [(false, 10), (true, ZERO_COPY_MIN)]);
        assert_eq!(rx.buffered(), LENGTH_PREFIX_LEN + 2);
        Ok(())
    }

    #[tokio::test]
    async fn a_length_over_the_limit_is_refused_before_it_is_buffered() -> anyhow::Result<()> {
        let (mut peer, ours) = tokio::io::duplex(1024);
        let (mut rx, _tx) = Transport::split(ours);
        peer.write_all(&u32::MAX.to_be_bytes()).await?;
        rx.receive().await?;
        assert!(matches!(
            rx.next_frame(4096, |_| ()),
            Err(WireError::FrameTooLarge { .. })
        ));
        Ok(())
    }
}
