//! A typed layer over the byte payloads: values are encoded by a [`Codec`]
//! ([`Json`] by default) before they are sent and decoded when they arrive.
//!
//! Everything here is built on [`Client`]'s public API; the hub only ever
//! sees bytes.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use futures::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::handle::Client;
use super::request::IncomingRequest;
use super::serve::ServeHandle;
use super::streams::Subscription;
use super::types::{Message, MessageKind};
use crate::ClientError;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Turns values into payload bytes and back.
///
/// A codec is a small value (the codecs of this crate are zero-sized)
/// whose methods are generic over the value's type, with serde bounds:
///
/// * one codec value serves every type a client sends or receives, as
///   `serde_json::to_vec` and `from_slice` do for a user of `async-nats`
///   who (de)serializes payloads by hand; a [`TypedClient`] picks its codec
///   once, and each call names only the value's type;
/// * each direction asks for what it needs: publishing, sending and
///   requesting need [`Serialize`] (so a borrowed view such as `&str` or a
///   struct of references can be sent), subscribing and replies need
///   [`DeserializeOwned`];
/// * unlike a codec per message type (tonic's `Codec` with its `Encode` and
///   `Decode` types, generated for each service), nothing has to be
///   declared per type: any serde type can be sent with any codec.
///
/// Types that are not serde types, such as prost messages, go through the
/// byte API instead (`client.publish(topic, msg.encode_to_vec())`).
///
/// A codec is `Clone + Send + Sync + 'static` because each
/// [`TypedSubscription`] and each request handler of
/// [`TypedClient::serve`] keeps a copy.
///
/// Another serde format is one implementation away:
///
/// ```
/// use serde::{de::DeserializeOwned, Serialize};
/// use switchboard::{Bytes, Codec, CodecError};
///
/// /// JSON with a trailing newline, for line-oriented peers.
/// #[derive(Debug, Clone, Copy)]
/// struct JsonLines;
///
/// impl Codec for JsonLines {
///     fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError> {
///         let mut out = serde_json::to_vec(value).map_err(CodecError::encode)?;
///         out.push(b'\n');
///         Ok(out.into())
///     }
///     fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
///         serde_json::from_slice(bytes).map_err(CodecError::decode)
///     }
/// }
///
/// let bytes = JsonLines.encode(&[1, 2, 3])?;
/// assert_eq!(&bytes[..], b"[1,2,3]\n");
/// let back: Vec<u8> = JsonLines.decode(&bytes)?;
/// assert_eq!(back, [1, 2, 3]);
/// # Ok::<(), CodecError>(())
/// ```
pub trait Codec: Clone + Send + Sync + 'static {
    /// Encodes `value` into a payload.
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError>;

    /// Decodes a payload into a `T`.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;
}

/// JSON through `serde_json`: the default codec, readable by the CLI
/// (`switchboard sub`, `switchboard request`) and by peers in any
/// language.
///
/// ```
/// use switchboard::{Codec, Json};
///
/// let bytes = Json.encode(&("widget", 3))?;
/// assert_eq!(&bytes[..], br#"["widget",3]"#);
/// let (name, count): (String, u32) = Json.decode(&bytes)?;
/// assert_eq!((name.as_str(), count), ("widget", 3));
/// # Ok::<(), switchboard::CodecError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json;

impl Codec for Json {
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(CodecError::encode)
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(CodecError::decode)
    }
}

/// A value that could not be encoded, or a payload that could not be
/// decoded; the source is the format's own error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(#[source] BoxError),
    /// The payload is not a valid encoding of the expected type.
    #[error("cannot decode: {0}")]
    Decode(#[source] BoxError),
}

impl CodecError {
    /// An encoding failure caused by `error` (a format's error, or a
    /// message).
    pub fn encode(error: impl Into<BoxError>) -> CodecError {
        CodecError::Encode(error.into())
    }

    /// A decoding failure caused by `error` (a format's error, or a
    /// message).
    pub fn decode(error: impl Into<BoxError>) -> CodecError {
        CodecError::Decode(error.into())
    }

    /// The format's explanation, without the direction.
    fn detail(&self) -> &BoxError {
        match self {
            CodecError::Encode(e) | CodecError::Decode(e) => e,
        }
    }
}

/// A decoded message: the value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Typed<T> {
    /// The decoded payload.
    pub value: T,
    /// How the message arrived.
    pub kind: MessageKind,
    /// Sender's client id.
    pub from: ByteString,
    /// Topic, for published messages; empty otherwise.
    pub topic: ByteString,
    /// The publisher's reply topic, if it gave one; empty otherwise.
    pub reply_to: ByteString,
}

impl<T> Typed<T> {
    /// Decodes `message`'s payload with `codec`. The error keeps the
    /// message's origin and payload.
    ///
    /// Turns the plain streams typed, for example
    /// [`Client::messages`](crate::Client::messages) with values sent by
    /// [`Client::send_typed`]:
    ///
    /// ```no_run
    /// # async fn run(client: switchboard::Client) -> Result<(), switchboard::ClientError> {
    /// use futures::StreamExt;
    /// use switchboard::{Json, Typed};
    ///
    /// let mut messages = client.messages().await?;
    /// while let Some(message) = messages.next().await {
    ///     match Typed::<Vec<u32>>::decode(&Json, message) {
    ///         Ok(m) => println!("{} sent {:?}", m.from, m.value),
    ///         Err(e) => eprintln!("{e}"),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn decode<C: Codec>(codec: &C, message: Message) -> Result<Typed<T>, DecodeError>
    where
        T: DeserializeOwned,
    {
        match codec.decode(&message.payload) {
            Ok(value) => Ok(Typed {
                value,
                kind: message.kind,
                from: message.from,
                topic: message.topic,
                reply_to: message.reply_to,
            }),
            Err(error) => Err(DecodeError {
                inner: Box::new((message, error)),
            }),
        }
    }

    /// The decoded payload.
    pub fn into_inner(self) -> T {
        self.value
    }
}

/// A message whose payload did not decode as the expected type. A
/// [`TypedSubscription`] yields it as an item and goes on with the next
/// message; [`into_message`](Self::into_message) gives the message back as
/// received (to log or set aside).
#[derive(Debug)]
pub struct DecodeError {
    inner: Box<(Message, CodecError)>,
}

impl DecodeError {
    /// How the message arrived.
    pub fn kind(&self) -> MessageKind {
        self.inner.0.kind
    }

    /// Sender's client id.
    pub fn from(&self) -> &str {
        &self.inner.0.from
    }

    /// Topic, for published messages; empty otherwise.
    pub fn topic(&self) -> &str {
        &self.inner.0.topic
    }

    /// The payload as received.
    pub fn payload(&self) -> &Bytes {
        &self.inner.0.payload
    }

    /// Why it did not decode.
    pub fn codec_error(&self) -> &CodecError {
        &self.inner.1
    }

    /// The message as received.
    pub fn into_message(self) -> Message {
        self.inner.0
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (message, error) = &*self.inner;
        match message.kind {
            MessageKind::Publish => write!(
                f,
                "message on topic {:?} from {:?}: {error}",
                &*message.topic, &*message.from
            ),
            MessageKind::Direct | MessageKind::Broadcast => {
                write!(f, "message from {:?}: {error}", &*message.from)
            }
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.inner.1)
    }
}

/// Messages published to topics matching a pattern, decoded; a [`Stream`]
/// of `Result<`[`Typed<T>`]`, `[`DecodeError`]`>`. A payload that does
/// not decode gives an `Err` item naming the topic, the sender and the
/// codec's error, and the stream goes on. Dropping it unsubscribes.
pub struct TypedSubscription<T, C = Json> {
    inner: Subscription,
    codec: C,
    _type: PhantomData<fn() -> T>,
}

// Nothing in it is pinned structurally: the subscription is polled in
// place and the codec is only read.
impl<T, C> Unpin for TypedSubscription<T, C> {}

impl<T, C: fmt::Debug> fmt::Debug for TypedSubscription<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedSubscription")
            .field("inner", &self.inner)
            .field("codec", &self.codec)
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T: DeserializeOwned, C: Codec> TypedSubscription<T, C> {
    /// The pattern subscribed to.
    pub fn pattern(&self) -> &str {
        self.inner.pattern()
    }

    /// Receives and decodes the next message; `None` once the client is
    /// closed.
    pub async fn recv(&mut self) -> Option<Result<Typed<T>, DecodeError>> {
        let message = self.inner.recv().await?;
        Some(Typed::decode(&self.codec, message))
    }

    /// Unsubscribes and waits for the hub's confirmation.
    pub async fn unsubscribe(self) -> Result<(), ClientError> {
        self.inner.unsubscribe().await
    }

    /// The underlying byte subscription.
    pub fn into_inner(self) -> Subscription {
        self.inner
    }
}

impl<T: DeserializeOwned, C: Codec> Stream for TypedSubscription<T, C> {
    type Item = Result<Typed<T>, DecodeError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        Pin::new(&mut this.inner)
            .poll_next(cx)
            .map(|next| next.map(|message| Typed::decode(&this.codec, message)))
    }
}

/// A [`Client`] that encodes and decodes payloads with codec `C`; from
/// [`Client::typed`].
///
/// The `*_typed` methods of [`Client`] are this view with [`Json`];
/// another codec is one call away (`client.typed(MyCodec).publish(...)`).
/// Cheap to clone, like the client.
///
/// ```
/// # #[cfg(not(feature = "hub"))]
/// # fn main() {}
/// # #[cfg(feature = "hub")]
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use serde::{Deserialize, Serialize};
/// use switchboard::{Client, Hub, Json};
///
/// #[derive(Serialize, Deserialize)]
/// struct Add {
///     a: i64,
///     b: i64,
/// }
///
/// let hub = Hub::builder().token("t").listen("127.0.0.1:0").write_hint(false).start().await?;
/// let addr = hub.local_addr().to_string();
/// let adder = Client::builder("adder").addr(&addr).token("t").connect().await?;
/// let asker = Client::builder("asker").addr(&addr).token("t").connect().await?;
///
/// let _serving = adder
///     .typed(Json)
///     .serve(|add: Add| async move { Ok::<i64, String>(add.a + add.b) })
///     .await?;
/// let sum: i64 = asker.typed(Json).request("adder", &Add { a: 2, b: 3 }).await?;
/// assert_eq!(sum, 5);
/// # hub.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TypedClient<C = Json> {
    client: Client,
    codec: C,
}

impl<C: Codec> TypedClient<C> {
    /// The client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The codec.
    pub fn codec(&self) -> &C {
        &self.codec
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, ClientError> {
        self.codec
            .encode(value)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))
    }

    /// Publishes `value` to `topic` and waits until the hub has routed it,
    /// as [`Client::publish`]. A value the codec cannot encode fails with
    /// [`ClientError::InvalidArgument`] before anything is sent.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<(), ClientError> {
        let payload = self.encode(value)?;
        self.client.publish(topic, payload).await
    }

    /// Sends `value` to client `to` and waits until the hub has queued it,
    /// as [`Client::send`]. The receiver decodes it with
    /// [`Typed::decode`].
    pub async fn send<T: Serialize + ?Sized>(
        &self,
        to: &str,
        value: &T,
    ) -> Result<(), ClientError> {
        let payload = self.encode(value)?;
        self.client.send(to, payload).await
    }

    /// Sends `request` to client `to` and decodes its reply, with the
    /// client's default timeout; see [`request_with`](Self::request_with).
    pub async fn request<Req, Resp>(&self, to: &str, request: &Req) -> Result<Resp, ClientError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let payload = self.encode(request)?;
        let reply = self.client.request(to, payload).await?;
        self.decode_reply(to, &reply)
    }

    /// Sends `request` with a method name and an explicit timeout, as
    /// [`Client::request_with`], and decodes the reply. A reply that does
    /// not decode as `Resp` fails with [`ClientError::Decode`]; an error
    /// reply (including one saying the replier could not decode the
    /// request) with [`ClientError::Remote`].
    pub async fn request_with<Req, Resp>(
        &self,
        to: &str,
        method: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, ClientError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let payload = self.encode(request)?;
        let reply = self
            .client
            .request_with(to, method, payload, timeout)
            .await?;
        self.decode_reply(to, &reply)
    }

    fn decode_reply<Resp: DeserializeOwned>(
        &self,
        to: &str,
        reply: &[u8],
    ) -> Result<Resp, ClientError> {
        self.codec
            .decode(reply)
            .map_err(|e| ClientError::Decode(format!("the reply from {to:?}: {}", e.detail())))
    }

    /// Subscribes to topics matching `pattern`, as [`Client::subscribe`],
    /// decoding each message as a `T`.
    pub async fn subscribe<T: DeserializeOwned>(
        &self,
        pattern: &str,
    ) -> Result<TypedSubscription<T, C>, ClientError> {
        self.subscribe_group(pattern, "").await
    }

    /// Subscribes as a member of queue group `group`, as
    /// [`Client::subscribe_group`], decoding each message as a `T`.
    pub async fn subscribe_group<T: DeserializeOwned>(
        &self,
        pattern: &str,
        group: &str,
    ) -> Result<TypedSubscription<T, C>, ClientError> {
        let inner = self.client.subscribe_group(pattern, group).await?;
        Ok(TypedSubscription {
            inner,
            codec: self.codec.clone(),
            _type: PhantomData,
        })
    }

    /// Answers every incoming request with `handler`, as [`Client::serve`]:
    /// the request is decoded as a `Req`, `Ok(resp)` is encoded as the
    /// reply and `Err(e)` becomes an error reply carrying `e.to_string()`.
    /// A request that does not decode is answered with an error reply
    /// naming the codec's error (the requester gets
    /// [`ClientError::Remote`]) and the handler is not called.
    ///
    /// The handler sees the decoded value only; one that needs the
    /// requester's id or the method name reads [`Client::requests`] and
    /// decodes [`IncomingRequest::payload`] with the codec.
    pub async fn serve<Req, Resp, F, Fut, E>(&self, handler: F) -> Result<ServeHandle, ClientError>
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, E>> + Send + 'static,
        E: fmt::Display,
    {
        let codec = self.codec.clone();
        self.client
            .serve(move |request: IncomingRequest| {
                let call = codec.decode::<Req>(request.payload()).map(&handler);
                let codec = codec.clone();
                async move {
                    let response = match call {
                        Ok(call) => call.await.map_err(|e| e.to_string())?,
                        Err(e) => return Err(format!("cannot decode the request: {}", e.detail())),
                    };
                    codec
                        .encode(&response)
                        .map_err(|e| format!("cannot encode the reply: {}", e.detail()))
                }
            })
            .await
    }
}

/// The typed layer with the default codec, [`Json`]. Each call encodes or
/// decodes the payload and otherwise behaves as its byte counterpart;
/// [`Client::typed`] picks another codec.
impl Client {
    /// A view of this client that encodes and decodes payloads with
    /// `codec`.
    pub fn typed<C: Codec>(&self, codec: C) -> TypedClient<C> {
        TypedClient {
            client: self.clone(),
            codec,
        }
    }

    /// Publishes `value`, encoded as JSON, to `topic`; see
    /// [`TypedClient::publish`].
    ///
    /// ```
    /// # #[cfg(not(feature = "hub"))]
    /// # fn main() {}
    /// # #[cfg(feature = "hub")]
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use futures::StreamExt;
    /// use serde::{Deserialize, Serialize};
    /// use switchboard::{Client, Hub};
    ///
    /// #[derive(Debug, PartialEq, Serialize, Deserialize)]
    /// struct Order {
    ///     id: u64,
    ///     item: String,
    /// }
    ///
    /// let hub = Hub::builder().token("t").listen("127.0.0.1:0").write_hint(false).start().await?;
    /// let addr = hub.local_addr().to_string();
    /// let shop = Client::builder("shop").addr(&addr).token("t").connect().await?;
    /// let clerk = Client::builder("clerk").addr(&addr).token("t").connect().await?;
    ///
    /// let mut orders = clerk.subscribe_typed::<Order>("orders.>").await?;
    /// shop.publish("orders.eu", "not json").await?; // a byte publisher gets it wrong
    /// shop.publish_typed("orders.eu", &Order { id: 1, item: "tea".into() }).await?;
    ///
    /// // The bad payload is an error item naming the topic; the stream goes on.
    /// let bad = orders.next().await.unwrap().unwrap_err();
    /// assert_eq!(bad.topic(), "orders.eu");
    /// let good = orders.next().await.unwrap()?;
    /// assert_eq!(good.value, Order { id: 1, item: "tea".into() });
    /// assert_eq!(good.from, "shop");
    /// # hub.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_typed<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<(), ClientError> {
        self.typed(Json).publish(topic, value).await
    }

    /// Subscribes to topics matching `pattern`, decoding each message from
    /// JSON as a `T`; see [`TypedClient::subscribe`] and the example at
    /// [`publish_typed`](Self::publish_typed).
    pub async fn subscribe_typed<T: DeserializeOwned>(
        &self,
        pattern: &str,
    ) -> Result<TypedSubscription<T>, ClientError> {
        self.typed(Json).subscribe(pattern).await
    }

    /// Sends `value`, encoded as JSON, to client `to`; see
    /// [`TypedClient::send`].
    pub async fn send_typed<T: Serialize + ?Sized>(
        &self,
        to: &str,
        value: &T,
    ) -> Result<(), ClientError> {
        self.typed(Json).send(to, value).await
    }

    /// Sends `request`, encoded as JSON, to client `to` and decodes the
    /// reply as a `Resp`; see [`TypedClient::request`]. A reply that does
    /// not decode fails with [`ClientError::Decode`].
    ///
    /// ```
    /// # #[cfg(not(feature = "hub"))]
    /// # fn main() {}
    /// # #[cfg(feature = "hub")]
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use serde::{Deserialize, Serialize};
    /// use switchboard::{Client, ClientError, Hub};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Quote {
    ///     item: String,
    ///     count: u32,
    /// }
    ///
    /// let hub = Hub::builder().token("t").listen("127.0.0.1:0").write_hint(false).start().await?;
    /// let addr = hub.local_addr().to_string();
    /// let pricer = Client::builder("pricer").addr(&addr).token("t").connect().await?;
    /// let buyer = Client::builder("buyer").addr(&addr).token("t").connect().await?;
    ///
    /// let _serving = pricer.serve_typed(|q: Quote| async move {
    ///     if q.count == 0 {
    ///         return Err("nothing to price");
    ///     }
    ///     Ok(q.count * 150) // cents
    /// })
    /// .await?;
    ///
    /// let cents: u32 = buyer.request_typed("pricer", &Quote { item: "tea".into(), count: 2 }).await?;
    /// assert_eq!(cents, 300);
    ///
    /// // The handler's error and an undecodable request both reach the
    /// // requester as error replies.
    /// let none = Quote { item: "tea".into(), count: 0 };
    /// let refused = buyer.request_typed::<_, u32>("pricer", &none).await;
    /// assert!(matches!(refused, Err(ClientError::Remote(m)) if m.contains("nothing to price")));
    /// let wrong = buyer.request_typed::<_, u32>("pricer", "a string, not a quote").await;
    /// assert!(matches!(wrong, Err(ClientError::Remote(m)) if m.contains("cannot decode")));
    /// # hub.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn request_typed<Req, Resp>(
        &self,
        to: &str,
        request: &Req,
    ) -> Result<Resp, ClientError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.typed(Json).request(to, request).await
    }

    /// Answers every incoming request with `handler`, decoding requests
    /// and encoding replies as JSON; see [`TypedClient::serve`] and the
    /// example at [`request_typed`](Self::request_typed).
    pub async fn serve_typed<Req, Resp, F, Fut, E>(
        &self,
        handler: F,
    ) -> Result<ServeHandle, ClientError>
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, E>> + Send + 'static,
        E: fmt::Display,
    {
        self.typed(Json).serve(handler).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Order {
        id: u64,
        item: String,
        tags: Vec<String>,
    }

    fn order() -> Order {
        Order {
            id: 7,
            item: "tea".to_string(),
            tags: vec!["green".to_string()],
        }
    }

    fn message(kind: MessageKind, topic: &str, payload: &'static [u8]) -> Message {
        Message {
            kind,
            from: "shop".into(),
            topic: topic.into(),
            reply_to: ByteString::new(),
            payload: Bytes::from_static(payload),
            headers: Default::default(),
        }
    }

    #[test]
    fn json_round_trips_a_struct() {
        let bytes = Json.encode(&order()).unwrap();
        assert_eq!(
            &bytes[..],
            br#"{"id":7,"item":"tea","tags":["green"]}"#.as_slice()
        );
        let back: Order = Json.decode(&bytes).unwrap();
        assert_eq!(back, order());
    }

    #[test]
    fn json_encodes_unsized_and_borrowed_values() {
        assert_eq!(&Json.encode("hi").unwrap()[..], br#""hi""#);
        assert_eq!(&Json.encode(&[1u8, 2][..]).unwrap()[..], b"[1,2]");
    }

    #[test]
    fn json_decode_failure_is_a_decode_error() {
        let err = Json.decode::<Order>(b"{\"id\":\"seven\"}").unwrap_err();
        assert!(matches!(err, CodecError::Decode(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with("cannot decode: invalid type"), "{text}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn json_encode_failure_is_an_encode_error() {
        // JSON object keys must be strings.
        let map: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into_iter().collect();
        let err = Json.encode(&map).unwrap_err();
        assert!(matches!(err, CodecError::Encode(_)), "{err:?}");
        assert!(err.to_string().starts_with("cannot encode: "), "{err}");
    }

    #[test]
    fn codec_errors_from_messages() {
        assert_eq!(
            CodecError::decode("truncated").to_string(),
            "cannot decode: truncated"
        );
        assert_eq!(
            CodecError::encode(String::from("too deep")).to_string(),
            "cannot encode: too deep"
        );
    }

    #[test]
    fn typed_decode_keeps_the_origin() {
        let msg = message(
            MessageKind::Publish,
            "orders.eu",
            br#"{"id":7,"item":"tea","tags":["green"]}"#,
        );
        let typed = Typed::<Order>::decode(&Json, msg).unwrap();
        assert_eq!(typed.kind, MessageKind::Publish);
        assert_eq!(typed.from, "shop");
        assert_eq!(typed.topic, "orders.eu");
        assert_eq!(typed.into_inner(), order());
    }

    #[test]
    fn decode_error_names_topic_sender_and_cause() {
        let msg = message(MessageKind::Publish, "orders.eu", b"not json");
        let err = Typed::<Order>::decode(&Json, msg).unwrap_err();
        assert_eq!(err.topic(), "orders.eu");
        assert_eq!(err.from(), "shop");
        assert_eq!(err.kind(), MessageKind::Publish);
        assert_eq!(&err.payload()[..], b"not json");
        assert!(matches!(err.codec_error(), CodecError::Decode(_)));
        let text = err.to_string();
        assert!(
            text.starts_with(r#"message on topic "orders.eu" from "shop": cannot decode: "#),
            "{text}"
        );
        assert!(std::error::Error::source(&err).is_some());
        assert_eq!(&err.into_message().payload[..], b"not json");

        let direct = message(MessageKind::Direct, "", b"[");
        let text = Typed::<Order>::decode(&Json, direct)
            .unwrap_err()
            .to_string();
        assert!(
            text.starts_with(r#"message from "shop": cannot decode: "#),
            "{text}"
        );
    }
}
