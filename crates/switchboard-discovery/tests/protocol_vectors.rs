//! The worked examples of `docs/PROTOCOL.md` ("Test vector"), read from the
//! document itself and checked against the byte layouts it describes and
//! against the Rust code: a client in another language that reproduces
//! them derives keys, proofs and frames as the hub does. A change to the
//! document or to the code that breaks one fails here.

use bytes::BytesMut;
use hmac::{Hmac, Mac};
use prost::Message;
use sha2::{Digest, Sha256};
use switchboard_discovery::{
    client_proof, encode_probe, hub_proof, proto, verify_client_proof, verify_hub_proof, Secret,
};
use switchboard_wire::{encode_frame, Frame, FrameCodec, Kind, DEFAULT_MAX_FRAME};
use tokio_util::codec::Decoder;

/// The "Test vector" section of the protocol document.
fn section() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(path).expect("docs/PROTOCOL.md is readable");
    let start = doc
        .find("\n## Test vector\n")
        .expect("the document has a \"Test vector\" section");
    let rest = &doc[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_owned()
}

/// The value of the table row labelled `label`, without its backticks.
fn row(section: &str, label: &str) -> String {
    let head = format!("| {label} | ");
    let line = section
        .lines()
        .find(|l| l.starts_with(&head))
        .unwrap_or_else(|| panic!("no row '{label}' in the Test vector section"));
    line[head.len()..]
        .trim_end_matches('|')
        .trim()
        .trim_matches('`')
        .to_owned()
}

/// The bytes of the listing marked `<!-- vector: name -->`: on each line,
/// the hex before the first two spaces (single spaces inside are
/// ignored), the rest being a comment.
fn listing(section: &str, name: &str) -> Vec<u8> {
    let marker = format!("<!-- vector: {name} -->");
    let at = section
        .find(&marker)
        .unwrap_or_else(|| panic!("no listing '{name}' in the Test vector section"));
    let mut lines = section[at + marker.len()..].lines().skip(1);
    assert_eq!(
        lines.next(),
        Some("```text"),
        "listing '{name}' opens a text block"
    );
    let mut bytes = Vec::new();
    for line in lines.take_while(|l| *l != "```") {
        let code = line.trim_start().split("  ").next().unwrap_or_default();
        let digits: String = code.split(' ').collect();
        assert!(
            !digits.is_empty(),
            "listing '{name}': a line without bytes: {line:?}"
        );
        bytes.extend(unhex(&digits));
    }
    bytes
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd number of hex digits: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|_| panic!("not hex: {s}")))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `lp(x)`: a `u32` big-endian length, then the bytes.
fn lp(x: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(x.len())
        .expect("short")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(x);
    out
}

fn hmac(key: &[u8], input: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(input);
    mac.finalize().into_bytes().to_vec()
}

const TOKEN: &str = "correct horse battery staple";

fn client_nonce() -> Vec<u8> {
    (0x00..0x10).collect()
}

fn hub_nonce() -> Vec<u8> {
    (0x10..0x20).collect()
}

/// The identity of the document's table.
fn identity() -> proto::HubIdentity {
    proto::HubIdentity {
        service: "switchboard".into(),
        instance_id: "0123456789abcdef".into(),
        pid: 4242,
        port: 53211,
        epoch: 1,
        started_at_ms: 1_700_000_000_000,
        role: proto::Role::Primary as i32,
    }
}

#[test]
fn the_key_is_the_sha256_of_the_token() {
    let s = section();
    assert_eq!(row(&s, "token"), TOKEN);
    assert_eq!(
        row(&s, "key = SHA-256(token)"),
        hex(&Sha256::digest(TOKEN.as_bytes()))
    );
    assert_eq!(row(&s, "client nonce"), hex(&client_nonce()));
    assert_eq!(row(&s, "hub nonce"), hex(&hub_nonce()));
}

#[test]
fn the_key_id_is_the_head_of_a_labelled_digest() {
    let s = section();
    let key = Sha256::digest(TOKEN.as_bytes());
    let digest = Sha256::new()
        .chain_update(b"switchboard key id")
        .chain_update(key)
        .finalize();
    let documented = row(
        &s,
        "key id = SHA-256(\"switchboard key id\" \\|\\| key)[..8]",
    );
    assert_eq!(documented, hex(&digest[..8]));
    assert_eq!(
        documented,
        hex(&switchboard_discovery::Secret::from_token(TOKEN).key_id())
    );
}

#[test]
fn proof_inputs_follow_the_layout_and_give_the_documented_proofs() {
    let s = section();
    let key = unhex(&row(&s, "key = SHA-256(token)"));
    let secret = Secret::from_token(TOKEN);
    let (cn, hn, id) = (client_nonce(), hub_nonce(), identity());

    let mut hub_input = [
        lp(b"switchboard/v1/hub-proof"),
        lp(&cn),
        lp(&hn),
        lp(id.service.as_bytes()),
        lp(id.instance_id.as_bytes()),
    ]
    .concat();
    hub_input.extend_from_slice(&id.pid.to_be_bytes());
    hub_input.extend_from_slice(&id.port.to_be_bytes());
    hub_input.extend_from_slice(&id.epoch.to_be_bytes());
    hub_input.extend_from_slice(&id.started_at_ms.to_be_bytes());
    hub_input.extend_from_slice(&(id.role as u32).to_be_bytes());
    assert_eq!(hex(&listing(&s, "hub-proof-input")), hex(&hub_input));
    let proof = row(&s, "hub proof");
    assert_eq!(hex(&hmac(&key, &hub_input)), proof);
    assert_eq!(hex(&hub_proof(&secret, &cn, &hn, &id)), proof);
    assert!(verify_hub_proof(&secret, &cn, &hn, &id, &unhex(&proof)));

    let client_input = [
        lp(b"switchboard/v1/client-proof"),
        lp(&hn),
        lp(&cn),
        lp(b"worker-1"),
    ]
    .concat();
    assert_eq!(hex(&listing(&s, "client-proof-input")), hex(&client_input));
    let proof = row(&s, "client proof, client id `worker-1`");
    assert_eq!(hex(&hmac(&key, &client_input)), proof);
    assert_eq!(hex(&client_proof(&secret, &hn, &cn, "worker-1")), proof);
    assert!(verify_client_proof(
        &secret,
        &hn,
        &cn,
        "worker-1",
        &unhex(&proof)
    ));

    let token_input = [
        lp(b"switchboard/v1/client-proof"),
        lp(b"switchboard/v1/http-token"),
        lp(b""),
        lp(b"http"),
    ]
    .concat();
    assert_eq!(hex(&listing(&s, "http-token-input")), hex(&token_input));
    let token = row(&s, "HTTP bearer token");
    assert_eq!(hex(&hmac(&key, &token_input)), token);
    // `switchboard_hub::http_token` is this MAC in lower-case hex.
    assert_eq!(
        hex(&client_proof(
            &secret,
            b"switchboard/v1/http-token",
            b"",
            "http"
        )),
        token
    );
}

/// Encodes `frame` as sent on TCP, and checks that prost writes the same.
fn as_sent(frame: &Frame) -> Vec<u8> {
    let sent = encode_frame(frame, DEFAULT_MAX_FRAME).expect("encodes");
    let body = frame.encode_to_vec();
    let mut prost = u32::try_from(body.len())
        .expect("short")
        .to_be_bytes()
        .to_vec();
    prost.extend_from_slice(&body);
    assert_eq!(
        hex(&sent),
        hex(&prost),
        "the codec writes what prost writes"
    );
    sent.to_vec()
}

/// Decodes a listing as a hub or client would read it.
fn decoded(bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = FrameCodec::new()
        .decode(&mut buf)
        .expect("decodes")
        .expect("a whole frame");
    assert!(buf.is_empty(), "the length prefix covers the whole listing");
    frame
}

#[test]
fn frames_are_sent_as_listed() {
    let s = section();
    let secret = Secret::from_token(TOKEN);
    let (cn, hn, id) = (client_nonce(), hub_nonce(), identity());

    let nonce: [u8; 16] = cn.clone().try_into().expect("16 bytes");
    let probe = listing(&s, "probe");
    assert_eq!(
        hex(&probe),
        hex(&encode_probe("switchboard", &nonce).expect("probe"))
    );
    assert!(probe.len() <= 128, "a probe is at most 128 bytes");

    let hello = Frame::from(proto::Hello {
        protocol_version: 1,
        features: vec!["reliable".into(), "listen".into()],
        client_id: "worker-1".into(),
        client_nonce: cn.clone().into(),
        agent: "example/1.0".into(),
        ..Default::default()
    });
    let listed = listing(&s, "hello");
    assert_eq!(hex(&listed), hex(&as_sent(&hello)));
    assert_eq!(decoded(&listed), hello);

    let challenge = Frame::from(proto::Challenge {
        identity: Some(id.clone()),
        hub_nonce: hn.clone().into(),
        proof: hub_proof(&secret, &cn, &hn, &id).to_vec().into(),
    });
    let listed = listing(&s, "challenge");
    assert_eq!(hex(&listed), hex(&as_sent(&challenge)));
    match decoded(&listed).kind {
        Some(Kind::Challenge(c)) => {
            let identity = c.identity.expect("an identity");
            assert!(verify_hub_proof(
                &secret,
                &cn,
                &c.hub_nonce,
                &identity,
                &c.proof
            ));
        }
        other => panic!("not a challenge: {other:?}"),
    }

    let auth = Frame::from(proto::Auth {
        proof: client_proof(&secret, &hn, &cn, "worker-1").to_vec().into(),
    });
    let listed = listing(&s, "auth");
    assert_eq!(hex(&listed), hex(&as_sent(&auth)));
    assert_eq!(decoded(&listed), auth);

    let welcome = Frame::from(proto::Welcome {
        client_id: "worker-1".into(),
        features: vec!["reliable".into(), "listen".into()],
        epoch: 1,
        last_received: 0,
        max_frame: 16 * 1024 * 1024,
        keepalive_ms: 30_000,
        identity: Some(id),
    });
    let listed = listing(&s, "welcome");
    assert_eq!(hex(&listed), hex(&as_sent(&welcome)));
    assert_eq!(decoded(&listed), welcome);

    let publish = Frame::from(proto::Publish {
        id: 7,
        topic: "orders.eu".into(),
        payload: "hi".into(),
        ..Default::default()
    })
    .with_seq(5);
    let publish = Frame {
        acked: 3,
        ..publish
    };
    let listed = listing(&s, "publish");
    assert_eq!(hex(&listed), hex(&as_sent(&publish)));
    assert_eq!(decoded(&listed), publish);
}
