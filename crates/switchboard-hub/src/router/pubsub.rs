//! The publish/subscribe room: the subscription index (topic patterns,
//! queue groups), the service index (service subscriptions and their
//! round-robin turns), each client's subscriptions and the encoded head of
//! its last publish. It answers `Subscribe` and `Unsubscribe`, fans a
//! `Publish` out, and picks the responder of a service request.

use std::collections::HashMap;
use std::sync::Arc;

use switchboard_wire::{proto, ErrorCode, Frame};

use super::common::{err, shown};
use super::output::Output;
use crate::ids::{ConnId, IdMap};
use crate::limits::Limits;
use crate::outbox::{Out, Outbox, Shared};
use crate::subject::{validate_pattern, validate_topic, GroupId, SubIndex, Target};
use switchboard_wire::deliver::DeliverHead;

/// Most service subjects whose round-robin turn is remembered; the turns
/// are forgotten when more are asked for.
const SERVICE_TURNS_MAX: usize = 4_096;

/// One subscription of a client.
#[derive(Debug)]
struct Sub {
    pattern: String,
    group: Option<(String, GroupId)>,
    /// A service subscription: it takes requests to matching service
    /// subjects (in the service index), never publishes.
    service: bool,
}

/// The members of one queue group (pattern and group name), taking turns.
#[derive(Debug)]
struct Group {
    members: Vec<(ConnId, u64, Arc<Outbox>)>,
    next: usize,
}

/// A client's part of the room.
#[derive(Debug, Default)]
struct Subscriber {
    subs: IdMap<u64, Sub>,
    /// Encoded delivery head of this client's last publish (kept only for
    /// publishes without reply-to and headers).
    last_head: Option<(String, DeliverHead)>,
}

/// Subscriptions, queue groups and service subscriptions.
#[derive(Debug)]
pub(super) struct PubSub {
    index: SubIndex,
    /// Service subscriptions, by pattern (never matched by publishes).
    services: SubIndex,
    /// Round-robin position per service subject asked for.
    service_turns: HashMap<String, usize>,
    groups: IdMap<GroupId, Group>,
    group_ids: HashMap<(String, String), GroupId>,
    next_group: GroupId,
    clients: IdMap<ConnId, Subscriber>,
    /// Subscriptions held by all clients.
    count: u64,
    /// Service requests nobody was subscribed to.
    no_responders: u64,
    /// Whether pattern changes are recorded (for the remote seam).
    track: bool,
    /// Patterns (and queue groups) of publish subscriptions added
    /// (`true`) and removed, in order, since the last
    /// [`take_changes`](Self::take_changes).
    changes: Vec<(String, Option<String>, bool)>,
    /// Queue groups span hubs (the remote seam carries them): a publish
    /// from the port reaches plain subscriptions only, and the remote side
    /// hands each group its messages ([`publish_group`](Self::publish_group)).
    remote_groups: bool,
}

impl Default for PubSub {
    fn default() -> Self {
        PubSub {
            index: SubIndex::default(),
            services: SubIndex::default(),
            service_turns: HashMap::new(),
            groups: IdMap::default(),
            group_ids: HashMap::new(),
            next_group: 1,
            clients: IdMap::default(),
            count: 0,
            no_responders: 0,
            track: false,
            changes: Vec::new(),
            remote_groups: false,
        }
    }
}

impl PubSub {
    /// Records the patterns of publish subscriptions (plain and queue
    /// group) as they come and go, for [`take_changes`](Self::take_changes).
    /// The subscriptions held already (a standby's router, restored from
    /// the primary, taking over) are recorded as added first.
    pub fn track_patterns(&mut self) {
        if !self.track {
            for client in self.clients.values() {
                for sub in client.subs.values().filter(|s| !s.service) {
                    let group = sub.group.as_ref().map(|(g, _)| g.clone());
                    self.changes.push((sub.pattern.clone(), group, true));
                }
            }
        }
        self.track = true;
    }

    /// The pattern changes recorded since the last call: pattern, queue
    /// group, added.
    pub fn take_changes(&mut self) -> Vec<(String, Option<String>, bool)> {
        std::mem::take(&mut self.changes)
    }

    /// Queue groups span hubs from now on (see `remote_groups`).
    pub fn carry_groups_remotely(&mut self) {
        self.remote_groups = true;
    }

    /// A publish the remote side took for queue group `group` on
    /// `pattern`: delivered to one member of that local group (none: it
    /// is dropped, the group emptied meanwhile).
    pub fn publish_group(
        &mut self,
        out: &mut Output,
        pattern: &str,
        group: &str,
        p: proto::Publish,
    ) {
        let Some(gid) = self.group_ids.get(&(pattern.to_owned(), group.to_owned())) else {
            return;
        };
        let Some((target, sub_id, outbox)) = self.groups.get_mut(gid).and_then(|g| g.pick(out))
        else {
            return;
        };
        let deliver = Out::Deliver {
            seq: 0,
            acked: 0,
            sub_id,
            shared: Shared::new(
                DeliverHead::new(&p.topic, &p.from, &p.reply_to, &p.headers),
                p.payload,
            ),
        };
        let outbox = outbox.clone();
        out.push_droppable(target, &outbox, deliver);
    }

    /// Subscriptions held by all clients.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Queue groups with members.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Service requests answered `NO_RESPONDERS`.
    pub fn no_responders(&self) -> u64 {
        self.no_responders
    }

    /// Client `conn`'s subscriptions by subscription id (as a snapshot
    /// lists them).
    pub fn subscriptions_of(&self, conn: ConnId) -> Vec<proto::Subscribe> {
        let mut subs: Vec<proto::Subscribe> = self
            .clients
            .get(&conn)
            .into_iter()
            .flat_map(|c| c.subs.iter())
            .map(|(sub_id, s)| proto::Subscribe {
                id: 0,
                sub_id: *sub_id,
                pattern: s.pattern.clone(),
                queue_group: s.group.as_ref().map(|g| g.0.clone()).unwrap_or_default(),
                service: s.service,
            })
            .collect();
        subs.sort_by_key(|s| s.sub_id);
        subs
    }

    /// Subscription patterns with their subscriber counts, sorted.
    pub fn topics(&self) -> Vec<(String, u64)> {
        let mut topics: HashMap<&str, u64> = HashMap::new();
        for c in self.clients.values() {
            for sub in c.subs.values() {
                *topics.entry(sub.pattern.as_str()).or_default() += 1;
            }
        }
        let mut topics: Vec<(String, u64)> =
            topics.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        topics.sort();
        topics
    }

    /// Forgets the head of client `key`'s last publish (a new connection
    /// may announce it differently).
    pub fn forget_head(&mut self, key: ConnId) {
        if let Some(c) = self.clients.get_mut(&key) {
            c.last_head = None;
        }
    }

    /// `Subscribe`: a plain, queue-group or service subscription; `Ok`, or
    /// the refusal.
    pub fn subscribe(
        &mut self,
        out: &mut Output,
        conn: ConnId,
        s: proto::Subscribe,
        limits: &Limits,
    ) {
        if let Err(e) = validate_pattern(&s.pattern, limits.max_subject) {
            let msg = format!(
                "invalid pattern '{}': it {e}; use '.'-separated segments, '*' for one segment, '>' as the last for the rest",
                shown(&s.pattern)
            );
            return out.send(conn, err(s.id, ErrorCode::InvalidArgument, msg));
        }
        if s.queue_group.len() > limits.max_subject
            || s.queue_group
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            let msg = "invalid queue group: use a short name without spaces or control characters";
            return out.send(conn, err(s.id, ErrorCode::InvalidArgument, msg));
        }
        if s.service && !s.queue_group.is_empty() {
            let msg = "a service subscription takes no queue group: requests are spread over all responders already; leave queue_group empty";
            return out.send(conn, err(s.id, ErrorCode::InvalidArgument, msg));
        }
        let client = self.clients.entry(conn).or_default();
        if client.subs.contains_key(&s.sub_id) {
            let msg = format!(
                "subscription id {} is already in use on this connection; pick another id or unsubscribe first",
                s.sub_id
            );
            return out.send(conn, err(s.id, ErrorCode::InvalidArgument, msg));
        }
        if client.subs.len() >= limits.max_subscriptions {
            let msg = format!(
                "this connection already has {} subscriptions, the limit; unsubscribe some first",
                client.subs.len()
            );
            return out.send(conn, err(s.id, ErrorCode::LimitExceeded, msg));
        }
        let Some(outbox) = out.outbox(conn).cloned() else {
            return;
        };
        let target = |sub_id| Target::Sub {
            conn,
            sub_id,
            outbox: outbox.clone(),
        };
        let group = if s.service {
            self.services.insert(&s.pattern, target(s.sub_id));
            None
        } else if s.queue_group.is_empty() {
            self.index.insert(&s.pattern, target(s.sub_id));
            None
        } else {
            let key = (s.pattern.clone(), s.queue_group.clone());
            let gid = match self.group_ids.get(&key) {
                Some(g) => *g,
                None => {
                    let g = self.next_group;
                    self.next_group += 1;
                    self.group_ids.insert(key, g);
                    self.groups.insert(
                        g,
                        Group {
                            members: Vec::new(),
                            next: 0,
                        },
                    );
                    self.index.insert(&s.pattern, Target::Group(g));
                    g
                }
            };
            if let Some(g) = self.groups.get_mut(&gid) {
                g.members.push((conn, s.sub_id, outbox.clone()));
            }
            Some((s.queue_group.clone(), gid))
        };
        if self.track && !s.service {
            let group = (!s.queue_group.is_empty()).then(|| s.queue_group.clone());
            self.changes.push((s.pattern.clone(), group, true));
        }
        if let Some(client) = self.clients.get_mut(&conn) {
            client.subs.insert(
                s.sub_id,
                Sub {
                    pattern: s.pattern,
                    group,
                    service: s.service,
                },
            );
        }
        self.count += 1;
        out.send(conn, Frame::ok(s.id));
    }

    /// `Unsubscribe`: `Ok`, or `NOT_FOUND` for an unknown subscription id.
    pub fn unsubscribe(&mut self, out: &mut Output, conn: ConnId, u: proto::Unsubscribe) {
        let sub = self
            .clients
            .get_mut(&conn)
            .and_then(|c| c.subs.remove(&u.sub_id));
        match sub {
            Some(sub) => {
                self.remove_entry(conn, u.sub_id, &sub);
                self.count -= 1;
                out.send(conn, Frame::ok(u.id));
            }
            None => {
                let msg = format!("no subscription with id {} on this connection", u.sub_id);
                out.send(conn, err(u.id, ErrorCode::NotFound, msg));
            }
        }
    }

    /// Forgets client `conn`'s subscriptions (it left).
    pub fn forget(&mut self, conn: ConnId) {
        let Some(client) = self.clients.remove(&conn) else {
            return;
        };
        for (sub_id, sub) in &client.subs {
            self.remove_entry(conn, *sub_id, sub);
        }
        self.count -= client.subs.len() as u64;
    }

    /// Forgets every subscription (shutdown).
    pub fn clear(&mut self) {
        self.index = SubIndex::default();
        self.services = SubIndex::default();
        self.service_turns.clear();
        self.groups.clear();
        self.group_ids.clear();
        self.clients.clear();
        self.count = 0;
    }

    /// Points client `key`'s entries in the indexes and queue groups at
    /// `outbox` (its new connection's).
    pub fn rewire(&mut self, key: ConnId, outbox: &Arc<Outbox>) {
        let Some(client) = self.clients.get(&key) else {
            return;
        };
        for (&sub_id, sub) in &client.subs {
            match &sub.group {
                None => {
                    let index = if sub.service {
                        &mut self.services
                    } else {
                        &mut self.index
                    };
                    index.remove_sub(&sub.pattern, key, sub_id);
                    index.insert(
                        &sub.pattern,
                        Target::Sub {
                            conn: key,
                            sub_id,
                            outbox: outbox.clone(),
                        },
                    );
                }
                Some((_, gid)) => {
                    if let Some(g) = self.groups.get_mut(gid) {
                        for m in &mut g.members {
                            if m.0 == key && m.1 == sub_id {
                                m.2 = outbox.clone();
                            }
                        }
                    }
                }
            }
        }
    }

    /// `Publish`: a delivery to every matching subscription (one member of
    /// each queue group), then `Ok` when asked for. The publish is read
    /// where it lies; only its payload is taken.
    pub fn publish(
        &mut self,
        out: &mut Output,
        conn: ConnId,
        p: &mut proto::Publish,
        max_subject: usize,
        from_port: bool,
    ) {
        // Only valid topics are cached, so a hit needs no validation.
        let matches = match self.index.cached_matches(&p.topic) {
            Some(m) => m,
            None => {
                if let Err(e) = validate_topic(&p.topic, max_subject) {
                    let msg = format!(
                        "invalid topic '{}': it {e}; use '.'-separated segments without spaces or wildcards",
                        shown(&p.topic)
                    );
                    return out.send(conn, err(p.id, ErrorCode::InvalidArgument, msg));
                }
                self.index.matches(&p.topic)
            }
        };
        if !matches.is_empty() {
            let client = self.clients.entry(conn).or_default();
            // Only heads of plain publishes (no reply-to, no headers) are
            // kept: the next publish may carry others.
            // A publish from the remote seam's port names its own sender.
            let plain = p.reply_to.is_empty() && p.headers.is_empty() && !from_port;
            let from = if from_port {
                p.from.as_str()
            } else {
                out.id(conn)
            };
            let head = match &client.last_head {
                Some((topic, head)) if plain && *topic == p.topic => head.clone(),
                _ => {
                    let head = DeliverHead::new(&p.topic, from, &p.reply_to, &p.headers);
                    if plain {
                        client.last_head = Some((p.topic.clone(), head.clone()));
                    }
                    head
                }
            };
            let shared = Shared::new(head, std::mem::take(&mut p.payload));
            for target in matches.iter() {
                let (target, sub_id, outbox) = match target {
                    Target::Sub {
                        conn,
                        sub_id,
                        outbox,
                    } => (*conn, *sub_id, outbox),
                    // Other hubs' members share the group: the remote
                    // side hands it its own copy.
                    Target::Group(_) if from_port && self.remote_groups => continue,
                    Target::Group(gid) => match self.groups.get_mut(gid) {
                        Some(group) => match group.pick(out) {
                            Some(m) => m,
                            None => continue,
                        },
                        None => continue,
                    },
                };
                let deliver = Out::Deliver {
                    seq: 0,
                    acked: 0,
                    sub_id,
                    shared: shared.clone(),
                };
                out.push_droppable(target, outbox, deliver);
            }
        }
        if p.id != 0 {
            out.send(conn, Frame::ok(p.id));
        }
    }

    /// The responder of a service request: one of the service
    /// subscriptions whose pattern matches `r.service`, round-robin,
    /// skipping one whose queue is full while another has room. Sets
    /// `r.to` to its client id and returns `(client, sub_id)`, or the
    /// error to answer. `named` is the client `r.to` names, if any.
    ///
    /// Which responder is picked depends on how full queues are, which a
    /// replica cannot know, so the choice travels in the change log: the
    /// logged request is amended to name the responder (`to`, `sub_id`),
    /// and a replaying router takes that choice. A request that names both
    /// `to` and `service` is refused and logged without either, so it is
    /// refused on replay too.
    pub fn pick_responder(
        &mut self,
        out: &mut Output,
        r: &mut proto::Request,
        named: Option<ConnId>,
        max_subject: usize,
    ) -> Result<(ConnId, u64), (ErrorCode, String)> {
        if !r.to.is_empty() {
            if out.replaying() {
                let held = named.filter(|t| {
                    self.clients
                        .get(t)
                        .and_then(|c| c.subs.get(&r.sub_id))
                        .is_some_and(|s| s.service)
                });
                if let Some(t) = held {
                    return Ok((t, r.sub_id));
                }
            }
            out.journal.amend_request(r.id, |q| {
                q.to.clear();
                q.service.clear();
            });
            let msg = "a request names either a client ('to') or a service, not both; leave 'to' empty for a service";
            return Err((ErrorCode::InvalidArgument, msg.into()));
        }
        // Only valid subjects are cached, so a hit needs no validation.
        let matches = match self.services.cached_matches(&r.service) {
            Some(m) => m,
            None => {
                if let Err(e) = validate_topic(&r.service, max_subject) {
                    let msg = format!(
                        "invalid service '{}': it {e}; use '.'-separated segments without spaces or wildcards",
                        shown(&r.service)
                    );
                    return Err((ErrorCode::InvalidArgument, msg));
                }
                self.services.matches(&r.service)
            }
        };
        let members: Vec<(ConnId, u64, &Arc<Outbox>)> = matches
            .iter()
            .filter_map(|t| match t {
                Target::Sub {
                    conn,
                    sub_id,
                    outbox,
                } => Some((*conn, *sub_id, outbox)),
                Target::Group(_) => None,
            })
            .collect();
        let n = members.len();
        if n == 0 {
            self.no_responders += 1;
            let msg = format!(
                "no responder is subscribed to service '{}'; start one or retry later",
                shown(&r.service)
            );
            return Err((ErrorCode::NoResponders, msg));
        }
        if self.service_turns.len() >= SERVICE_TURNS_MAX
            && !self.service_turns.contains_key(&r.service)
        {
            self.service_turns.clear();
        }
        let turn = self.service_turns.entry(r.service.clone()).or_default();
        let pick = pick_with_room(*turn, n, |i| members[i].2.is_full(out.q()));
        *turn = pick + 1;
        let (target, sub_id, _) = members[pick];
        r.to = out.id(target).to_owned();
        let to = r.to.clone();
        out.journal.amend_request(r.id, |q| {
            q.to = to;
            q.sub_id = sub_id;
        });
        Ok((target, sub_id))
    }

    fn remove_entry(&mut self, conn: ConnId, sub_id: u64, sub: &Sub) {
        if self.track && !sub.service {
            let group = sub.group.as_ref().map(|g| g.0.clone());
            self.changes.push((sub.pattern.clone(), group, false));
        }
        match &sub.group {
            None if sub.service => self.services.remove_sub(&sub.pattern, conn, sub_id),
            None => self.index.remove_sub(&sub.pattern, conn, sub_id),
            Some((name, gid)) => {
                let empty = match self.groups.get_mut(gid) {
                    Some(g) => {
                        g.members.retain(|(c, s, _)| !(*c == conn && *s == sub_id));
                        g.members.is_empty()
                    }
                    None => false,
                };
                if empty {
                    self.groups.remove(gid);
                    self.group_ids.remove(&(sub.pattern.clone(), name.clone()));
                    self.index.remove_group(&sub.pattern, *gid);
                }
            }
        }
    }
}

impl Group {
    /// The member whose turn it is, skipping members whose queue is full
    /// while another has room.
    fn pick(&mut self, out: &Output) -> Option<(ConnId, u64, &Arc<Outbox>)> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let members = &self.members;
        let pick = pick_with_room(self.next, n, |i| out.is_full(members[i].0, &members[i].2));
        self.next = pick + 1;
        let (member, sub_id, outbox) = &self.members[pick];
        Some((*member, *sub_id, outbox))
    }
}

/// Round-robin from `turn` over `n` candidates: the first whose queue is
/// not full, or the one whose turn it is when all are.
fn pick_with_room(turn: usize, n: usize, full: impl Fn(usize) -> bool) -> usize {
    (0..n)
        .map(|i| (turn + i) % n)
        .find(|&cand| !full(cand))
        .unwrap_or(turn % n)
}
