//! Bounded queues between the connection's reader and the application's
//! streams, with the overflow policy of each stream.
//!
//! The reader is the only producer of a queue; one stream handle consumes
//! it. With [`Overflow::Block`] (the default) a full queue makes the reader
//! wait, so nothing the hub numbered is acknowledged before the
//! application's stream has taken it; the drop policies never wait and
//! count what they drop.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// What a stream does when its application does not keep up and the
/// stream's buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Overflow {
    /// Push back (the default): the connection stops reading until the
    /// application takes an item. Nothing is lost, but everything behind
    /// the full stream on the same connection waits too (replies, other
    /// subscriptions), and the hub's own queue for this client fills; past
    /// its limits the hub applies its slow-consumer policy and says so
    /// ([`ClientEvent::HubDropped`](crate::ClientEvent::HubDropped)).
    #[default]
    Block,
    /// Drop the item that does not fit; each drop is counted on the
    /// subscription and announced as
    /// [`ClientEvent::SlowConsumer`](crate::ClientEvent::SlowConsumer).
    DropNewest,
    /// Drop the oldest item to make room for the new one; counted and
    /// announced like [`DropNewest`](Overflow::DropNewest).
    DropOldest,
}

/// What became of a pushed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued.
    Taken,
    /// Queued after dropping the oldest item, or not queued (newest
    /// dropped): one item was lost and counted.
    Dropped,
    /// The consumer is gone; the item was discarded.
    Closed,
}

struct State<T> {
    items: VecDeque<T>,
    capacity: usize,
    overflow: Overflow,
    /// The consumer is gone.
    rx_closed: bool,
    /// No more items will come (the stream ends once empty).
    tx_closed: bool,
    /// The consumer waiting for an item.
    waker: Option<Waker>,
    /// Items dropped in all.
    dropped: u64,
    /// Items dropped and not yet announced.
    unannounced: u64,
}

/// A bounded single-consumer queue with an overflow policy.
pub(crate) struct Queue<T> {
    state: Mutex<State<T>>,
    /// Woken when an item is taken or the consumer leaves.
    room: Notify,
}

impl<T> Queue<T> {
    pub fn new(capacity: usize, overflow: Overflow) -> Queue<T> {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                capacity: capacity.max(1),
                overflow,
                rx_closed: false,
                tx_closed: false,
                waker: None,
                dropped: 0,
                unannounced: 0,
            }),
            room: Notify::new(),
        }
    }

    fn put(state: &mut State<T>, item: T) {
        state.items.push_back(item);
        if let Some(w) = state.waker.take() {
            w.wake();
        }
    }

    /// Queues `item` without waiting: a full queue applies its drop policy,
    /// or, with [`Overflow::Block`], drops the item (counted) — for callers
    /// that must not wait.
    pub fn try_push(&self, item: T) -> Pushed {
        match self.offer(item) {
            Ok(pushed) => pushed,
            Err(item) => {
                drop(item);
                let mut s = self.state.lock();
                s.dropped += 1;
                s.unannounced += 1;
                Pushed::Dropped
            }
        }
    }

    /// Queues `item` if there is room, or drops by the policy; gives the
    /// item back only when the policy is [`Overflow::Block`] and the queue
    /// is full (the caller then waits with [`push`](Self::push)).
    pub fn offer(&self, item: T) -> Result<Pushed, T> {
        self.offer_with(item, |_| {})
    }

    /// [`offer`](Self::offer), calling `on_put` on the item (under the
    /// queue's lock) only when it is really queued.
    pub fn offer_with(&self, mut item: T, on_put: fn(&mut T)) -> Result<Pushed, T> {
        let mut s = self.state.lock();
        // A closed producer side means the stream ended (replaced, drained,
        // closed): its consumer will not look again.
        if s.rx_closed || s.tx_closed {
            return Ok(Pushed::Closed);
        }
        if s.items.len() < s.capacity {
            on_put(&mut item);
            Self::put(&mut s, item);
            return Ok(Pushed::Taken);
        }
        if s.overflow == Overflow::Block {
            return Err(item);
        }
        s.dropped += 1;
        s.unannounced += 1;
        if s.overflow == Overflow::DropOldest {
            s.items.pop_front();
            on_put(&mut item);
            Self::put(&mut s, item);
        }
        Ok(Pushed::Dropped)
    }

    /// Queues `item`; with [`Overflow::Block`] waits for room (cancel-safe:
    /// a cancelled push queued nothing).
    #[cfg(test)]
    pub async fn push(&self, item: T) -> Pushed {
        self.push_with(item, |_| {}).await
    }

    /// [`push`](Self::push), calling `on_put` on the item (under the
    /// queue's lock) only when it is really queued: a push cancelled while
    /// it waits drops the item as it was given.
    pub async fn push_with(&self, item: T, on_put: fn(&mut T)) -> Pushed {
        let mut item = match self.offer_with(item, on_put) {
            Ok(pushed) => return pushed,
            Err(item) => Some(item),
        };
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.state.lock();
                if s.rx_closed || s.tx_closed {
                    return Pushed::Closed;
                }
                if s.items.len() < s.capacity {
                    if let Some(mut item) = item.take() {
                        on_put(&mut item);
                        Self::put(&mut s, item);
                    }
                    return Pushed::Taken;
                }
            }
            notified.await;
        }
    }

    /// The next item; `None` once the producer closed and the queue is
    /// empty.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut s = self.state.lock();
        if let Some(item) = s.items.pop_front() {
            let was_full = s.items.len() + 1 >= s.capacity;
            drop(s);
            if was_full {
                self.room.notify_waiters();
            }
            return Poll::Ready(Some(item));
        }
        if s.tx_closed {
            return Poll::Ready(None);
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// No more items will be pushed; the consumer sees the end once it has
    /// taken what is queued.
    pub fn close_tx(&self) {
        let mut s = self.state.lock();
        s.tx_closed = true;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    /// The consumer is gone: queued items are discarded, pushes fail.
    pub fn close_rx(&self) {
        let items = {
            let mut s = self.state.lock();
            s.rx_closed = true;
            std::mem::take(&mut s.items)
        };
        drop(items);
        self.room.notify_waiters();
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.state.lock().items.len()
    }

    /// Items dropped by the overflow policy so far.
    pub fn dropped(&self) -> u64 {
        self.state.lock().dropped
    }

    /// Drops not announced yet; resets the count.
    pub fn take_unannounced(&self) -> u64 {
        std::mem::take(&mut self.state.lock().unannounced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::noop_waker_ref;
    use std::sync::Arc;
    use std::time::Duration;

    fn recv<T>(q: &Queue<T>) -> Poll<Option<T>> {
        q.poll_recv(&mut Context::from_waker(noop_waker_ref()))
    }

    #[test]
    fn drop_newest_keeps_the_first_items() {
        let q = Queue::new(2, Overflow::DropNewest);
        assert_eq!(q.try_push(1), Pushed::Taken);
        assert_eq!(q.try_push(2), Pushed::Taken);
        assert_eq!(q.try_push(3), Pushed::Dropped);
        assert_eq!(
            (q.dropped(), q.take_unannounced(), q.take_unannounced()),
            (1, 1, 0)
        );
        assert_eq!(recv(&q), Poll::Ready(Some(1)));
        assert_eq!(recv(&q), Poll::Ready(Some(2)));
        assert_eq!(recv(&q), Poll::Pending);
    }

    #[test]
    fn drop_oldest_keeps_the_last_items() {
        let q = Queue::new(2, Overflow::DropOldest);
        for i in 1..=5 {
            q.try_push(i);
        }
        assert_eq!(q.dropped(), 3);
        assert_eq!(recv(&q), Poll::Ready(Some(4)));
        assert_eq!(recv(&q), Poll::Ready(Some(5)));
    }

    #[test]
    fn the_end_comes_after_the_queued_items() {
        let q = Queue::new(4, Overflow::Block);
        q.try_push(1);
        q.close_tx();
        assert_eq!(recv(&q), Poll::Ready(Some(1)));
        assert_eq!(recv(&q), Poll::Ready(None));
        // Nothing is taken after the end: its consumer will not look again.
        assert_eq!(q.try_push(2), Pushed::Closed);
        let q = Queue::new(4, Overflow::Block);
        q.try_push(1);
        q.close_rx();
        assert_eq!(q.try_push(2), Pushed::Closed);
        assert_eq!(q.len(), 0);
    }

    #[tokio::test]
    async fn block_waits_for_room_and_loses_nothing() {
        let q = Arc::new(Queue::new(3, Overflow::Block));
        let producer = {
            let q = q.clone();
            tokio::spawn(async move {
                for i in 0..1000u32 {
                    assert_eq!(q.push(i).await, Pushed::Taken);
                }
                q.close_tx();
            })
        };
        let mut got = Vec::new();
        while let Some(i) = futures::future::poll_fn(|cx| q.poll_recv(cx)).await {
            assert!(q.len() <= 3);
            got.push(i);
        }
        producer.await.unwrap();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        assert_eq!(q.dropped(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_push_queues_nothing_and_a_gone_consumer_frees_the_producer() {
        let q = Arc::new(Queue::new(1, Overflow::Block));
        q.try_push(1);
        assert!(tokio::time::timeout(Duration::from_millis(20), q.push(2))
            .await
            .is_err());
        assert_eq!(q.len(), 1);
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.push(3).await })
        };
        tokio::task::yield_now().await;
        q.close_rx();
        assert_eq!(waiting.await.unwrap(), Pushed::Closed);
    }
}
