//! The router's replicable state as one `proto::Snapshot`, and a router
//! rebuilt from one (what a standby starts from; see
//! [`replica`](super::replica)).

use std::sync::Arc;
use std::time::Instant;

use switchboard_wire::proto;

use super::common::shown;
use super::error::ReplicaError;
use super::kvstore::KvStore;
use super::registry::Listening;
use super::reliable::Reliable;
use super::{Router, RouterConfig};
use crate::ids::ConnId;
use crate::outbox::Outbox;
use crate::stats::HubStats;

/// Connection ids of ghost clients (restored from a snapshot or joined
/// through the change log) start here; hubs number sockets from 1.
pub const GHOST_CONN_BASE: u64 = 1 << 63;

/// Snapshot `config` key holding the key/value version floor.
const KV_FLOOR_KEY: &str = "kv_version_floor";

/// An outbox that discards everything pushed to it: a ghost never fills,
/// so it never parks, drops or gets disconnected for being slow.
pub(super) fn ghost_outbox(conn: ConnId) -> Arc<Outbox> {
    let outbox = Outbox::new(conn);
    outbox.kill(None);
    outbox
}

/// Refuses a replicated client id a hub would not have registered.
pub(super) fn validate_client_id(id: &str) -> Result<(), ReplicaError> {
    switchboard_wire::validate_client_id(id)
        .map_err(|why| ReplicaError::Invalid(format!("client id '{}': {why}", shown(id))))
}

/// The snapshot's clients in client id order (as [`Router::snapshot`]
/// lists them).
fn sorted_clients(snapshot: &proto::Snapshot) -> Vec<proto::ClientState> {
    let mut clients = snapshot.clients.clone();
    clients.sort_by(|a, b| {
        let id = |c: &proto::ClientState| c.info.as_ref().map(|i| i.client_id.clone());
        id(a).cmp(&id(b))
    });
    clients
}

impl Router {
    /// The replicable state: registry, subscriptions (service ones too),
    /// watches, listen flags and the key/value store (deletion markers
    /// included).
    pub fn snapshot(&self) -> proto::Snapshot {
        let mut clients: Vec<proto::ClientState> = self
            .registry
            .iter()
            .map(|(conn, c)| {
                let link = self.output.get(*conn);
                let reliable = link.map(|l| &l.reliable);
                let subscriptions = self.pubsub.subscriptions_of(*conn);
                let watches = self.kv.watches_of(*conn);
                proto::ClientState {
                    info: Some(c.info.to_proto()),
                    subscriptions,
                    watches,
                    presence_watch: self.presence.is_watching(*conn),
                    last_received: reliable.map_or(0, Reliable::last_received),
                    next_send: reliable.map_or(0, Reliable::next_send),
                    unacked: reliable
                        .map(|r| r.unacked().map(|o| o.clone().into_frame()).collect())
                        .unwrap_or_default(),
                    listen: c.listen.map(|l| proto::Listen {
                        id: 0,
                        messages: l.messages,
                        requests: l.requests,
                    }),
                }
            })
            .collect();
        clients.sort_by(|a, b| {
            let id = |c: &proto::ClientState| c.info.as_ref().map(|i| i.client_id.clone());
            id(a).cmp(&id(b))
        });
        let l = &self.limits;
        let config = [
            ("max_frame", l.max_frame as u64),
            ("queue_frames", l.queue_frames as u64),
            ("queue_bytes", l.queue_bytes as u64),
            ("queue_hard_bytes", l.queue_hard_bytes as u64),
            (
                "default_request_timeout_ms",
                l.default_request_timeout.as_millis() as u64,
            ),
            ("max_subscriptions", l.max_subscriptions as u64),
            ("max_watches", l.max_watches as u64),
            ("max_pending_requests", l.max_pending_requests as u64),
            ("max_clients", l.max_clients as u64),
            ("max_subject", l.max_subject as u64),
            ("kv_max_value", l.kv_max_value as u64),
            ("kv_max_key", l.kv_max_key as u64),
            ("kv_max_keys", l.kv_max_keys as u64),
            ("kv_max_tombstones", l.kv_max_tombstones as u64),
            (KV_FLOOR_KEY, self.kv.store().floor()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_string()))
        .collect();
        proto::Snapshot {
            epoch: self.identity.epoch,
            repl_seq: self.output.journal.repl_seq(),
            clients,
            kv: self.kv.store().entries(),
            config,
            addr: String::new(),
            service: self.identity.service.clone(),
        }
    }

    /// Refuses key/value entries this router's limits would never have
    /// let in.
    fn check_kv_entries(&self, entries: &[proto::KvEntry]) -> Result<(), ReplicaError> {
        let l = &self.limits;
        let markers = entries.iter().filter(|e| e.deleted).count();
        let live = entries.len() - markers;
        if live > l.kv_max_keys || markers > l.kv_max_tombstones {
            return Err(ReplicaError::Invalid(format!(
                "{live} keys and {markers} deletion markers exceed the limits of {} and {}",
                l.kv_max_keys, l.kv_max_tombstones
            )));
        }
        for e in entries {
            if e.key.is_empty() || e.key.len() > l.kv_max_key || e.value.len() > l.kv_max_value {
                return Err(ReplicaError::Invalid(format!(
                    "key/value entry '{}' is empty or over the key or value size limit",
                    shown(&e.key)
                )));
            }
        }
        Ok(())
    }

    /// Rebuilds a router from a [`Router::snapshot`] of another (or the
    /// same) router: registry, subscriptions (queue groups, services),
    /// watches, presence watchers, listen flags, the key/value store with
    /// versions, deletion markers and version floor, the epoch and the
    /// replication sequence number. The snapshot's clients become ghosts:
    /// registered, with no socket, and outboxes that discard what they are
    /// sent. A client that connects with a ghost's id takes it over as
    /// usual.
    ///
    /// `config` must carry the same limits as the snapshot's router
    /// ([`ReplicaError::ConfigMismatch`] otherwise). Reliable clients keep
    /// their sequence numbers and unacknowledged frames.
    pub fn restore(
        now: Instant,
        snapshot: &proto::Snapshot,
        config: RouterConfig,
        stats: Arc<HubStats>,
    ) -> Result<Router, ReplicaError> {
        let mut r = Router::new(config, stats);
        if snapshot.service != r.identity.service {
            return Err(ReplicaError::ServiceMismatch {
                ours: r.identity.service.clone(),
                theirs: snapshot.service.clone(),
            });
        }
        let ours = r.snapshot().config;
        for (key, theirs) in &snapshot.config {
            if key == KV_FLOOR_KEY {
                continue;
            }
            if let Some(ours) = ours.get(key) {
                if ours != theirs {
                    return Err(ReplicaError::ConfigMismatch {
                        key: key.clone(),
                        ours: ours.clone(),
                        theirs: theirs.clone(),
                    });
                }
            }
        }
        let floor = match snapshot.config.get(KV_FLOOR_KEY) {
            None => 0,
            Some(v) => v.parse::<u64>().map_err(|_| {
                ReplicaError::Invalid(format!("{KV_FLOOR_KEY} '{}' is not a number", shown(v)))
            })?,
        };
        r.check_kv_entries(&snapshot.kv)?;
        r.kv.set_store(KvStore::restore(&snapshot.kv, floor).map_err(ReplicaError::Invalid)?);
        r.identity.epoch = snapshot.epoch;
        // What the rebuilding sends is not numbered: the numbering comes
        // from the snapshot.
        r.output.set_replaying(true);
        for (i, cs) in snapshot.clients.iter().enumerate() {
            let info = cs.info.clone().ok_or_else(|| {
                ReplicaError::Invalid("a client state without client info".into())
            })?;
            validate_client_id(&info.client_id)?;
            if r.registry.lookup(&info.client_id).is_some() {
                return Err(ReplicaError::Invalid(format!(
                    "client '{}' appears twice",
                    shown(&info.client_id)
                )));
            }
            let conn = ConnId(GHOST_CONN_BASE + i as u64);
            let id = info.client_id.clone();
            r.on_connect(now, conn, info, ghost_outbox(conn));
            if r.registry.lookup(&id) != Some(conn) {
                return Err(ReplicaError::Diverged(format!(
                    "client '{}' could not be registered",
                    shown(&id)
                )));
            }
            for s in &cs.subscriptions {
                let s = proto::Subscribe { id: 0, ..s.clone() };
                r.pubsub.subscribe(&mut r.output, conn, s, &r.limits);
            }
            for w in &cs.watches {
                let w = proto::KvWatch { id: 0, ..w.clone() };
                r.kv.watch(&mut r.output, conn, w, &r.limits);
            }
            if cs.presence_watch {
                r.presence.watch(conn);
            }
            if let (Some(l), Some(c)) = (&cs.listen, r.registry.get_mut(conn)) {
                // A client without the feature keeps `None`: the check
                // below refuses such a snapshot.
                if let Some(flags) = c.listen.as_mut() {
                    *flags = Listening {
                        messages: l.messages,
                        requests: l.requests,
                    };
                }
            }
            if let Some(link) = r.output.get_mut(conn) {
                if !link
                    .reliable
                    .restore(cs.last_received, cs.next_send, &cs.unacked)
                {
                    return Err(ReplicaError::Invalid(format!(
                        "client '{}' has unacknowledged frames out of order or beyond its next seq",
                        shown(&id)
                    )));
                }
            }
        }
        r.output.journal.set_repl_seq(snapshot.repl_seq);
        r.output.set_replaying(false);
        // Whatever the router refused (an invalid pattern, a duplicate
        // id, a limit) shows up as a difference here.
        let got = r.snapshot();
        if got.clients != sorted_clients(snapshot) {
            return Err(ReplicaError::Diverged(
                "the restored clients, subscriptions or watches differ from the snapshot's".into(),
            ));
        }
        if got.kv != snapshot.kv {
            return Err(ReplicaError::Diverged(
                "the restored key/value entries differ from the snapshot's".into(),
            ));
        }
        Ok(r)
    }
}
