//! A sink that is never touched again after its first error: a sink's
//! behaviour after an error is unspecified, and some (futures'
//! `SinkMapErr`) panic when polled into a second one. The message
//! transports' sending halves send through it.

use std::io;

use bytes::Bytes;
use futures::{FutureExt, Sink, SinkExt};

/// `sink`, refusing every use once it has failed.
pub(crate) struct Guarded<Si> {
    sink: Si,
    failed: bool,
}

impl<Si> Guarded<Si>
where
    Si: Sink<Bytes, Error = io::Error> + Unpin,
{
    /// Wraps a working sink.
    pub(crate) fn new(sink: Si) -> Guarded<Si> {
        Guarded {
            sink,
            failed: false,
        }
    }

    fn usable(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the connection failed earlier",
            ));
        }
        Ok(())
    }

    fn note<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        self.failed |= r.is_err();
        r
    }

    /// Queues `item`, waiting for room.
    pub(crate) async fn feed(&mut self, item: Bytes) -> io::Result<()> {
        self.usable()?;
        let r = self.sink.feed(item).await;
        self.note(r)
    }

    /// Sends what was queued.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        self.usable()?;
        let r = self.sink.flush().await;
        self.note(r)
    }

    /// Queues `item` if that needs no waiting; whether it was queued.
    pub(crate) fn try_feed(&mut self, item: Bytes) -> bool {
        if self.failed {
            return false;
        }
        match self.sink.feed(item).now_or_never() {
            Some(r) => self.note(r).is_ok(),
            None => false,
        }
    }

    /// Starts sending what was queued, without waiting.
    pub(crate) fn try_flush(&mut self) {
        if !self.failed {
            if let Some(r) = self.sink.flush().now_or_never() {
                let _ = self.note(r);
            }
        }
    }

    /// Closes the sink (once; never after an error).
    pub(crate) async fn close(&mut self) {
        if !self.failed {
            self.failed = true;
            let _ = self.sink.close().await;
        }
    }
}
