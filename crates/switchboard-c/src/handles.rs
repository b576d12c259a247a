//! Opaque handles: ids in a registry, never pointers the library follows.
//!
//! A handle given to C is a non-zero id cast to a pointer. Ids are never
//! reused, so a closed handle (or a made-up one) finds nothing and the call
//! answers `SB_ERR_CLOSED` instead of touching freed memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use facade::{Client, ServeHandle};

/// A connected client (opaque). Made by `sb_connect`, ended by `sb_close`.
/// The handle may be used from any thread, also concurrently.
pub struct sb_client {
    _opaque: [u8; 0],
}

/// A subscription or key-value watch (opaque). Made by `sb_subscribe` or
/// `sb_kv_watch`, ended by `sb_unsubscribe` (or by `sb_close` of its
/// client).
pub struct sb_subscription {
    _opaque: [u8; 0],
}

/// What the registry holds for one client.
pub(crate) struct ClientEntry {
    pub(crate) client: Client,
    pub(crate) serving: Mutex<Option<ServeHandle>>,
    pub(crate) subscriptions: Mutex<Vec<usize>>,
}

/// What the registry holds for one subscription: how to stop its delivery
/// thread and wait for it.
pub(crate) struct SubEntry {
    pub(crate) stop: tokio::sync::watch::Sender<bool>,
    pub(crate) thread: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub(crate) callback_thread: Arc<Mutex<Option<std::thread::ThreadId>>>,
}

static NEXT: AtomicUsize = AtomicUsize::new(1);

pub(crate) struct Registry<T> {
    map: Mutex<Option<HashMap<usize, Arc<T>>>>,
}

impl<T> Registry<T> {
    pub(crate) const fn new() -> Self {
        Registry {
            map: Mutex::new(None),
        }
    }

    /// Stores `value` and returns its new id.
    pub(crate) fn insert(&self, value: T) -> usize {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get_or_insert_with(HashMap::new)
            .insert(id, Arc::new(value));
        id
    }

    pub(crate) fn get(&self, id: usize) -> Option<Arc<T>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.as_ref()?.get(&id).cloned()
    }

    pub(crate) fn remove(&self, id: usize) -> Option<Arc<T>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.as_mut()?.remove(&id)
    }
}

pub(crate) static CLIENTS: Registry<ClientEntry> = Registry::new();
pub(crate) static SUBSCRIPTIONS: Registry<SubEntry> = Registry::new();
