//! The typed layer (`publish_typed`, `subscribe_typed`, `request_typed`,
//! `serve_typed`, `send_typed`, `Client::typed`) against an in-process hub.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use switchboard::{
    Bytes, ClientError, Codec, CodecError, Json, MessageKind, Typed, TypedSubscription,
};
use switchboard_tests::{client, hub, within};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    item: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Sum {
    sum: i64,
}

fn order(id: u64) -> Order {
    Order {
        id,
        item: format!("item-{id}"),
    }
}

async fn next<T: DeserializeOwned, C: Codec>(
    sub: &mut TypedSubscription<T, C>,
) -> anyhow::Result<Result<Typed<T>, switchboard::DecodeError>> {
    within(sub.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the subscription ended"))
}

#[tokio::test]
async fn typed_pubsub_round_trip() -> anyhow::Result<()> {
    let hub = hub().await?;
    let shop = client(&hub, "shop").await?;
    let clerk = client(&hub, "clerk").await?;
    let mut orders = clerk.subscribe_typed::<Order>("orders.>").await?;
    assert_eq!(orders.pattern(), "orders.>");

    shop.publish_typed("orders.eu.created", &order(1)).await?;
    let got = next(&mut orders).await??;
    assert_eq!(got.value, order(1));
    assert_eq!(got.kind, MessageKind::Publish);
    assert_eq!(got.from, "shop");
    assert_eq!(got.topic, "orders.eu.created");

    // What the hub carried is plain JSON, readable by a byte subscriber.
    let mut raw = clerk.subscribe("orders.>").await?;
    shop.publish_typed("orders.us", &order(2)).await?;
    let bytes = within(raw.next()).await?.expect("a message");
    assert_eq!(&bytes.payload[..], br#"{"id":2,"item":"item-2"}"#);
    assert_eq!(next(&mut orders).await??.into_inner(), order(2));
    Ok(())
}

#[tokio::test]
async fn bad_payload_yields_an_error_item_and_the_stream_goes_on() -> anyhow::Result<()> {
    let hub = hub().await?;
    let shop = client(&hub, "shop").await?;
    let clerk = client(&hub, "clerk").await?;
    let mut orders = clerk.subscribe_typed::<Order>("orders.>").await?;

    shop.publish_typed("orders.eu", &order(1)).await?;
    shop.publish("orders.eu", "not json").await?;
    shop.publish("orders.us", r#"{"id":"two","item":"tea"}"#)
        .await?;
    shop.publish_typed("orders.us", &order(3)).await?;

    assert_eq!(next(&mut orders).await??.value, order(1));

    let bad = next(&mut orders).await?.expect_err("not json");
    assert_eq!(bad.topic(), "orders.eu");
    assert_eq!(bad.from(), "shop");
    assert_eq!(&bad.payload()[..], b"not json");
    assert!(matches!(bad.codec_error(), CodecError::Decode(_)));
    let text = bad.to_string();
    assert!(
        text.starts_with(r#"message on topic "orders.eu" from "shop": cannot decode: "#),
        "{text}"
    );

    let wrong_shape = next(&mut orders).await?.expect_err("id is a string");
    assert_eq!(wrong_shape.topic(), "orders.us");
    assert!(
        wrong_shape.to_string().contains("invalid type"),
        "{wrong_shape}"
    );
    assert_eq!(
        &wrong_shape.into_message().payload[..],
        br#"{"id":"two","item":"tea"}"#
    );

    // The stream went on.
    assert_eq!(next(&mut orders).await??.value, order(3));
    shop.publish_typed("orders.eu", &order(4)).await?;
    assert_eq!(
        within(orders.recv()).await?.expect("a message")?.value,
        order(4)
    );
    orders.unsubscribe().await?;
    Ok(())
}

#[tokio::test]
async fn typed_request_reply_and_error_replies() -> anyhow::Result<()> {
    let hub = hub().await?;
    let server = client(&hub, "adder").await?;
    let _serving = server
        .serve_typed(|add: Add| async move {
            if add.a < 0 {
                return Err(format!("negative operand {}", add.a));
            }
            Ok(Sum { sum: add.a + add.b })
        })
        .await?;
    let asker = client(&hub, "asker").await?;

    let sum: Sum = within(asker.request_typed("adder", &Add { a: 2, b: 3 })).await??;
    assert_eq!(sum, Sum { sum: 5 });

    // The handler's error reaches the requester.
    match within(asker.request_typed::<_, Sum>("adder", &Add { a: -1, b: 3 })).await? {
        Err(ClientError::Remote(msg)) => assert!(msg.contains("negative operand -1"), "{msg}"),
        other => panic!("expected a remote error, got {other:?}"),
    }

    // A request that does not decode is answered with an error reply; the
    // handler is not called.
    match within(asker.request_typed::<_, Sum>("adder", "two and three")).await? {
        Err(ClientError::Remote(msg)) => {
            assert!(msg.starts_with("cannot decode the request: "), "{msg}")
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    match within(asker.request("adder", "{")).await? {
        Err(ClientError::Remote(msg)) => {
            assert!(msg.starts_with("cannot decode the request: "), "{msg}")
        }
        other => panic!("expected a remote error, got {other:?}"),
    }

    // ...and the server keeps serving.
    let sum: Sum = within(asker.typed(Json).request_with(
        "adder",
        "add",
        &Add { a: 40, b: 2 },
        Duration::from_secs(5),
    ))
    .await??;
    assert_eq!(sum.sum, 42);

    // Errors of the byte API come through unchanged.
    match within(asker.request_typed::<_, Sum>("nobody", &Add { a: 1, b: 1 })).await? {
        Err(ClientError::NoSuchClient(_)) => {}
        other => panic!("expected NoSuchClient, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn reply_that_does_not_decode_is_a_decode_error() -> anyhow::Result<()> {
    let hub = hub().await?;
    let server = client(&hub, "bytes-server").await?;
    let _serving = server
        .serve(|_req| async move { Ok::<_, String>(Bytes::from("plain text")) })
        .await?;
    let asker = client(&hub, "asker").await?;

    match within(asker.request_typed::<_, Sum>("bytes-server", &Add { a: 1, b: 2 })).await? {
        Err(ClientError::Decode(msg)) => {
            assert!(
                msg.starts_with(r#"the reply from "bytes-server": "#),
                "{msg}"
            )
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    let err = within(asker.request_typed::<_, Sum>("bytes-server", &Add { a: 1, b: 2 }))
        .await?
        .expect_err("plain text is not JSON");
    assert!(err.to_string().starts_with("cannot decode: "), "{err}");
    assert_eq!(err.code(), None);
    Ok(())
}

#[tokio::test]
async fn send_typed_arrives_as_json() -> anyhow::Result<()> {
    let hub = hub().await?;
    let receiver = client(&hub, "receiver").await?;
    let mut messages = receiver.messages().await?;
    let sender = client(&hub, "sender").await?;

    sender.send_typed("receiver", &order(9)).await?;
    sender.send("receiver", "[").await?;
    let message = within(messages.next()).await?.expect("a message");
    let typed = Typed::<Order>::decode(&Json, message)?;
    assert_eq!(typed.value, order(9));
    assert_eq!(typed.kind, MessageKind::Direct);
    assert_eq!(typed.from, "sender");

    let message = within(messages.next()).await?.expect("a message");
    let err = Typed::<Order>::decode(&Json, message).expect_err("not json");
    assert!(
        err.to_string()
            .starts_with(r#"message from "sender": cannot decode: "#),
        "{err}"
    );

    match within(sender.send_typed("nobody", &order(1))).await? {
        Err(ClientError::NoSuchClient(_)) => {}
        other => panic!("expected NoSuchClient, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn value_that_does_not_encode_is_refused_before_sending() -> anyhow::Result<()> {
    let hub = hub().await?;
    let shop = client(&hub, "shop").await?;
    let clerk = client(&hub, "clerk").await?;
    let mut all = clerk.subscribe("maps").await?;

    // JSON object keys must be strings.
    let map: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into_iter().collect();
    match shop.publish_typed("maps", &map).await {
        Err(ClientError::InvalidArgument(msg)) => {
            assert!(msg.starts_with("cannot encode: "), "{msg}")
        }
        other => panic!("expected an invalid argument, got {other:?}"),
    }
    // Nothing went out: the next message is the one published after.
    shop.publish_typed("maps", &[1, 2]).await?;
    let got = within(all.next()).await?.expect("a message");
    assert_eq!(&got.payload[..], b"[1,2]");
    Ok(())
}

/// A codec other than JSON: a format tag, then JSON.
#[derive(Debug, Clone, Copy)]
struct Tagged;

impl Codec for Tagged {
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError> {
        let mut out = b"v1:".to_vec();
        serde_json::to_writer(&mut out, value).map_err(CodecError::encode)?;
        Ok(out.into())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let body = bytes
            .strip_prefix(b"v1:")
            .ok_or_else(|| CodecError::decode("missing the v1 tag"))?;
        serde_json::from_slice(body).map_err(CodecError::decode)
    }
}

#[tokio::test]
async fn another_codec_through_the_typed_view() -> anyhow::Result<()> {
    let hub = hub().await?;
    let server = client(&hub, "tagged-adder").await?;
    let tagged = server.typed(Tagged);
    let _serving = tagged
        .serve(|add: Add| async move { Ok::<_, String>(add.a + add.b) })
        .await?;
    let asker = client(&hub, "asker").await?.typed(Tagged);
    assert_eq!(asker.client().id(), "asker");

    let sum: i64 = within(asker.request("tagged-adder", &Add { a: 4, b: 5 })).await??;
    assert_eq!(sum, 9);
    // A JSON request lacks the tag: the server says it cannot decode it.
    match within(
        asker
            .client()
            .request_typed::<_, i64>("tagged-adder", &Add { a: 1, b: 1 }),
    )
    .await?
    {
        Err(ClientError::Remote(msg)) => assert!(msg.contains("missing the v1 tag"), "{msg}"),
        other => panic!("expected a remote error, got {other:?}"),
    }

    // Queue-group subscription with the view's codec.
    let mut orders = asker.subscribe_group::<Order>("orders.*", "clerks").await?;
    server.typed(Tagged).publish("orders.eu", &order(5)).await?;
    server.publish_typed("orders.eu", &order(6)).await?;
    assert_eq!(next(&mut orders).await??.value, order(5));
    let untagged = next(&mut orders).await?.expect_err("plain JSON");
    assert!(
        untagged
            .to_string()
            .ends_with("cannot decode: missing the v1 tag"),
        "{untagged}"
    );
    Ok(())
}
