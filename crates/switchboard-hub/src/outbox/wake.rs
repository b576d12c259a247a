//! How an outbox's tasks wait, without a runtime: the writer's wake-up
//! ([`Notified`]) and the kill signal its reader and writer both watch
//! ([`Cancel`]). Plain futures on atomics and wakers.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use futures::task::AtomicWaker;
use parking_lot::Mutex;

/// Wakes the one task that writes an outbox's frames: a flag that stays
/// set until [`Notified`] sees it, so a wake-up before the writer waits is
/// not lost.
#[derive(Debug, Default)]
pub(super) struct Wakeup {
    waker: AtomicWaker,
    woken: AtomicBool,
}

impl Wakeup {
    /// Wakes the writer (or lets its next wait end at once).
    pub(super) fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// What [`Outbox::notified`](super::Outbox::notified) returns: resolves once the outbox was woken
/// since it last resolved.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Notified<'a> {
    pub(super) wakeup: &'a Wakeup,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let wakeup = self.wakeup;
        if wakeup.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        wakeup.waker.register(cx.waker());
        // Woken between the check and the registration: not lost.
        if wakeup.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Set once, when an outbox is killed or its transport gives up: every
/// task waiting in [`Cancel::cancelled`] wakes (the connection's reader
/// and writer both stop).
///
/// Held inline in its [`Outbox`](super::Outbox) (one allocation per
/// connection, not two), and its first waiter (an idle connection's
/// reader, the only one) inline too: an idle connection allocates nothing
/// for it. Further waiters (a running writer) go to a list that
/// the outbox gives back once it is empty, when its writer goes idle
/// ([`Outbox::release_idle`](super::Outbox::release_idle)).
#[derive(Debug, Default)]
pub struct Cancel {
    done: AtomicBool,
    waiting: Mutex<Waiters>,
}

/// The wakers of the futures waiting on a [`Cancel`], by key.
#[derive(Debug, Default)]
struct Waiters {
    /// The key the next waiter gets.
    next_key: u64,
    /// One waiter, inline.
    first: Option<(u64, Waker)>,
    /// The others.
    more: Vec<(u64, Waker)>,
}

impl Waiters {
    /// The waker registered under `key`, if any.
    fn get_mut(&mut self, key: u64) -> Option<&mut Waker> {
        match &mut self.first {
            Some((k, waker)) if *k == key => Some(waker),
            _ => self
                .more
                .iter_mut()
                .find(|(k, _)| *k == key)
                .map(|(_, waker)| waker),
        }
    }

    /// Registers `waker`; returns its key.
    fn add(&mut self, waker: Waker) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        if self.first.is_none() {
            self.first = Some((key, waker));
        } else {
            // The usual second waiter is the one writer: room for one, not
            // the four a first push would allocate.
            if self.more.capacity() == 0 {
                self.more.reserve_exact(1);
            }
            self.more.push((key, waker));
        }
        key
    }

    /// Forgets the waker registered under `key`. A waiter left in the list
    /// moves to the inline slot when it frees, so that the list empties
    /// (and [`Cancel::release_idle`] can give it back) once only one
    /// waiter is left, whichever registered first.
    fn remove(&mut self, key: u64) {
        match &self.first {
            Some((k, _)) if *k == key => self.first = self.more.pop(),
            _ => self.more.retain(|(k, _)| *k != key),
        }
    }
}

impl Cancel {
    /// Sets the flag and wakes every waiter; later calls do nothing.
    pub fn cancel(&self) {
        if self.done.swap(true, Ordering::AcqRel) {
            return;
        }
        let waiting = std::mem::take(&mut *self.waiting.lock());
        for (_, waker) in waiting.first.into_iter().chain(waiting.more) {
            waker.wake();
        }
    }

    /// Whether the flag is set.
    pub fn is_cancelled(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Resolves once the flag is set.
    pub fn cancelled(&self) -> Cancelled<'_> {
        Cancelled {
            cancel: self,
            key: None,
        }
    }

    /// Gives back the list of further waiters if none waits in it (called
    /// when the connection's writer goes idle; a busy writer keeps it for
    /// its next batch).
    pub(super) fn release_idle(&self) {
        let mut waiting = self.waiting.lock();
        if waiting.more.is_empty() && waiting.more.capacity() > 0 {
            waiting.more = Vec::new();
        }
    }

    /// Capacity of the list of further waiters (for tests).
    #[cfg(test)]
    pub(crate) fn spilled_capacity(&self) -> usize {
        self.waiting.lock().more.capacity()
    }
}

/// What [`Cancel::cancelled`] returns.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Cancelled<'a> {
    cancel: &'a Cancel,
    /// Its entry among the waiters, once polled.
    key: Option<u64>,
}

impl Future for Cancelled<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let cancel = self.cancel;
        if cancel.done.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let mut waiting = cancel.waiting.lock();
        // `cancel` sets the flag before it takes the waiters: checked again
        // under the lock, a waiter is either seen here or woken there.
        if cancel.done.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        match self.key {
            Some(key) => {
                if let Some(waker) = waiting.get_mut(key) {
                    if !waker.will_wake(cx.waker()) {
                        *waker = cx.waker().clone();
                    }
                }
            }
            None => {
                let key = waiting.add(cx.waker().clone());
                drop(waiting);
                self.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl Drop for Cancelled<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.cancel.waiting.lock().remove(key);
        }
    }
}
