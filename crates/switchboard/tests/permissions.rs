//! The permission policy end to end over TCP: a real hub with a real
//! [`Policy`], clients proving their principal's token. Every right is
//! tried allowed and denied; a denied command is `ClientError::Forbidden`
//! naming the subject, key or id, and the connection stays usable (a later
//! allowed call succeeds). Also: an id held by another principal is not
//! taken over, and a requester gets its reply without any publish right.
//! The other transports are in `permissions_transports.rs` and
//! `permissions_unix.rs`.

mod common;
use common::{forbidden, within, WAIT};

use std::sync::Arc;

use futures::StreamExt;
use switchboard::hub::{HubConfig, Policy, UnixSocket};
use switchboard::{Client, ClientError, ClientEvent, HubHandle, RequestOptions, Secret};

/// The hub's own secret: whoever proves it is the owner.
const OWNER: &str = "perms owner token";
const APP: &str = "perms app token";
const WORKER: &str = "perms worker token";
const ASKER: &str = "perms asker token";
const RESPONDER: &str = "perms responder token";

fn policy() -> String {
    let h = Policy::hash_token;
    format!(
        r#"
[[principal]]
name = "app"
token_sha256 = ["{app}"]
ids = ["app-*", "shared"]
publish = {{ allow = ["orders.>"], deny = ["orders.secret.>"] }}
subscribe = {{ allow = ["orders.*", "news.>"], deny = ["news.secret.>"] }}
kv = {{ read = ["config/"], write = ["app/"] }}
send = ["worker-*", "billing.*"]

[[principal]]
name = "worker"
token_sha256 = ["{worker}"]
ids = ["worker-*", "shared"]
subscribe = {{ allow = ["orders.*", "billing.*"] }}
clients = true
broadcast = true

[[principal]]
name = "asker"
token_sha256 = ["{asker}"]
ids = ["asker"]
send = ["responder"]

[[principal]]
name = "responder"
token_sha256 = ["{responder}"]
ids = ["responder"]
"#,
        app = h(APP),
        worker = h(WORKER),
        asker = h(ASKER),
        responder = h(RESPONDER),
    )
}

/// A hub on loopback TCP (no socket, no hint) with the test policy.
async fn hub() -> HubHandle {
    let mut config = HubConfig::with_secret("perms", Secret::from_token(OWNER));
    config.write_hint = false;
    config.unix = UnixSocket::disabled();
    config.admission = Some(Arc::new(Policy::parse(&policy()).expect("a valid policy")));
    switchboard::hub::Hub::start(config).await.expect("hub")
}

/// Connects `id` to `hub` proving `token`.
async fn connect(hub: &HubHandle, id: &str, token: &str) -> Result<Client, ClientError> {
    within(
        Client::builder(id)
            .addr(hub.local_addr().to_string())
            .token(token)
            .reconnect(false)
            .connect_timeout(WAIT)
            .connect(),
    )
    .await
}

#[tokio::test]
async fn a_principal_registers_only_the_ids_it_is_given() {
    let hub = hub().await;
    let app = connect(&hub, "app-1", APP).await.expect("an allowed id");
    forbidden(
        connect(&hub, "worker-9", APP).await,
        &["'app'", "'worker-9'"],
    );
    // A token the policy does not list is no principal at all.
    let stranger = connect(&hub, "app-2", "not a token of the policy").await;
    assert!(stranger.is_err(), "{stranger:?}");
    // The owner (the hub's secret) registers any id.
    let owner = connect(&hub, "anything", OWNER).await.expect("the owner");
    let listed = within(owner.clients()).await.unwrap();
    let app_info = listed.iter().find(|c| c.client_id == "app-1").unwrap();
    assert_eq!(app_info.principal, "app");
    within(app.publish("orders.new", "still here"))
        .await
        .unwrap();
    hub.shutdown().await;
}

#[tokio::test]
async fn a_principal_may_not_publish_outside_its_subjects() {
    let hub = hub().await;
    let owner = connect(&hub, "owner", OWNER).await.unwrap();
    let mut seen = within(owner.subscribe(">")).await.unwrap();
    let app = connect(&hub, "app-1", APP).await.unwrap();
    within(app.publish("orders.new", "1")).await.unwrap();
    forbidden(
        within(app.publish("orders.secret.x", "2")).await,
        &["'app'", "publish", "'orders.secret.x'"],
    );
    forbidden(
        within(app.publish("billing.x", "3")).await,
        &["'billing.x'"],
    );
    within(app.publish("orders.new", "4")).await.unwrap();
    // Only the allowed publishes went anywhere.
    let first = within(seen.next()).await.unwrap();
    let second = within(seen.next()).await.unwrap();
    assert_eq!(
        (&*first.topic, &first.payload[..]),
        ("orders.new", &b"1"[..])
    );
    assert_eq!(
        (&*second.topic, &second.payload[..]),
        ("orders.new", &b"4"[..])
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn a_subscription_wider_than_allowed_or_touching_a_denied_subject_is_refused() {
    let hub = hub().await;
    let app = connect(&hub, "app-1", APP).await.unwrap();
    let mut orders = within(app.subscribe("orders.*")).await.expect("allowed");
    forbidden(
        within(app.subscribe("orders.>")).await,
        &["subscribe", "'orders.>'", "wider than allowed"],
    );
    forbidden(within(app.subscribe(">")).await, &["'>'"]);
    forbidden(
        within(app.subscribe("news.>")).await,
        &["'news.>'", "'news.secret.>'"],
    );
    forbidden(
        within(app.subscribe("news.secret.today")).await,
        &["'news.secret.today'"],
    );
    let _news = within(app.subscribe("news.public.>"))
        .await
        .expect("allowed");
    // A queue group and a service subscription are held to the same rules.
    forbidden(
        within(app.subscribe_group("billing.*", "g")).await,
        &["'billing.*'"],
    );
    forbidden(within(app.service("billing.pay")).await, &["'billing.pay'"]);
    // The allowed subscription still delivers.
    within(app.publish("orders.new", "x")).await.unwrap();
    let m = within(orders.next()).await.expect("a delivery");
    assert_eq!(m.topic, "orders.new");
    hub.shutdown().await;
}

#[tokio::test]
async fn kv_reads_and_writes_stay_under_their_prefixes() {
    let hub = hub().await;
    let owner = connect(&hub, "owner", OWNER).await.unwrap();
    within(owner.kv().set("config/mode", "fast")).await.unwrap();
    within(owner.kv().set("secret/key", "k")).await.unwrap();
    let app = connect(&hub, "app-1", APP).await.unwrap();
    let kv = app.kv();

    let got = within(kv.get("config/mode")).await.expect("a readable key");
    assert!(got.is_some());
    forbidden(
        within(kv.get("secret/key")).await,
        &["read key", "'secret/key'"],
    );
    // Writing needs a write prefix: app/ is writable but not readable.
    within(kv.set("app/state", "1"))
        .await
        .expect("a writable key");
    forbidden(
        within(kv.set("config/mode", "slow")).await,
        &["write key", "'config/mode'"],
    );
    forbidden(within(kv.get("app/state")).await, &["'app/state'"]);
    assert!(within(kv.delete("app/state")).await.unwrap());
    forbidden(within(kv.delete("config/mode")).await, &["'config/mode'"]);

    // Watches: an exact key, and a prefix inside a read prefix.
    let mut watch = within(kv.watch("config/mode")).await.expect("readable");
    forbidden(within(kv.watch("secret/key")).await, &["'secret/key'"]);
    let _deeper = within(kv.watch_prefix("config/sub/"))
        .await
        .expect("inside");
    forbidden(
        within(kv.watch_prefix("")).await,
        &["watch the keys under ''"],
    );
    forbidden(within(kv.watch_prefix("conf")).await, &["'conf'"]);
    within(owner.kv().set("config/mode", "slow")).await.unwrap();
    assert!(within(watch.recv()).await.is_some(), "the watch still runs");
    assert_eq!(
        &within(owner.kv().get("config/mode"))
            .await
            .unwrap()
            .unwrap()
            .value[..],
        b"slow"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn sends_and_requests_reach_only_the_allowed_targets() {
    let hub = hub().await;
    let worker = connect(&hub, "worker-1", WORKER).await.unwrap();
    let mut inbox = within(worker.messages()).await.unwrap();
    let _serving = within(worker.serve(|r| async move { Ok::<_, String>(r.payload().clone()) }))
        .await
        .unwrap();
    let _billing = within(worker.serve_service(
        "billing.pay",
        Default::default(),
        |_| async move { Ok::<_, String>("paid".into()) },
    ))
    .await
    .unwrap();
    let other = connect(&hub, "other", OWNER).await.unwrap();
    let _other_serving = within(other.serve(|_| async move { Ok::<_, String>("no".into()) }))
        .await
        .unwrap();
    let _other_inbox = within(other.messages()).await.unwrap();
    let app = connect(&hub, "app-1", APP).await.unwrap();

    within(app.send("worker-1", "hi")).await.unwrap();
    forbidden(
        within(app.send("other", "hi")).await,
        &["send to", "'other'"],
    );
    assert_eq!(&within(inbox.next()).await.unwrap().payload[..], b"hi");
    assert_eq!(
        &within(app.request("worker-1", "ping")).await.unwrap()[..],
        b"ping"
    );
    forbidden(
        within(app.request("other", "ping")).await,
        &["send requests to", "'other'"],
    );
    let reply = within(app.request_service("billing.pay", "1", RequestOptions::default()))
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], b"paid");
    // The worker may serve billing.* but may send nothing itself.
    forbidden(
        within(worker.send("app-1", "x")).await,
        &["'worker'", "'app-1'"],
    );
    assert_eq!(
        &within(app.request("worker-1", "again")).await.unwrap()[..],
        b"again"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn broadcasts_the_client_list_and_presence_need_their_rights() {
    let hub = hub().await;
    let app = connect(&hub, "app-1", APP).await.unwrap();
    let worker = connect(&hub, "worker-1", WORKER).await.unwrap();
    forbidden(within(app.broadcast("all")).await, &["'app'", "broadcast"]);
    forbidden(within(app.clients()).await, &["list clients"]);
    forbidden(within(app.presence()).await, &["presence"]);
    forbidden(within(app.status()).await, &["status"]);
    within(worker.broadcast("all"))
        .await
        .expect("the broadcast right");
    let listed = within(worker.clients()).await.expect("the clients right");
    assert_eq!(listed.len(), 2, "{listed:?}");
    let presence = within(worker.presence()).await.expect("the clients right");
    assert!(presence.current().iter().any(|c| c.client_id == "app-1"));
    within(app.publish("orders.new", "still here"))
        .await
        .unwrap();
    hub.shutdown().await;
}

#[tokio::test]
async fn another_principal_may_not_take_over_an_id() {
    let hub = hub().await;
    let holder = connect(&hub, "shared", APP).await.unwrap();
    let mut events = holder.events();
    forbidden(
        connect(&hub, "shared", WORKER).await,
        &["'shared'", "another principal", "'worker'"],
    );
    // The holder stays connected and working.
    within(holder.publish("orders.new", "mine")).await.unwrap();
    let owner = connect(&hub, "owner", OWNER).await.unwrap();
    let listed = within(owner.clients()).await.unwrap();
    let shared = listed.iter().find(|c| c.client_id == "shared").unwrap();
    assert_eq!(shared.principal, "app");
    // The same principal may take its id over.
    let again = connect(&hub, "shared", APP).await.expect("same principal");
    let taken = within(async {
        while let Some(e) = events.next().await {
            if let ClientEvent::Closed { .. } | ClientEvent::Disconnected { .. } = e {
                return true;
            }
        }
        false
    })
    .await;
    assert!(taken, "the old connection was taken over");
    within(again.publish("orders.new", "mine again"))
        .await
        .unwrap();
    hub.shutdown().await;
}

#[tokio::test]
async fn a_requester_gets_its_reply_without_any_publish_right() {
    let hub = hub().await;
    // The responder may neither publish nor send; the asker may only send
    // to the responder.
    let responder = connect(&hub, "responder", RESPONDER).await.unwrap();
    let _serving = within(responder.serve(|r| async move {
        Ok::<_, String>(format!("re: {}", String::from_utf8_lossy(r.payload())).into())
    }))
    .await
    .unwrap();
    let asker = connect(&hub, "asker", ASKER).await.unwrap();
    let reply = within(asker.request("responder", "question"))
        .await
        .unwrap();
    assert_eq!(&reply[..], b"re: question");
    forbidden(
        within(asker.publish("orders.new", "x")).await,
        &["'asker'", "'orders.new'"],
    );
    forbidden(
        within(responder.send("asker", "x")).await,
        &["'responder'", "'asker'"],
    );
    let reply = within(asker.request("responder", "again")).await.unwrap();
    assert_eq!(&reply[..], b"re: again");
    hub.shutdown().await;
}
