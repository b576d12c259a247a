//! A native connection, on any [`Transport`] (TCP, WebSocket, in-memory
//! pipes): the handshake, then the connection's task as reader (check each
//! frame's kind before decoding it, hand frames to the router in batches)
//! and a writer task (drain the outbox, one encoded batch per send) while
//! there is something to write.
//!
//! The writer task is not kept for an idle connection: it ends once its
//! outbox was empty for [`WRITER_LINGER`] (to two of them), handing the
//! transport's sending half back to the connection's task, which waits on
//! the outbox's wake-up and spawns a writer again for the next frame
//! queued ([`WriterSlot`]). A busy connection keeps its writer, so the hot
//! path is unchanged; an idle one holds one task, not two.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::future::{BoxFuture, Either};
use prost::Message;
use switchboard_discovery::{
    answer_probe, current_uid, hub_proof, nonce, verify_client_proof, Secret,
};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{
    check_client_frame, put_frame, validate_client_id, ErrorCode, Frame, WireError, ACK_EVERY,
    LENGTH_PREFIX_LEN, NONCE_LEN, PROTOCOL_VERSION,
};

use crate::inbox::{Closed, Inbox};
use crate::metrics::Via;
use crate::outbox::{flow_notice, Outbox, Taken};
use crate::router::admission::{Identity, Peer, Proof, Refusal};
use crate::router::Input;
use crate::shared::Shared;
use crate::stats::HubStats;
use crate::transport::drain::Linger;
use crate::transport::{drain, Body, Drain, FrameRx, FrameTx, Transport, READ_CHUNK};
use crate::ConnId;

/// A write batch smaller than this gives its buffer back afterwards, so an
/// idle connection holds no write buffer.
const WRITE_KEEP: usize = 16 * 1024;

/// Room for a `Flow` notice ahead of a batch: a frame of two varints.
const FLOW_NOTICE_MAX: usize = 32;

/// Most frames handed to the router in one batch.
const MAX_BATCH: usize = 1024;

/// How long a rejected connection may take to accept its error frame.
const REJECT_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a finished writer waits for its transport to close.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(100);

/// A connection's writer task ends after its outbox was empty for this
/// long (to twice this): an idle connection holds no writer task. Short,
/// because the hub's memory keeps the high-water mark of writers alive at
/// once while clients connect; long against the gaps of a busy client.
pub(crate) const WRITER_LINGER: Duration = Duration::from_millis(100);

enum Handshake {
    /// Authenticated: register this client, who proved this.
    Accepted(proto::Hello, Proof),
    /// Answered a probe, or refused: close (after writing `frame`, if any).
    Close(Option<Frame>),
}

/// Reads one handshake frame (at most `max` bytes); `None` at the end of
/// the input.
async fn read_frame<R: FrameRx>(rx: &mut R, max: usize) -> Result<Option<Frame>, WireError> {
    loop {
        let mut one = Vec::with_capacity(1);
        match rx
            .next_frame(max, |body| decode_client(body, &mut one))?
            .transpose()?
        {
            Some(Decoded::Frame(_)) => return Ok(one.pop()),
            // Not a handshake frame: reported like any other wrong frame.
            Some(Decoded::Refused(_)) => return Ok(Some(Frame::default())),
            None => {}
        }
        if rx.receive().await? == 0 {
            if rx.buffered() == 0 {
                return Ok(None);
            }
            return Err(WireError::Truncated {
                buffered: rx.buffered(),
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

/// The key a `Hello` names: a token of the policy, or the hub's secret.
fn key_for(shared: &Shared, key_id: &[u8]) -> (Secret, Proof) {
    if let Some(token) = shared.admission.as_ref().and_then(|a| a.token(key_id)) {
        return (token.secret, Proof::Token(token.principal));
    }
    (shared.secret.clone(), Proof::HubSecret)
}

async fn handshake<R: FrameRx, W: FrameTx>(
    rx: &mut R,
    tx: &mut W,
    shared: &Shared,
    peer: &Peer,
) -> Handshake {
    let first = match read_frame(rx, shared.limits.pre_auth_max_frame).await {
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
    let (key, proof) = key_for(shared, &hello.key_id);
    let hub_nonce = nonce();
    let challenge = proto::Challenge {
        identity: Some(shared.identity.clone()),
        hub_nonce: hub_nonce.to_vec().into(),
        proof: hub_proof(&key, &hello.client_nonce, &hub_nonce, &shared.identity)
            .to_vec()
            .into(),
    };
    if write_frame(tx, &Frame::from(challenge)).await.is_err() {
        return Handshake::Close(None);
    }
    let auth = match read_frame(rx, shared.limits.pre_auth_max_frame).await {
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
    // Over the Unix socket a client may skip the proof: its peer
    // credentials speak for it (peer authentication), if they are enough.
    if auth.proof.is_empty() && peer.unix.is_some() {
        return Handshake::Accepted(hello, Proof::PeerOnly);
    }
    if !verify_client_proof(
        &key,
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
    Handshake::Accepted(hello, proof)
}

/// Serves a plaintext connection on the native port of a TLS hub: a
/// discovery probe is answered (discovery keeps working), anything else is
/// refused at once with an error that says to connect with TLS.
pub(crate) async fn serve_plaintext_on_tls<T: Transport>(
    carrier: T,
    peer: Peer,
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let (mut rx, tx) = carrier.split();
    let first = tokio::select! {
        r = tokio::time::timeout(
            shared.handshake_timeout,
            read_frame(&mut rx, shared.limits.pre_auth_max_frame),
        ) => r,
        _ = shared.shutdown.cancelled() => return,
    };
    drop(permit);
    let frame = match first {
        Ok(Ok(Some(Frame {
            kind: Some(Kind::Probe(probe)),
            ..
        }))) => answer_probe(&probe, &shared.identity, &shared.secret).map(Frame::from),
        Ok(Ok(None)) | Ok(Err(WireError::Io(_))) => None,
        _ => {
            tracing::debug!(addr = %peer.addr, "plaintext connection on the TLS port refused");
            let port = shared.identity.port;
            Some(Frame::error(
                0,
                ErrorCode::Forbidden,
                format!("this hub requires TLS on this port; connect with tls://HOST:{port}"),
            ))
        }
    };
    reject(tx, frame).await;
}

/// Who an authenticated connection is: the policy's answer, or in
/// single-user mode (no policy) everyone who proved the secret, and over
/// the Unix socket the hub's own user without a proof.
fn identify(shared: &Shared, peer: &Peer, proof: &Proof) -> Result<Identity, Refusal> {
    let uid = peer.unix.map(|c| c.uid);
    match &shared.admission {
        Some(admission) => admission.identify(peer, proof),
        None if *proof == Proof::PeerOnly && uid != Some(current_uid()) => Err(Refusal {
            code: ErrorCode::AuthFailed,
            message: format!(
                "uid {} may not connect without a proof: without a policy this hub admits only its own user on its Unix socket; give the hub's secret or token, or run the hub with a policy that admits this user",
                uid.unwrap_or_default()
            ),
        }),
        None => Ok(Identity {
            principal: String::new(),
            uid,
        }),
    }
}

async fn write_frame<W: FrameTx>(tx: &mut W, frame: &Frame) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    put_frame(frame, &mut out);
    tx.send(&mut out).await
}

/// Writes `frame`, if any, to a connection refused in the handshake, and
/// closes it.
async fn reject<W: FrameTx>(mut tx: W, frame: Option<Frame>) {
    if let Some(frame) = frame {
        let _ = tokio::time::timeout(REJECT_WRITE_TIMEOUT, async {
            let _ = write_frame(&mut tx, &frame).await;
            tx.close().await;
        })
        .await;
    }
}

/// Serves one accepted connection to its end; `peer.transport` names it
/// in the registry (`tcp`, `unix`, `ws`, `memory`, …). Everything logged
/// for the connection carries `outer` (the listener's span for it, if
/// any) and a `client` span with its connection id, transport and (once
/// it said hello) client id.
///
/// A plain function returning the connection's task, which lives as long
/// as the connection: first the one-off steps before the read loop (the
/// handshake with its frames and timer, refusals, the standby link, the
/// registration) in their own allocation, freed when they end; then the
/// read loop in place of that allocation, holding only the steady state
/// (not even the arguments the one-off steps consume). An idle hub's
/// memory per client: `the_connection_task_holds_no_handshake_state`.
pub(crate) fn serve<T: Transport>(
    carrier: T,
    peer: Peer,
    conn: ConnId,
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
    outer: tracing::Span,
) -> impl std::future::Future<Output = ()> {
    let span = tracing::info_span!(
        "client",
        conn = conn.0,
        transport = peer.transport,
        client_id = tracing::field::Empty
    );
    let enabled = !span.is_disabled() || !outer.is_disabled();
    Task {
        spans: enabled.then(|| Box::new([outer, span])),
        start: read_loop::<T::Rx, T::Tx>,
        stage: Stage::Opening {
            opening: Box::pin(open(carrier, peer, conn, shared, permit)),
        },
    }
}

pin_project_lite::pin_project! {
    /// A connection's task ([`serve`]): its one-off steps (`O`, boxed),
    /// then its read loop (`L`, which `start` makes of what they hand on),
    /// polled in its spans. The spans are boxed, and left out when both
    /// are disabled (at the hub's default log level): a pointer in every
    /// connection's task for the life of the connection, where
    /// `tracing::Instrument` takes 40 bytes a span.
    struct Task<O, F, L> {
        spans: Option<Box<[tracing::Span; 2]>>,
        start: F,
        #[pin]
        stage: Stage<O, L>,
    }
}

pin_project_lite::pin_project! {
    /// Where a connection's task is.
    #[project = StageProj]
    enum Stage<O, L> {
        Opening { opening: std::pin::Pin<Box<O>> },
        Serving { #[pin] serving: L },
        Done,
    }
}

impl<O, F, L, P> Future for Task<O, F, L>
where
    O: Future<Output = Option<P>>,
    F: Fn(P) -> L,
    L: Future<Output = ()>,
{
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        let mut this = self.project();
        // Entered outer first, left in the reverse order.
        let _outer = this.spans.as_deref().map(|[outer, _]| outer.enter());
        let _span = this.spans.as_deref().map(|[_, span]| span.enter());
        loop {
            match this.stage.as_mut().project() {
                StageProj::Opening { opening } => match opening.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(opened)) => {
                        let serving = (this.start)(opened);
                        this.stage.set(Stage::Serving { serving });
                    }
                    Poll::Ready(None) => {
                        this.stage.set(Stage::Done);
                        return Poll::Ready(());
                    }
                },
                StageProj::Serving { serving } => {
                    std::task::ready!(serving.poll(cx));
                    this.stage.set(Stage::Done);
                    return Poll::Ready(());
                }
                StageProj::Done => return Poll::Ready(()),
            }
        }
    }
}

/// What a connection's one-off steps hand on to its read loop.
type Opened<T> = (
    <T as Transport>::Rx,
    <T as Transport>::Tx,
    Via,
    Arc<Outbox>,
    Arc<Shared>,
);

/// A connection's one-off steps up to the read loop: the handshake, the
/// policy, a standby link (served here to its end) and the registration.
/// `None` when the connection ended on the way.
async fn open<T: Transport>(
    carrier: T,
    peer: Peer,
    conn: ConnId,
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Option<Opened<T>> {
    let shared = &shared;

    let (mut rx, mut tx) = carrier.split();
    let outcome = (async {
        tokio::select! {
            r = tokio::time::timeout(
                shared.handshake_timeout,
                handshake(&mut rx, &mut tx, shared, &peer),
            ) => r,
            _ = shared.shutdown.cancelled() => Ok(Handshake::Close(None)),
        }
    })
    .await;
    drop(permit);
    let (hello, proof) = match outcome {
        Ok(Handshake::Accepted(hello, proof)) => {
            tracing::Span::current().record("client_id", hello.client_id.as_str());
            (hello, proof)
        }
        Ok(Handshake::Close(frame)) => {
            reject(tx, frame).await;
            return None;
        }
        Err(_elapsed) => {
            tracing::debug!("handshake timed out");
            let ms = shared.handshake_timeout.as_millis();
            let frame = Frame::error(
                0,
                ErrorCode::HandshakeTimeout,
                format!("handshake not completed within {ms} ms; send Hello and Auth promptly"),
            );
            reject(tx, Some(frame)).await;
            return None;
        }
    };
    let identity = match identify(shared, &peer, &proof) {
        Ok(identity) => identity,
        Err(r) => {
            tracing::info!(client = %hello.client_id, transport = peer.transport, "connection refused by the policy");
            reject(tx, Some(Frame::error(0, r.code, r.message))).await;
            return None;
        }
    };
    // The proof and the handshake's leftovers are not kept for the
    // connection's life (see `registration`).
    drop(proof);
    tracing::info!(principal = %identity.principal, "client authenticated");
    if hello.role == proto::Role::Standby as i32 {
        if let Some(admission) = &shared.admission {
            if let Err(r) = admission.admit_standby(&identity) {
                reject(tx, Some(Frame::error(0, r.code, r.message))).await;
                return None;
            }
        }
        crate::replication::link::serve_link(rx, tx, peer.addr, hello, shared.clone()).await;
        return None;
    }
    let via = Via::of(peer.transport);
    let (outbox, connect) = registration(hello, identity, peer, conn, shared);
    if shared.inbox.send(connect).await.is_err() {
        shared.stats.untrack(conn);
        return None;
    }
    Some((rx, tx, via, outbox, shared.clone()))
}

/// The outbox of an admitted client, tracked in the stats, and its
/// registration for the router (`Connect`, or `Resume` for a reliable
/// client resuming). Takes the `Hello` and the peer by value so that what
/// the registration does not keep (features, nonces, key id, the peer's
/// credentials) is freed here rather than held for the connection's life.
fn registration(
    hello: proto::Hello,
    identity: Identity,
    peer: Peer,
    conn: ConnId,
    shared: &Shared,
) -> (Arc<Outbox>, Input) {
    let outbox = Outbox::gated(conn, shared.gate.clone());
    let agent: String = hello.agent.chars().take(256).collect();
    let feature = |name: &str| hello.features.iter().any(|f| f == name);
    let reliable = feature(switchboard_wire::FEATURE_RELIABLE);
    let listen = feature(switchboard_wire::FEATURE_LISTEN);
    let info = proto::ClientInfo {
        client_id: hello.client_id,
        transport: peer.transport.into(),
        addr: peer.addr,
        connected_at_ms: switchboard_discovery::now_ms(),
        agent,
        reliable,
        listen,
        principal: identity.principal,
        uid: identity.uid,
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
    (outbox, connect)
}

/// One frame received from a client.
enum Decoded {
    /// A frame decoded onto the batch, and its length with a length prefix.
    Frame(usize),
    /// A whole frame refused without decoding (a kind clients may not send,
    /// or over its kind's size cap); the notice tells the client why.
    Refused(Box<Frame>),
}

/// Checks and decodes one frame body received from a client onto the end
/// of `batch` (a frame is 256 bytes: decoded straight onto the batch it is
/// not copied again on its way there). The frame's kind is checked before
/// it is decoded, so kinds that only the hub sends (which carry lists and
/// decode to far more memory than their bytes) are never decoded from a
/// client.
fn decode_client(body: Body<'_>, batch: &mut Vec<Frame>) -> Result<Decoded, WireError> {
    let total = LENGTH_PREFIX_LEN + body.as_slice().len();
    // Publishes, the bulk of client traffic, are decoded by hand (the same
    // frame prost would decode). What that decoder takes passes the check
    // below as well, so it is not run for them; anything unusual is
    // checked, then decoded by prost.
    let fast = match &body {
        Body::Owned(b) => switchboard_wire::decode_client_publish(b, Some(b)),
        Body::Borrowed(b) => switchboard_wire::decode_client_publish(b, None),
    };
    if let Some(frame) = fast {
        batch.push(frame);
        return Ok(Decoded::Frame(total));
    }
    let refusal = match check_client_frame(body.as_slice()) {
        Ok(()) => None,
        Err(WireError::Rejected { kind, .. }) => Some(Frame::error(
            0,
            ErrorCode::Unsupported,
            format!("a client may not send '{kind}' frames to the hub; it was ignored"),
        )),
        Err(WireError::FrameTooLarge { len, limit, .. }) => Some(Frame::error(
            0,
            ErrorCode::LimitExceeded,
            format!("frame body of {len} bytes exceeds the limit of {limit} bytes for its kind; it was ignored"),
        )),
        // A reply's id is its requester's: the refusal names it instead.
        Err(WireError::OverLimit {
            kind: "reply",
            id,
            reason,
        }) => Some(Frame::error(
            0,
            ErrorCode::LimitExceeded,
            format!("the reply to request {id} was refused: {reason}; it was ignored"),
        )),
        Err(WireError::OverLimit { kind, id, reason }) => Some(Frame::error(
            id,
            ErrorCode::LimitExceeded,
            format!("{kind} frame refused: {reason}; it was ignored"),
        )),
        // A broken layout (two kind fields among them, which prost would
        // decode as the last one, past the kind check): the connection
        // ends with BAD_FRAME like any undecodable frame.
        Err(e) => return Err(e),
    };
    if let Some(notice) = refusal {
        return Ok(Decoded::Refused(Box::new(notice)));
    }
    batch.push(match body {
        Body::Owned(body) => Frame::decode(body)?,
        Body::Borrowed(body) => Frame::decode(body)?,
    });
    Ok(Decoded::Frame(total))
}

/// Hands what the client sends to the router, in batches, until the
/// connection ends or the outbox is killed; then reports the disconnect,
/// writes what is left to write and leaves the stats. Meanwhile tends the
/// connection's writer (spawns it for frames queued, takes the sending
/// half back when it stops idle).
///
/// A plain function returning an `async move` block, not an `async fn`:
/// an `async fn` keeps each argument twice in its state (as passed, and
/// moved into its body), and this state is most of an idle connection's
/// task. For the same reason nothing that can be read again when needed
/// (the connection id, the frame limit, the outbox's `Cancel`) is kept
/// in a local across its waits.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn read_loop<R: FrameRx, W: FrameTx>(
    (mut rx, tx, via, outbox, shared): (R, W, Via, Arc<Outbox>, Arc<Shared>),
) -> impl Future<Output = ()> {
    let mut writer = WriterSlot::Idle(tx);
    async move {
        // The highest acknowledgement handed to the router ahead of the
        // frames (`Inbox::send_ack`).
        let mut acked = 0;
        // `None`: the router is gone (and the outbox killed).
        let ended = 'conn: loop {
            // The batch's state lives in this block only, and only one
            // wait (for room in the router's inbox, rare) comes before its
            // end: the wait for input below, where an idle connection's
            // task spends its life, holds none of it.
            let more = {
                // Sized for the buffered bytes so the batch rarely reallocates;
                // nothing buffered, nothing allocated (the wait below would hold
                // it while the connection idles).
                let mut frames = match rx.buffered() {
                    0 => Vec::new(),
                    n => Vec::with_capacity((n / 64).clamp(1, MAX_BATCH)),
                };
                // Boxed, both: rare, and held across the wait for room
                // below (their room in the task's state would be a frame's
                // and an error's size).
                let mut refused = None;
                let mut failure = None;
                // The batch's highest acknowledgement (`Ack`, `Frame.acked`), and
                // whether an `Ack` frame (taken out of the batch) carried one.
                let mut up_to = 0;
                let mut ack_frames = false;
                loop {
                    let max = shared.limits.max_frame;
                    match rx.next_frame(max, |body| decode_client(body, &mut frames)) {
                        Ok(Some(Ok(Decoded::Frame(len)))) => {
                            let Some(frame) = frames.last() else {
                                continue;
                            };
                            shared.stats.metrics.frame_in(via, frame, len);
                            up_to = up_to.max(frame.acked);
                            if let Some(Kind::Ack(a)) = &frame.kind {
                                // It only acknowledges: it goes ahead, below.
                                up_to = up_to.max(a.up_to);
                                ack_frames = true;
                                frames.truncate(frames.len() - 1);
                                continue;
                            }
                            if frames.len() >= MAX_BATCH {
                                break;
                            }
                        }
                        Ok(Some(Ok(Decoded::Refused(notice)))) => {
                            refused = Some(notice);
                            break;
                        }
                        Ok(None) => break,
                        Ok(Some(Err(e))) | Err(e) => {
                            failure = Some(Box::new(e));
                            break;
                        }
                    }
                }
                // More may be buffered after a full batch or a refusal.
                let more = frames.len() >= MAX_BATCH || refused.is_some();
                // An `Ack`, or other frames carrying many new acknowledgements,
                // go ahead of this batch and of every other connection's batches
                // still waiting for the router (the frames that carry it apply it
                // again, which changes nothing); a few more ride with the batch.
                let ack =
                    (up_to > acked && (ack_frames || up_to - acked >= ACK_EVERY)).then(|| {
                        acked = up_to;
                        up_to
                    });
                // Waiting for room, the writer is tended; a closed
                // connection leaves the loop; so does a router that is
                // gone, killing the outbox (nobody else will close it).
                let handed = match hand_over(&shared.inbox, outbox.conn(), ack, frames, refused) {
                    Ok(None) => Some(Ok(())),
                    Ok(Some(wait)) => {
                        Box::pin(offer(wait, &mut writer, &outbox, via, &shared)).await
                    }
                    Err(closed) => Some(Err(closed)),
                };
                match handed {
                    Some(Ok(())) => {}
                    Some(Err(_)) => {
                        outbox.kill(None);
                        break 'conn None;
                    }
                    None => break 'conn Some((None, "closed".to_owned())),
                }
                if let Some(e) = failure {
                    let e = *e;
                    tracing::debug!(error = %e, "protocol error");
                    break 'conn Some((
                        Some(wire_error_frame(&e, "after authentication")),
                        e.to_string(),
                    ));
                }
                more
            };
            if more {
                continue;
            }
            tokio::select! {
                r = rx.receive() => match r {
                    Ok(0) if rx.buffered() == 0 => break 'conn Some((None, "disconnected".to_owned())),
                    Ok(0) => {
                        let e = WireError::Truncated { buffered: rx.buffered() };
                        break 'conn Some((Some(wire_error_frame(&e, "")), e.to_string()));
                    }
                    Ok(n) => {
                        shared.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => break 'conn Some((None, format!("read error: {e}"))),
                },
                // Killed by the router, or the writer failed.
                _ = outbox.cancelled().cancelled() => break 'conn Some((None, "closed".to_owned())),
                // A writer spawned or stopped: wait again.
                _ = writer.tend(&outbox, via, &shared) => {}
            }
        };
        Box::pin(leave(ended, writer, outbox, via, shared)).await;
    }
}

/// After the read loop: reports how the connection `ended` (the notice
/// for the client, if any, and the reason; `None` when the router is
/// gone: nobody to tell), writes what is left to write, and leaves the
/// stats. Boxed by the read loop, whose state would otherwise keep room
/// for this one-off step while the connection idles.
async fn leave<W: FrameTx>(
    ended: Option<(Option<Frame>, String)>,
    writer: WriterSlot<W>,
    outbox: Arc<Outbox>,
    via: Via,
    shared: Arc<Shared>,
) {
    let conn = outbox.conn();
    if let Some((notice, reason)) = ended {
        let _ = shared
            .inbox
            .send(Input::Disconnected {
                conn,
                notice,
                reason,
            })
            .await;
    }
    writer.finish(&outbox, via, &shared).await;
    shared.stats.untrack(conn);
}

/// Offers a batch's inputs to the router in their order: an
/// acknowledgement that goes ahead of the frames (`ack`), the frames, a
/// refused frame's notice. Each is offered when the one before was taken
/// (at once, unless the inbox is full); what is left once one must wait
/// waits in one boxed future, returned. The read loop then holds only
/// that box across its one wait for room, and no part of the batch
/// (`the_connection_task_holds_no_handshake_state`). `Err`: the router
/// is gone.
fn hand_over<'a>(
    inbox: &'a Inbox,
    conn: ConnId,
    ack: Option<u64>,
    frames: Vec<Frame>,
    refused: Option<Box<Frame>>,
) -> Result<Option<BoxFuture<'a, Result<(), Closed>>>, Closed> {
    /// The rest of a batch, once a send had to wait.
    async fn rest(
        inbox: &Inbox,
        conn: ConnId,
        frames: Vec<Frame>,
        refused: Option<Box<Frame>>,
    ) -> Result<(), Closed> {
        if !frames.is_empty() {
            inbox.send(Input::Frames { conn, frames }).await?;
        }
        if let Some(notice) = refused {
            let notice = *notice;
            inbox.send(Input::Refused { conn, notice }).await?;
        }
        Ok(())
    }
    if let Some(up_to) = ack {
        match inbox.send_ack(conn, up_to) {
            Either::Left(done) => done.into_inner()?,
            Either::Right(wait) => {
                return Ok(Some(Box::pin(async move {
                    wait.await?;
                    rest(inbox, conn, frames, refused).await
                })))
            }
        }
    }
    if !frames.is_empty() {
        match inbox.send(Input::Frames { conn, frames }) {
            Either::Left(done) => done.into_inner()?,
            Either::Right(wait) => {
                return Ok(Some(Box::pin(async move {
                    wait.await?;
                    rest(inbox, conn, Vec::new(), refused).await
                })))
            }
        }
    }
    if let Some(notice) = refused {
        match inbox.send(Input::Refused {
            conn,
            notice: *notice,
        }) {
            Either::Left(done) => done.into_inner()?,
            Either::Right(wait) => return Ok(Some(wait)),
        }
    }
    Ok(None)
}

/// Waits for `send` (a command offered to the router) while tending the
/// connection's writer, so frames queued for the client meanwhile leave;
/// `None` when the outbox was killed first. An `async move` block over
/// its arguments, like [`read_loop`]'s, and `send` is `Unpin` (the inbox's
/// 16-byte offer): nothing is kept twice in the read loop's state.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn offer<'a, F: Future + Unpin, W: FrameTx>(
    mut send: F,
    writer: &'a mut WriterSlot<W>,
    outbox: &'a Arc<Outbox>,
    via: Via,
    shared: &'a Shared,
) -> impl Future<Output = Option<F::Output>> + use<'a, F, W> {
    async move {
        loop {
            tokio::select! {
                r = &mut send => return Some(r),
                _ = outbox.cancelled().cancelled() => return None,
                _ = writer.tend(outbox, via, shared) => {}
            }
        }
    }
}

/// A connection's writer, as its reader task holds it.
enum WriterSlot<W> {
    /// No writer task: the sending half waits for the next frame queued.
    Idle(W),
    /// A writer task runs; it hands the sending half back if it stops idle.
    Running(tokio::task::JoinHandle<Option<W>>),
    /// The writer ended: the outbox closed or was killed, or the transport
    /// failed (and the reader was told through the outbox's [`Cancel`]).
    Done,
}

impl<W: FrameTx> WriterSlot<W> {
    /// Waits for the writer's next change, and makes it: spawns a writer
    /// once something was queued (or the outbox closed or was killed),
    /// takes the sending half back once the writer stopped idle. Pending
    /// forever once done. Cancel-safe: the change is made in the poll that
    /// completes.
    ///
    /// A plain function returning an `async move` block (like
    /// [`read_loop`]): the read loop's state holds this future while the
    /// connection idles, and an `async fn` would keep its arguments twice.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    fn tend<'a>(
        &'a mut self,
        outbox: &'a Arc<Outbox>,
        via: Via,
        shared: &'a Shared,
    ) -> impl Future<Output = ()> + use<'a, W> {
        async move {
            match self {
                WriterSlot::Idle(_) => {
                    outbox.notified().await;
                    if let WriterSlot::Idle(tx) = std::mem::replace(self, WriterSlot::Done) {
                        *self = WriterSlot::Running(tokio::spawn(writing(
                            tx,
                            via,
                            outbox,
                            shared,
                            Some(WRITER_LINGER),
                        )));
                    }
                }
                WriterSlot::Running(task) => {
                    let stopped = task.await;
                    *self = match stopped {
                        Ok(Some(tx)) => WriterSlot::Idle(tx),
                        _ => WriterSlot::Done,
                    };
                }
                WriterSlot::Done => std::future::pending().await,
            }
        }
    }

    /// After the read loop: writes, in this task (boxed: the task's state
    /// stays the read loop's size), until the outbox closes or is killed,
    /// unless a writer task already ended it.
    async fn finish(self, outbox: &Arc<Outbox>, via: Via, shared: &Shared) {
        let tx = match self {
            WriterSlot::Idle(tx) => tx,
            WriterSlot::Running(task) => match task.await {
                Ok(Some(tx)) => tx,
                _ => return,
            },
            WriterSlot::Done => return,
        };
        Box::pin(writing(tx, via, outbox, shared, None)).await;
    }
}

/// [`write_loop`] for a connection of the hub with `shared` state.
fn writing<W: FrameTx>(
    tx: W,
    via: Via,
    outbox: &Arc<Outbox>,
    shared: &Shared,
    linger: Option<Duration>,
) -> impl Future<Output = Option<W>> + Send + 'static {
    write_loop(
        tx,
        via,
        outbox.clone(),
        shared.inbox.clone(),
        shared.stats.clone(),
        shared.limits.write_batch_bytes,
        linger,
    )
}

/// Writes what the router queues for the client until the outbox closes
/// or is killed, or the transport fails; then closes the transport and
/// stops the reader. With a `linger`, stops earlier once the outbox was
/// idle that long ([`Linger`]) and hands the sending half back.
async fn write_loop<W: FrameTx>(
    tx: W,
    via: Via,
    outbox: Arc<Outbox>,
    inbox: Inbox,
    stats: Arc<HubStats>,
    batch_bytes: usize,
    linger: Option<Duration>,
) -> Option<W> {
    let mut writer = Writer {
        tx,
        via,
        // Allocated with the first batch; given back after small batches.
        buf: BytesMut::new(),
        stats,
        outbox: outbox.clone(),
    };
    let mut linger = linger.map(Linger::new);
    if drain(&outbox, batch_bytes, &inbox, &mut writer, linger.as_mut()).await {
        return Some(writer.tx);
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.tx.close()).await;
    // Stops the reader too.
    outbox.cancelled().cancel();
    None
}

/// A connection's writer: each batch encoded into one buffer, sent at once.
struct Writer<W> {
    tx: W,
    /// The transport, for the metrics.
    via: Via,
    buf: BytesMut,
    stats: Arc<HubStats>,
    /// The outbox drained, for its [`Cancel`].
    outbox: Arc<Outbox>,
}

impl<W: FrameTx> Drain for Writer<W> {
    async fn batch(&mut self, taken: &mut Taken) -> bool {
        let (buf, stats, via) = (&mut self.buf, &self.stats, self.via);
        buf.clear();
        // One reservation for the batch (and a `Flow` notice), not a
        // regrowth and copy every time the buffer fills.
        buf.reserve(taken.bytes + FLOW_NOTICE_MAX);
        let mut n = taken.frames.len() as u64;
        if taken.dropped > 0 {
            flow_notice(taken.dropped, taken.remaining).encode(buf);
            n += 1;
        }
        // Deliveries are counted once per batch.
        let (mut delivers, mut deliver_bytes) = (0u64, 0usize);
        for out in taken.frames.drain(..) {
            let before = buf.len();
            out.encode(buf);
            match &out {
                crate::Out::Frame(f) => {
                    stats
                        .metrics
                        .frame_out(via, f.kind_name(), buf.len() - before);
                }
                crate::Out::Deliver { .. } => {
                    delivers += 1;
                    deliver_bytes += buf.len() - before;
                }
            }
        }
        stats
            .metrics
            .delivers_out(via, delivers, deliver_bytes as u64);
        let len = buf.len();
        tokio::select! {
            r = self.tx.send(buf) => {
                if r.is_err() {
                    return false;
                }
            }
            // Killed mid-write: the stream is no longer at a frame boundary.
            _ = self.outbox.cancelled().cancelled() => return false,
        }
        stats.msgs_out.fetch_add(n, Ordering::Relaxed);
        stats.bytes_out.fetch_add(len as u64, Ordering::Relaxed);
        if len < WRITE_KEEP || buf.capacity() > 4 * READ_CHUNK {
            *buf = BytesMut::new();
        }
        true
    }

    fn sampled(&mut self, queued: std::time::Instant) {
        self.stats
            .metrics
            .observe_delivery_delay(self.via, queued.elapsed());
    }

    fn killed(&mut self, outbox: &Outbox) {
        if let Some(last) = outbox.take_last_words() {
            self.buf.clear();
            crate::Out::from(last).encode(&mut self.buf);
            self.tx.try_send(&mut self.buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, F>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// [`future_size`] for six arguments.
    fn future_size6<A, B, C, D, E, G, F>(_: impl FnOnce(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A connection's task lives as long as the connection: its future
    /// must be about the size of its steady state (the read loop), not
    /// of the handshake or of the one-off steps around it.
    #[test]
    fn the_connection_task_holds_no_handshake_state() {
        type Tcp = tokio::net::TcpStream;
        let task = future_size6(serve::<Tcp>);
        let steady = future_size(read_loop::<<Tcp as Transport>::Rx, <Tcp as Transport>::Tx>);
        assert!(task <= steady + 16, "task {task} bytes, read loop {steady}");
        // Nor of a frame or a router command held across a wait (the
        // router's inbox sends are offered when called and box only
        // their wait; a refusal notice is boxed): the read loop was
        // 1,944 bytes when they were held inline, 512 without. Nor of the
        // batch's state while it waits for input, nor of tokio's waiter
        // node for readiness, nor of its arguments twice (`read_loop` and
        // `offer` are `async move` blocks): 592 → 360 bytes in a debug
        // build, and the task (`serve`) 688 → 456, which made tokio's
        // task cell (rounded to 128 bytes) 896 → 640 bytes in the release
        // build. Then 360 → 288 and 456 → 352 (the release cell 640 →
        // 512): a wait for room in the router's inbox is boxed (`offer`'s
        // `select!` was the read loop's largest state), and so is a read
        // error held across the sends; `tend` keeps its arguments once;
        // the span is a pointer, not a `Span`. Then 288 → 240 and 352 →
        // 256 (release: the spawned future 392 → 256 bytes, the cell 512
        // → 384, which needs the future under 280): the batch crosses one
        // wait for room at most (`hand_over`), so its locals no longer
        // take room of their own in every state; the read loop owns the
        // connection's state and takes the place of the one-off steps'
        // box (`Task`), not an `async` block around both holding
        // references and a spent box; nothing that can be read again is
        // kept across waits; the listener's span joins the `client` span
        // in one box (`tracing::Instrument` took 40 bytes).
        assert!(steady <= 256, "read loop {steady} bytes");
        assert!(task <= 272, "task {task} bytes");
    }
}
