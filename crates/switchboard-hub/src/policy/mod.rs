//! The permission policy: who may connect as whom, and what each principal
//! may do. It implements the [`Admission`](crate::router::admission::Admission)
//! seam; without a policy the hub runs in single-user mode (whoever proves
//! the hub's secret, or connects over its Unix socket as the hub's own
//! user, may do everything).
//!
//! A policy is a TOML file (`switchboard hub --policy FILE`; the user's
//! guide is the project's `docs/POLICY.md`):
//!
//! ```toml
//! # Rights of the hub's own user: whoever proves the hub's secret, or
//! # connects over the Unix socket as the hub's uid without a proof, when
//! # no principal claims them. "all" (default) or "none".
//! owner = "all"
//!
//! [[principal]]
//! name = "app"
//! token_sha256 = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
//! unix_uid = [1000]
//! ids = ["app-{uid}-*", "app"]
//! publish = { allow = ["orders.>"], deny = ["orders.secret.>"] }
//! subscribe = { allow = ["orders.*"] }
//! kv = { read = ["config/"], write = ["app/"] }
//! send = ["worker-*"]
//! ```
//!
//! # Principals
//!
//! A principal has a unique `name` (letters, digits, `-`, `_`, `.`; the
//! name `owner` is reserved for the hub's own user, who has every right)
//! and at least one recogniser; no two principals may claim the same
//! token, uid, gid, certificate name or the hub's secret:
//!
//! | key | recognises |
//! |---|---|
//! | `token_sha256` | clients proving a token whose SHA-256 (64 hex digits, [`Policy::hash_token`]) is listed |
//! | `unix_uid`, `unix_gid` | clients on the Unix socket without a proof, by their peer credentials (a uid match wins over a gid match) |
//! | `cert_cn`, `cert_san` | mutual-TLS clients whose verified certificate has this common name or subject alternative name |
//! | `hub_secret = true` | clients proving the hub's own secret (instead of the owner) |
//!
//! A connection is identified in this order: a token names its principal;
//! else a client certificate that matches a principal; else peer
//! credentials (without a proof) or the hub's secret; else the owner (the
//! hub's own uid without a proof, or the hub's secret) unless `owner =
//! "none"`.
//!
//! # Rights
//!
//! Everything not granted is denied (the owner has everything):
//!
//! | key | grants |
//! |---|---|
//! | `ids` | client ids it may register: globs (`*` any run of characters) with the templates `{uid}` (its Unix uid; a glob naming it needs one), `{principal}` and `{cn}` (its certificate's common name) |
//! | `publish` | `{ allow, deny }` subject patterns: a topic is allowed when an allow pattern matches it and no deny pattern does |
//! | `subscribe` | `{ allow, deny }`: a subscription (queue and service subscriptions too) is allowed when one allow pattern covers every topic it matches and no deny pattern matches any of them; a wider one is refused, not narrowed |
//! | `kv` | `{ read, write }` key prefixes (`""` is every key): get and watch a key under a read prefix, watch a prefix that starts with one; set, compare-and-set and delete under a write prefix |
//! | `send` | globs of client ids it may send direct messages and requests to, and of service names it may send requests to |
//! | `sessions` | session-engine frames (to peers `send` allows) |
//! | `standby` | opening a standby replication link (which mirrors every client's traffic) |
//! | `http` | registering through the HTTP long-poll gateway |
//! | `clients` | listing clients, watching presence, the hub's status |
//! | `broadcast` | broadcasting to every client |
//!
//! Always allowed: replies (the hub routes a reply only to the client that
//! sent the request), cancels, unsubscribes and unwatches, `Listen`, pings,
//! acknowledgements and goodbyes. A refused command is answered
//! `FORBIDDEN` with a message naming the subject, key or id, and the
//! connection stays. A client may take over an id only from a connection
//! of the same principal.
//!
//! Unknown keys, malformed patterns and conflicting recognisers are errors
//! naming the key and the line. Loading from a file ([`Policy::load`])
//! refuses a file writable by group or others, and a file that lists
//! tokens (their digests are the keys themselves) unless it belongs to the
//! hub's user and is closed to group and others (`chmod 600`).
//!
//! # Cost
//!
//! The owner returns at once. For others, a publish costs one hash lookup
//! for its principal and one match of the topic in a set compiled at load
//! time (literal patterns in a hash set, wildcard patterns in a trie), so
//! it does not grow with the number of rules.

mod admit;
mod build;
mod load;
pub mod pattern;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::path::PathBuf;
use std::sync::Mutex;

use switchboard_discovery::Secret;

use crate::ids::IdHasher;
use pattern::{GlobSet, SubjectSet, VerdictCache};

/// The name of the hub's own user, with every right (reserved).
pub const OWNER: &str = "owner";

/// Why a policy was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The text is not a valid policy.
    #[error("{}line {line}: {message}", in_file(.path))]
    Invalid {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// The line (from 1) of the offending key or value.
        line: usize,
        /// What is wrong, naming the key, and how to fix it.
        message: String,
    },
    /// The file cannot be read.
    #[error("cannot read policy file {}: {source}; check the path", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file may be changed by other users, or lists tokens and may be
    /// read by them.
    #[error("policy file {} has mode {mode:03o}, {why}; run `chmod 600 {}`", .path.display(), .path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// What is open to whom.
        why: &'static str,
    },
    /// The file lists tokens and belongs to another user.
    #[error("policy file {} lists tokens and is owned by uid {owner}, not by the hub's user (uid {uid}); copy it to a file of your own with mode 600", .path.display())]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The hub's effective uid.
        uid: u32,
    },
}

fn in_file(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!("policy file {}, ", p.display()))
        .unwrap_or_else(|| "policy ".into())
}

type NameMap<V> = HashMap<String, V, BuildHasherDefault<IdHasher>>;

/// What a principal may do, compiled.
#[derive(Debug, Default)]
struct Rights {
    /// Every right (the owner).
    all: bool,
    /// Client id globs, with templates.
    ids: Vec<String>,
    publish_allow: SubjectSet,
    publish_deny: SubjectSet,
    /// Publish verdicts (allow and not deny) on recent topics.
    publish_seen: VerdictCache,
    subscribe_allow: SubjectSet,
    subscribe_deny: SubjectSet,
    kv_read: Vec<String>,
    kv_write: Vec<String>,
    send: GlobSet,
    sessions: bool,
    standby: bool,
    http: bool,
    clients: bool,
    broadcast: bool,
}

/// One principal of the policy.
#[derive(Debug, Default)]
struct Principal {
    name: String,
    rights: Rights,
    /// Recognisers, for [`Policy::describe`].
    tokens: usize,
    uids: Vec<u32>,
    gids: Vec<u32>,
    cns: Vec<String>,
    sans: Vec<String>,
    hub_secret: bool,
    /// Some id glob names `{cn}`.
    uses_cn: bool,
}

/// Most certificate names remembered between `identify` and
/// `admit_client` (for `{cn}`); the memory is cleared when full.
const CN_MEMORY: usize = 1024;

/// A parsed permission policy; see the module docs. Share it as an
/// `Arc<Policy>` in [`HubConfig::admission`](crate::HubConfig::admission).
#[derive(Debug)]
pub struct Policy {
    /// The principals; index 0 is the owner.
    principals: Vec<Principal>,
    by_name: NameMap<usize>,
    /// Token key id → (key, principal).
    tokens: HashMap<[u8; switchboard_discovery::KEY_ID_LEN], (Secret, usize)>,
    uids: HashMap<u32, usize>,
    gids: HashMap<u32, usize>,
    cns: NameMap<usize>,
    sans: NameMap<usize>,
    /// The principal the hub's secret makes a client (`None`: the owner).
    hub_secret: Option<usize>,
    /// Whether the owner may connect at all (`owner = "all"`).
    owner_all: bool,
    /// The hub's own uid.
    hub_uid: u32,
    /// Connection address → certificate common name, from `identify` to
    /// `admit_client`, for principals whose ids name `{cn}`.
    cn_by_addr: Mutex<HashMap<String, String>>,
}

impl Policy {
    /// Parses a policy from TOML text; errors name the key and line.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        build::parse(text)
    }

    /// Reads and parses a policy file, refusing one that others may change
    /// or (when it lists tokens) read; see the module docs.
    pub fn load(path: &std::path::Path) -> Result<Policy, PolicyError> {
        load::load(path)
    }

    /// The digest a policy stores for `token` (`token_sha256`): SHA-256 of
    /// its UTF-8 bytes as 64 lower-case hex digits, the key
    /// [`Secret::from_token`] derives.
    pub fn hash_token(token: &str) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    /// Whether the policy lists any token.
    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The principals' names, the owner first.
    pub fn principals(&self) -> impl Iterator<Item = &str> {
        self.principals.iter().map(|p| p.name.as_str())
    }

    /// A summary of the principals for people, one line each: how each is
    /// recognised (never the token digests) and what it may do.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for p in &self.principals {
            out.push_str(&describe_one(self, p));
            out.push('\n');
        }
        out
    }
}

fn describe_one(policy: &Policy, p: &Principal) -> String {
    let mut by = Vec::new();
    if p.name == OWNER {
        if !policy.owner_all {
            return format!("{OWNER}: none (the hub's secret and own uid grant nothing)");
        }
        if policy.hub_secret.is_none() {
            by.push("the hub's secret".to_string());
        }
        by.push(format!("uid {} without a proof", policy.hub_uid));
        return format!("{OWNER}: {}; every right", by.join(", "));
    }
    if p.tokens > 0 {
        by.push(format!("{} token(s)", p.tokens));
    }
    let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    if !p.uids.is_empty() {
        by.push(format!("uid {}", list(&p.uids)));
    }
    if !p.gids.is_empty() {
        by.push(format!("gid {}", list(&p.gids)));
    }
    if !p.cns.is_empty() {
        by.push(format!("cert cn {}", p.cns.join(",")));
    }
    if !p.sans.is_empty() {
        by.push(format!("cert san {}", p.sans.join(",")));
    }
    if p.hub_secret {
        by.push("the hub's secret".into());
    }
    let r = &p.rights;
    let mut may = vec![format!("ids {}", r.ids.join(","))];
    let rule = |what: &str, allow: &SubjectSet, deny: &SubjectSet| {
        (!allow.is_empty()).then(|| {
            let mut s = format!("{what} {}", allow.patterns().join(","));
            if !deny.is_empty() {
                s.push_str(&format!(" except {}", deny.patterns().join(",")));
            }
            s
        })
    };
    may.extend(rule("publish", &r.publish_allow, &r.publish_deny));
    may.extend(rule("subscribe", &r.subscribe_allow, &r.subscribe_deny));
    let quoted = |v: &[String]| {
        v.iter()
            .map(|k| format!("{k:?}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    if !r.kv_read.is_empty() {
        may.push(format!("kv read {}", quoted(&r.kv_read)));
    }
    if !r.kv_write.is_empty() {
        may.push(format!("kv write {}", quoted(&r.kv_write)));
    }
    if !r.send.globs().is_empty() {
        may.push(format!("send {}", r.send.globs().join(",")));
    }
    for (on, what) in [
        (r.sessions, "sessions"),
        (r.standby, "standby"),
        (r.http, "http"),
        (r.clients, "clients"),
        (r.broadcast, "broadcast"),
    ] {
        if on {
            may.push(what.into());
        }
    }
    format!("{}: {}; {}", p.name, by.join(", "), may.join("; "))
}
