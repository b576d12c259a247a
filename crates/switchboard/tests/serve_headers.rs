//! `serve_with_headers` and `serve_service_with_headers`: a handler's
//! reply headers reach the requester (`Reply::headers`); headers the hub
//! would refuse become an error reply.

use std::time::Duration;

use switchboard::hub::{HubConfig, UnixSocket};
use switchboard::{
    Bytes, Client, ClientError, Headers, HubHandle, RequestOptions, Secret, ServeOptions,
};

const TOKEN: &str = "serve headers token";
const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("in time")
}

async fn hub() -> HubHandle {
    let mut config = HubConfig::with_secret("serve-headers", Secret::from_token(TOKEN));
    config.write_hint = false;
    config.unix = UnixSocket::disabled();
    switchboard::hub::Hub::start(config).await.expect("hub")
}

async fn connect(hub: &HubHandle, id: &str) -> Client {
    Client::builder(id)
        .addr(hub.local_addr().to_string())
        .token(TOKEN)
        .connect_timeout(WAIT)
        .connect()
        .await
        .expect("connected")
}

#[tokio::test]
async fn reply_headers_reach_the_requester() {
    let hub = hub().await;
    let server = connect(&hub, "hdr-server").await;
    let client = connect(&hub, "hdr-client").await;
    let _serving = within(
        server.serve_with_headers(ServeOptions::default(), |req| async move {
            let mut headers = Headers::new();
            headers.append("echo", req.payload().clone());
            headers.append("tag", Bytes::from_static(b"a"));
            headers.append("tag", Bytes::from_static(b"b"));
            Ok::<_, String>((Bytes::from_static(b"ok"), headers))
        }),
    )
    .await
    .expect("serving");
    let reply = within(client.request_with_options(
        "hdr-server",
        Bytes::from_static(b"hi"),
        RequestOptions::default(),
    ))
    .await
    .expect("a reply");
    assert_eq!(reply.payload, Bytes::from_static(b"ok"));
    assert_eq!(reply.from, "hdr-server");
    let got: Vec<(String, Bytes)> = reply
        .headers
        .iter()
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("echo".to_owned(), Bytes::from_static(b"hi")),
            ("tag".to_owned(), Bytes::from_static(b"a")),
            ("tag".to_owned(), Bytes::from_static(b"b")),
        ]
    );

    // a service handler too; and headers the hub would refuse (an empty
    // key) become an error reply saying why
    let _svc = within(server.serve_service_with_headers(
        "hdr.svc",
        ServeOptions::default(),
        |req| async move {
            let mut headers = Headers::new();
            headers.append(
                if req.payload().is_empty() { "" } else { "k" },
                Bytes::from_static(b"v"),
            );
            Ok::<_, String>((req.payload().clone(), headers))
        },
    ))
    .await
    .expect("serving the service");
    let reply = within(client.request_service(
        "hdr.svc",
        Bytes::from_static(b"x"),
        RequestOptions::default(),
    ))
    .await
    .expect("a reply");
    assert_eq!(reply.headers.iter().count(), 1);
    assert_eq!(reply.from, "hdr-server");
    match within(client.request_service("hdr.svc", Bytes::new(), RequestOptions::default())).await {
        Err(ClientError::Remote(message)) => assert!(message.contains("header"), "{message}"),
        other => panic!("an error reply, not {other:?}"),
    }
}
