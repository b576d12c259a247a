//! The shared key/value store.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use switchboard_wire::{proto, Frame, Kind};

use super::queue::{Overflow, Queue};
use super::registry::WatchEntry;
use super::shared::{unexpected, Shared};
use super::types::{KvEntry, KvEvent};
use crate::ClientError;

/// The hub's key/value store, from [`Client::kv`](crate::Client::kv).
///
/// Every key has a version: 1 on creation, one more on each change, never
/// reused. Watches deliver the current value first, then every change in
/// order.
#[derive(Clone)]
pub struct Kv {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv").finish_non_exhaustive()
    }
}

impl Kv {
    pub(crate) fn new(shared: Arc<Shared>) -> Kv {
        Kv { shared }
    }

    async fn value(&self, make: impl FnOnce(u64) -> Frame) -> Result<proto::KvValue, ClientError> {
        match self
            .shared
            .command(self.shared.cfg.request_timeout, make)
            .await?
            .kind
        {
            Some(Kind::KvValue(v)) => Ok(v),
            other => Err(unexpected("kv value", other)),
        }
    }

    /// Reads `key`; `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<KvEntry>, ClientError> {
        let v = self
            .value(|id| {
                proto::KvGet {
                    id,
                    key: key.to_string(),
                }
                .into()
            })
            .await;
        match v {
            Ok(v) if v.found => Ok(Some(KvEntry {
                key: v.key,
                value: v.value,
                version: v.version,
            })),
            Ok(_) | Err(ClientError::Missing(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets `key` to `value` unconditionally; returns the new version.
    pub async fn set(&self, key: &str, value: impl Into<Bytes>) -> Result<u64, ClientError> {
        self.set_inner(key, value.into(), None).await
    }

    /// Sets `key` only if its version is `expect_version` (0: only if the
    /// key does not exist); returns the new version, or
    /// [`ClientError::VersionMismatch`].
    pub async fn cas(
        &self,
        key: &str,
        expect_version: u64,
        value: impl Into<Bytes>,
    ) -> Result<u64, ClientError> {
        self.set_inner(key, value.into(), Some(expect_version))
            .await
    }

    async fn set_inner(
        &self,
        key: &str,
        value: Bytes,
        expect_version: Option<u64>,
    ) -> Result<u64, ClientError> {
        let v = self
            .value(|id| {
                proto::KvSet {
                    id,
                    key: key.to_string(),
                    value,
                    expect_version,
                }
                .into()
            })
            .await?;
        Ok(v.version)
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, ClientError> {
        let result = self
            .value(|id| {
                proto::KvDelete {
                    id,
                    key: key.to_string(),
                    expect_version: None,
                }
                .into()
            })
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(ClientError::Missing(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Watches `key`: the stream yields its current value (when it exists),
    /// then every change in order. Dropping the stream stops the watch; it is
    /// restored (starting again with the current value) after a reconnect.
    pub async fn watch(&self, key: &str) -> Result<KvWatch, ClientError> {
        KvWatch::start(self.shared.clone(), key, false).await
    }

    /// Watches every key starting with `prefix`.
    pub async fn watch_prefix(&self, prefix: &str) -> Result<KvWatch, ClientError> {
        KvWatch::start(self.shared.clone(), prefix, true).await
    }
}

/// Changes to a watched key or prefix; a [`Stream`] of [`KvEvent`].
/// [`recv`](KvWatch::recv) is cancel-safe.
pub struct KvWatch {
    shared: Arc<Shared>,
    watch_id: u64,
    queue: Arc<Queue<KvEvent>>,
    /// Registered: dropping unwatches.
    active: bool,
}

impl std::fmt::Debug for KvWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvWatch")
            .field("watch_id", &self.watch_id)
            .finish()
    }
}

impl KvWatch {
    async fn start(shared: Arc<Shared>, key: &str, prefix: bool) -> Result<KvWatch, ClientError> {
        let watch_id = shared.next_id();
        let queue = Arc::new(Queue::new(shared.cfg.stream_capacity, Overflow::Block));
        shared.reg.lock().watches.insert(
            watch_id,
            WatchEntry {
                key: key.to_string(),
                prefix,
                queue: queue.clone(),
            },
        );
        // From here a dropped call unwatches (the handle's `Drop`).
        let mut watch = KvWatch {
            shared,
            watch_id,
            queue,
            active: true,
        };
        let r = watch
            .shared
            .command_ok(|id| {
                proto::KvWatch {
                    id,
                    watch_id,
                    key: key.to_string(),
                    prefix,
                }
                .into()
            })
            .await;
        match r {
            Ok(()) => Ok(watch),
            Err(e) => {
                if e.is_refusal() {
                    watch.active = false;
                    watch.shared.reg.lock().watches.remove(&watch_id);
                }
                Err(e)
            }
        }
    }

    /// Receives the next change; `None` once the client is closed or
    /// draining. Cancel-safe.
    pub async fn recv(&mut self) -> Option<KvEvent> {
        futures::future::poll_fn(|cx| self.queue.poll_recv(cx)).await
    }
}

impl Stream for KvWatch {
    type Item = KvEvent;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<KvEvent>> {
        self.queue.poll_recv(cx)
    }
}

impl Drop for KvWatch {
    fn drop(&mut self) {
        self.queue.close_rx();
        if self.active {
            self.shared.reg.lock().watches.remove(&self.watch_id);
            let id = self.shared.next_id();
            self.shared.post_detached(
                proto::KvUnwatch {
                    id,
                    watch_id: self.watch_id,
                }
                .into(),
            );
        }
    }
}
