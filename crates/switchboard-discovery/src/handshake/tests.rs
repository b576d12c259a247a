//! The handshake against scripted hub frames: no sockets, fixed nonces.

use switchboard_wire::{ErrorCode, FEATURE_LISTEN, FEATURE_RELIABLE, FEATURE_RESUMED};

use super::*;
use crate::proof::{hub_proof, verify_client_proof};

const CLIENT_NONCE: [u8; NONCE_LEN] = [1; NONCE_LEN];
const HUB_NONCE: [u8; NONCE_LEN] = [2; NONCE_LEN];

fn secret() -> Secret {
    Secret::from_token("t")
}

fn identity(epoch: u64) -> proto::HubIdentity {
    proto::HubIdentity {
        service: "svc".into(),
        instance_id: "hub-1".into(),
        pid: 42,
        port: 50_000,
        epoch,
        started_at_ms: 1_700_000_000_000,
        role: proto::Role::Primary as i32,
    }
}

fn params() -> HandshakeParams {
    HandshakeParams {
        client_id: "worker-1".into(),
        agent: "tests".into(),
        features: vec![FEATURE_RELIABLE.into(), FEATURE_LISTEN.into()],
        ..Default::default()
    }
}

/// A `Challenge` as a hub holding `secret` sends it.
fn challenge(secret: &Secret, id: &proto::HubIdentity) -> Frame {
    Frame::from(proto::Challenge {
        identity: Some(id.clone()),
        hub_nonce: HUB_NONCE.to_vec().into(),
        proof: hub_proof(secret, &CLIENT_NONCE, &HUB_NONCE, id)
            .to_vec()
            .into(),
    })
}

fn start(params: HandshakeParams) -> (ClientHandshake, proto::Hello) {
    let (handshake, hello) = ClientHandshake::new(params, &secret(), CLIENT_NONCE);
    let Some(Kind::Hello(hello)) = hello.kind else {
        panic!("the first frame is not a Hello: {hello:?}");
    };
    (handshake, hello)
}

fn auth_of(step: Step) -> proto::Auth {
    match step {
        Step::Send(Frame {
            kind: Some(Kind::Auth(auth)),
            ..
        }) => auth,
        other => panic!("expected to send Auth, got {other:?}"),
    }
}

#[test]
fn a_genuine_hub_gets_our_proof_and_welcomes_us() {
    let (mut handshake, hello) = start(params());
    assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
    assert_eq!(hello.client_id, "worker-1");
    assert_eq!(&hello.client_nonce[..], &CLIENT_NONCE);
    assert_eq!(hello.agent, "tests");
    assert_eq!(hello.features, [FEATURE_RELIABLE, FEATURE_LISTEN]);
    assert_eq!(hello.role, proto::Role::Unspecified as i32);
    assert!(hello.transport.is_empty() && hello.resume.is_none());
    assert_eq!(handshake.expects(), Some("challenge"));

    let auth = auth_of(
        handshake
            .on_frame(challenge(&secret(), &identity(3)))
            .unwrap(),
    );
    assert!(verify_client_proof(
        &secret(),
        &HUB_NONCE,
        &CLIENT_NONCE,
        "worker-1",
        &auth.proof
    ));
    assert_eq!(handshake.expects(), Some("welcome"));

    let welcome = proto::Welcome {
        client_id: "worker-1".into(),
        epoch: 3,
        max_frame: 1024,
        ..Default::default()
    };
    match handshake.on_frame(Frame::from(welcome.clone())).unwrap() {
        Step::Done(done) => assert_eq!(
            *done,
            Welcomed {
                welcome,
                identity: identity(3)
            }
        ),
        other => panic!("expected Done, got {other:?}"),
    }
    assert_eq!(handshake.expects(), None);
}

#[test]
fn the_same_nonce_gives_the_same_frames() {
    let run = || {
        let (mut handshake, hello) = ClientHandshake::new(params(), &secret(), CLIENT_NONCE);
        let auth = handshake.on_frame(challenge(&secret(), &identity(1)));
        (hello, format!("{auth:?}"))
    };
    assert_eq!(run(), run());
}

#[test]
fn a_resumed_session_is_asked_for_and_its_welcome_passed_on() {
    let resume = proto::Resume {
        last_received: 17,
        epoch: 2,
    };
    let (mut handshake, hello) = start(HandshakeParams {
        resume: Some(resume),
        min_epoch: 2,
        ..params()
    });
    assert_eq!(hello.resume, Some(resume));
    auth_of(
        handshake
            .on_frame(challenge(&secret(), &identity(2)))
            .unwrap(),
    );
    let welcome = proto::Welcome {
        client_id: "worker-1".into(),
        features: vec![FEATURE_RELIABLE.into(), FEATURE_RESUMED.into()],
        epoch: 2,
        last_received: 9,
        keepalive_ms: 10_000,
        identity: Some(identity(2)),
        ..Default::default()
    };
    let Step::Done(done) = handshake.on_frame(Frame::from(welcome.clone())).unwrap() else {
        panic!("not done");
    };
    assert_eq!(done.welcome, welcome);
    assert_eq!(done.welcome.features, [FEATURE_RELIABLE, FEATURE_RESUMED]);
    assert_eq!(done.welcome.last_received, 9);
}

#[test]
fn an_impostor_hub_gets_nothing_but_the_hello() {
    let (mut handshake, _) = start(params());
    let impostor = Secret::from_token("not the token");
    assert_eq!(
        handshake
            .on_frame(challenge(&impostor, &identity(1)))
            .unwrap_err(),
        HandshakeError::Unverified
    );
    assert_eq!(handshake.expects(), None);
    // Over: a Welcome now is out of order.
    assert_eq!(
        handshake
            .on_frame(Frame::from(proto::Welcome::default()))
            .unwrap_err(),
        HandshakeError::Unexpected {
            expected: "nothing more",
            got: "welcome"
        }
    );
}

#[test]
fn a_proof_over_another_identity_does_not_verify() {
    let (mut handshake, _) = start(params());
    let mut frame = challenge(&secret(), &identity(1));
    if let Some(Kind::Challenge(c)) = &mut frame.kind {
        c.identity = Some(identity(2));
    }
    assert_eq!(
        handshake.on_frame(frame).unwrap_err(),
        HandshakeError::Unverified
    );
}

#[test]
fn a_hub_of_another_service_is_refused_when_a_service_is_asked() {
    let (mut handshake, _) = start(HandshakeParams {
        service: Some("other".into()),
        ..params()
    });
    assert_eq!(
        handshake
            .on_frame(challenge(&secret(), &identity(1)))
            .unwrap_err(),
        HandshakeError::WrongService {
            wanted: "other".into(),
            found: "svc".into()
        }
    );
    // Without a service asked, any service of the secret passes.
    let (mut handshake, _) = start(params());
    auth_of(
        handshake
            .on_frame(challenge(&secret(), &identity(1)))
            .unwrap(),
    );
}

#[test]
fn an_old_primary_is_fenced_at_the_challenge_or_the_welcome() {
    let (mut handshake, _) = start(HandshakeParams {
        min_epoch: 5,
        ..params()
    });
    assert_eq!(
        handshake
            .on_frame(challenge(&secret(), &identity(4)))
            .unwrap_err(),
        HandshakeError::Fenced { epoch: 4, seen: 5 }
    );

    let (mut handshake, _) = start(HandshakeParams {
        min_epoch: 5,
        ..params()
    });
    auth_of(
        handshake
            .on_frame(challenge(&secret(), &identity(5)))
            .unwrap(),
    );
    let welcome = proto::Welcome {
        epoch: 4,
        ..Default::default()
    };
    assert_eq!(
        handshake.on_frame(Frame::from(welcome)).unwrap_err(),
        HandshakeError::Fenced { epoch: 4, seen: 5 }
    );
}

#[test]
fn an_error_in_place_of_challenge_or_welcome_is_a_refusal() {
    let refusal = proto::Error {
        id: 0,
        code: ErrorCode::UnsupportedVersion as i32,
        message: "protocol version 1 is not supported".into(),
    };
    let (mut handshake, _) = start(params());
    let err = handshake
        .on_frame(Frame::from(refusal.clone()))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "refused: protocol version 1 is not supported"
    );
    assert_eq!(err, HandshakeError::Refused(refusal));

    let (mut handshake, _) = start(params());
    auth_of(
        handshake
            .on_frame(challenge(&secret(), &identity(1)))
            .unwrap(),
    );
    let denied = Frame::error(0, ErrorCode::AuthFailed, "wrong proof");
    assert!(matches!(
        handshake.on_frame(denied).unwrap_err(),
        HandshakeError::Refused(e) if e.code == ErrorCode::AuthFailed as i32 && e.message == "wrong proof"
    ));
}

#[test]
fn a_hub_shutting_down_says_goodbye_in_place_of_welcome() {
    let (mut handshake, _) = start(params());
    auth_of(
        handshake
            .on_frame(challenge(&secret(), &identity(1)))
            .unwrap(),
    );
    let err = handshake
        .on_frame(Frame::goodbye(ErrorCode::ShuttingDown, "hub shutting down"))
        .unwrap_err();
    assert!(matches!(
        &err,
        HandshakeError::Goodbye(g) if g.code == ErrorCode::ShuttingDown as i32
    ));
    assert_eq!(
        err.to_string(),
        "the hub said goodbye during the handshake: hub shutting down"
    );
}

#[test]
fn frames_out_of_order_or_unknown_are_protocol_errors() {
    let (mut handshake, _) = start(params());
    let err = handshake
        .on_frame(Frame::from(proto::Welcome::default()))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "expected challenge during the handshake, got welcome"
    );

    let (mut handshake, _) = start(params());
    auth_of(
        handshake
            .on_frame(challenge(&secret(), &identity(1)))
            .unwrap(),
    );
    assert_eq!(
        handshake
            .on_frame(challenge(&secret(), &identity(1)))
            .unwrap_err(),
        HandshakeError::Unexpected {
            expected: "welcome",
            got: "challenge"
        }
    );

    let (mut handshake, _) = start(params());
    let unknown = Frame {
        seq: 0,
        acked: 0,
        kind: None,
    };
    assert_eq!(
        handshake.on_frame(unknown).unwrap_err(),
        HandshakeError::UnknownKind
    );
}

#[test]
fn a_standby_is_done_once_it_sends_its_proof() {
    let (mut handshake, hello) = start(HandshakeParams {
        client_id: "standby-1".into(),
        standby: true,
        service: Some("svc".into()),
        ..Default::default()
    });
    assert_eq!(hello.role, proto::Role::Standby as i32);
    assert!(hello.features.is_empty());
    match handshake
        .on_frame(challenge(&secret(), &identity(1)))
        .unwrap()
    {
        Step::SendLast(
            Frame {
                kind: Some(Kind::Auth(auth)),
                ..
            },
            hub,
        ) => {
            assert!(verify_client_proof(
                &secret(),
                &HUB_NONCE,
                &CLIENT_NONCE,
                "standby-1",
                &auth.proof
            ));
            assert_eq!(*hub, identity(1));
        }
        other => panic!("expected the last Auth, got {other:?}"),
    }
    assert_eq!(handshake.expects(), None);
}

#[test]
fn peer_authentication_names_no_key_and_sends_an_empty_proof() {
    let (mut handshake, hello) = ClientHandshake::new_peer(params(), CLIENT_NONCE);
    let Some(Kind::Hello(hello)) = hello.kind else {
        panic!("the first frame is not a Hello");
    };
    assert!(hello.key_id.is_empty());
    assert_eq!(hello.client_nonce.as_ref(), CLIENT_NONCE);
    // The hub's proof is not checked: any key, or none, will do (the
    // socket owner check stands in for it).
    let mut c = challenge(&Secret::from_token("the hub's own"), &identity(3));
    let auth = auth_of(handshake.on_frame(c.clone()).unwrap());
    assert!(auth.proof.is_empty());
    let Step::Done(welcomed) = handshake
        .on_frame(Frame::from(proto::Welcome {
            epoch: 3,
            ..Default::default()
        }))
        .unwrap()
    else {
        panic!("no welcome");
    };
    assert_eq!(welcomed.identity, identity(3));
    // An empty proof is accepted as well.
    if let Some(Kind::Challenge(ch)) = &mut c.kind {
        ch.proof = Vec::new().into();
    }
    let (mut handshake, _) = ClientHandshake::new_peer(params(), CLIENT_NONCE);
    assert!(matches!(handshake.on_frame(c).unwrap(), Step::Send(_)));
}

#[test]
fn peer_authentication_still_checks_the_service_and_the_epoch() {
    let mut p = params();
    p.service = Some("other".into());
    let (mut handshake, _) = ClientHandshake::new_peer(p, CLIENT_NONCE);
    assert!(matches!(
        handshake.on_frame(challenge(&secret(), &identity(1))),
        Err(HandshakeError::WrongService { .. })
    ));
    let mut p = params();
    p.min_epoch = 5;
    let (mut handshake, _) = ClientHandshake::new_peer(p, CLIENT_NONCE);
    assert!(matches!(
        handshake.on_frame(challenge(&secret(), &identity(4))),
        Err(HandshakeError::Fenced { epoch: 4, seen: 5 })
    ));
}
