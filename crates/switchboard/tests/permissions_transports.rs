//! The permission policy over the WebSocket gateway, the HTTP long-poll
//! gateway (the principal's token as the bearer token) and mutual TLS (a
//! client certificate naming the principal): the same rights and the same
//! refusals as over TCP (`permissions.rs`).

mod common;
use common::{forbidden, within, WAIT};

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::{json, Value};
use switchboard::hub::{HttpConfig, HubConfig, Policy, TlsServer, UnixSocket};
use switchboard::{Client, HubHandle, Secret, TlsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OWNER: &str = "transports owner token";
const APP: &str = "transports app token";
const WEB: &str = "transports web token";
const WEB2: &str = "transports second web token";
const OPS: &str = "transports ops token";

fn policy() -> String {
    let h = Policy::hash_token;
    format!(
        r#"
[[principal]]
name = "app"
token_sha256 = ["{app}"]
ids = ["app-*"]
publish = {{ allow = ["orders.>"] }}

[[principal]]
name = "web"
token_sha256 = ["{web}"]
ids = ["web-*"]
publish = {{ allow = ["web.>"] }}
http = true

[[principal]]
name = "web2"
token_sha256 = ["{web2}"]
ids = ["web-*"]
publish = {{ allow = ["web.>"] }}
http = true

[[principal]]
name = "ops"
token_sha256 = ["{ops}"]
ids = ["ops-*"]
http = true
clients = true

[[principal]]
name = "device"
cert_cn = ["device-7"]
ids = ["dev-{{cn}}"]
publish = {{ allow = ["devices.>"] }}
"#,
        app = h(APP),
        web = h(WEB),
        web2 = h(WEB2),
        ops = h(OPS),
    )
}

/// A hub with the test policy and an HTTP listener, or with `tls`.
async fn hub(tls: Option<TlsServer>) -> HubHandle {
    let mut config = HubConfig::with_secret("perms-tr", Secret::from_token(OWNER));
    config.write_hint = false;
    config.unix = UnixSocket::disabled();
    config.admission = Some(Arc::new(Policy::parse(&policy()).expect("a valid policy")));
    if tls.is_none() {
        config.http = Some(HttpConfig::new("127.0.0.1:0".parse().unwrap()));
    }
    config.tls = tls;
    switchboard::hub::Hub::start(config).await.expect("hub")
}

#[tokio::test]
async fn a_websocket_client_is_held_to_its_principals_rights() {
    let hub = hub(None).await;
    let url = format!("ws://{}/v1/ws", hub.http_addr().expect("gateway"));
    let connect = |id: &'static str| {
        Client::builder(id)
            .websocket(url.clone())
            .token(APP)
            .reconnect(false)
            .connect_timeout(WAIT)
            .connect()
    };
    forbidden(within(connect("web-1")).await, &["'app'", "'web-1'"]);
    let app = within(connect("app-ws")).await.expect("an allowed id");
    within(app.publish("orders.new", "1")).await.unwrap();
    forbidden(
        within(app.publish("web.x", "2")).await,
        &["'app'", "publish", "'web.x'"],
    );
    within(app.publish("orders.new", "3")).await.unwrap();
    app.close().await;
    hub.shutdown().await;
}

/// `(status, JSON body)` of a POST (or a GET when `body` is `None`) to
/// the gateway at `addr` with `token` as the bearer token.
async fn http(addr: SocketAddr, token: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut s = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let method = if body.is_empty() { "GET" } else { "POST" };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    within(s.read_to_end(&mut raw)).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    // The gateway's JSON answers are small; skip a chunk header if any.
    let json_text = rest.find('{').map_or("", |at| &rest[at..]);
    let json_text = json_text.rfind('}').map_or("", |end| &json_text[..=end]);
    (
        status,
        serde_json::from_str(json_text).unwrap_or_else(|_| Value::String(text.to_string())),
    )
}

#[tokio::test]
async fn http_bearer_tokens_act_as_their_principals() {
    let hub = hub(None).await;
    let addr = hub.http_addr().expect("gateway");
    let publish = |client: &str, topic: &str| {
        Some(json!({ "client": client, "topic": topic, "payload": "x" }))
    };
    // Without the http right.
    let (status, body) = http(addr, APP, "/v1/publish", publish("app-h", "orders.new")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("http"), "{body}");
    // With it: an allowed subject, a denied one, then an allowed one again.
    let (status, body) = http(addr, WEB, "/v1/publish", publish("web-1", "web.news")).await;
    assert_eq!((status, &body["published"]), (200, &json!(true)), "{body}");
    let (status, body) = http(addr, WEB, "/v1/publish", publish("web-1", "orders.new")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("'orders.new'"),
        "{body}"
    );
    let (status, body) = http(addr, WEB, "/v1/publish", publish("web-1", "web.more")).await;
    assert_eq!(status, 200, "{body}");
    // An id outside the principal's ids.
    let (status, body) = http(addr, WEB, "/v1/publish", publish("ops-1", "web.x")).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("'ops-1'"),
        "{body}"
    );
    // An HTTP client id registered by one principal is not another's.
    let (status, body) = http(addr, WEB2, "/v1/publish", publish("web-1", "web.x")).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("'web-1'"),
        "{body}"
    );
    let (status, body) = http(addr, WEB2, "/v1/publish", publish("web-2", "web.x")).await;
    assert_eq!(status, 200, "{body}");
    // The client list needs the clients right.
    let (status, body) = http(addr, WEB, "/v1/clients", None).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = http(addr, OPS, "/v1/clients", None).await;
    assert_eq!(status, 200, "{body}");
    let listed = body.to_string();
    assert!(
        listed.contains("web-1") && listed.contains("web-2"),
        "{listed}"
    );
    // A token no principal has is no bearer token at all.
    let (status, _) = http(addr, "not a token", "/v1/clients", None).await;
    assert_eq!(status, 401);
    hub.shutdown().await;
}

/// A test CA.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A certificate for `cn` with these SANs: `(cert PEM, key PEM)`.
    fn leaf(&self, cn: &str, sans: &[&str]) -> (String, String) {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

#[tokio::test]
async fn a_client_certificate_makes_its_principal_and_is_confined_by_it() {
    let ca = Ca::new("server CA");
    let clients_ca = Ca::new("client CA");
    let (cert, key) = ca.leaf("hub", &["localhost"]);
    let tls = TlsServer::from_pem(
        cert.as_bytes(),
        key.as_bytes(),
        Some(clients_ca.issuer.pem().as_bytes()),
    )
    .unwrap();
    let hub = hub(Some(tls)).await;
    let addr = format!("tls://localhost:{}", hub.local_addr().port());
    let (cert, key) = clients_ca.leaf("device-7", &[]);
    let connect = |id: &'static str| {
        Client::builder(id)
            .addr(addr.clone())
            // The hub's own secret: without the certificate, the owner.
            .token(OWNER)
            .tls(TlsOptions::ca_pem(ca.issuer.pem()).client_cert_pem(cert.clone(), key.clone()))
            .reconnect(false)
            .connect_timeout(WAIT)
            .connect()
    };
    forbidden(
        within(connect("dev-device-8")).await,
        &["'device'", "'dev-device-8'"],
    );
    let device = within(connect("dev-device-7")).await.expect("its {cn} id");
    within(device.publish("devices.7.temp", "21"))
        .await
        .unwrap();
    forbidden(
        within(device.publish("orders.new", "x")).await,
        &["'device'", "'orders.new'"],
    );
    forbidden(
        within(device.clients()).await,
        &["'device'", "list clients"],
    );
    within(device.publish("devices.7.temp", "22"))
        .await
        .unwrap();
    device.close().await;
    hub.shutdown().await;
}
