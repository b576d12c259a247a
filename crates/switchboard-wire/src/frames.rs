//! Frame constructors and helpers.

use bytes::{Bytes, BytesMut};
use prost::Message;

use crate::proto::{self, frame::Kind};
use crate::{ErrorCode, Frame, WireError};

macro_rules! frame_kinds {
    ($($variant:ident: $ty:ident => $name:literal,)*) => {
        $(
            impl From<proto::$ty> for Frame {
                fn from(msg: proto::$ty) -> Frame {
                    // `.into()` boxes the kinds prost stores boxed.
                    Frame { seq: 0, kind: Some(Kind::$variant(msg.into())) }
                }
            }
        )*

        /// Every frame kind's name, in `.proto` order (for metrics tables).
        pub const KIND_NAMES: &[&str] = &[$($name,)*];

        fn kind_name_of(kind: &Kind) -> &'static str {
            match kind {
                $(Kind::$variant(_) => $name,)*
            }
        }
    };
}

frame_kinds! {
    Probe: Probe => "probe",
    ProbeReply: ProbeReply => "probe_reply",
    Hello: Hello => "hello",
    Challenge: Challenge => "challenge",
    Auth: Auth => "auth",
    Welcome: Welcome => "welcome",
    Goodbye: Goodbye => "goodbye",
    Error: Error => "error",
    Ping: Ping => "ping",
    Pong: Pong => "pong",
    Ack: Ack => "ack",
    Flow: Flow => "flow",
    Ok: Ok => "ok",
    Direct: Direct => "direct",
    Request: Request => "request",
    Reply: Reply => "reply",
    Broadcast: Broadcast => "broadcast",
    Publish: Publish => "publish",
    Subscribe: Subscribe => "subscribe",
    Unsubscribe: Unsubscribe => "unsubscribe",
    Deliver: Deliver => "deliver",
    KvSet: KvSet => "kv_set",
    KvGet: KvGet => "kv_get",
    KvDelete: KvDelete => "kv_delete",
    KvWatch: KvWatch => "kv_watch",
    KvUnwatch: KvUnwatch => "kv_unwatch",
    KvValue: KvValue => "kv_value",
    KvUpdate: KvUpdate => "kv_update",
    PresenceWatch: PresenceWatch => "presence_watch",
    Presence: Presence => "presence",
    ListClients: ListClients => "list_clients",
    ClientList: ClientList => "client_list",
    Session: Session => "session",
    ReplHello: ReplHello => "repl_hello",
    Snapshot: Snapshot => "snapshot",
    Change: Change => "change",
    ReplAck: ReplAck => "repl_ack",
    Heartbeat: Heartbeat => "heartbeat",
    StatusRequest: StatusRequest => "status_request",
    Status: Status => "status",
}

impl From<Kind> for Frame {
    fn from(kind: Kind) -> Frame {
        Frame {
            seq: 0,
            kind: Some(kind),
        }
    }
}

impl Frame {
    /// A frame carrying `kind`, unsequenced.
    pub fn new(kind: impl Into<Frame>) -> Frame {
        kind.into()
    }

    /// The same frame with sequence number `seq`.
    pub fn with_seq(mut self, seq: u64) -> Frame {
        self.seq = seq;
        self
    }

    /// Short snake_case name of the frame's kind (`"publish"`,
    /// `"kv_set"`, ...), or `"unknown"` for a frame without a kind (which is
    /// what a frame of a newer, unknown kind decodes to).
    pub fn kind_name(&self) -> &'static str {
        self.kind.as_ref().map_or("unknown", kind_name_of)
    }

    /// An [`proto::Error`] frame answering command `id` (0: the connection).
    pub fn error(id: u64, code: ErrorCode, message: impl Into<String>) -> Frame {
        proto::Error {
            id,
            code: code as i32,
            message: message.into(),
        }
        .into()
    }

    /// An [`proto::Ok`] frame answering command `id`.
    pub fn ok(id: u64) -> Frame {
        proto::Ok { id }.into()
    }

    /// A [`proto::Goodbye`] frame.
    pub fn goodbye(code: ErrorCode, message: impl Into<String>) -> Frame {
        proto::Goodbye {
            code: code as i32,
            message: message.into(),
        }
        .into()
    }

    /// A [`proto::Direct`] message to `to`.
    pub fn direct(to: impl Into<String>, payload: impl Into<Bytes>) -> Frame {
        proto::Direct {
            to: to.into(),
            payload: payload.into(),
            ..Default::default()
        }
        .into()
    }

    /// A [`proto::Publish`] to `topic`.
    pub fn publish(topic: impl Into<String>, payload: impl Into<Bytes>) -> Frame {
        proto::Publish {
            topic: topic.into(),
            payload: payload.into(),
            ..Default::default()
        }
        .into()
    }

    /// A [`proto::Request`] with correlation id `id` to `to`.
    pub fn request(id: u64, to: impl Into<String>, payload: impl Into<Bytes>) -> Frame {
        proto::Request {
            id,
            to: to.into(),
            payload: payload.into(),
            ..Default::default()
        }
        .into()
    }

    /// A [`proto::Reply`] to request `id` from `to`.
    pub fn reply(id: u64, to: impl Into<String>, payload: impl Into<Bytes>) -> Frame {
        proto::Reply {
            id,
            to: to.into(),
            payload: payload.into(),
            ..Default::default()
        }
        .into()
    }

    /// A [`proto::Ack`] of everything up to `up_to`.
    pub fn ack(up_to: u64) -> Frame {
        proto::Ack { up_to }.into()
    }

    /// Encoded size on a byte stream, length prefix included.
    pub fn wire_len(&self) -> usize {
        crate::LENGTH_PREFIX_LEN + self.encoded_len()
    }
}

impl ErrorCode {
    /// The code carried in an `i32` protobuf field; unknown values (from a
    /// newer peer) map to [`ErrorCode::Unspecified`].
    pub fn from_wire(value: i32) -> ErrorCode {
        ErrorCode::try_from(value).unwrap_or(ErrorCode::Unspecified)
    }
}

/// Extra accessors on [`Frame`] for other crates' convenience.
pub trait FrameExt {
    /// The correlation id of a frame that answers or carries one, else 0.
    fn correlation_id(&self) -> u64;
}

impl FrameExt for Frame {
    fn correlation_id(&self) -> u64 {
        match &self.kind {
            Some(Kind::Error(m)) => m.id,
            Some(Kind::Ok(m)) => m.id,
            Some(Kind::Direct(m)) => m.id,
            Some(Kind::Request(m)) => m.id,
            Some(Kind::Reply(m)) => m.id,
            Some(Kind::Broadcast(m)) => m.id,
            Some(Kind::Publish(m)) => m.id,
            Some(Kind::Subscribe(m)) => m.id,
            Some(Kind::Unsubscribe(m)) => m.id,
            Some(Kind::KvSet(m)) => m.id,
            Some(Kind::KvGet(m)) => m.id,
            Some(Kind::KvDelete(m)) => m.id,
            Some(Kind::KvWatch(m)) => m.id,
            Some(Kind::KvUnwatch(m)) => m.id,
            Some(Kind::KvValue(m)) => m.id,
            Some(Kind::PresenceWatch(m)) => m.id,
            Some(Kind::ListClients(m)) => m.id,
            Some(Kind::ClientList(m)) => m.id,
            Some(Kind::StatusRequest(m)) => m.id,
            Some(Kind::Status(m)) => m.id,
            _ => 0,
        }
    }
}

/// Encodes `frame` with its length prefix into a new buffer, enforcing
/// `max` as the outbound limit.
pub fn encode_frame(frame: &Frame, max: usize) -> Result<Bytes, WireError> {
    let mut buf = BytesMut::with_capacity(frame.wire_len().min(max + crate::LENGTH_PREFIX_LEN));
    let mut codec = crate::FrameCodec::with_max_frame(max);
    tokio_util::codec::Encoder::encode(&mut codec, frame, &mut buf)?;
    Ok(buf.freeze())
}

/// Decodes one frame body (no length prefix), e.g. a WebSocket binary
/// message, enforcing `max` as the inbound limit.
pub fn decode_frame(body: Bytes, max: usize) -> Result<Frame, WireError> {
    if body.len() > max {
        return Err(WireError::FrameTooLarge {
            direction: crate::Direction::Inbound,
            len: body.len() as u64,
            limit: max,
        });
    }
    Ok(Frame::decode(body)?)
}
