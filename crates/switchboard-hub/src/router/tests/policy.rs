//! The permission policy on the routing core: refusals answer with the
//! command's correlation id and the connection stays; a takeover across
//! principals is refused; a reply to one's own request needs no right.

use super::*;
use crate::policy::Policy;

const POLICY: &str = r#"
[[principal]]
name = "app"
unix_uid = [4242]
ids = ["app", "app-*"]
publish = { allow = ["orders.>"], deny = ["orders.secret.>"] }
subscribe = { allow = ["orders.*"] }
send = ["worker"]

[[principal]]
name = "worker"
unix_uid = [4343]
ids = ["worker", "app-stolen"]
"#;

impl Sim {
    /// Connects `id` as `principal` and consumes what it is sent.
    fn connect_principal(&mut self, id: &str, principal: &str) -> (ConnId, Vec<Frame>) {
        let conn = self.connect_info(proto::ClientInfo {
            client_id: id.into(),
            transport: "tcp".into(),
            principal: principal.into(),
            ..Default::default()
        });
        let got = self.recv(conn);
        (conn, got)
    }
}

fn sim() -> Sim {
    let mut sim = Sim::new();
    sim.router
        .set_admission(Arc::new(Policy::parse(POLICY).expect("valid policy")));
    sim
}

fn welcomed(got: &[Frame]) -> bool {
    matches!(
        got.first().and_then(|f| f.kind.as_ref()),
        Some(Kind::Welcome(_))
    )
}

#[test]
fn refused_commands_get_forbidden_with_their_id_and_the_connection_stays() {
    let mut sim = sim();
    let (app, got) = sim.connect_principal("app", "app");
    assert!(welcomed(&got), "{got:?}");
    let (watcher, got) = sim.connect_principal("app-2", "app");
    assert!(welcomed(&got), "{got:?}");
    sim.subscribe(watcher, 1, "orders.*", "");
    // Wider than allowed: refused, not narrowed.
    sim.send(
        watcher,
        proto::Subscribe {
            id: 41,
            sub_id: 2,
            pattern: "orders.>".into(),
            ..Default::default()
        },
    );
    let (id, code, message) = error_of(&sim.recv_one(watcher));
    assert_eq!((id, code), (41, ErrorCode::Forbidden));
    assert!(message.contains("'orders.>'"), "{message}");
    // A denied publish goes nowhere.
    sim.send(
        app,
        proto::Publish {
            id: 42,
            topic: "orders.secret.x".into(),
            payload: "p".into(),
            ..Default::default()
        },
    );
    let (id, code, message) = error_of(&sim.recv_one(app));
    assert_eq!((id, code), (42, ErrorCode::Forbidden));
    assert_eq!(
        message,
        "principal 'app' may not publish to 'orders.secret.x'"
    );
    sim.send(
        app,
        proto::KvSet {
            id: 43,
            key: "k".into(),
            value: "v".into(),
            ..Default::default()
        },
    );
    let (id, code, message) = error_of(&sim.recv_one(app));
    assert_eq!((id, code), (43, ErrorCode::Forbidden));
    assert!(message.contains("'k'"), "{message}");
    assert!(sim.recv(watcher).is_empty());
    // The same connection goes on.
    sim.send(app, Frame::publish("orders.eu", "ok"));
    let got = deliveries(&sim.recv(watcher));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(sim.router.client_count(), 2);
}

#[test]
fn a_reply_to_ones_own_request_needs_no_right() {
    let mut sim = sim();
    let (app, _) = sim.connect_principal("app", "app");
    let (worker, _) = sim.connect_principal("worker", "worker");
    sim.send(
        app,
        proto::Request {
            id: 7,
            to: "worker".into(),
            payload: "q".into(),
            ..Default::default()
        },
    );
    let got = sim.recv_one(worker);
    let Some(Kind::Request(r)) = got.kind else {
        panic!("{got:?}")
    };
    // The worker may send nothing, but it may answer.
    sim.send(
        worker,
        proto::Reply {
            id: r.id,
            to: r.from.clone(),
            payload: "a".into(),
            ..Default::default()
        },
    );
    let got = sim.recv_one(app);
    assert!(
        matches!(&got.kind, Some(Kind::Reply(r)) if r.id == 7 && r.payload == "a"),
        "{got:?}"
    );
    // And it may not request on its own.
    sim.send(
        worker,
        proto::Request {
            id: 8,
            to: "app".into(),
            ..Default::default()
        },
    );
    let (id, code, _) = error_of(&sim.recv_one(worker));
    assert_eq!((id, code), (8, ErrorCode::Forbidden));
}

#[test]
fn a_takeover_across_principals_is_refused_and_the_holder_stays() {
    let mut sim = sim();
    let (holder, got) = sim.connect_principal("app-stolen", "app");
    assert!(welcomed(&got), "{got:?}");
    let (thief, got) = sim.connect_principal("app-stolen", "worker");
    let (_, code, message) = error_of(&got[0]);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(
        message.contains("app-stolen") && message.contains("another principal"),
        "{message}"
    );
    assert!(sim.recv(holder).is_empty(), "the holder heard nothing");
    assert_eq!(sim.router.client_count(), 1);
    let _ = thief;
    // The same principal takes its id over as before.
    let (_, got) = sim.connect_principal("app-stolen", "app");
    assert!(welcomed(&got), "{got:?}");
    let bye = sim.recv(holder);
    assert!(
        bye.iter().any(
            |f| matches!(&f.kind, Some(Kind::Goodbye(g)) if g.code == ErrorCode::IdTakenOver as i32)
        ),
        "{bye:?}"
    );
}

#[test]
fn an_id_outside_the_principals_ids_is_refused() {
    let mut sim = sim();
    let (_, got) = sim.connect_principal("admin", "app");
    let (_, code, message) = error_of(&got[0]);
    assert_eq!(code, ErrorCode::Forbidden);
    assert_eq!(
        message,
        "principal 'app' may not register client id 'admin' (allowed: app, app-*)"
    );
    assert_eq!(sim.router.client_count(), 0);
}
