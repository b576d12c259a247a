//! The client side of the connection handshake, without I/O.
//!
//! ```text
//! client                                        hub
//!   ── Hello{protocol_version, client_id, client_nonce, ...} ─▶
//!   ◀─ Challenge{identity, hub_nonce, proof}
//!      check the proof over our nonce and the identity, the
//!      service (when asked) and the epoch; on failure send nothing more
//!   ── Auth{proof over both nonces and client_id} ───────────▶
//!   ◀─ Welcome{client_id, features, epoch, ...}   (a client)
//!   ◀─ the replication link                         (a standby)
//! ```
//!
//! [`ClientHandshake`] holds the nonce, the secret and what it has
//! learnt of the hub; it takes the hub's frames and says what to send next
//! ([`Step`]) or why the hub is refused ([`HandshakeError`]). It reads no
//! socket and no clock: the caller (the client over TCP, an in-memory
//! pipe or a WebSocket; a standby opening its replication link) writes
//! the frames it returns, reads the hub's, and owns the timeouts and the
//! frame size limits. The nonce is a parameter, so tests are repeatable.
//! The protocol is in `docs/PROTOCOL.md`, "Connection handshake"; the
//! proofs in [`proof`](crate::proof).

use switchboard_wire::{proto, Frame, Kind, NONCE_LEN, PROTOCOL_VERSION};

use crate::proof::{client_proof, verify_hub_proof};
use crate::secret::Secret;

/// Largest frame a client accepts from a hub before the hub has proven
/// itself (a `Challenge` is a few hundred bytes); the caller raises its
/// limit once the handshake is over.
pub const HANDSHAKE_MAX_FRAME: usize = 64 * 1024;

/// What the client says in its `Hello` and what it demands of the hub.
#[derive(Debug, Clone, Default)]
pub struct HandshakeParams {
    /// The id to register under (`Hello.client_id`); a standby sends its
    /// instance id.
    pub client_id: String,
    /// Free text shown in client lists (`Hello.agent`).
    pub agent: String,
    /// Features asked for (`Hello.features`, e.g.
    /// [`FEATURE_RELIABLE`](switchboard_wire::FEATURE_RELIABLE)).
    pub features: Vec<String>,
    /// Asks to resume a reliable session (`Hello.resume`).
    pub resume: Option<proto::Resume>,
    /// Opens a standby's replication link (`Hello.role` STANDBY): the hub
    /// answers `Auth` with the link, not with a `Welcome`.
    pub standby: bool,
    /// Refuses a hub whose identity names another service (for a hub
    /// found by service name).
    pub service: Option<String>,
    /// Highest hub epoch seen: a hub whose `Challenge` identity or
    /// `Welcome` is below it is an old primary, refused.
    pub min_epoch: u64,
}

/// The client's handshake: feed it the hub's frames with
/// [`on_frame`](ClientHandshake::on_frame).
///
/// ```
/// use switchboard_discovery::handshake::{ClientHandshake, HandshakeParams, Step};
/// use switchboard_discovery::{hub_proof, proto, Secret};
/// use switchboard_wire::{Frame, Kind};
///
/// let secret = Secret::from_token("t");
/// let params = HandshakeParams { client_id: "worker-1".into(), ..Default::default() };
/// let (mut handshake, hello) = ClientHandshake::new(params, &secret, [7; 16]);
/// let Some(Kind::Hello(hello)) = hello.kind else { unreachable!() };
///
/// // The hub's side, as a real hub computes it.
/// let identity = proto::HubIdentity { service: "svc".into(), ..Default::default() };
/// let proof = hub_proof(&secret, &hello.client_nonce, &[9; 16], &identity);
/// let challenge = Frame::from(proto::Challenge {
///     identity: Some(identity),
///     hub_nonce: vec![9; 16].into(),
///     proof: proof.to_vec().into(),
/// });
///
/// let Step::Send(auth) = handshake.on_frame(challenge)? else { unreachable!() };
/// assert_eq!(auth.kind_name(), "auth");
/// let Step::Done(welcomed) = handshake.on_frame(Frame::from(proto::Welcome::default()))? else {
///     unreachable!()
/// };
/// assert_eq!(welcomed.identity.service, "svc");
/// # Ok::<(), switchboard_discovery::handshake::HandshakeError>(())
/// ```
#[derive(Debug)]
pub struct ClientHandshake {
    /// `None`: peer authentication ([`ClientHandshake::new_peer`]).
    secret: Option<Secret>,
    nonce: [u8; NONCE_LEN],
    client_id: String,
    standby: bool,
    service: Option<String>,
    min_epoch: u64,
    state: State,
}

#[derive(Debug)]
enum State {
    /// `Hello` sent; the hub's `Challenge` is next.
    Challenge,
    /// `Auth` sent; the hub's `Welcome` is next (the identity is verified).
    Welcome(proto::HubIdentity),
    /// Over, one way or the other.
    Over,
}

/// What to do after a frame from the hub.
#[derive(Debug)]
pub enum Step {
    /// Send this frame (`Auth`), then feed the hub's answer.
    Send(Frame),
    /// Send this frame (`Auth`): the handshake is over. A standby's `Auth`
    /// is answered by the replication link, not by a `Welcome`; the hub's
    /// verified identity comes with it.
    SendLast(Frame, Box<proto::HubIdentity>),
    /// The hub welcomed the client: the handshake is over.
    Done(Box<Welcomed>),
}

/// A finished handshake.
#[derive(Debug, Clone, PartialEq)]
pub struct Welcomed {
    /// The hub's `Welcome`: features, epoch, limits, resume point.
    pub welcome: proto::Welcome,
    /// The identity the hub proved in its `Challenge`.
    pub identity: proto::HubIdentity,
}

/// Why the handshake failed: the refusals of `docs/PROTOCOL.md` (an
/// `Error` frame, a `Goodbye` in place of `Welcome`), a hub this client
/// refuses, or frames out of order. Nothing but `Hello` was sent to a hub
/// refused before `Auth` ([`Unverified`](Self::Unverified),
/// [`WrongService`](Self::WrongService), [`Fenced`](Self::Fenced) at the
/// `Challenge`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The hub sent an `Error` frame in place of `Challenge` or `Welcome`.
    #[error("refused: {}", .0.message)]
    Refused(proto::Error),
    /// The hub's proof does not verify: it does not know the secret (a
    /// wrong token, or an impostor).
    #[error("the hub could not prove it holds the secret")]
    Unverified,
    /// The hub proved the secret but serves another service.
    #[error("the hub serves service {found:?}, not {wanted:?}")]
    WrongService {
        /// The service asked for.
        wanted: String,
        /// The service in the hub's identity.
        found: String,
    },
    /// The hub said goodbye in place of `Welcome` (`SHUTTING_DOWN`: it is
    /// going away).
    #[error("the hub said goodbye during the handshake: {}", .0.message)]
    Goodbye(proto::Goodbye),
    /// The hub's epoch is below one already seen: an old primary that a
    /// standby replaced.
    #[error("the hub has epoch {epoch}, below epoch {seen} already seen")]
    Fenced {
        /// The hub's epoch.
        epoch: u64,
        /// The highest epoch seen before.
        seen: u64,
    },
    /// A frame of another kind than the handshake's next one.
    #[error("expected {expected} during the handshake, got {got}")]
    Unexpected {
        /// The kind the handshake waited for (`"challenge"`, `"welcome"`).
        expected: &'static str,
        /// The kind that came (see [`Frame::kind_name`]).
        got: &'static str,
    },
    /// A frame of a kind this version does not know.
    #[error("a frame of an unknown kind during the handshake")]
    UnknownKind,
}

impl ClientHandshake {
    /// Starts a handshake proving `secret`, with the fresh random `nonce`
    /// ([`nonce`](crate::nonce)); returns it and the `Hello` to send.
    pub fn new(
        params: HandshakeParams,
        secret: &Secret,
        nonce: [u8; NONCE_LEN],
    ) -> (ClientHandshake, Frame) {
        Self::start(params, Some(secret.clone()), nonce)
    }

    /// Starts a handshake without a secret, for a connection over a hub's
    /// Unix socket (peer authentication): the `Hello` names no key, the
    /// hub's proof is not checked and the `Auth` carries an empty proof, so
    /// the hub identifies the client by its peer credentials alone. Only
    /// for a socket whose owner the caller has checked: the owner check
    /// stands in for the hub's proof. The service and epoch are still
    /// checked.
    pub fn new_peer(params: HandshakeParams, nonce: [u8; NONCE_LEN]) -> (ClientHandshake, Frame) {
        Self::start(params, None, nonce)
    }

    fn start(
        params: HandshakeParams,
        secret: Option<Secret>,
        nonce: [u8; NONCE_LEN],
    ) -> (ClientHandshake, Frame) {
        let role = if params.standby {
            proto::Role::Standby
        } else {
            proto::Role::Unspecified
        };
        let hello = Frame::from(proto::Hello {
            protocol_version: PROTOCOL_VERSION,
            features: params.features,
            client_id: params.client_id.clone(),
            client_nonce: nonce.to_vec().into(),
            agent: params.agent,
            transport: String::new(),
            resume: params.resume,
            role: role as i32,
            key_id: secret
                .as_ref()
                .map(|s| s.key_id().to_vec().into())
                .unwrap_or_default(),
        });
        let handshake = ClientHandshake {
            secret,
            nonce,
            client_id: params.client_id,
            standby: params.standby,
            service: params.service,
            min_epoch: params.min_epoch,
            state: State::Challenge,
        };
        (handshake, hello)
    }

    /// The kind of frame the handshake waits for (`"challenge"`,
    /// `"welcome"`), or `None` when it is over.
    pub fn expects(&self) -> Option<&'static str> {
        match self.state {
            State::Challenge => Some("challenge"),
            State::Welcome(_) => Some("welcome"),
            State::Over => None,
        }
    }

    /// Takes the hub's next frame. After an error, or once the handshake
    /// is over, every frame is [`HandshakeError::Unexpected`].
    pub fn on_frame(&mut self, frame: Frame) -> Result<Step, HandshakeError> {
        let state = std::mem::replace(&mut self.state, State::Over);
        let kind = frame.kind.ok_or(HandshakeError::UnknownKind)?;
        match (state, kind) {
            (State::Challenge, Kind::Challenge(c)) => self.on_challenge(c),
            (State::Welcome(identity), Kind::Welcome(welcome)) => {
                self.check_epoch(welcome.epoch)?;
                Ok(Step::Done(Box::new(Welcomed { welcome, identity })))
            }
            (State::Challenge | State::Welcome(_), Kind::Error(e)) => {
                Err(HandshakeError::Refused(e))
            }
            (State::Welcome(_), Kind::Goodbye(g)) => Err(HandshakeError::Goodbye(g)),
            (state, kind) => Err(HandshakeError::Unexpected {
                expected: match state {
                    State::Challenge => "challenge",
                    State::Welcome(_) => "welcome",
                    State::Over => "nothing more",
                },
                got: Frame::from(kind).kind_name(),
            }),
        }
    }

    fn on_challenge(&mut self, challenge: proto::Challenge) -> Result<Step, HandshakeError> {
        let identity = challenge.identity.unwrap_or_default();
        if let Some(secret) = &self.secret {
            if !verify_hub_proof(
                secret,
                &self.nonce,
                &challenge.hub_nonce,
                &identity,
                &challenge.proof,
            ) {
                return Err(HandshakeError::Unverified);
            }
        }
        if let Some(wanted) = &self.service {
            if identity.service != *wanted {
                return Err(HandshakeError::WrongService {
                    wanted: wanted.clone(),
                    found: identity.service,
                });
            }
        }
        self.check_epoch(identity.epoch)?;
        let proof = match &self.secret {
            Some(secret) => {
                client_proof(secret, &challenge.hub_nonce, &self.nonce, &self.client_id).to_vec()
            }
            None => Vec::new(),
        };
        let auth = Frame::from(proto::Auth {
            proof: proof.into(),
        });
        if self.standby {
            return Ok(Step::SendLast(auth, Box::new(identity)));
        }
        self.state = State::Welcome(identity);
        Ok(Step::Send(auth))
    }

    fn check_epoch(&self, epoch: u64) -> Result<(), HandshakeError> {
        if epoch < self.min_epoch {
            return Err(HandshakeError::Fenced {
                epoch,
                seen: self.min_epoch,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
