//! HMAC-SHA256 proofs of hubs and clients, verified in constant time.
//!
//! Both proofs are HMAC-SHA256 keyed by the 32-byte [`Secret`] key over a
//! domain-separated encoding in which every variable-length field is
//! length-prefixed (`lp(x)` = `u32` big-endian length, then the bytes) and
//! every integer is big-endian:
//!
//! ```text
//! hub proof    = HMAC(key, lp("switchboard/v1/hub-proof")
//!                      || lp(client_nonce) || lp(hub_nonce)
//!                      || lp(service) || lp(instance_id)
//!                      || u32 pid || u32 port || u64 epoch
//!                      || u64 started_at_ms || u32 role)
//! client proof = HMAC(key, lp("switchboard/v1/client-proof")
//!                      || lp(hub_nonce) || lp(client_nonce) || lp(client_id))
//! ```
//!
//! The domain labels keep a hub proof from ever passing as a client proof
//! (and the other way round); the length prefixes keep field boundaries
//! unambiguous. The hub proof is used both in `ProbeReply` (the probe nonce
//! is the client nonce) and in `Challenge` (the `Hello` nonce is the client
//! nonce).

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use switchboard_wire::{proto, NONCE_LEN};

use crate::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Domain label of hub proofs.
pub const HUB_PROOF_DOMAIN: &[u8] = b"switchboard/v1/hub-proof";
/// Domain label of client proofs.
pub const CLIENT_PROOF_DOMAIN: &[u8] = b"switchboard/v1/client-proof";
/// Length of a proof in bytes.
pub const PROOF_LEN: usize = 32;

fn mac(secret: &Secret) -> HmacSha256 {
    // HMAC accepts keys of any length; 32 bytes is always valid.
    <HmacSha256 as Mac>::new_from_slice(secret.key()).expect("hmac accepts any key length")
}

fn lp(mac: &mut HmacSha256, bytes: &[u8]) {
    // Field lengths are bounded by frame limits; saturate rather than wrap
    // for anything absurd so distinct inputs never alias silently.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    mac.update(&len.to_be_bytes());
    mac.update(bytes);
}

fn hub_mac(
    secret: &Secret,
    client_nonce: &[u8],
    hub_nonce: &[u8],
    id: &proto::HubIdentity,
) -> HmacSha256 {
    let mut m = mac(secret);
    lp(&mut m, HUB_PROOF_DOMAIN);
    lp(&mut m, client_nonce);
    lp(&mut m, hub_nonce);
    lp(&mut m, id.service.as_bytes());
    lp(&mut m, id.instance_id.as_bytes());
    m.update(&id.pid.to_be_bytes());
    m.update(&id.port.to_be_bytes());
    m.update(&id.epoch.to_be_bytes());
    m.update(&id.started_at_ms.to_be_bytes());
    m.update(&(id.role as u32).to_be_bytes());
    m
}

fn client_mac(
    secret: &Secret,
    hub_nonce: &[u8],
    client_nonce: &[u8],
    client_id: &str,
) -> HmacSha256 {
    let mut m = mac(secret);
    lp(&mut m, CLIENT_PROOF_DOMAIN);
    lp(&mut m, hub_nonce);
    lp(&mut m, client_nonce);
    lp(&mut m, client_id.as_bytes());
    m
}

/// The hub's proof over both nonces and its identity.
pub fn hub_proof(
    secret: &Secret,
    client_nonce: &[u8],
    hub_nonce: &[u8],
    id: &proto::HubIdentity,
) -> [u8; PROOF_LEN] {
    hub_mac(secret, client_nonce, hub_nonce, id)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a hub proof in constant time.
pub fn verify_hub_proof(
    secret: &Secret,
    client_nonce: &[u8],
    hub_nonce: &[u8],
    id: &proto::HubIdentity,
    proof: &[u8],
) -> bool {
    hub_mac(secret, client_nonce, hub_nonce, id)
        .verify_slice(proof)
        .is_ok()
}

/// The client's proof over both nonces and its client id.
pub fn client_proof(
    secret: &Secret,
    hub_nonce: &[u8],
    client_nonce: &[u8],
    client_id: &str,
) -> [u8; PROOF_LEN] {
    client_mac(secret, hub_nonce, client_nonce, client_id)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a client proof in constant time.
pub fn verify_client_proof(
    secret: &Secret,
    hub_nonce: &[u8],
    client_nonce: &[u8],
    client_id: &str,
    proof: &[u8],
) -> bool {
    client_mac(secret, hub_nonce, client_nonce, client_id)
        .verify_slice(proof)
        .is_ok()
}

/// A fresh random nonce of [`NONCE_LEN`] bytes.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut n);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> proto::HubIdentity {
        proto::HubIdentity {
            service: "svc".into(),
            instance_id: "abc123".into(),
            pid: 42,
            port: 50000,
            epoch: 7,
            started_at_ms: 1_700_000_000_000,
            role: proto::Role::Primary as i32,
        }
    }

    #[test]
    fn hub_proof_verifies_and_binds_every_field() {
        let s = Secret::from_token("t");
        let (cn, hn) = (nonce(), nonce());
        let id = identity();
        let p = hub_proof(&s, &cn, &hn, &id);
        assert!(verify_hub_proof(&s, &cn, &hn, &id, &p));
        assert!(!verify_hub_proof(
            &Secret::from_token("u"),
            &cn,
            &hn,
            &id,
            &p
        ));
        assert!(!verify_hub_proof(&s, &hn, &cn, &id, &p), "nonces swapped");
        assert!(!verify_hub_proof(&s, &cn, &hn, &id, &p[..31]), "truncated");
        let mutations: Vec<fn(&mut proto::HubIdentity)> = vec![
            |i| i.service.push('x'),
            |i| i.instance_id.push('x'),
            |i| i.pid += 1,
            |i| i.port += 1,
            |i| i.epoch += 1,
            |i| i.started_at_ms += 1,
            |i| i.role = proto::Role::Standby as i32,
        ];
        for m in mutations {
            let mut other = id.clone();
            m(&mut other);
            assert!(!verify_hub_proof(&s, &cn, &hn, &other, &p), "{other:?}");
        }
    }

    #[test]
    fn length_prefixes_keep_fields_apart() {
        let s = Secret::from_token("t");
        let mut a = identity();
        a.service = "ab".into();
        a.instance_id = "c".into();
        let mut b = identity();
        b.service = "a".into();
        b.instance_id = "bc".into();
        assert_ne!(hub_proof(&s, b"n", b"m", &a), hub_proof(&s, b"n", b"m", &b));
    }

    #[test]
    fn client_proof_is_not_a_hub_proof() {
        let s = Secret::from_token("t");
        let (cn, hn) = (nonce(), nonce());
        let p = client_proof(&s, &hn, &cn, "worker-1");
        assert!(verify_client_proof(&s, &hn, &cn, "worker-1", &p));
        assert!(!verify_client_proof(&s, &hn, &cn, "worker-2", &p));
        assert!(!verify_client_proof(&s, &cn, &hn, "worker-1", &p));
        assert!(!verify_hub_proof(&s, &cn, &hn, &identity(), &p));
    }

    #[test]
    fn nonces_are_fresh() {
        assert_ne!(nonce(), nonce());
    }
}
