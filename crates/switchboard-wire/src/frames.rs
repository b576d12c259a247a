//! Frame constructors and helpers.

use bytes::{Bytes, BytesMut};
use prost::Message;

use crate::proto::{self, frame::Kind};
use crate::{ErrorCode, Frame, WireError};

macro_rules! frame_kinds {
    ($($variant:ident: $ty:ident = $tag:literal => $name:literal,)*) => {
        $(
            impl From<proto::$ty> for Frame {
                fn from(msg: proto::$ty) -> Frame {
                    // `.into()` boxes the kinds prost stores boxed.
                    Frame { seq: 0, acked: 0, kind: Some(Kind::$variant(msg.into())) }
                }
            }
        )*

        /// Every frame kind's name, in `.proto` order (for metrics tables).
        pub const KIND_NAMES: &[&str] = &[$($name,)*];

        /// Name of the kind with `Frame` field number `tag`, or `"unknown"`.
        pub(crate) fn tag_name(tag: u32) -> &'static str {
            match tag {
                $($tag => $name,)*
                _ => "unknown",
            }
        }

        /// Whether `tag` is the field number of a kind this version knows.
        pub(crate) fn is_known_tag(tag: u32) -> bool {
            matches!(tag, $($tag)|*)
        }

        #[cfg(test)]
        pub(crate) fn all_kinds_with_tags() -> Vec<(Frame, u32)> {
            vec![$((Frame::from(proto::$ty::default()), $tag),)*]
        }

        fn kind_name_of(kind: &Kind) -> &'static str {
            match kind {
                $(Kind::$variant(_) => $name,)*
            }
        }
    };
}

frame_kinds! {
    Probe: Probe = 10 => "probe",
    ProbeReply: ProbeReply = 11 => "probe_reply",
    Hello: Hello = 20 => "hello",
    Challenge: Challenge = 21 => "challenge",
    Auth: Auth = 22 => "auth",
    Welcome: Welcome = 23 => "welcome",
    Goodbye: Goodbye = 24 => "goodbye",
    Error: Error = 25 => "error",
    Ping: Ping = 26 => "ping",
    Pong: Pong = 27 => "pong",
    Ack: Ack = 28 => "ack",
    Flow: Flow = 29 => "flow",
    Ok: Ok = 30 => "ok",
    Direct: Direct = 40 => "direct",
    Request: Request = 41 => "request",
    Reply: Reply = 42 => "reply",
    Broadcast: Broadcast = 43 => "broadcast",
    Publish: Publish = 44 => "publish",
    Subscribe: Subscribe = 45 => "subscribe",
    Unsubscribe: Unsubscribe = 46 => "unsubscribe",
    Deliver: Deliver = 47 => "deliver",
    Cancel: Cancel = 48 => "cancel",
    Listen: Listen = 49 => "listen",
    KvSet: KvSet = 60 => "kv_set",
    KvGet: KvGet = 61 => "kv_get",
    KvDelete: KvDelete = 62 => "kv_delete",
    KvWatch: KvWatch = 63 => "kv_watch",
    KvUnwatch: KvUnwatch = 64 => "kv_unwatch",
    KvValue: KvValue = 65 => "kv_value",
    KvUpdate: KvUpdate = 66 => "kv_update",
    PresenceWatch: PresenceWatch = 70 => "presence_watch",
    Presence: Presence = 71 => "presence",
    ListClients: ListClients = 72 => "list_clients",
    ClientList: ClientList = 73 => "client_list",
    Session: Session = 80 => "session",
    ReplHello: ReplHello = 90 => "repl_hello",
    Snapshot: Snapshot = 91 => "snapshot",
    Change: Change = 92 => "change",
    ReplAck: ReplAck = 93 => "repl_ack",
    Heartbeat: Heartbeat = 94 => "heartbeat",
    StatusRequest: StatusRequest = 100 => "status_request",
    Status: Status = 101 => "status",
}

impl From<Kind> for Frame {
    fn from(kind: Kind) -> Frame {
        Frame {
            seq: 0,
            acked: 0,
            kind: Some(kind),
        }
    }
}

/// Whether frames of this kind change a hub's state or carry a client's
/// message: the kinds a hub logs for its standby, and the kinds a
/// reliable client numbers (`Frame.seq`), keeps until acknowledged and
/// resends after a resume. Everything else (pings, gets, client lists,
/// status, acks, goodbyes) travels with `seq = 0`.
pub fn is_logged_kind(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Publish(_)
            | Kind::Direct(_)
            | Kind::Request(_)
            | Kind::Reply(_)
            | Kind::Broadcast(_)
            | Kind::Session(_)
            | Kind::Subscribe(_)
            | Kind::Unsubscribe(_)
            | Kind::KvSet(_)
            | Kind::KvDelete(_)
            | Kind::KvWatch(_)
            | Kind::KvUnwatch(_)
            | Kind::PresenceWatch(_)
            | Kind::Cancel(_)
            | Kind::Listen(_)
    )
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
    if let Some(frame) = crate::fast::decode(&body) {
        return Ok(frame);
    }
    Ok(Frame::decode(body)?)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn tags_match_the_generated_code() {
        for (frame, tag) in super::all_kinds_with_tags() {
            let body = frame.encode_to_vec();
            let peeked = crate::peek::peek_kind(&body).unwrap();
            assert_eq!(peeked.tag, tag, "{}", frame.kind_name());
            assert_eq!(super::tag_name(tag), frame.kind_name());
        }
    }
}
