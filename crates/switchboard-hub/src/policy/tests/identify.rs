//! Who a connection is: tokens, certificates, peer credentials, the hub's
//! secret and the owner.

use super::*;

#[test]
fn a_token_names_its_principal_and_its_key() {
    let p = example();
    let key = switchboard_discovery::Secret::from_token(APP_TOKEN);
    let found = p.token(&key.key_id()).expect("the token is known");
    assert_eq!(found.principal, "app");
    assert!(found.secret.same_key(&key));
    assert!(p
        .token(&switchboard_discovery::Secret::from_token("other").key_id())
        .is_none());
    assert!(p.token(b"short").is_none());
    let id = p
        .identify(&tcp_peer(), &Proof::Token("app".into()))
        .unwrap();
    assert_eq!(
        id,
        Identity {
            principal: "app".into(),
            uid: None
        }
    );
}

#[test]
fn peer_credentials_pick_a_principal_by_uid_then_gid() {
    let p = example();
    let id = p.identify(&unix_peer(1000, 5), &Proof::PeerOnly).unwrap();
    assert_eq!(
        id,
        Identity {
            principal: "app".into(),
            uid: Some(1000)
        }
    );
    // uid 1000 wins over gid 100.
    let id = p.identify(&unix_peer(1000, 100), &Proof::PeerOnly).unwrap();
    assert_eq!(id.principal, "app");
    let id = p.identify(&unix_peer(4242, 100), &Proof::PeerOnly).unwrap();
    assert_eq!(
        id,
        Identity {
            principal: "ops".into(),
            uid: Some(4242)
        }
    );
}

#[test]
fn an_unknown_uid_without_a_proof_is_refused_naming_it() {
    let p = example();
    let uid = current_uid().wrapping_add(7);
    let (code, message) = refused(p.identify(&unix_peer(uid, 7), &Proof::PeerOnly));
    assert_eq!(code, ErrorCode::AuthFailed);
    assert!(message.contains(&format!("uid {uid}")), "{message}");
}

#[test]
fn the_hubs_own_uid_and_secret_are_the_owner_unless_owner_is_none() {
    let p = example();
    let me = current_uid();
    // (1000 and gid 100 belong to principals; the test user may be either.)
    if me != 1000 {
        let id = p.identify(&unix_peer(me, 31337), &Proof::PeerOnly).unwrap();
        assert_eq!(
            id,
            Identity {
                principal: OWNER.into(),
                uid: Some(me)
            }
        );
    }
    let id = p.identify(&tcp_peer(), &Proof::HubSecret).unwrap();
    assert_eq!(id.principal, OWNER);

    let closed = policy("owner = \"none\"\n[[principal]]\nname = \"x\"\nunix_uid = [4242]\n");
    let (code, message) = refused(closed.identify(&tcp_peer(), &Proof::HubSecret));
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("owner = \"none\""), "{message}");
    if me != 4242 {
        let (code, _) = refused(closed.identify(&unix_peer(me, 31337), &Proof::PeerOnly));
        assert_eq!(code, ErrorCode::Forbidden);
    }
}

#[test]
fn a_hub_secret_principal_replaces_the_owner() {
    let p = policy("[[principal]]\nname = \"svc\"\nhub_secret = true\nids = [\"*\"]\n");
    let id = p.identify(&tcp_peer(), &Proof::HubSecret).unwrap();
    assert_eq!(id.principal, "svc");
}

#[test]
fn a_certificate_names_its_principal_and_its_cn_fills_the_template() {
    let p = example();
    let mut peer = tcp_peer();
    peer.cert = Some(CertIdentity {
        common_name: "ops.example".into(),
        sans: vec![],
    });
    // A certificate wins over the hub's secret.
    let id = p.identify(&peer, &Proof::HubSecret).unwrap();
    assert_eq!(id.principal, "ops");
    assert!(p.admit_client(&info("ops-ops.example", "ops")).is_ok());
    // The name is remembered for that one registration only.
    let (_, message) = refused(p.admit_client(&info("ops-ops.example", "ops")));
    assert!(message.contains("ops-{cn}"), "{message}");
    // A certificate that matches no principal falls through to the proof.
    peer.cert = Some(CertIdentity {
        common_name: "stranger".into(),
        sans: vec!["nobody.example".into()],
    });
    assert_eq!(
        p.identify(&peer, &Proof::HubSecret).unwrap().principal,
        OWNER
    );
}

#[test]
fn a_wildcard_in_a_certificate_name_is_no_wildcard_in_the_template() {
    let p = policy("[[principal]]\nname = \"dev\"\ncert_san = [\"*.example\"]\ncert_cn = [\"*\"]\nids = [\"dev-{cn}\"]\n");
    let mut peer = tcp_peer();
    peer.cert = Some(CertIdentity {
        common_name: "*".into(),
        sans: vec![],
    });
    assert_eq!(
        p.identify(&peer, &Proof::HubSecret).unwrap().principal,
        "dev"
    );
    let (_, message) = refused(p.admit_client(&info("dev-anything", "dev")));
    assert!(message.contains("dev-anything"), "{message}");
    p.identify(&peer, &Proof::HubSecret).unwrap();
    assert!(p.admit_client(&info("dev-*", "dev")).is_ok());
    // By SAN.
    peer.cert = Some(CertIdentity {
        common_name: String::new(),
        sans: vec!["*.example".into()],
    });
    assert_eq!(
        p.identify(&peer, &Proof::HubSecret).unwrap().principal,
        "dev"
    );
}

#[test]
fn standby_needs_the_right() {
    let p = example();
    let who = |name: &str| Identity {
        principal: name.into(),
        uid: None,
    };
    assert!(p.admit_standby(&who(OWNER)).is_ok());
    assert!(p.admit_standby(&who("ops")).is_ok());
    let (code, message) = refused(p.admit_standby(&who("app")));
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(
        message.contains("'app'") && message.contains("standby"),
        "{message}"
    );
    refused(p.admit_standby(&who("")));
}

#[test]
fn a_takeover_across_principals_is_refused() {
    let p = example();
    assert!(p
        .admit_takeover(&info("app", "app"), &info("app", "app"))
        .is_ok());
    let (code, message) = refused(p.admit_takeover(&info("app", "ops"), &info("app", "app")));
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(
        message.contains("'app'") && message.contains("'ops'"),
        "{message}"
    );
}

#[test]
fn no_frame_is_refused_to_the_owner() {
    let p = example();
    let owner = info("anything", OWNER);
    assert!(p.admit_client(&owner).is_ok());
    assert!(p
        .admit((&owner).into(), &Frame::publish("orders.secret.x", "p"))
        .is_ok());
    assert!(p
        .admit((&owner).into(), &Frame::from(proto::ListClients { id: 1 }))
        .is_ok());
}
