//! What a connection runs on: a byte stream carrying length-prefixed
//! frames (TCP; the in-memory pipes of
//! [`MemoryConnector`](crate::MemoryConnector); the WebSocket bridge).

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A byte stream carrying length-prefixed frames: a TCP socket, or the
/// in-memory side of a WebSocket bridge.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
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
}

impl Stream for TcpStream {
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;
    fn halves(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }
    fn try_write(w: &mut OwnedWriteHalf, buf: &[u8]) {
        let _ = w.try_write(buf);
    }
    async fn readable(r: &OwnedReadHalf) {
        // An error shows again in the read that follows.
        let _ = r.readable().await;
    }
}

impl Stream for DuplexStream {
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
