//! The admission seam: the one place where the hub asks who a connection
//! is, whether a client may register and whether a command it sent may run.
//!
//! Without an [`Admission`] (the default, single-user mode: whoever holds
//! the hub's secret, or connects over the hub's Unix socket as the hub's
//! own user, may do everything) the hub asks nothing and pays nothing per
//! frame. A permission policy implements the trait and is set with
//! [`Router::set_admission`](super::Router::set_admission) (the connection
//! code holds the same object):
//!
//! - [`Admission::token`] runs in the handshake: which key (and principal)
//!   a `Hello.key_id` names.
//! - [`Admission::identify`] runs when the handshake is over: which
//!   principal a connection is, from what it proved ([`Proof`]) and what
//!   its transport knows of it ([`Peer`]: Unix peer credentials, a TLS
//!   client certificate). A refusal closes the connection.
//! - [`Admission::admit_client`] runs before a connection is registered
//!   (a new client or a resume); a refusal closes that connection with the
//!   refusal as its last frame and changes nothing else.
//! - [`Admission::admit_takeover`] runs when the id is held (live or
//!   detached) by another connection; a refusal closes the newcomer and
//!   leaves the holder alone.
//! - [`Admission::admit`] runs before each command from a registered client
//!   is dispatched; a refusal answers the command with
//!   `Error{id, code, message}` (`id` the command's correlation id, 0 for a
//!   reply) and drops it; the connection stays up.
//!
//! The implementation must be quick and must not block: `admit` runs on the
//! router task for every frame. It sees the registration's
//! [`ClientInfo`](proto::ClientInfo) (`admit_client`, `admit_takeover`),
//! or for each command a [`ClientRef`] borrowed from it (`admit`), which
//! carry the principal and the Unix uid [`Admission::identify`]
//! established.

use std::fmt::Debug;

use switchboard_discovery::Secret;
use switchboard_wire::{proto, ErrorCode, Frame};

/// A registered client as [`Admission::admit`] sees it for each command:
/// borrowed from what the registry keeps (the registry packs a client's
/// [`ClientInfo`](proto::ClientInfo) into one allocation, so no
/// `ClientInfo` exists to lend; `From<&ClientInfo>` makes one of a
/// `ClientInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRef<'a> {
    /// Its client id.
    pub client_id: &'a str,
    /// The principal it authenticated as; empty in single-user mode.
    pub principal: &'a str,
    /// Its transport ([`Peer::transport`] when it registered).
    pub transport: &'a str,
    /// The Unix user id of its process, when it connected over the hub's
    /// Unix socket.
    pub uid: Option<u32>,
}

impl<'a> From<&'a proto::ClientInfo> for ClientRef<'a> {
    fn from(info: &'a proto::ClientInfo) -> ClientRef<'a> {
        ClientRef {
            client_id: &info.client_id,
            principal: &info.principal,
            transport: &info.transport,
            uid: info.uid,
        }
    }
}

/// Unix peer credentials of a connection on the hub's Unix socket, as the
/// kernel reports them (`SO_PEERCRED`, `getpeereid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixCred {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Process id, where the platform reports it.
    pub pid: Option<u32>,
}

/// The identity in a verified TLS client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// The subject's common name (empty when it has none).
    pub common_name: String,
    /// The subject alternative names: DNS names, and e-mail and URI names
    /// as written.
    pub sans: Vec<String>,
}

/// What the transport knows of a connection before the handshake.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The transport's name (`tcp`, `tls`, `unix`, `ws`, `wss`, `http`,
    /// `memory`).
    pub transport: &'static str,
    /// The remote address as text.
    pub addr: String,
    /// Peer credentials (the Unix socket only).
    pub unix: Option<UnixCred>,
    /// The verified client certificate (mutual TLS only).
    pub cert: Option<CertIdentity>,
}

impl Peer {
    /// A plain TCP connection from `addr` (a socket address).
    pub fn tcp(addr: impl std::fmt::Display) -> Peer {
        Peer {
            transport: "tcp",
            addr: addr.to_string(),
            unix: None,
            cert: None,
        }
    }
}

/// What a connection proved in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// It holds the hub's own secret.
    HubSecret,
    /// It holds the token of this principal ([`Admission::token`]).
    Token(String),
    /// Nothing: it connected over the Unix socket without a proof, and only
    /// its peer credentials speak for it.
    PeerOnly,
}

/// A key a policy knows by its id, and whose it is.
#[derive(Debug, Clone)]
pub struct TokenKey {
    /// The key.
    pub secret: Secret,
    /// The principal that holds it.
    pub principal: String,
}

/// Who a connection is, as [`Admission::identify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The principal's name (carried in `ClientInfo.principal`).
    pub principal: String,
    /// The Unix uid, when peer credentials gave one (`ClientInfo.uid`).
    pub uid: Option<u32>,
}

/// Why a client or a command was refused; the client is told `code` and
/// `message` in an `Error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error code (usually [`ErrorCode::Forbidden`]).
    pub code: ErrorCode,
    /// What was refused and why, naming the subject, key or id.
    pub message: String,
}

impl Refusal {
    /// A `FORBIDDEN` refusal.
    pub fn forbidden(message: impl Into<String>) -> Refusal {
        Refusal {
            code: ErrorCode::Forbidden,
            message: message.into(),
        }
    }
}

/// Decides who connections are and what clients may do. See the module
/// docs.
pub trait Admission: Send + Sync + Debug {
    /// The key named by `key_id` (`Hello.key_id`), if it is a token this
    /// admission knows; `None` means the hub's own secret.
    fn token(&self, key_id: &[u8]) -> Option<TokenKey> {
        let _ = key_id;
        None
    }

    /// Which principal a connection is, from its proof and its transport.
    fn identify(&self, peer: &Peer, proof: &Proof) -> Result<Identity, Refusal> {
        let _ = proof;
        Ok(Identity {
            principal: String::new(),
            uid: peer.unix.map(|c| c.uid),
        })
    }

    /// Whether `info` may register (or resume) on this hub.
    fn admit_client(&self, info: &proto::ClientInfo) -> Result<(), Refusal> {
        let _ = info;
        Ok(())
    }

    /// Whether a connection that is `identity` may open a standby
    /// replication link (which mirrors every client's traffic).
    fn admit_standby(&self, identity: &Identity) -> Result<(), Refusal> {
        let _ = identity;
        Ok(())
    }

    /// Whether `new` may take over the id `holder` holds (live, or
    /// detached and waiting for a resume).
    fn admit_takeover(
        &self,
        new: &proto::ClientInfo,
        holder: &proto::ClientInfo,
    ) -> Result<(), Refusal> {
        let _ = (new, holder);
        Ok(())
    }

    /// Whether the registered client `client` may run `command`.
    fn admit(&self, client: ClientRef<'_>, command: &Frame) -> Result<(), Refusal> {
        let _ = (client, command);
        Ok(())
    }
}

/// Admits every client and every command: the single-user mode, and what
/// a router without an [`Admission`] does.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenAdmission;

impl Admission for OpenAdmission {}
