//! The registry: which clients are registered under which connection id,
//! by client id; which transport connection stands for a resumed client
//! (aliases); which clients lost their connection and wait to resume
//! (detached); what each takes ("listen" flags) and when it was last heard
//! from.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_wire::{proto, ErrorCode, Frame};

use super::common::err;
use super::info::Info;
use super::output::Output;
use crate::ids::{ConnId, IdMap, TextMap};
use crate::outbox::Out;

/// What a client with the "listen" feature takes (see `proto::Listen`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Listening {
    pub messages: bool,
    pub requests: bool,
}

/// A registered client.
///
/// Its info is packed into one allocation ([`Info`]): read only when it
/// registers, resumes, leaves or is listed (and its principal per command
/// under a policy), a `ClientInfo` would otherwise take 144 bytes of every
/// slot of the registry's hash table, empty ones too (an idle hub's memory
/// per client; `a_registry_entry_stays_small`).
#[derive(Debug)]
pub(super) struct Client {
    /// Who it is (the registration's, kept across resumes).
    pub info: Info,
    /// When a whole frame last came from it.
    pub last_seen: Instant,
    /// For a client with the "listen" feature: what it takes now; `None`:
    /// everything.
    pub listen: Option<Listening>,
    /// Lost its connection (or its hub took over), and waits to resume
    /// (until the time the registry's detached map holds: rare, so not a
    /// field of every entry).
    detached: bool,
}

impl Client {
    fn new(info: &proto::ClientInfo, now: Instant) -> Client {
        Client {
            listen: info.listen.then_some(Listening::default()),
            info: Info::new(info),
            last_seen: now,
            detached: false,
        }
    }

    /// Whether it has a connection (is not waiting to resume).
    pub fn is_attached(&self) -> bool {
        !self.detached
    }

    /// Its client id.
    pub fn id(&self) -> &str {
        self.info.client_id()
    }

    /// Whether it takes `Direct` and `Broadcast` messages now.
    pub fn takes_messages(&self) -> bool {
        self.listen.is_none_or(|l| l.messages)
    }

    /// Whether it takes `Request`s to its client id now.
    pub fn takes_requests(&self) -> bool {
        self.listen.is_none_or(|l| l.requests)
    }
}

/// Every registered client.
#[derive(Debug, Default)]
pub(super) struct Registry {
    clients: IdMap<ConnId, Client>,
    /// Client id → connection id. The key is the one copy of the id the
    /// router keeps besides the `ClientInfo`: the client's
    /// [`Link`](super::output::Link) shares it.
    by_id: TextMap<Arc<str>, ConnId>,
    /// Connections attached to a client registered under another
    /// connection id (resumed clients), transport id → registry id.
    alias: IdMap<ConnId, ConnId>,
    /// Clients waiting to resume, and when each leaves unless it does.
    detached: IdMap<ConnId, Instant>,
    /// Clients of other hubs (from the remote seam's port), listed by
    /// `ListClients` after the local ones.
    remote: std::collections::BTreeMap<String, proto::ClientInfo>,
}

impl Registry {
    /// Registered clients.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// The client registered as `conn`.
    pub fn get(&self, conn: ConnId) -> Option<&Client> {
        self.clients.get(&conn)
    }

    /// The client registered as `conn`, to change.
    pub fn get_mut(&mut self, conn: ConnId) -> Option<&mut Client> {
        self.clients.get_mut(&conn)
    }

    /// Every client, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&ConnId, &Client)> + '_ {
        self.clients.iter()
    }

    /// The connection id client `id` is registered under.
    pub fn lookup(&self, id: &str) -> Option<ConnId> {
        self.by_id.get(id).copied()
    }

    /// The registry id a transport connection's inputs are about (itself,
    /// unless it resumed a client registered under another id).
    pub fn key_of(&self, conn: ConnId) -> ConnId {
        self.alias.get(&conn).copied().unwrap_or(conn)
    }

    /// Registers `info` as connection `conn` at `now`; returns the client
    /// id, shared with the by-id map (one allocation for both).
    pub fn register(&mut self, conn: ConnId, info: &proto::ClientInfo, now: Instant) -> Arc<str> {
        let id: Arc<str> = Arc::from(info.client_id.as_str());
        self.clients.insert(conn, Client::new(info, now));
        self.by_id.insert(id.clone(), conn);
        id
    }

    /// Unregisters `conn`; its alias (the transport connection `via`)
    /// goes too.
    pub fn remove(&mut self, conn: ConnId, via: Option<ConnId>) -> Option<Client> {
        let client = self.clients.remove(&conn)?;
        if self.by_id.get(client.id()) == Some(&conn) {
            self.by_id.remove(client.id());
        }
        if let Some(via) = via {
            self.alias.remove(&via);
        }
        self.detached.remove(&conn);
        Some(client)
    }

    /// Unregisters everyone (shutdown).
    pub fn clear(&mut self) {
        self.clients.clear();
        self.by_id.clear();
    }

    /// Transport connection `conn` now stands for client `key`; the
    /// connection that did (`old`) no longer does.
    pub fn realias(&mut self, old: ConnId, conn: ConnId, key: ConnId) {
        self.alias.remove(&old);
        if conn != key {
            self.alias.insert(conn, key);
        }
    }

    /// Client `key` lost its connection and leaves at `until` unless it
    /// resumes.
    pub fn detach(&mut self, key: ConnId, until: Instant) {
        if let Some(c) = self.clients.get_mut(&key) {
            c.detached = true;
            self.detached.insert(key, until);
        }
    }

    /// Client `key` has a connection again (resumed, or claimed).
    pub fn attach(&mut self, key: ConnId, now: Instant) {
        if let Some(c) = self.clients.get_mut(&key) {
            c.last_seen = now;
            c.detached = false;
        }
        self.detached.remove(&key);
    }

    /// When the first detached client's resume window ends.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.detached.values().copied().min()
    }

    /// Detached clients whose resume window ended by `now`, in client id
    /// order (not connection order: departures, and the change log, must
    /// not depend on connection ids).
    pub fn expired(&self, now: Instant) -> Vec<ConnId> {
        if self.detached.is_empty() {
            return Vec::new();
        }
        let mut expired: Vec<(&str, ConnId)> = self
            .detached
            .iter()
            .filter(|(_, until)| **until <= now)
            .filter_map(|(k, _)| Some((self.clients.get(k)?.id(), *k)))
            .collect();
        expired.sort_unstable();
        expired.into_iter().map(|(_, k)| k).collect()
    }

    /// Attached clients silent for longer than `limit` at `now`, in client
    /// id order.
    pub fn idle(&self, now: Instant, limit: Duration) -> Vec<ConnId> {
        let mut idle: Vec<(&str, ConnId)> = self
            .clients
            .iter()
            .filter(|(_, c)| c.is_attached() && now.saturating_duration_since(c.last_seen) > limit)
            .map(|(conn, c)| (c.id(), *conn))
            .collect();
        idle.sort_unstable();
        idle.into_iter().map(|(_, conn)| conn).collect()
    }

    /// Every client's info, by client id.
    pub fn infos(&self) -> Vec<proto::ClientInfo> {
        let mut clients: Vec<proto::ClientInfo> =
            self.clients.values().map(|c| c.info.to_proto()).collect();
        clients.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        clients
    }

    /// The `ClientList` answering correlation id `id`: the local clients,
    /// then those of other hubs.
    pub fn client_list(&self, id: u64) -> Frame {
        let mut clients = self.infos();
        clients.extend(self.remote.values().cloned());
        proto::ClientList { id, clients }.into()
    }

    /// A client of another hub joined (`Some(info)` kept) or left (its
    /// kept info returned, if it was known).
    pub fn remote_presence(
        &mut self,
        info: proto::ClientInfo,
        joined: bool,
    ) -> Option<proto::ClientInfo> {
        if joined {
            self.remote.insert(info.client_id.clone(), info.clone());
            Some(info)
        } else {
            self.remote.remove(&info.client_id)
        }
    }

    /// `Listen`: what client `conn` takes from now on (only with the
    /// "listen" feature).
    pub fn listen(&mut self, out: &mut Output, conn: ConnId, l: proto::Listen) {
        let Some(c) = self.clients.get_mut(&conn) else {
            return;
        };
        let Some(flags) = c.listen.as_mut() else {
            let msg = "listen needs the \"listen\" feature in Hello.features; without it a client takes direct messages and requests always";
            return out.send(conn, err(l.id, ErrorCode::Unsupported, msg));
        };
        *flags = Listening {
            messages: l.messages,
            requests: l.requests,
        };
        if l.id != 0 {
            out.send(conn, Frame::ok(l.id));
        }
    }

    /// `Broadcast`: to every client but the sender that takes messages (a
    /// full queue drops its oldest deliveries and broadcasts).
    pub fn broadcast(&self, out: &mut Output, conn: ConnId, b: proto::Broadcast, from_port: bool) {
        let frame = Frame::from(proto::Broadcast {
            id: 0,
            // A broadcast from the remote seam's port names its own sender.
            from: if from_port {
                b.from
            } else {
                out.id(conn).to_owned()
            },
            payload: b.payload,
            headers: b.headers,
        });
        for (&target, client) in &self.clients {
            if target == conn || !client.takes_messages() {
                continue;
            }
            if let Some(outbox) = out.outbox(target).cloned() {
                out.push_droppable(target, &outbox, Out::from(frame.clone()));
            }
        }
        if b.id != 0 {
            out.send(conn, Frame::ok(b.id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every slot of the registry's hash table, empty ones too, takes an
    /// entry's size (at 10,000 clients the table has 16,384 slots): the
    /// info that is rarely read stays out of it.
    #[test]
    fn a_registry_entry_stays_small() {
        // 56 bytes when the entry held the resume deadline (an `Instant`
        // that only a detached client has): 40 without; 48 with the info
        // packed (a slice's pointer and length, 8 bytes more a slot, 13
        // per client at 10,000; the info itself 144 bytes and five
        // strings less).
        let entry = std::mem::size_of::<(ConnId, Client)>();
        assert!(entry <= 48, "registry entry {entry} bytes");
        let c = Client::new(
            &proto::ClientInfo {
                client_id: "a".into(),
                listen: true,
                ..Default::default()
            },
            Instant::now(),
        );
        assert_eq!(c.id(), "a");
        assert!(!c.takes_messages() && !c.takes_requests());
    }

    #[test]
    fn the_client_id_is_one_allocation_shared_with_the_link() {
        let mut r = Registry::default();
        let info = proto::ClientInfo {
            client_id: "a".into(),
            ..Default::default()
        };
        let id = r.register(ConnId(1), &info, Instant::now());
        // this handle (the link's) and the by-id map's key
        assert_eq!(Arc::strong_count(&id), 2);
        assert_eq!(r.lookup("a"), Some(ConnId(1)));
        assert!(r.remove(ConnId(1), None).is_some());
        assert_eq!(Arc::strong_count(&id), 1);
        assert_eq!(r.lookup("a"), None);
    }
}
