//! Each right, allowed and denied, through `admit_client` and `admit` with
//! real frames.

use super::*;

fn app() -> proto::ClientInfo {
    proto::ClientInfo {
        uid: Some(1000),
        ..info("app-1000-a", "app")
    }
}

fn ops() -> proto::ClientInfo {
    info("ops", "ops")
}

/// Asserts that `client` may send `frame`.
fn allowed(p: &Policy, client: &proto::ClientInfo, frame: impl Into<Frame>) {
    let frame = frame.into();
    if let Err(e) = p.admit(client.into(), &frame) {
        panic!("{frame:?} refused: {}", e.message);
    }
}

/// Asserts that `client` may not send `frame`, with a FORBIDDEN naming
/// every one of `named`.
fn denied(p: &Policy, client: &proto::ClientInfo, frame: impl Into<Frame>, named: &[&str]) {
    let frame = frame.into();
    let (code, message) = refused(p.admit(client.into(), &frame));
    assert_eq!(code, ErrorCode::Forbidden, "{message}");
    for n in named {
        assert!(message.contains(n), "{message:?} does not name {n:?}");
    }
}

#[test]
fn ids_with_templates() {
    let p = example();
    assert!(p.admit_client(&app()).is_ok());
    assert!(p.admit_client(&info("app", "app")).is_ok());
    // {uid} needs a uid, and the right one.
    let (code, message) = refused(p.admit_client(&info("app-1000-a", "app")));
    assert_eq!(code, ErrorCode::Forbidden);
    assert_eq!(
        message,
        "principal 'app' may not register client id 'app-1000-a' (allowed: app-{uid}-*, app)"
    );
    let other_uid = proto::ClientInfo {
        uid: Some(1001),
        ..app()
    };
    refused(p.admit_client(&other_uid));
    refused(p.admit_client(&info("x", "app")));
    // {principal}.
    assert!(p.admit_client(&ops()).is_ok());
    // A client no principal vouches for.
    let (_, message) = refused(p.admit_client(&info("app", "")));
    assert!(message.contains("no principal"), "{message}");
}

#[test]
fn http_gateway() {
    let p = example();
    let via_http = |mut i: proto::ClientInfo| {
        i.transport = "http".into();
        i
    };
    let (_, message) = refused(p.admit_client(&via_http(app())));
    assert!(message.contains("http"), "{message}");
    assert!(p.admit_client(&via_http(ops())).is_ok());
}

#[test]
fn publish_allow_and_deny() {
    let p = example();
    allowed(&p, &app(), Frame::publish("orders.eu.created", "x"));
    allowed(&p, &app(), Frame::publish("orders.secretly", "x"));
    denied(
        &p,
        &app(),
        Frame::publish("orders.secret.x", "x"),
        &["principal 'app' may not publish to 'orders.secret.x'"],
    );
    denied(&p, &app(), Frame::publish("orders", "x"), &["'orders'"]);
    denied(&p, &ops(), Frame::publish("orders.eu", "x"), &["'ops'"]);
}

fn subscribe(pattern: &str, group: &str, service: bool) -> proto::Subscribe {
    proto::Subscribe {
        id: 7,
        sub_id: 1,
        pattern: pattern.into(),
        queue_group: group.into(),
        service,
    }
}

#[test]
fn subscribe_never_wider_than_allowed() {
    let p = example();
    allowed(&p, &app(), subscribe("orders.eu", "", false));
    allowed(&p, &app(), subscribe("orders.*", "workers", false));
    allowed(&p, &app(), subscribe("orders.eu.*", "", true));
    // Wider than `orders.>`.
    denied(
        &p,
        &app(),
        subscribe("*.eu", "g", false),
        &["'*.eu'", "wider", "orders.>"],
    );
    denied(&p, &app(), subscribe(">", "", true), &["'>'"]);
    denied(&p, &app(), subscribe("orders", "", false), &["'orders'"]);
    // Overlapping the denied `orders.secret.>`: refused, not narrowed.
    denied(
        &p,
        &app(),
        subscribe("orders.>", "", false),
        &["'orders.>'", "denied 'orders.secret.>'"],
    );
    denied(
        &p,
        &app(),
        subscribe("orders.*.x", "", false),
        &["orders.secret.>"],
    );
    denied(
        &p,
        &app(),
        subscribe("orders.secret.x", "q", false),
        &["denied"],
    );
}

#[test]
fn direct_request_and_service_requests_need_send() {
    let p = example();
    let direct = |to: &str| proto::Direct {
        id: 3,
        to: to.into(),
        ..Default::default()
    };
    allowed(&p, &app(), direct("worker-1"));
    denied(&p, &app(), direct("admin"), &["send to 'admin'"]);
    let request = |to: &str, service: &str| proto::Request {
        id: 4,
        to: to.into(),
        service: service.into(),
        ..Default::default()
    };
    allowed(&p, &app(), request("worker-2", ""));
    denied(&p, &app(), request("admin", ""), &["requests to 'admin'"]);
    allowed(&p, &app(), request("", "billing.invoice"));
    denied(
        &p,
        &app(),
        request("worker-2", "payroll.run"),
        &["service 'payroll.run'"],
    );
}

#[test]
fn replies_and_own_housekeeping_are_always_allowed() {
    let p = example();
    let nobody = policy("[[principal]]\nname = \"mute\"\nunix_uid = [4242]\nids = [\"m\"]\n");
    for client in [app(), info("m", "mute")] {
        let pol = if client.principal == "mute" {
            &nobody
        } else {
            &p
        };
        allowed(
            pol,
            &client,
            proto::Reply {
                id: 9,
                to: "anyone".into(),
                ..Default::default()
            },
        );
        allowed(pol, &client, proto::Cancel { id: 9 });
        allowed(pol, &client, proto::Unsubscribe { id: 1, sub_id: 2 });
        allowed(pol, &client, proto::KvUnwatch { id: 1, watch_id: 2 });
        allowed(
            pol,
            &client,
            proto::Listen {
                id: 1,
                messages: true,
                requests: true,
            },
        );
        allowed(pol, &client, proto::Ping { nonce: 1 });
        allowed(pol, &client, proto::Ack { up_to: 1 });
        allowed(pol, &client, proto::PresenceWatch { id: 1, stop: true });
        allowed(pol, &client, Frame::goodbye(ErrorCode::ShuttingDown, "bye"));
    }
    // And nothing else for the principal without rights.
    let mute = info("m", "mute");
    denied(&nobody, &mute, Frame::publish("a", "x"), &["'mute'", "'a'"]);
    denied(&nobody, &mute, subscribe("a", "", false), &["nothing"]);
    denied(
        &nobody,
        &mute,
        proto::KvGet {
            id: 1,
            key: "k".into(),
        },
        &["read key 'k'"],
    );
}

#[test]
fn broadcast_sessions_and_clients_are_flags() {
    let p = example();
    let b = proto::Broadcast {
        id: 1,
        ..Default::default()
    };
    denied(&p, &app(), b.clone(), &["broadcast"]);
    allowed(&p, &ops(), b);
    let s = proto::Session {
        peer: "cpe-1".into(),
        ..Default::default()
    };
    denied(&p, &app(), s.clone(), &["sessions"]);
    allowed(&p, &ops(), s);
    for f in [
        Frame::from(proto::ListClients { id: 1 }),
        Frame::from(proto::PresenceWatch { id: 1, stop: false }),
        Frame::from(proto::StatusRequest { id: 1 }),
    ] {
        denied(&p, &app(), f.clone(), &["clients"]);
        allowed(&p, &ops(), f);
    }
}

#[test]
fn sessions_also_need_send_to_the_peer() {
    let p = policy("[[principal]]\nname = \"acs\"\nunix_uid = [4242]\nids = [\"acs\"]\nsessions = true\nsend = [\"cpe-*\"]\n");
    let acs = info("acs", "acs");
    allowed(
        &p,
        &acs,
        proto::Session {
            peer: "cpe-1".into(),
            ..Default::default()
        },
    );
    denied(
        &p,
        &acs,
        proto::Session {
            peer: "acs-2".into(),
            ..Default::default()
        },
        &["open sessions with 'acs-2'"],
    );
}

#[test]
fn kv_read_and_write_prefixes() {
    let p = example();
    let get = |key: &str| proto::KvGet {
        id: 1,
        key: key.into(),
    };
    let watch = |key: &str, prefix: bool| proto::KvWatch {
        id: 1,
        watch_id: 1,
        key: key.into(),
        prefix,
    };
    let set = |key: &str| proto::KvSet {
        id: 1,
        key: key.into(),
        ..Default::default()
    };
    let del = |key: &str| proto::KvDelete {
        id: 1,
        key: key.into(),
        ..Default::default()
    };
    allowed(&p, &app(), get("config/db"));
    denied(&p, &app(), get("app/x"), &["read key 'app/x'"]);
    allowed(&p, &app(), watch("config/db", false));
    allowed(&p, &app(), watch("config/", true));
    allowed(&p, &app(), watch("config/db/", true));
    // A prefix wider than the read prefix lists keys it may not read.
    denied(&p, &app(), watch("conf", true), &["keys under 'conf'"]);
    denied(&p, &app(), watch("", true), &["keys under ''"]);
    denied(&p, &app(), watch("secret", false), &["read key 'secret'"]);
    allowed(&p, &app(), set("app/x"));
    allowed(&p, &app(), del("app/x"));
    let cas = proto::KvSet {
        expect_version: Some(3),
        ..set("app/y")
    };
    allowed(&p, &app(), cas);
    denied(&p, &app(), set("config/db"), &["write key 'config/db'"]);
    denied(&p, &app(), del("config/db"), &["write key 'config/db'"]);
    // "" is every key.
    let all = policy("[[principal]]\nname = \"kv\"\nunix_uid = [4242]\nkv = { read = [\"\"] }\n");
    allowed(&all, &info("k", "kv"), watch("", true));
    denied(&all, &info("k", "kv"), set("a"), &["write key 'a'"]);
}

#[test]
fn long_input_is_clipped_in_refusals() {
    let p = example();
    let topic = "x".repeat(10_000);
    let (_, message) = refused(p.admit((&app()).into(), &Frame::publish(&topic, "p")));
    assert!(message.len() < 400, "{} bytes", message.len());
}
