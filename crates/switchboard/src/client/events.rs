//! What happens to a client's connection, as a stream of events.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

/// Events kept for a slow [`Events`] reader before it misses some.
pub(crate) const EVENTS_CAPACITY: usize = 1024;

/// Something that happened to a [`Client`](crate::Client)'s connection or
/// streams; see [`Client::events`](crate::Client::events).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The first connection is made.
    Connected {
        /// Address of the hub.
        addr: SocketAddr,
    },
    /// The connection dropped; the client reconnects unless told not to.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// Reconnected and the hub resumed the reliable session: nothing was
    /// lost or duplicated, subscriptions and calls in flight continue.
    Resumed {
        /// Address of the hub.
        addr: SocketAddr,
        /// Connections made so far.
        generation: u64,
    },
    /// Reconnected, but the hub holds no state for this client (it
    /// restarted, the resume window passed, or reliable delivery is off):
    /// calls in flight failed with
    /// [`Disconnected`](crate::ClientError::Disconnected) (outcome
    /// unknown), subscriptions, watches and listening were restored, and
    /// messages sent to this client meanwhile may be lost.
    StateLost {
        /// Address of the hub.
        addr: SocketAddr,
        /// Connections made so far.
        generation: u64,
    },
    /// A subscription with a drop policy
    /// ([`Overflow::DropNewest`](crate::Overflow::DropNewest) or
    /// [`DropOldest`](crate::Overflow::DropOldest)) dropped messages because
    /// the application did not keep up.
    SlowConsumer {
        /// The subscription's id ([`Subscription::id`](crate::Subscription::id)).
        sub_id: u64,
        /// Its pattern.
        pattern: String,
        /// Messages dropped since the last such event.
        dropped: u64,
        /// Messages this subscription dropped in all (a reader that missed
        /// events still learns the whole count from the next one).
        total: u64,
    },
    /// The hub dropped pub/sub deliveries for this client because its queue
    /// for the client was full (the client did not read fast enough).
    HubDropped {
        /// Deliveries dropped since the hub's last notice.
        dropped: u64,
        /// Frames queued for this client at the hub.
        queue_depth: u64,
    },
    /// A stream without a reader dropped an item: a direct message that
    /// arrived after its [`Messages`](crate::Messages) stream was dropped
    /// (the hub was still told this client listens), or a presence event
    /// that did not fit while reconnecting.
    Undelivered {
        /// Which stream (`"messages"`, `"presence"`, ...).
        stream: &'static str,
        /// Items dropped.
        dropped: u64,
    },
    /// The hub reported an error about the whole connection.
    HubError {
        /// The hub's error code.
        code: crate::ErrorCode,
        /// Its message.
        message: String,
    },
    /// A hub was refused because its epoch is older than one already seen
    /// (an old primary that a standby replaced), or the hub said this
    /// client's session belongs to a newer hub.
    Fenced {
        /// Details.
        message: String,
    },
    /// The client is closed for good.
    Closed {
        /// Why.
        reason: String,
    },
    /// This [`Events`] stream fell behind and missed this many events.
    Lagged {
        /// Events missed.
        missed: u64,
    },
}

/// A stream of [`ClientEvent`]s from [`Client::events`](crate::Client::events).
///
/// Each `Events` sees the events that happen after it was made. A reader
/// that falls more than 1,024 events behind gets
/// [`ClientEvent::Lagged`] in place of those it missed. The stream ends
/// after [`ClientEvent::Closed`].
pub struct Events {
    inner: BroadcastStream<ClientEvent>,
    done: bool,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Events {
    pub(crate) fn new(rx: broadcast::Receiver<ClientEvent>) -> Events {
        Events {
            inner: BroadcastStream::new(rx),
            done: false,
        }
    }

    /// The next event; `None` after [`ClientEvent::Closed`]. Cancel-safe.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        futures::StreamExt::next(self).await
    }
}

impl Stream for Events {
    type Item = ClientEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(event))) => {
                if matches!(event, ClientEvent::Closed { .. }) {
                    self.done = true;
                }
                Poll::Ready(Some(event))
            }
            Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                Poll::Ready(Some(ClientEvent::Lagged { missed }))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
