//! The policy as the hub's [`Admission`]: who a connection is, which ids
//! it may register, and which commands it may run.

use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{ErrorCode, Frame};

use super::pattern::{glob_tokens, tokens_match, GlobToken};
use super::{Policy, Principal, Rights, CN_MEMORY, OWNER};
use crate::router::admission::{Admission, ClientRef, Identity, Peer, Proof, Refusal, TokenKey};

/// Longest piece of a client's input quoted in a refusal.
const MAX_QUOTE: usize = 200;

/// `text`, cut to [`MAX_QUOTE`] characters.
fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTE) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

impl Policy {
    fn principal(&self, name: &str) -> Option<&Principal> {
        self.by_name.get(name).map(|&i| &self.principals[i])
    }

    /// The rights of `client`'s principal; a client no principal of this
    /// policy vouches for is refused everything.
    fn rights_of(&self, client: ClientRef<'_>) -> Result<&Rights, Refusal> {
        self.principal(client.principal)
            .map(|p| &p.rights)
            .ok_or_else(|| {
                Refusal::forbidden(format!(
                    "client '{}' has no principal of this hub's policy; connect with a token, certificate or user the policy names",
                    clip(client.client_id)
                ))
            })
    }

    fn identity(&self, index: usize, peer: &Peer) -> Identity {
        Identity {
            principal: self.principals[index].name.clone(),
            uid: peer.unix.map(|c| c.uid),
        }
    }

    /// Remembers (or forgets) the certificate name of the connection at
    /// `addr` for the `{cn}` template.
    fn remember_cn(&self, addr: &str, cn: Option<&str>) {
        let mut memory = self.cn_by_addr.lock().unwrap_or_else(|e| e.into_inner());
        match cn {
            Some(cn) => {
                if memory.len() >= CN_MEMORY {
                    memory.clear();
                }
                memory.insert(addr.to_owned(), cn.to_owned());
            }
            None => {
                memory.remove(addr);
            }
        }
    }

    fn remembered_cn(&self, addr: &str) -> Option<String> {
        let mut memory = self.cn_by_addr.lock().unwrap_or_else(|e| e.into_inner());
        memory.remove(addr)
    }

    /// The principal a client certificate names, if any.
    fn by_cert(&self, peer: &Peer) -> Option<usize> {
        let cert = peer.cert.as_ref()?;
        if !cert.common_name.is_empty() {
            if let Some(&i) = self.cns.get(&cert.common_name) {
                return Some(i);
            }
        }
        cert.sans.iter().find_map(|san| self.sans.get(san).copied())
    }

    fn owner_or_refuse(&self, peer: &Peer, why: &str) -> Result<Identity, Refusal> {
        if self.owner_all {
            return Ok(self.identity(0, peer));
        }
        Err(Refusal::forbidden(format!(
            "{why} grants nothing under this hub's policy (owner = \"none\"); connect with a token, certificate or user the policy names"
        )))
    }

    /// Whether `id` matches one of `p`'s id globs, templates expanded.
    fn may_register(&self, p: &Principal, info: &proto::ClientInfo) -> bool {
        let cn = if p.uses_cn {
            self.remembered_cn(&info.addr)
        } else {
            None
        };
        p.rights.ids.iter().any(|glob| {
            let Some(tokens) = expand(glob, &p.name, info.uid, cn.as_deref()) else {
                return false;
            };
            tokens_match(&tokens, &info.client_id)
        })
    }
}

/// Compiles id glob `glob` with its templates replaced by `name`, `uid`
/// and `cn`, taken literally (a `*` in a certificate name is no wildcard);
/// `None` when it names a value the client does not have.
fn expand(glob: &str, name: &str, uid: Option<u32>, cn: Option<&str>) -> Option<Vec<GlobToken>> {
    let mut out = Vec::with_capacity(glob.len());
    let mut rest = glob;
    loop {
        let Some(open) = rest.find('{') else {
            out.extend(glob_tokens(rest));
            return Some(out);
        };
        out.extend(glob_tokens(&rest[..open]));
        let tail = &rest[open..];
        let (value, len) = if tail.starts_with("{uid}") {
            (uid?.to_string(), "{uid}".len())
        } else if tail.starts_with("{principal}") {
            (name.to_owned(), "{principal}".len())
        } else if tail.starts_with("{cn}") {
            (cn?.to_owned(), "{cn}".len())
        } else {
            // The policy was checked when it was parsed.
            return None;
        };
        out.extend(value.bytes().map(Some));
        rest = &tail[len..];
    }
}

fn refuse(principal: &str, what: String) -> Result<(), Refusal> {
    Err(Refusal::forbidden(format!(
        "principal '{principal}' may not {what}"
    )))
}

/// Whether `key` starts with one of `prefixes`.
fn under(prefixes: &[String], key: &str) -> bool {
    prefixes.iter().any(|p| key.starts_with(p.as_str()))
}

impl Admission for Policy {
    fn token(&self, key_id: &[u8]) -> Option<TokenKey> {
        let id: [u8; switchboard_discovery::KEY_ID_LEN] = key_id.try_into().ok()?;
        let (secret, index) = self.tokens.get(&id)?;
        Some(TokenKey {
            secret: secret.clone(),
            principal: self.principals[*index].name.clone(),
        })
    }

    fn identify(&self, peer: &Peer, proof: &Proof) -> Result<Identity, Refusal> {
        let index = match proof {
            Proof::Token(name) => self.by_name.get(name.as_str()).copied(),
            _ => None,
        };
        if let Some(i) = index.or_else(|| self.by_cert(peer)) {
            if self.principals[i].uses_cn {
                let cn = peer.cert.as_ref().map(|c| c.common_name.as_str());
                self.remember_cn(&peer.addr, cn.filter(|c| !c.is_empty()));
            }
            return Ok(self.identity(i, peer));
        }
        match proof {
            Proof::Token(name) => Err(Refusal {
                code: ErrorCode::AuthFailed,
                message: format!(
                    "the token of principal '{}' is not in this hub's policy any more; use a current token",
                    clip(name)
                ),
            }),
            Proof::PeerOnly => {
                let uid = peer.unix.map(|c| c.uid);
                let by_cred = peer.unix.and_then(|c| {
                    self.uids
                        .get(&c.uid)
                        .or_else(|| self.gids.get(&c.gid))
                        .copied()
                });
                if let Some(i) = by_cred {
                    return Ok(self.identity(i, peer));
                }
                if uid == Some(self.hub_uid) {
                    return self.owner_or_refuse(peer, "the hub's own uid");
                }
                Err(Refusal {
                    code: ErrorCode::AuthFailed,
                    message: format!(
                        "uid {} may not connect without a proof: no principal of this hub's policy names it; give a token, or add the uid to a principal's unix_uid",
                        uid.map_or_else(|| "(unknown)".to_string(), |u| u.to_string())
                    ),
                })
            }
            Proof::HubSecret => match self.hub_secret {
                Some(i) => Ok(self.identity(i, peer)),
                None => self.owner_or_refuse(peer, "the hub's secret"),
            },
        }
    }

    fn admit_client(&self, info: &proto::ClientInfo) -> Result<(), Refusal> {
        let Some(p) = self.principal(&info.principal) else {
            return self.rights_of(info.into()).map(|_| ());
        };
        if p.rights.all {
            return Ok(());
        }
        if info.transport == "http" && !p.rights.http {
            return refuse(
                &p.name,
                "use the HTTP gateway (it lacks the http right)".into(),
            );
        }
        if self.may_register(p, info) {
            return Ok(());
        }
        let allowed = if p.rights.ids.is_empty() {
            "none".to_string()
        } else {
            p.rights.ids.join(", ")
        };
        refuse(
            &p.name,
            format!(
                "register client id '{}' (allowed: {allowed})",
                clip(&info.client_id)
            ),
        )
    }

    fn admit_standby(&self, identity: &Identity) -> Result<(), Refusal> {
        match self.principal(&identity.principal) {
            Some(p) if p.rights.all || p.rights.standby => Ok(()),
            Some(p) => refuse(
                &p.name,
                "open a standby link (it lacks the standby right)".into(),
            ),
            None => Err(Refusal::forbidden(
                "a standby link needs a principal of this hub's policy with the standby right",
            )),
        }
    }

    fn admit_takeover(
        &self,
        new: &proto::ClientInfo,
        holder: &proto::ClientInfo,
    ) -> Result<(), Refusal> {
        if new.principal == holder.principal {
            return Ok(());
        }
        Err(Refusal::forbidden(format!(
            "client id '{}' is held by a connection of another principal; principal '{}' may not take it over",
            clip(&new.client_id),
            clip(&new.principal)
        )))
    }

    fn admit(&self, client: ClientRef<'_>, command: &Frame) -> Result<(), Refusal> {
        if client.principal == OWNER {
            return Ok(());
        }
        let rights = self.rights_of(client)?;
        if rights.all {
            return Ok(());
        }
        let Some(kind) = &command.kind else {
            return Ok(());
        };
        check(rights, client.principal, kind)
    }
}

/// Whether a principal with `rights` may send a frame of `kind`.
fn check(rights: &Rights, name: &str, kind: &Kind) -> Result<(), Refusal> {
    let flag = |on: bool, what: &str| {
        if on {
            Ok(())
        } else {
            refuse(name, what.into())
        }
    };
    let send = |to: &str, what: &str| {
        if rights.send.matches(to) {
            Ok(())
        } else {
            refuse(name, format!("{what} '{}'", clip(to)))
        }
    };
    match kind {
        Kind::Publish(p) => {
            let may = |topic: &str| {
                rights.publish_allow.matches(topic) && !rights.publish_deny.matches(topic)
            };
            if rights.publish_seen.verdict(&p.topic, may) {
                Ok(())
            } else {
                refuse(name, format!("publish to '{}'", clip(&p.topic)))
            }
        }
        Kind::Subscribe(s) => subscribe(rights, name, &s.pattern),
        Kind::Direct(d) => send(&d.to, "send to"),
        Kind::Request(r) if !r.service.is_empty() => send(&r.service, "send requests to service"),
        Kind::Request(r) => send(&r.to, "send requests to"),
        Kind::Session(s) => {
            flag(
                rights.sessions,
                "use the session engine (it lacks the sessions right)",
            )?;
            send(&s.peer, "open sessions with")
        }
        Kind::Broadcast(_) => flag(rights.broadcast, "broadcast (it lacks the broadcast right)"),
        Kind::KvGet(g) => kv_read(rights, name, &g.key),
        Kind::KvWatch(w) if w.prefix => {
            if under(&rights.kv_read, &w.key) {
                Ok(())
            } else {
                refuse(name, format!("watch the keys under '{}'", clip(&w.key)))
            }
        }
        Kind::KvWatch(w) => kv_read(rights, name, &w.key),
        Kind::KvSet(s) => kv_write(rights, name, &s.key),
        Kind::KvDelete(d) => kv_write(rights, name, &d.key),
        Kind::ListClients(_) | Kind::StatusRequest(_) => flag(
            rights.clients,
            "list clients or read the hub's status (it lacks the clients right)",
        ),
        Kind::PresenceWatch(p) if !p.stop => flag(
            rights.clients,
            "watch presence (it lacks the clients right)",
        ),
        // Always allowed: answers routed only to the requester, and what
        // concerns the client's own connection.
        Kind::PresenceWatch(_)
        | Kind::Reply(_)
        | Kind::Cancel(_)
        | Kind::Unsubscribe(_)
        | Kind::KvUnwatch(_)
        | Kind::Listen(_)
        | Kind::Ping(_)
        | Kind::Pong(_)
        | Kind::Ack(_)
        | Kind::Goodbye(_) => Ok(()),
        // Kinds only the hub sends, or only the handshake and replication
        // carry: the router refuses them itself.
        Kind::Probe(_)
        | Kind::ProbeReply(_)
        | Kind::Hello(_)
        | Kind::Challenge(_)
        | Kind::Auth(_)
        | Kind::Welcome(_)
        | Kind::Error(_)
        | Kind::Flow(_)
        | Kind::Ok(_)
        | Kind::Deliver(_)
        | Kind::KvValue(_)
        | Kind::KvUpdate(_)
        | Kind::Presence(_)
        | Kind::ClientList(_)
        | Kind::ReplHello(_)
        | Kind::Snapshot(_)
        | Kind::Change(_)
        | Kind::ReplAck(_)
        | Kind::Heartbeat(_)
        | Kind::Status(_) => Ok(()),
    }
}

fn subscribe(rights: &Rights, name: &str, pattern: &str) -> Result<(), Refusal> {
    // A malformed pattern is the router's to refuse (INVALID_ARGUMENT);
    // the algebra below assumes valid ones.
    if crate::subject::validate_pattern(pattern, usize::MAX).is_err() {
        return Ok(());
    }
    if rights.subscribe_allow.covering(pattern).is_none() {
        let allowed = if rights.subscribe_allow.is_empty() {
            "nothing".to_string()
        } else {
            rights.subscribe_allow.patterns().join(", ")
        };
        return refuse(
            name,
            format!(
                "subscribe to '{}': it is wider than allowed ({allowed})",
                clip(pattern)
            ),
        );
    }
    if let Some(deny) = rights.subscribe_deny.intersecting(pattern) {
        return refuse(
            name,
            format!(
                "subscribe to '{}': it overlaps the denied '{deny}'",
                clip(pattern)
            ),
        );
    }
    Ok(())
}

fn kv_read(rights: &Rights, name: &str, key: &str) -> Result<(), Refusal> {
    if under(&rights.kv_read, key) {
        Ok(())
    } else {
        refuse(name, format!("read key '{}'", clip(key)))
    }
}

fn kv_write(rights: &Rights, name: &str, key: &str) -> Result<(), Refusal> {
    if under(&rights.kv_write, key) {
        Ok(())
    } else {
        refuse(name, format!("write key '{}'", clip(key)))
    }
}
