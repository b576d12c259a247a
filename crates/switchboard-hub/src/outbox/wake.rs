//! How an outbox's tasks wait, without a runtime: the writer's wake-up
//! ([`Notified`]) and the kill signal its reader and writer both watch
//! ([`Cancel`]). Plain futures on atomics and wakers.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
/// and writer both stop). Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<CancelInner>);

#[derive(Debug, Default)]
struct CancelInner {
    done: AtomicBool,
    /// Waiting futures' wakers, by key.
    waiting: Mutex<Vec<(u64, Waker)>>,
    next_key: AtomicU64,
}

impl Cancel {
    /// Sets the flag and wakes every waiter; later calls do nothing.
    pub fn cancel(&self) {
        if self.0.done.swap(true, Ordering::AcqRel) {
            return;
        }
        let waiting = std::mem::take(&mut *self.0.waiting.lock());
        for (_, waker) in waiting {
            waker.wake();
        }
    }

    /// Whether the flag is set.
    pub fn is_cancelled(&self) -> bool {
        self.0.done.load(Ordering::Acquire)
    }

    /// Resolves once the flag is set.
    pub fn cancelled(&self) -> Cancelled<'_> {
        Cancelled {
            cancel: self,
            key: None,
        }
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
        let inner = &self.cancel.0;
        if inner.done.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let mut waiting = inner.waiting.lock();
        // `cancel` sets the flag before it takes the waiters: checked again
        // under the lock, a waiter is either seen here or woken there.
        if inner.done.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        match self.key {
            Some(key) => {
                if let Some((_, waker)) = waiting.iter_mut().find(|(k, _)| *k == key) {
                    if !waker.will_wake(cx.waker()) {
                        *waker = cx.waker().clone();
                    }
                }
            }
            None => {
                let key = inner.next_key.fetch_add(1, Ordering::Relaxed);
                // A connection's reader and writer: room for two, not the
                // four a first push would allocate.
                if waiting.capacity() == 0 {
                    waiting.reserve_exact(2);
                }
                waiting.push((key, cx.waker().clone()));
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
            self.cancel.0.waiting.lock().retain(|(k, _)| *k != key);
        }
    }
}
