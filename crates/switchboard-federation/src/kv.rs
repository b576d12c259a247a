//! The shared key/value store: every hub's `KvSet`, `KvGet` and
//! `KvDelete` go to one JetStream KV bucket, `sb_<service>_kv`, and every
//! hub's watchers see every change of it.
//!
//! - Key: the client's key escaped ([`subject::escape`](crate::subject::escape));
//!   value: an envelope, byte `1`, the length of `by` (the client that
//!   changed it) as two bytes big-endian, `by`, then the client's value.
//!   A delete is JetStream KV's delete marker (`KV-Operation: DEL`) whose
//!   payload is the envelope with an empty value.
//! - Version = the JetStream revision (the stream sequence of the key's
//!   last message): it grows with every change of the key and never
//!   repeats, but by more than one (the sequence counts all keys).
//! - The router hands the commands over ([`Remote::kv`](switchboard_hub::router::remote::Remote::kv)); they queue (at
//!   most [`COMMAND_QUEUE`]; beyond, a command is dropped and counted, and
//!   its client gets `TIMEOUT` from the router) and run one at a time in
//!   this module's task, in the order the router handed them over.
//! - A read (`KvGet`, and the read before every write) asks the stream
//!   leader for the key's last message (`STREAM.MSG.GET`, never a direct
//!   get, which a replica may answer): it sees every write acknowledged
//!   before it — linearizable.
//! - An unconditional `KvSet` is a plain publish. A `KvDelete` expects
//!   the key's last revision as read (`Nats-Expected-Last-Subject-Sequence`).
//!   A compare-and-set (`expect_version`) expects that and the bucket's
//!   last revision (`Nats-Expected-Last-Sequence`, see `write`). A write
//!   that loses a race reads again and tries again (up to [`WRITE_TRIES`]
//!   times); a key that no longer meets `expect_version` fails with
//!   `VERSION_MISMATCH`, as locally (`expect_version: 0` = the key must
//!   not exist, a delete marker counts as absent; another version = the
//!   key must exist at it).
//! - Watches: each hub watches the whole bucket once (from the start;
//!   after a break from the revision after the last seen) and sends every
//!   change into the router through the port as a `KvUpdate`; the router
//!   keeps them in its own store, a cache that gives new watches their
//!   initial values (eventual: it trails the bucket by the watch delay),
//!   and tells its watchers in revision order.
//! - Limits: the router checks key and value against the hub's limits
//!   before handing a `KvSet` over; the number of live keys
//!   ([`FederationOptions::kv_max_keys`](crate::FederationOptions::kv_max_keys)) is checked against the keys
//!   this hub's watch saw live (so hubs racing to create the last keys
//!   may pass it by a few), and a new key is refused with
//!   `LIMIT_EXCEEDED`, as locally. Memory stays bounded by it whatever
//!   others write (a hub with a larger limit, a raw NATS client): this
//!   hub remembers at most that many live keys, and the router's cache
//!   keeps at most the hub's `kv_max_keys`; a change of a key beyond
//!   them reaches the watchers but is not kept ([`KvStats::uncached`],
//!   a warning at most once a second). A value whose envelope is over the cluster's
//!   `max_payload` is refused with `LIMIT_EXCEEDED`. Entries in the
//!   bucket that no hub wrote this way (a key that does not unescape or
//!   breaks the default key limits, an undecodable envelope, a value over
//!   the default value limit) are skipped and counted
//!   ([`KvStats::malformed`]): a watcher never sees them, a get reads such
//!   a key as absent.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{Operation, Store};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::HeaderMap;
use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt;
use parking_lot::Mutex;
use switchboard_hub::limits::Limits;
use switchboard_hub::port::PortSender;
use switchboard_hub::router::remote::Handoff;
use switchboard_wire::{proto, ErrorCode, Frame, Kind};
use tokio::sync::mpsc;

use crate::subject::{escape, unescape};
use crate::{FederationError, COMMAND_QUEUE};

/// Tries of an unconditional write that keeps losing races.
pub const WRITE_TRIES: usize = 5;

/// Values the bucket keeps per key: a watch that lags behind the writes
/// (they come faster than it reads) still sees every one of up to this
/// many changes of one key; beyond, the oldest are gone and it sees the
/// later ones (JetStream KV's largest history).
pub const HISTORY: i64 = 64;

/// The envelope's format byte.
const ENVELOPE: u8 = 1;

/// Counters of the shared store.
#[derive(Debug, Default)]
pub struct KvStats {
    /// Entries of the bucket skipped as not written by a hub (see the
    /// module docs).
    pub malformed: AtomicU64,
    /// Commands dropped because the queue towards NATS was full.
    pub dropped: AtomicU64,
    /// Changes of the bucket sent to the router.
    pub changes: AtomicU64,
    /// Changes that would have made a live key beyond
    /// [`FederationOptions::kv_max_keys`](crate::FederationOptions::kv_max_keys):
    /// passed to the router's watchers, not remembered (see the module docs).
    pub uncached: AtomicU64,
    /// Times the bucket's watch was found silent while the bucket moved
    /// on, and reopened.
    pub watch_stalled: AtomicU64,
}

impl KvStats {
    /// Entries of the bucket skipped as not written by a hub.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Changes of the bucket sent to the router.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Changes of keys beyond the key limit, not cached.
    pub fn uncached(&self) -> u64 {
        self.uncached.load(Ordering::Relaxed)
    }
}

/// A command from the router: the client and its frame.
type Command = (String, Frame);

/// A key's state in the bucket, as a read found it.
#[derive(Debug, Default)]
struct Current {
    /// The revision of the key's last message (0: none).
    version: u64,
    /// Whether the key is live (not deleted, not skipped).
    found: bool,
    value: Bytes,
}

/// Why a command failed: the code the local store gives, and a message.
type Failure = (ErrorCode, String);

/// See the module docs.
#[derive(Debug)]
pub struct SharedKv {
    store: Store,
    js: async_nats::jetstream::Context,
    /// `$KV.<bucket>.`
    prefix: String,
    commands: mpsc::Sender<Command>,
    queued: Mutex<Option<mpsc::Receiver<Command>>>,
    /// Keys live in the bucket, as this hub's watch saw them.
    live: Mutex<HashSet<String>>,
    max_keys: usize,
    max_payload: usize,
    limits: Limits,
    stats: KvStats,
    /// How often a silent watch asks the bucket whether it moved on.
    check: Duration,
    /// Warnings about dropped commands (rate-limited).
    full_log: crate::throttle::Throttle,
    /// Warnings about keys beyond the limit (rate-limited).
    over_log: crate::throttle::Throttle,
}

impl SharedKv {
    /// Opens (or creates) the bucket `sb_<service>_kv` with `replicas`.
    pub(crate) async fn open(
        client: async_nats::Client,
        service: &str,
        replicas: usize,
        max_keys: usize,
        check: Duration,
        deadline: Instant,
    ) -> Result<Arc<SharedKv>, FederationError> {
        let js = async_nats::jetstream::new(client.clone());
        let name = format!("sb_{}_kv", escape(service));
        let store =
            crate::directory::bucket_with_history(&js, name.clone(), replicas, HISTORY, deadline)
                .await?;
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        Ok(Arc::new(SharedKv {
            store,
            js,
            prefix: format!("$KV.{name}."),
            commands: tx,
            queued: Mutex::new(Some(rx)),
            live: Mutex::new(HashSet::new()),
            max_keys,
            check,
            max_payload: client.server_info().max_payload,
            limits: Limits::default(),
            stats: KvStats::default(),
            full_log: crate::throttle::Throttle::new(),
            over_log: crate::throttle::Throttle::new(),
        }))
    }

    /// The counters.
    pub fn stats(&self) -> &KvStats {
        &self.stats
    }

    /// Live keys this hub's watch remembers (at most
    /// [`FederationOptions::kv_max_keys`](crate::FederationOptions::kv_max_keys)).
    pub fn live_keys(&self) -> usize {
        self.live.lock().len()
    }

    /// Takes a command from the router (quick; on the router task).
    pub(crate) fn take(&self, from: &str, frame: &Frame) -> Handoff {
        if !matches!(
            frame.kind,
            Some(Kind::KvSet(_) | Kind::KvGet(_) | Kind::KvDelete(_))
        ) {
            return Handoff::Unknown;
        }
        if self
            .commands
            .try_send((from.to_owned(), frame.clone()))
            .is_err()
        {
            // The client learns it from the router's timeout.
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(n) = self.full_log.hit() {
                tracing::warn!(dropped = n, "federation: key/value queue towards NATS full; commands dropped (count since the last such line)");
            }
        }
        Handoff::Taken
    }

    /// Runs the commands and the bucket's watch, answering and reporting
    /// through `port`, until the hub stops.
    pub(crate) async fn run(self: Arc<Self>, port: PortSender) {
        let Some(mut rx) = self.queued.lock().take() else {
            return;
        };
        let commands = async {
            while let Some((from, frame)) = rx.recv().await {
                self.command(&from, frame, &port).await;
                if !port.is_open() {
                    return;
                }
            }
        };
        crate::join_branches(vec![commands.boxed(), self.watch(&port).boxed()]).await;
    }

    async fn command(&self, from: &str, frame: Frame, port: &PortSender) {
        let (id, done) = match frame.kind {
            Some(Kind::KvGet(g)) => (g.id, self.get(g).await),
            Some(Kind::KvSet(s)) => (s.id, self.set(from, s).await),
            Some(Kind::KvDelete(d)) => (d.id, self.delete(from, d).await),
            _ => return,
        };
        match done {
            Ok(value) => port.answer(from, id, value.into()).await,
            Err((code, message)) => port.fail(from, id, code, message).await,
        };
    }

    async fn get(&self, g: proto::KvGet) -> Result<proto::KvValue, Failure> {
        let cur = self.read(&g.key).await?;
        Ok(proto::KvValue {
            id: g.id,
            key: g.key,
            value: cur.value,
            version: cur.version,
            found: cur.found,
        })
    }

    async fn set(&self, by: &str, s: proto::KvSet) -> Result<proto::KvValue, Failure> {
        let payload = envelope(by, &s.value);
        if payload.len() > self.max_payload {
            return Err((
                ErrorCode::LimitExceeded,
                format!(
                    "value of {} bytes is over the NATS cluster's message limit of {} bytes; store something smaller",
                    s.value.len(),
                    self.max_payload
                ),
            ));
        }
        for _ in 0..WRITE_TRIES {
            // Only a compare-and-set needs the bucket-wide expectation.
            let last = match s.expect_version {
                Some(_) => Some(self.last().await?),
                None => None,
            };
            let cur = self.read(&s.key).await?;
            let ok = match s.expect_version {
                None => true,
                Some(0) => !cur.found,
                Some(v) => cur.found && cur.version == v,
            };
            if !ok {
                return Err(mismatch(&s.key, s.expect_version.unwrap_or(0), &cur));
            }
            if !cur.found && self.live.lock().len() >= self.max_keys {
                return Err((
                    ErrorCode::LimitExceeded,
                    format!(
                        "the shared store holds {} keys, its limit; delete some first",
                        self.max_keys
                    ),
                ));
            }
            let expect = s.expect_version.map(|_| cur.version);
            match self
                .write(&s.key, last, expect, payload.clone(), false)
                .await?
            {
                Some(version) => {
                    return Ok(proto::KvValue {
                        id: s.id,
                        key: s.key,
                        value: Bytes::new(),
                        version,
                        found: true,
                    })
                }
                // The bucket or the key moved on since the read: read
                // again (a changed key is a mismatch), after a short pause.
                None => pause().await,
            }
        }
        Err(busy(&s.key))
    }

    async fn delete(&self, by: &str, d: proto::KvDelete) -> Result<proto::KvValue, Failure> {
        for _ in 0..WRITE_TRIES {
            let last = match d.expect_version {
                Some(_) => Some(self.last().await?),
                None => None,
            };
            let cur = self.read(&d.key).await?;
            if !cur.found {
                return Err((
                    ErrorCode::NotFound,
                    format!("key '{}' does not exist; nothing was deleted", d.key),
                ));
            }
            if let Some(v) = d.expect_version.filter(|v| *v != cur.version) {
                return Err(mismatch(&d.key, v, &cur));
            }
            match self
                .write(&d.key, last, Some(cur.version), envelope(by, &[]), true)
                .await?
            {
                Some(version) => {
                    return Ok(proto::KvValue {
                        id: d.id,
                        key: d.key,
                        value: Bytes::new(),
                        version,
                        found: false,
                    })
                }
                None => pause().await,
            }
        }
        Err(busy(&d.key))
    }

    /// The bucket's last revision (any key), from the stream leader.
    async fn last(&self) -> Result<u64, Failure> {
        match self.store.stream.get_info().await {
            Ok(info) => Ok(info.state.last_sequence),
            Err(e) => Err(unavailable(&e)),
        }
    }

    /// The key's last message, from the stream leader.
    async fn read(&self, key: &str) -> Result<Current, Failure> {
        let subject = format!("{}{}", self.prefix, escape(key));
        let msg = match self
            .store
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(msg) => msg,
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => {
                return Ok(Current::default())
            }
            Err(e) => return Err(unavailable(&e)),
        };
        let deleted = msg
            .headers
            .get("KV-Operation")
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        if deleted {
            return Ok(Current {
                version: msg.sequence,
                ..Current::default()
            });
        }
        match open_envelope(&msg.payload).filter(|(_, v)| v.len() <= self.limits.kv_max_value) {
            Some((_, value)) => Ok(Current {
                version: msg.sequence,
                found: true,
                value,
            }),
            None => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                Ok(Current {
                    version: msg.sequence,
                    ..Current::default()
                })
            }
        }
    }

    /// Publishes `payload` as `key`'s next message if the bucket's last
    /// revision is still `last` and the key's still `expect` (each when
    /// given): the new revision, or `None` when either moved on.
    ///
    /// The bucket-wide expectation is what makes compare-and-set safe on
    /// a replicated bucket of nats-server 2.9: its leader checks the
    /// per-key expectation (`Nats-Expected-Last-Subject-Sequence`) only
    /// against the writes already applied, so two writes in flight that
    /// expect the same revision both pass; the bucket-wide one
    /// (`Nats-Expected-Last-Sequence`) counts the writes in flight too.
    async fn write(
        &self,
        key: &str,
        last: Option<u64>,
        expect: Option<u64>,
        payload: Bytes,
        delete: bool,
    ) -> Result<Option<u64>, Failure> {
        let subject = format!("{}{}", self.prefix, escape(key));
        let mut headers = HeaderMap::new();
        if let Some(last) = last {
            headers.insert("Nats-Expected-Last-Sequence", last.to_string().as_str());
        }
        if let Some(expect) = expect {
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                expect.to_string().as_str(),
            );
        }
        if delete {
            headers.insert("KV-Operation", "DEL");
        }
        let ack = match self
            .js
            .publish_with_headers(subject, headers, payload)
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if matches!(e.kind(), PublishErrorKind::WrongLastSequence) => Ok(None),
            Err(e) => Err(unavailable(&e)),
        }
    }

    /// Follows the whole bucket for good (see [`crate::watch::follow`])
    /// and sends each change into the router.
    async fn watch(&self, port: &PortSender) {
        let stalled = &self.stats.watch_stalled;
        crate::watch::follow(
            &self.store,
            "kv",
            self.check,
            stalled,
            || port.is_open(),
            |entry| async move {
                let Some(update) = self.change(&entry) else {
                    return true;
                };
                self.stats.changes.fetch_add(1, Ordering::Relaxed);
                port.send(vec![update.into()]).await
            },
        )
        .await;
    }

    /// The change an entry of the bucket stands for; `None` (counted) for
    /// one no hub wrote.
    fn change(&self, entry: &async_nats::jetstream::kv::Entry) -> Option<proto::KvUpdate> {
        let decoded = self.decode(entry);
        let Some((key, deleted, by, value)) = decoded else {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        {
            let mut live = self.live.lock();
            if deleted {
                live.remove(&key);
            } else if live.len() < self.max_keys || live.contains(&key) {
                live.insert(key.clone());
            } else {
                // Beyond the limit (a hub with a larger one, or another
                // writer): not remembered, so the set stays bounded; new
                // keys are refused while it is full.
                drop(live);
                self.stats.uncached.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = self.over_log.hit() {
                    tracing::warn!(
                        uncached = n,
                        max_keys = self.max_keys,
                        "federation: the shared key/value store holds more live keys than this hub's kv_max_keys; changes of keys beyond it are passed to watchers but not cached (count since the last such line)"
                    );
                }
            }
        }
        Some(proto::KvUpdate {
            watch_id: 0,
            key,
            value,
            version: entry.revision,
            deleted,
            by,
        })
    }

    fn decode(
        &self,
        entry: &async_nats::jetstream::kv::Entry,
    ) -> Option<(String, bool, String, Bytes)> {
        let key = unescape(&entry.key)?;
        if key.is_empty() || key.len() > self.limits.kv_max_key || key.chars().any(char::is_control)
        {
            return None;
        }
        let deleted = !matches!(entry.operation, Operation::Put);
        let (by, value) = match open_envelope(&entry.value) {
            Some(opened) => opened,
            // A delete marker made by another tool: no envelope.
            None if deleted && entry.value.is_empty() => (String::new(), Bytes::new()),
            None => return None,
        };
        if value.len() > self.limits.kv_max_value || (deleted && !value.is_empty()) {
            return None;
        }
        Some((key, deleted, by, value))
    }
}

/// A short random pause before a write that lost a race is tried again.
async fn pause() {
    let ms = 1 + rand::random::<u64>() % 20;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// The stored form of `value` changed by `by` (see the module docs).
fn envelope(by: &str, value: &[u8]) -> Bytes {
    let by = &by.as_bytes()[..by.len().min(usize::from(u16::MAX))];
    let mut out = BytesMut::with_capacity(3 + by.len() + value.len());
    out.put_u8(ENVELOPE);
    out.put_u16(u16::try_from(by.len()).unwrap_or(u16::MAX));
    out.put_slice(by);
    out.put_slice(value);
    out.freeze()
}

/// `by` and the value of a stored envelope; `None` when it is not one.
fn open_envelope(stored: &Bytes) -> Option<(String, Bytes)> {
    let (&format, rest) = stored.split_first()?;
    if format != ENVELOPE || rest.len() < 2 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
    let by = rest.get(2..2 + len)?;
    let by = std::str::from_utf8(by).ok()?.to_owned();
    Some((by, stored.slice(3 + len..)))
}

/// `VERSION_MISMATCH`, worded as the local store words it.
fn mismatch(key: &str, expect: u64, cur: &Current) -> Failure {
    let msg = match (cur.found, expect) {
        (true, 0) => format!(
            "key '{key}' already exists at version {}; read it and retry",
            cur.version
        ),
        (true, _) => format!(
            "key '{key}' is at version {}, not {expect}; read it and retry",
            cur.version
        ),
        (false, _) => {
            format!("key '{key}' does not exist (expected version {expect}); read it and retry")
        }
    };
    (ErrorCode::VersionMismatch, msg)
}

/// The cluster did not answer (a node lost, a leader being elected):
/// `TIMEOUT`, as when no answer comes at all.
fn unavailable(e: &dyn std::fmt::Display) -> Failure {
    (
        ErrorCode::Timeout,
        format!("the federation's key/value bucket did not answer ({e}); retry"),
    )
}

/// Unconditional writes kept losing races.
fn busy(key: &str) -> Failure {
    (
        ErrorCode::Timeout,
        format!("key '{key}' changed under every one of {WRITE_TRIES} tries; retry"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_reject_others() {
        let e = envelope("client-a", b"value");
        assert_eq!(
            open_envelope(&e),
            Some(("client-a".into(), Bytes::from_static(b"value")))
        );
        assert_eq!(
            open_envelope(&envelope("", b"")),
            Some((String::new(), Bytes::new()))
        );
        for bad in [
            &b""[..],
            b"\x02\x00\x00",
            b"\x01\x00",
            b"\x01\x00\x05ab",
            b"\x01\x00\x02\xff\xfe",
        ] {
            assert_eq!(open_envelope(&Bytes::copy_from_slice(bad)), None, "{bad:?}");
        }
    }
}
