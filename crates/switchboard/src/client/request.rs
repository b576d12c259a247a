//! A request from another client ([`IncomingRequest`]) and the ways it
//! is answered: by the application, by a serving handler ([`Replier`]),
//! or with an error reply when it is dropped unanswered.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures::future::BoxFuture;
use switchboard_wire::{proto, Frame};

use super::types::Headers;
use crate::ClientError;

/// The client's send path as a request sees it: a request answers through
/// it without holding the client alive.
pub(crate) trait Outlet: Send + Sync {
    /// Queues `frame` as any reliable send does (waiting for room).
    fn answer(&self, frame: Frame) -> BoxFuture<'_, Result<(), ClientError>>;
    /// Queues `frame` at once, or from a task when that must wait (for
    /// `Drop`).
    fn answer_detached(self: Arc<Self>, frame: Frame);
}

/// A request from another client, to be answered with
/// [`reply`](IncomingRequest::reply) or
/// [`reply_error`](IncomingRequest::reply_error). Dropping it unanswered
/// sends an error reply, so the requester never waits in vain.
pub struct IncomingRequest {
    outlet: Weak<dyn Outlet>,
    id: u64,
    from: String,
    method: String,
    payload: Bytes,
    headers: Headers,
    service: Option<String>,
    timeout_ms: u32,
    armed: bool,
}

impl std::fmt::Debug for IncomingRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingRequest")
            .field("id", &self.id)
            .field("from", &self.from)
            .field("method", &self.method)
            .field("service", &self.service)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl IncomingRequest {
    /// A request received; `armed`: dropping it unanswered sends an error
    /// reply (set once the application's stream holds it).
    pub(crate) fn new<O: Outlet + 'static>(
        outlet: &Arc<O>,
        r: proto::Request,
        armed: bool,
    ) -> IncomingRequest {
        let outlet: Weak<O> = Arc::downgrade(outlet);
        IncomingRequest {
            outlet,
            id: r.id,
            from: r.from,
            method: r.method,
            payload: r.payload,
            headers: Headers::from_wire(r.headers),
            service: (!r.service.is_empty()).then_some(r.service),
            timeout_ms: r.timeout_ms,
            armed,
        }
    }

    /// From now on, dropping it unanswered sends an error reply.
    pub(crate) fn arm(&mut self) {
        self.armed = true;
    }

    /// The request's correlation id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Hands the answer over to a handler runner: dropping the request no
    /// longer sends an error reply; the [`Replier`] answers instead.
    pub(crate) fn take_answer(&mut self) -> Replier {
        self.armed = false;
        Replier {
            outlet: self.outlet.clone(),
            id: self.id,
            to: self.from.clone(),
        }
    }

    /// The requester's client id.
    pub fn from(&self) -> &str {
        &self.from
    }

    /// The method name the requester gave (may be empty).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request's payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The requester's headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// For a request to a service: the service subject the requester used.
    pub fn service(&self) -> Option<&str> {
        self.service.as_deref()
    }

    /// How long the requester waits, in milliseconds (0: the hub default).
    pub fn timeout_ms(&self) -> u32 {
        self.timeout_ms
    }

    async fn answer(mut self, frame: Frame) -> Result<(), ClientError> {
        self.armed = false;
        let outlet = self.outlet.upgrade().ok_or(ClientError::Closed)?;
        let to = std::mem::take(&mut self.from);
        answer_or_explain(&*outlet, self.id, to, frame).await
    }

    /// Sends the reply.
    pub async fn reply(self, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        let frame = Frame::reply(self.id, self.from.clone(), payload.into());
        self.answer(frame).await
    }

    /// Sends the reply with headers.
    pub async fn reply_with_headers(
        self,
        payload: impl Into<Bytes>,
        headers: Headers,
    ) -> Result<(), ClientError> {
        let headers = headers.to_wire();
        Headers::check(&headers)?;
        let frame = Frame::from(proto::Reply {
            id: self.id,
            to: self.from.clone(),
            payload: payload.into(),
            headers,
            ..Default::default()
        });
        self.answer(frame).await
    }

    /// Sends an error reply; the requester gets [`ClientError::Remote`]
    /// with `message`.
    pub async fn reply_error(self, message: impl std::fmt::Display) -> Result<(), ClientError> {
        let frame = error_reply(self.id, self.from.clone(), message.to_string());
        self.answer(frame).await
    }
}

impl Drop for IncomingRequest {
    fn drop(&mut self) {
        if self.armed {
            if let Some(outlet) = self.outlet.upgrade() {
                outlet.answer_detached(error_reply(
                    self.id,
                    std::mem::take(&mut self.from),
                    "the request was dropped without a reply".to_string(),
                ));
            }
        }
    }
}

/// Where a request taken over by a handler is answered
/// ([`IncomingRequest::take_answer`]).
pub(crate) struct Replier {
    outlet: Weak<dyn Outlet>,
    id: u64,
    to: String,
}

impl Replier {
    /// Sends the handler's reply (with its headers, if any), or an error
    /// reply with the message; headers the hub would refuse turn the reply
    /// into an error reply saying why.
    pub(crate) async fn reply(self, result: Result<(Bytes, Headers), String>) {
        let frame = match result {
            Ok((payload, headers)) if headers.is_empty() => {
                Frame::reply(self.id, self.to.clone(), payload)
            }
            Ok((payload, headers)) => {
                let headers = headers.to_wire();
                match Headers::check(&headers) {
                    Ok(()) => Frame::from(proto::Reply {
                        id: self.id,
                        to: self.to.clone(),
                        payload,
                        headers,
                        ..Default::default()
                    }),
                    Err(e) => error_reply(self.id, self.to.clone(), e.to_string()),
                }
            }
            Err(message) => error_reply(self.id, self.to.clone(), message),
        };
        if let Some(outlet) = self.outlet.upgrade() {
            let _ = answer_or_explain(&*outlet, self.id, self.to, frame).await;
        }
    }
}

/// Sends `frame`, the answer to request `id` from `to`. A reply the client
/// refuses to send (over the hub's frame limit) becomes an error reply
/// saying so, so the requester learns why at once instead of waiting for
/// its timeout; the handler still gets the error.
async fn answer_or_explain(
    outlet: &dyn Outlet,
    id: u64,
    to: String,
    frame: Frame,
) -> Result<(), ClientError> {
    match outlet.answer(frame).await {
        Err(ClientError::InvalidArgument(message)) => {
            let why = format!("the responder could not send its reply: {message}");
            let _ = outlet.answer(error_reply(id, to, why)).await;
            Err(ClientError::InvalidArgument(message))
        }
        other => other,
    }
}

/// An error reply to request `id` from `to`: the requester gets
/// [`ClientError::Remote`] with `message`.
pub(crate) fn error_reply(id: u64, to: String, message: String) -> Frame {
    proto::Reply {
        id,
        to,
        payload: message.into_bytes().into(),
        is_error: true,
        ..Default::default()
    }
    .into()
}
