//! The discovery probe, both sides: the hub's `answer_probe` and the
//! client's `check_reply`.
//!
//! Input layout: byte 0 picks the mode, the rest is a protobuf `Frame`
//! body (mode 0 and 1) or a list of byte edits applied to a genuine reply
//! (mode 2). Checks: nothing panics; a hub answers only a well-formed probe
//! for its own service, and its reply verifies with the same secret and
//! fails with another; no arbitrary frame passes `check_reply`; a genuine
//! reply with edited bytes passes only if its identity, nonce and proof
//! are unchanged.

#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use switchboard_discovery::{answer_probe, check_reply, Secret};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{Frame, PROBE_MAGIC, PROTOCOL_VERSION};

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else { return };
    let addr: SocketAddr = "127.0.0.1:4567".parse().unwrap();
    let identity = proto::HubIdentity {
        service: "svc".into(),
        port: 4567,
        ..Default::default()
    };
    let secret = Secret::from_token("fuzz secret");
    let other = Secret::from_token("another secret");
    let client_nonce = [3u8; 16];
    match mode % 3 {
        0 => {
            let Ok(frame) = Frame::decode(rest) else {
                return;
            };
            let Some(Kind::Probe(probe)) = frame.kind else {
                return;
            };
            let reply = answer_probe(&probe, &identity, &secret);
            let well_formed = probe.magic == PROBE_MAGIC
                && probe.version == PROTOCOL_VERSION
                && probe.service == "svc"
                && probe.nonce.len() == 16;
            assert_eq!(reply.is_some(), well_formed);
            if let Some(reply) = reply {
                let frame = Frame::from(reply);
                let got = check_reply(frame.clone(), addr, "svc", &secret, &probe.nonce);
                assert_eq!(got.ok(), Some(identity.clone()));
                let err = check_reply(frame, addr, "svc", &other, &probe.nonce).unwrap_err();
                assert!(err.is_unverified());
            }
        }
        1 => {
            let Ok(frame) = Frame::decode(rest) else {
                return;
            };
            assert!(
                check_reply(frame, addr, "svc", &secret, &client_nonce).is_err(),
                "an arbitrary frame passed as a verified reply"
            );
        }
        _ => {
            let probe = proto::Probe {
                magic: PROBE_MAGIC,
                version: PROTOCOL_VERSION,
                service: "svc".into(),
                nonce: client_nonce.to_vec().into(),
            };
            let reply = answer_probe(&probe, &identity, &secret).unwrap();
            let mut bytes = Frame::from(reply.clone()).encode_to_vec();
            for edit in rest.chunks(3) {
                if let [pos_hi, pos_lo, xor] = edit {
                    let pos = usize::from(u16::from_be_bytes([*pos_hi, *pos_lo]));
                    if pos < bytes.len() {
                        bytes[pos] ^= xor;
                    } else {
                        bytes.push(*xor);
                    }
                }
            }
            let Ok(frame) = Frame::decode(bytes.as_slice()) else {
                return;
            };
            let same = matches!(&frame.kind, Some(Kind::ProbeReply(r))
                if r.identity == reply.identity && r.hub_nonce == reply.hub_nonce && r.proof == reply.proof);
            let ok = check_reply(frame, addr, "svc", &secret, &client_nonce).is_ok();
            assert_eq!(ok, same, "an edited reply verified");
        }
    }
});
