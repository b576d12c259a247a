//! The sending calls of a [`Client`]: direct messages, requests (and the
//! replies they wait for), broadcasts and publishes.

use std::time::Duration;

use bytes::Bytes;
use switchboard_wire::{proto, Frame, Kind};

use super::handle::Client;
use super::shared::unexpected;
use super::types::{Headers, Reply, RequestOptions};
use crate::ClientError;

impl Client {
    /// Sends `payload` to client `to` and waits until the hub has queued it
    /// for the target. Fails with [`ClientError::NoSuchClient`] when the
    /// target is not connected and with [`ClientError::NotListening`] when
    /// it does not read direct messages (it has no
    /// [`messages`](Self::messages) stream). Cancel-safe in that a dropped
    /// call leaves nothing registered; the message may or may not have been
    /// sent.
    pub async fn send(&self, to: &str, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        self.send_with_headers(to, payload, Headers::new()).await
    }

    /// [`send`](Self::send) with headers.
    pub async fn send_with_headers(
        &self,
        to: &str,
        payload: impl Into<Bytes>,
        headers: Headers,
    ) -> Result<(), ClientError> {
        let payload = payload.into();
        let headers = headers.to_wire();
        Headers::check(&headers)?;
        self.shared()
            .command_ok(|id| {
                proto::Direct {
                    id,
                    to: to.to_string(),
                    payload,
                    headers,
                    ..Default::default()
                }
                .into()
            })
            .await
    }

    /// Sends `payload` to client `to` without confirmation: returns once the
    /// message is queued on this connection.
    pub async fn send_nowait(
        &self,
        to: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let payload = payload.into();
        self.shared()
            .post_at_most_once_with(|| Frame::direct(to, payload))
            .await
    }

    /// Sends a request to client `to` and waits for its reply, up to the
    /// client's default request timeout. Cancel-safe: a dropped call
    /// cancels the request at the hub (a late reply is discarded).
    pub async fn request(&self, to: &str, payload: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        self.request_with(to, "", payload, self.shared().cfg.request_timeout)
            .await
    }

    /// Sends a request with a method name and an explicit timeout. The hub
    /// answers [`ClientError::Timeout`] when the target does not reply in
    /// time; a local timer a little longer guards against a silent hub.
    /// An unknown target gives [`ClientError::NoSuchClient`] at once, a
    /// target that serves no requests [`ClientError::NotListening`], a
    /// target that leaves meanwhile [`ClientError::TargetGone`], and an
    /// error reply [`ClientError::Remote`]. Cancel-safe.
    pub async fn request_with(
        &self,
        to: &str,
        method: &str,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        let options = RequestOptions::default().method(method).timeout(timeout);
        self.request_inner(to, "", payload.into(), options)
            .await
            .map(|r| r.payload)
    }

    /// Sends a request with [`RequestOptions`] (timeout, method, headers)
    /// and returns the whole [`Reply`], headers included. Cancel-safe.
    pub async fn request_with_options(
        &self,
        to: &str,
        payload: impl Into<Bytes>,
        options: RequestOptions,
    ) -> Result<Reply, ClientError> {
        self.request_inner(to, "", payload.into(), options).await
    }

    /// Sends a request to a *service*: the hub gives it to one of the
    /// clients serving a matching service ([`Client::serve_service`]),
    /// round-robin, and fails it at once with
    /// [`ClientError::NoResponders`] when none does. Cancel-safe.
    pub async fn request_service(
        &self,
        service: &str,
        payload: impl Into<Bytes>,
        options: RequestOptions,
    ) -> Result<Reply, ClientError> {
        self.request_inner("", service, payload.into(), options)
            .await
    }

    async fn request_inner(
        &self,
        to: &str,
        service: &str,
        payload: Bytes,
        options: RequestOptions,
    ) -> Result<Reply, ClientError> {
        let timeout = options.timeout.unwrap_or(self.shared().cfg.request_timeout);
        let timeout_ms = u32::try_from(timeout.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let headers = options.headers.to_wire();
        Headers::check(&headers)?;
        let local = timeout + Duration::from_millis(250);
        let answer = self
            .shared()
            .command(local, |id| {
                proto::Request {
                    id,
                    to: to.to_string(),
                    timeout_ms,
                    payload,
                    method: options.method,
                    headers,
                    service: service.to_string(),
                    ..Default::default()
                }
                .into()
            })
            .await;
        match answer {
            Ok(Frame {
                kind: Some(Kind::Reply(r)),
                ..
            }) => {
                if r.is_error {
                    Err(ClientError::Remote(
                        String::from_utf8_lossy(&r.payload).into_owned(),
                    ))
                } else {
                    Ok(Reply {
                        from: r.from,
                        payload: r.payload,
                        headers: Headers::from_wire(r.headers),
                    })
                }
            }
            Ok(other) => Err(unexpected("reply", other.kind)),
            Err(ClientError::Timeout(_)) => {
                let target = if service.is_empty() {
                    format!("{to:?}")
                } else {
                    format!("service {service:?}")
                };
                Err(ClientError::Timeout(format!(
                    "no reply from {target} within {} ms",
                    timeout.as_millis()
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Broadcasts `payload` to every other connected client that reads
    /// direct messages, and waits for the hub's confirmation.
    pub async fn broadcast(&self, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        self.broadcast_with_headers(payload, Headers::new()).await
    }

    /// [`broadcast`](Self::broadcast) with headers.
    pub async fn broadcast_with_headers(
        &self,
        payload: impl Into<Bytes>,
        headers: Headers,
    ) -> Result<(), ClientError> {
        let payload = payload.into();
        let headers = headers.to_wire();
        Headers::check(&headers)?;
        self.shared()
            .command_ok(|id| {
                proto::Broadcast {
                    id,
                    payload,
                    headers,
                    ..Default::default()
                }
                .into()
            })
            .await
    }

    /// Publishes `payload` to `topic` and waits until the hub has routed it
    /// (an invalid topic fails with [`ClientError::InvalidArgument`]).
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        self.publish_full(topic, "", payload.into(), Vec::new())
            .await
    }

    /// [`publish`](Self::publish) with headers.
    pub async fn publish_with_headers(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        headers: Headers,
    ) -> Result<(), ClientError> {
        let headers = headers.to_wire();
        Headers::check(&headers)?;
        self.publish_full(topic, "", payload.into(), headers).await
    }

    /// [`publish`](Self::publish) naming a topic subscribers should answer
    /// to ([`Message::reply_to`](crate::Message::reply_to)).
    pub async fn publish_with_reply(
        &self,
        topic: &str,
        reply_to: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        self.publish_full(topic, reply_to, payload.into(), Vec::new())
            .await
    }

    async fn publish_full(
        &self,
        topic: &str,
        reply_to: &str,
        payload: Bytes,
        headers: Vec<proto::Header>,
    ) -> Result<(), ClientError> {
        self.shared()
            .command_ok(|id| {
                proto::Publish {
                    id,
                    topic: topic.to_string(),
                    payload,
                    reply_to: reply_to.to_string(),
                    headers,
                    ..Default::default()
                }
                .into()
            })
            .await
    }

    /// Publishes without confirmation: returns once queued on this
    /// connection. The fastest way to publish.
    pub async fn publish_nowait(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        self.shared()
            .publish_at_most_once(topic, payload.into())
            .await
    }
}
