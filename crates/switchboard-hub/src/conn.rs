//! The stream transports (TCP, and WebSocket through a bridge): handshake,
//! then a reader and a writer per connection.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use prost::Message;
use switchboard_discovery::{answer_probe, hub_proof, nonce, verify_client_proof};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{
    check_client_frame, ErrorCode, Frame, FrameCodec, WireError, LENGTH_PREFIX_LEN, NONCE_LEN,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Encoder;

use crate::inbox::Inbox;
use crate::outbox::{flow_notice, Outbox, Taken};
use crate::router::Input;
use crate::shared::Shared;
use crate::stats::HubStats;
use crate::transport::Stream;
use crate::ConnId;
use switchboard_wire::validate_client_id;

/// Frames at least this large are decoded in place from the read buffer;
/// smaller ones are copied out, so a small payload retained in a slow
/// client's queue never pins a large read buffer.
const ZERO_COPY_MIN: usize = 32 * 1024;

/// Largest read: the read buffer grows up to this while reads fill it.
const READ_CHUNK: usize = 128 * 1024;

/// Smallest read, and the step a light connection reads with.
const MIN_READ_CHUNK: usize = 8 * 1024;

/// A write batch smaller than this gives its buffer back afterwards, so an
/// idle connection holds no write buffer.
const WRITE_KEEP: usize = 16 * 1024;

/// Most frames handed to the router in one batch.
const MAX_BATCH: usize = 1024;

/// How long a rejected connection may take to accept its error frame.
const REJECT_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

enum Handshake {
    /// Authenticated: register this client.
    Accepted(proto::Hello),
    /// Answered a probe, or refused: close (after writing `frame`, if any).
    Close(Option<Frame>),
}

async fn read_frame<S: Stream>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Frame>, WireError> {
    loop {
        match decode_one(buf, max)? {
            Some(Decoded::Frame(frame, _)) => return Ok(Some(frame)),
            // Not a handshake frame: reported like any other wrong frame.
            Some(Decoded::Refused(_)) => return Ok(Some(Frame::default())),
            None => {}
        }
        buf.reserve(1024);
        if stream.read_buf(buf).await? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(WireError::Truncated {
                buffered: buf.len(),
            });
        }
    }
}

fn wire_error_frame(e: &WireError, stage: &str) -> Frame {
    let message = match e {
        WireError::FrameTooLarge { len, limit, .. } => format!(
            "frame of {len} bytes exceeds the limit of {limit} bytes {stage}; send smaller frames"
        ),
        WireError::Decode(_) => {
            format!("malformed frame {stage}; speak the switchboard protocol version {PROTOCOL_VERSION}")
        }
        WireError::Truncated { .. } => "connection closed in the middle of a frame".into(),
        other => format!("connection error: {other}"),
    };
    Frame::error(0, e.code(), message)
}

async fn handshake<S: Stream>(stream: &mut S, buf: &mut BytesMut, shared: &Shared) -> Handshake {
    let first = match read_frame(stream, buf, shared.limits.pre_auth_max_frame).await {
        Ok(Some(f)) => f,
        Ok(None) => return Handshake::Close(None),
        Err(WireError::Io(_)) => return Handshake::Close(None),
        Err(e) => return Handshake::Close(Some(wire_error_frame(&e, "before authentication"))),
    };
    let hello = match first.kind {
        Some(Kind::Probe(probe)) => {
            let reply = answer_probe(&probe, &shared.identity, &shared.secret);
            return Handshake::Close(reply.map(Frame::from));
        }
        Some(Kind::Hello(hello)) => hello,
        _ => return Handshake::Close(Some(Frame::error(
            0,
            ErrorCode::BadFrame,
            "the first frame must be Hello (or a discovery Probe); speak the switchboard protocol",
        ))),
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        return Handshake::Close(Some(Frame::error(
            0,
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {} is not supported; this hub speaks version {PROTOCOL_VERSION}",
                hello.protocol_version
            ),
        )));
    }
    if let Err(msg) = validate_client_id(&hello.client_id) {
        return Handshake::Close(Some(Frame::error(0, ErrorCode::InvalidArgument, msg)));
    }
    if hello.client_nonce.len() != NONCE_LEN {
        return Handshake::Close(Some(Frame::error(
            0,
            ErrorCode::InvalidArgument,
            format!(
                "client nonce is {} bytes; send a fresh random nonce of {NONCE_LEN} bytes",
                hello.client_nonce.len()
            ),
        )));
    }
    if let Some(resume) = &hello.resume {
        if resume.epoch > shared.identity.epoch {
            shared.higher_epoch.notify_one();
            return Handshake::Close(Some(Frame::error(
                0,
                ErrorCode::Fenced,
                format!(
                    "this hub's epoch {} is below the epoch {} the client has seen: it is an old primary; reconnect to the current one",
                    shared.identity.epoch, resume.epoch
                ),
            )));
        }
    }
    let hub_nonce = nonce();
    let challenge = proto::Challenge {
        identity: Some(shared.identity.clone()),
        hub_nonce: hub_nonce.to_vec().into(),
        proof: hub_proof(
            &shared.secret,
            &hello.client_nonce,
            &hub_nonce,
            &shared.identity,
        )
        .to_vec()
        .into(),
    };
    if write_frame(stream, &Frame::from(challenge)).await.is_err() {
        return Handshake::Close(None);
    }
    let auth = match read_frame(stream, buf, shared.limits.pre_auth_max_frame).await {
        Ok(Some(Frame {
            kind: Some(Kind::Auth(auth)),
            ..
        })) => auth,
        Ok(Some(_)) => {
            return Handshake::Close(Some(Frame::error(
                0,
                ErrorCode::BadFrame,
                "expected Auth after Challenge; complete the handshake first",
            )))
        }
        Ok(None) | Err(WireError::Io(_)) => return Handshake::Close(None),
        Err(e) => return Handshake::Close(Some(wire_error_frame(&e, "before authentication"))),
    };
    if !verify_client_proof(
        &shared.secret,
        &hub_nonce,
        &hello.client_nonce,
        &hello.client_id,
        &auth.proof,
    ) {
        tracing::info!(client = %hello.client_id, "authentication failed");
        return Handshake::Close(Some(Frame::error(
            0,
            ErrorCode::AuthFailed,
            "authentication failed: the proof does not match this hub's secret; use the same secret file or token as the hub",
        )));
    }
    Handshake::Accepted(hello)
}

async fn write_frame<S: Stream>(stream: &mut S, frame: &Frame) -> Result<(), WireError> {
    let mut out = BytesMut::new();
    FrameCodec::new().encode(frame, &mut out)?;
    stream.write_all(&out).await?;
    Ok(())
}

async fn reject<S: Stream>(mut stream: S, frame: Option<Frame>) {
    if let Some(frame) = frame {
        let _ = tokio::time::timeout(REJECT_WRITE_TIMEOUT, async {
            let _ = write_frame(&mut stream, &frame).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }
}

/// Serves one accepted connection to its end; `transport` names it in the
/// registry (`tcp`, `ws`).
pub(crate) async fn serve<S: Stream>(
    mut stream: S,
    peer: SocketAddr,
    conn: ConnId,
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
    transport: &'static str,
) {
    let mut buf = BytesMut::with_capacity(1024);
    let outcome = tokio::select! {
        r = tokio::time::timeout(
            shared.handshake_timeout,
            handshake(&mut stream, &mut buf, &shared),
        ) => r,
        _ = shared.shutdown.cancelled() => Ok(Handshake::Close(None)),
    };
    drop(permit);
    let hello = match outcome {
        Ok(Handshake::Accepted(hello)) => hello,
        Ok(Handshake::Close(frame)) => return reject(stream, frame).await,
        Err(_elapsed) => {
            tracing::debug!("handshake timed out");
            let ms = shared.handshake_timeout.as_millis();
            let frame = Frame::error(
                0,
                ErrorCode::HandshakeTimeout,
                format!("handshake not completed within {ms} ms; send Hello and Auth promptly"),
            );
            return reject(stream, Some(frame)).await;
        }
    };
    tracing::debug!(client = %hello.client_id, "authenticated");
    if hello.role == proto::Role::Standby as i32 {
        return crate::replication::link::serve_link(stream, buf, peer, hello, shared).await;
    }
    let outbox = Outbox::gated(conn, shared.gate.clone());
    let agent: String = hello.agent.chars().take(256).collect();
    let feature = |name: &str| hello.features.iter().any(|f| f == name);
    let reliable = feature(switchboard_wire::FEATURE_RELIABLE);
    let listen = feature(switchboard_wire::FEATURE_LISTEN);
    let info = proto::ClientInfo {
        client_id: hello.client_id,
        transport: transport.into(),
        addr: peer.to_string(),
        connected_at_ms: switchboard_discovery::now_ms(),
        agent,
        reliable,
        listen,
    };
    shared.stats.track(&outbox);
    let connect = match hello.resume {
        Some(resume) if reliable => Input::Resume {
            conn,
            info,
            outbox: outbox.clone(),
            resume,
        },
        _ => Input::Connect {
            conn,
            info,
            outbox: outbox.clone(),
        },
    };
    if shared.inbox.send(connect).await.is_err() {
        shared.stats.untrack(conn);
        return;
    }
    let (rd, wr) = stream.halves();
    let writer = tokio::spawn(write_loop::<S>(
        wr,
        outbox.clone(),
        conn,
        shared.inbox.clone(),
        shared.stats.clone(),
        shared.limits.write_batch_bytes,
    ));
    read_loop::<S>(rd, buf, conn, &outbox, &shared).await;
    let _ = writer.await;
    shared.stats.untrack(conn);
}

/// One frame taken from the read buffer.
enum Decoded {
    /// A decoded frame, and its length on the wire.
    Frame(Frame, usize),
    /// A whole frame refused without decoding (a kind clients may not send,
    /// or over its kind's size cap); the notice tells the client why.
    Refused(Frame),
}

/// Takes one frame from `buf`, if a whole one is there. The frame's kind is
/// checked before it is decoded, so kinds that only the hub sends (which
/// carry lists and decode to far more memory than their bytes) are never
/// decoded from a client.
fn decode_one(buf: &mut BytesMut, max: usize) -> Result<Option<Decoded>, WireError> {
    let Some(len) = switchboard_wire::whole_frame(buf, max)? else {
        return Ok(None);
    };
    let total = LENGTH_PREFIX_LEN + len;
    let refusal = match check_client_frame(&buf[LENGTH_PREFIX_LEN..total]) {
        Ok(()) => None,
        Err(WireError::Rejected { kind, .. }) if kind != "unknown" => Some(Frame::error(
            0,
            ErrorCode::Unsupported,
            format!("a client may not send '{kind}' frames to the hub; it was ignored"),
        )),
        Err(WireError::FrameTooLarge { len, limit, .. }) => Some(Frame::error(
            0,
            ErrorCode::LimitExceeded,
            format!("frame body of {len} bytes exceeds the limit of {limit} bytes for its kind; it was ignored"),
        )),
        // A malformed layout: decoding fails below with a precise error.
        Err(_) => None,
    };
    if let Some(notice) = refusal {
        buf.advance(total);
        return Ok(Some(Decoded::Refused(notice)));
    }
    // Publishes, the bulk of client traffic, are decoded by hand (the same
    // frame prost would decode; anything unusual goes to prost).
    let frame = if len >= ZERO_COPY_MIN {
        buf.advance(LENGTH_PREFIX_LEN);
        let body = buf.split_to(len).freeze();
        match switchboard_wire::decode_publish(&body, Some(&body)) {
            Some(frame) => frame,
            None => Frame::decode(body)?,
        }
    } else {
        let body = &buf[LENGTH_PREFIX_LEN..total];
        let frame = match switchboard_wire::decode_publish(body, None) {
            Some(frame) => frame,
            None => Frame::decode(body)?,
        };
        buf.advance(total);
        frame
    };
    Ok(Some(Decoded::Frame(frame, total)))
}

async fn read_loop<S: Stream>(
    mut rd: S::Read,
    mut buf: BytesMut,
    conn: ConnId,
    outbox: &Outbox,
    shared: &Shared,
) {
    let max = shared.limits.max_frame;
    let cancel = outbox.cancelled().clone();
    // Bytes the next read asks for: doubled while reads fill it, halved
    // while they use less than a quarter.
    let mut chunk = MIN_READ_CHUNK;
    let (notice, reason) = 'conn: loop {
        // Sized for the buffered bytes so the batch rarely reallocates.
        let mut frames = Vec::with_capacity((buf.len() / 64).clamp(1, MAX_BATCH));
        let mut failure = None;
        let mut refused = None;
        loop {
            match decode_one(&mut buf, max) {
                Ok(Some(Decoded::Frame(frame, len))) => {
                    shared.stats.metrics.frame_in(&frame, len);
                    frames.push(frame);
                    if frames.len() >= MAX_BATCH {
                        break;
                    }
                }
                Ok(Some(Decoded::Refused(notice))) => {
                    refused = Some(notice);
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        // More may be buffered after a full batch or a refusal.
        let more = frames.len() >= MAX_BATCH || refused.is_some();
        if !frames.is_empty() {
            tokio::select! {
                r = shared.inbox.send(Input::Frames { conn, frames }) => {
                    if r.is_err() {
                        // The router is gone: nobody will close the outbox.
                        outbox.kill(None);
                        return;
                    }
                }
                _ = cancel.cancelled() => break 'conn (None, "closed".to_owned()),
            }
        }
        if let Some(notice) = refused {
            tokio::select! {
                r = shared.inbox.send(Input::Refused { conn, notice }) => {
                    if r.is_err() {
                        outbox.kill(None);
                        return;
                    }
                }
                _ = cancel.cancelled() => break 'conn (None, "closed".to_owned()),
            }
        }
        if let Some(e) = failure {
            tracing::debug!(error = %e, "protocol error");
            break 'conn (
                Some(wire_error_frame(&e, "after authentication")),
                e.to_string(),
            );
        }
        if more {
            continue;
        }
        if buf.is_empty() && chunk == MIN_READ_CHUNK {
            // A light or idle connection holds no read buffer while it
            // waits (a busy one keeps its large buffer).
            if buf.capacity() > 0 {
                buf = BytesMut::new();
            }
            tokio::select! {
                _ = S::readable(&rd) => {}
                _ = cancel.cancelled() => break 'conn (None, "closed".to_owned()),
            }
        }
        buf.reserve(chunk);
        let spare = buf.capacity() - buf.len();
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) if buf.is_empty() => break 'conn (None, "disconnected".to_owned()),
                Ok(0) => {
                    let e = WireError::Truncated { buffered: buf.len() };
                    break 'conn (Some(wire_error_frame(&e, "")), e.to_string());
                }
                Ok(n) => {
                    if n >= spare {
                        chunk = (chunk * 2).min(READ_CHUNK);
                    } else if n < chunk / 4 {
                        chunk = (chunk / 2).max(MIN_READ_CHUNK);
                    }
                    shared.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => break 'conn (None, format!("read error: {e}")),
            },
            // Killed by the router, or the writer failed.
            _ = cancel.cancelled() => break 'conn (None, "closed".to_owned()),
        }
    };
    let _ = shared
        .inbox
        .send(Input::Disconnected {
            conn,
            notice,
            reason,
        })
        .await;
}

async fn write_loop<S: Stream>(
    mut wr: S::Write,
    outbox: Arc<Outbox>,
    conn: ConnId,
    inbox: Inbox,
    stats: Arc<HubStats>,
    batch_bytes: usize,
) {
    let cancel = outbox.cancelled().clone();
    let mut taken = Taken::default();
    // Allocated with the first batch; given back after small batches.
    let mut buf = BytesMut::new();
    loop {
        outbox.take(batch_bytes, &mut taken);
        if taken.killed {
            if let Some(last) = outbox.take_last_words() {
                buf.clear();
                crate::Out::from(last).encode(&mut buf);
                S::try_write(&mut wr, &buf);
            }
            break;
        }
        if taken.want_drained {
            let _ = inbox.try_send(Input::Drained { conn });
        }
        if taken.frames.is_empty() && taken.dropped == 0 {
            if taken.close {
                break;
            }
            if taken.held != 0 && !outbox.gate().wait(&outbox, taken.held) {
                // Released meanwhile: take again.
                continue;
            }
            tokio::select! {
                _ = outbox.notified() => {}
                _ = cancel.cancelled() => {}
            }
            continue;
        }
        buf.clear();
        let mut n = taken.frames.len() as u64;
        if taken.dropped > 0 {
            flow_notice(taken.dropped, taken.remaining).encode(&mut buf);
            n += 1;
        }
        // Deliveries are counted once per batch.
        let (mut delivers, mut deliver_bytes) = (0u64, 0usize);
        for out in taken.frames.drain(..) {
            let before = buf.len();
            out.encode(&mut buf);
            match &out {
                crate::Out::Frame(f) => stats.metrics.frame_out(f.kind_name(), buf.len() - before),
                crate::Out::Deliver { .. } => {
                    delivers += 1;
                    deliver_bytes += buf.len() - before;
                }
            }
        }
        stats.metrics.delivers_out(delivers, deliver_bytes as u64);
        tokio::select! {
            r = wr.write_all(&buf) => {
                if r.is_err() {
                    break;
                }
            }
            // Killed mid-write: the stream is no longer at a frame boundary.
            _ = cancel.cancelled() => break,
        }
        stats.msgs_out.fetch_add(n, Ordering::Relaxed);
        stats
            .bytes_out
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if taken.close {
            break;
        }
        if buf.len() < WRITE_KEEP || buf.capacity() > 4 * READ_CHUNK {
            buf = BytesMut::new();
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(100), wr.shutdown()).await;
    // Stops the reader too.
    cancel.cancel();
}
