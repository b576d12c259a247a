//! The probe handshake: one small binary probe, one bounded, verified
//! reply.
//!
//! A probe is an ordinary wire frame, `u32` big-endian length then the
//! protobuf `Frame{probe: Probe{magic, version, service, nonce}}`, at most
//! [`MAX_PROBE_LEN`] bytes in all. The length prefix begins with zero bytes,
//! so no text protocol mistakes it for a command. The reply is read with an
//! inbound limit of [`MAX_REPLY_LEN`] bytes: a peer announcing more, sending
//! junk, or sending endless data is cut off at once; a peer that echoes the
//! probe back sends a `Probe`, not a `ProbeReply`, and is rejected. Nothing
//! but the one probe is ever sent to a candidate.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use switchboard_wire::{
    encode_frame, proto, Frame, FrameCodec, Kind, WireError, NONCE_LEN, PROBE_MAGIC,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use crate::proof::{hub_proof, nonce, verify_hub_proof};
use crate::{validate_service, FoundHub, Secret, Via};

/// Largest encoded probe, length prefix included.
pub const MAX_PROBE_LEN: usize = 128;

/// Largest reply body accepted from a probed peer.
pub const MAX_REPLY_LEN: usize = 1024;

/// Why a candidate was not accepted as a hub.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The service name cannot be probed for.
    #[error("{0}")]
    InvalidService(String),
    /// Nothing accepted the connection.
    #[error("cannot connect to {addr}: {source}; no hub is listening there")]
    Connect {
        /// The candidate.
        addr: SocketAddr,
        /// The connect error.
        source: std::io::Error,
    },
    /// No complete reply within the probe timeout.
    #[error("{addr} did not answer the probe within {after:?}; it is not a hub, or a very busy one (raise the probe timeout)")]
    Timeout {
        /// The candidate.
        addr: SocketAddr,
        /// The timeout that expired.
        after: Duration,
    },
    /// The peer closed the connection without answering.
    #[error(
        "{addr} closed the connection without answering the probe; it is not a hub of this service"
    )]
    Closed {
        /// The candidate.
        addr: SocketAddr,
    },
    /// Reading or writing failed.
    #[error("i/o error probing {addr}: {source}")]
    Io {
        /// The candidate.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The peer sent something that is not a valid bounded frame.
    #[error(
        "{addr} answered with something that is not a probe reply ({source}); it is not a hub"
    )]
    Wire {
        /// The candidate.
        addr: SocketAddr,
        /// The framing error.
        source: WireError,
    },
    /// The peer sent a frame, but not a `ProbeReply` (an echo of the probe
    /// arrives as a `probe` frame).
    #[error("{addr} answered with a {kind} frame instead of a probe reply; it is not a hub")]
    Unexpected {
        /// The candidate.
        addr: SocketAddr,
        /// Kind of the frame received.
        kind: &'static str,
    },
    /// A `ProbeReply` that does not fit the probe (another service, another
    /// port, a bad nonce).
    #[error("{addr} answered for {reason}; it is not the hub asked for")]
    Mismatch {
        /// The candidate.
        addr: SocketAddr,
        /// What does not fit.
        reason: String,
    },
    /// A well-formed `ProbeReply` whose proof does not verify: a hub with
    /// another secret, or an impostor.
    #[error("{addr} answered as a hub but its proof did not verify; it uses another secret (check the token or the secret file) or is an impostor")]
    Unverified {
        /// The candidate.
        addr: SocketAddr,
    },
}

impl ProbeError {
    /// True if a peer answered in the probe format but could not be
    /// verified.
    pub fn is_unverified(&self) -> bool {
        matches!(self, ProbeError::Unverified { .. })
    }
}

/// Encodes the probe frame for `service` with `nonce`, length prefix
/// included. Fails for a service name that is invalid (see
/// [`validate_service`]) and so also for one that would make the probe
/// longer than [`MAX_PROBE_LEN`].
pub fn encode_probe(service: &str, nonce: &[u8; NONCE_LEN]) -> Result<Bytes, ProbeError> {
    validate_service(service).map_err(|e| ProbeError::InvalidService(e.to_string()))?;
    let frame = Frame::from(proto::Probe {
        magic: PROBE_MAGIC,
        version: PROTOCOL_VERSION,
        service: service.to_owned(),
        nonce: Bytes::copy_from_slice(nonce),
    });
    let bytes = encode_frame(&frame, MAX_PROBE_LEN - switchboard_wire::LENGTH_PREFIX_LEN)
        .map_err(|e| ProbeError::InvalidService(e.to_string()))?;
    debug_assert!(bytes.len() <= MAX_PROBE_LEN);
    Ok(bytes)
}

/// Hub side: the answer to `probe`, or `None` if it is not a probe for
/// this hub (wrong magic, version or service, or a nonce that is not 16
/// bytes); the hub then closes the connection without a word.
///
/// The reply carries only the hub's identity, a fresh hub nonce and the
/// hub proof (see [`crate::proof`]); never a secret.
pub fn answer_probe(
    probe: &proto::Probe,
    identity: &proto::HubIdentity,
    secret: &Secret,
) -> Option<proto::ProbeReply> {
    if probe.magic != PROBE_MAGIC
        || probe.version != PROTOCOL_VERSION
        || probe.service != identity.service
        || probe.nonce.len() != NONCE_LEN
    {
        return None;
    }
    let hub_nonce = nonce();
    let proof = hub_proof(secret, &probe.nonce, &hub_nonce, identity);
    Some(proto::ProbeReply {
        identity: Some(identity.clone()),
        hub_nonce: Bytes::copy_from_slice(&hub_nonce),
        proof: Bytes::copy_from_slice(&proof),
    })
}

/// Client side, sans-IO: checks a frame received in answer to a probe for
/// `service` with `client_nonce`, sent to `addr`. Accepts only a
/// `ProbeReply` for that service and port whose proof verifies.
pub fn check_reply(
    frame: Frame,
    addr: SocketAddr,
    service: &str,
    secret: &Secret,
    client_nonce: &[u8],
) -> Result<proto::HubIdentity, ProbeError> {
    let reply = match frame.kind {
        Some(Kind::ProbeReply(r)) => r,
        other => {
            let kind = Frame {
                seq: 0,
                acked: 0,
                kind: other,
            }
            .kind_name();
            return Err(ProbeError::Unexpected { addr, kind });
        }
    };
    let mismatch = |reason: String| ProbeError::Mismatch { addr, reason };
    let Some(identity) = reply.identity else {
        return Err(mismatch("no identity".into()));
    };
    if reply.hub_nonce.len() != NONCE_LEN {
        return Err(mismatch(format!(
            "a hub nonce of {} bytes",
            reply.hub_nonce.len()
        )));
    }
    if !verify_hub_proof(
        secret,
        client_nonce,
        &reply.hub_nonce,
        &identity,
        &reply.proof,
    ) {
        return Err(ProbeError::Unverified { addr });
    }
    if identity.service != service {
        return Err(mismatch(format!("service {:?}", identity.service)));
    }
    if identity.port != u32::from(addr.port()) {
        return Err(mismatch(format!("port {}", identity.port)));
    }
    Ok(identity)
}

/// Probes one candidate: connects, sends one probe, reads one bounded
/// reply and verifies it, all within `timeout`.
pub async fn probe(
    addr: SocketAddr,
    service: &str,
    secret: &Secret,
    timeout: Duration,
) -> Result<FoundHub, ProbeError> {
    validate_service(service).map_err(|e| ProbeError::InvalidService(e.to_string()))?;
    let work = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        probe_connected(stream, addr, service, secret).await
    };
    let identity =
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ProbeError::Timeout {
                addr,
                after: timeout,
            })??;
    Ok(FoundHub {
        addr,
        identity,
        via: Via::Direct,
        unix: None,
    })
}

/// Probes over an already connected stream (no timeout of its own).
pub(crate) async fn probe_connected(
    mut stream: TcpStream,
    addr: SocketAddr,
    service: &str,
    secret: &Secret,
) -> Result<proto::HubIdentity, ProbeError> {
    let client_nonce = nonce();
    let wire = encode_probe(service, &client_nonce)?;
    stream
        .write_all(&wire)
        .await
        .map_err(|source| ProbeError::Io { addr, source })?;
    let frame = read_reply(&mut stream, addr).await?;
    check_reply(frame, addr, service, secret, &client_nonce)
}

async fn read_reply(stream: &mut TcpStream, addr: SocketAddr) -> Result<Frame, ProbeError> {
    let mut codec = FrameCodec::new()
        .max_inbound(MAX_REPLY_LEN)
        .max_outbound(MAX_PROBE_LEN);
    let mut buf = BytesMut::with_capacity(256);
    let wire = |source| ProbeError::Wire { addr, source };
    loop {
        if let Some(frame) = codec.decode(&mut buf).map_err(wire)? {
            return Ok(frame);
        }
        // The codec has checked the announced length against the limit, so
        // the buffer never grows past one bounded frame.
        if buf.capacity() == buf.len() {
            buf.reserve(256);
        }
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                    ProbeError::Closed { addr }
                }
                _ => ProbeError::Io { addr, source },
            })?;
        if n == 0 {
            return match codec.decode_eof(&mut buf).map_err(wire)? {
                Some(frame) => Ok(frame),
                None => Err(ProbeError::Closed { addr }),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn identity(port: u16) -> proto::HubIdentity {
        proto::HubIdentity {
            service: "svc".into(),
            instance_id: "abc".into(),
            pid: 1,
            port: port.into(),
            epoch: 0,
            started_at_ms: 5,
            role: proto::Role::Primary as i32,
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn probe_is_small_binary_and_bounded() {
        let n = nonce();
        let long = "s".repeat(64);
        let wire = encode_probe(&long, &n).unwrap();
        assert!(wire.len() <= MAX_PROBE_LEN, "{}", wire.len());
        assert_eq!(wire[0], 0, "length prefix starts with a zero byte");
        let short = encode_probe("svc", &n).unwrap();
        assert_eq!(&short[..2], &[0, 0]);
        let too_long = "s".repeat(65);
        assert!(matches!(
            encode_probe(&too_long, &n),
            Err(ProbeError::InvalidService(_))
        ));
        let frame = Frame::decode(&short[4..]).unwrap();
        match frame.kind {
            Some(Kind::Probe(p)) => {
                assert_eq!(p.magic, PROBE_MAGIC);
                assert_eq!(p.version, PROTOCOL_VERSION);
                assert_eq!(p.service, "svc");
                assert_eq!(&p.nonce[..], &n);
            }
            other => panic!("{other:?}"),
        }
    }

    fn probe_msg(service: &str) -> (proto::Probe, [u8; NONCE_LEN]) {
        let n = nonce();
        (
            proto::Probe {
                magic: PROBE_MAGIC,
                version: PROTOCOL_VERSION,
                service: service.into(),
                nonce: Bytes::copy_from_slice(&n),
            },
            n,
        )
    }

    #[test]
    fn answer_round_trip_verifies() {
        let secret = Secret::from_token("t");
        let (p, n) = probe_msg("svc");
        let reply = answer_probe(&p, &identity(4000), &secret).unwrap();
        let id = check_reply(reply.into(), addr(4000), "svc", &secret, &n).unwrap();
        assert_eq!(id, identity(4000));
    }

    #[test]
    fn hub_ignores_foreign_probes() {
        let secret = Secret::from_token("t");
        let id = identity(4000);
        let (mut p, _) = probe_msg("svc");
        p.magic ^= 1;
        assert!(answer_probe(&p, &id, &secret).is_none());
        let (mut p, _) = probe_msg("svc");
        p.version = 99;
        assert!(answer_probe(&p, &id, &secret).is_none());
        let (p, _) = probe_msg("other");
        assert!(answer_probe(&p, &id, &secret).is_none());
        let (mut p, _) = probe_msg("svc");
        p.nonce = Bytes::from_static(b"short");
        assert!(answer_probe(&p, &id, &secret).is_none());
    }

    #[test]
    fn client_rejects_bad_replies() {
        let secret = Secret::from_token("t");
        let (p, n) = probe_msg("svc");
        let good = answer_probe(&p, &identity(4000), &secret).unwrap();

        // Wrong secret.
        let err = check_reply(
            good.clone().into(),
            addr(4000),
            "svc",
            &Secret::from_token("x"),
            &n,
        )
        .unwrap_err();
        assert!(err.is_unverified());
        // Replayed to another nonce.
        let err =
            check_reply(good.clone().into(), addr(4000), "svc", &secret, &nonce()).unwrap_err();
        assert!(err.is_unverified());
        // Answered from another port than it claims.
        let err = check_reply(good.clone().into(), addr(4001), "svc", &secret, &n).unwrap_err();
        assert!(matches!(err, ProbeError::Mismatch { .. }), "{err}");
        // An echo of the probe.
        let err = check_reply(p.clone().into(), addr(4000), "svc", &secret, &n).unwrap_err();
        assert!(
            matches!(err, ProbeError::Unexpected { kind: "probe", .. }),
            "{err}"
        );
        // Tampered identity.
        let mut bad = good.clone();
        bad.identity.as_mut().unwrap().pid = 2;
        assert!(check_reply(bad.into(), addr(4000), "svc", &secret, &n)
            .unwrap_err()
            .is_unverified());
        // Missing identity or short nonce.
        let mut bad = good.clone();
        bad.identity = None;
        assert!(matches!(
            check_reply(bad.into(), addr(4000), "svc", &secret, &n),
            Err(ProbeError::Mismatch { .. })
        ));
        let mut bad = good;
        bad.hub_nonce = Bytes::from_static(b"x");
        assert!(matches!(
            check_reply(bad.into(), addr(4000), "svc", &secret, &n),
            Err(ProbeError::Mismatch { .. })
        ));
    }
}
