//! The switchboard wire protocol: protobuf messages and length-prefixed
//! framing.
//!
//! Every switchboard connection carries [`Frame`]s. On a byte stream (TCP)
//! each frame is a 4-byte big-endian length followed by the protobuf encoding
//! of the frame; [`FrameCodec`] implements that as a tokio-util
//! [`Decoder`](tokio_util::codec::Decoder) /
//! [`Encoder`](tokio_util::codec::Encoder) pair with separate inbound and
//! outbound size limits. The messages are generated from
//! `proto/switchboard/v1/switchboard.proto`, which documents every field; run
//! `cargo xtask codegen` after changing it.
//!
//! Payload fields are [`bytes::Bytes`], so a decoded payload points into the
//! receive buffer and fanning one message out to many receivers never copies
//! it.
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use switchboard_wire::{proto, Frame, FrameCodec};
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let mut codec = FrameCodec::default();
//! let frame = Frame::from(proto::Publish {
//!     topic: "orders.created".into(),
//!     payload: "hello".into(),
//!     ..Default::default()
//! });
//!
//! let mut buf = BytesMut::new();
//! codec.encode(&frame, &mut buf)?;
//! let decoded = codec.decode(&mut buf)?.expect("a whole frame is buffered");
//! assert_eq!(decoded, frame);
//! assert_eq!(decoded.kind_name(), "publish");
//! # Ok::<(), switchboard_wire::WireError>(())
//! ```

#![warn(missing_docs)]

pub mod blocks;
pub mod bridge;
mod codec;
pub mod deliver;
pub mod fast;
mod frames;
pub mod headers;
mod layout;
pub mod peek;
pub mod reliable;

/// Messages generated from `proto/switchboard/v1/switchboard.proto`.
///
/// The `.proto` file is the protocol's documentation; every message and field
/// is commented there and the comments are carried into these types.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
#[rustfmt::skip]
pub mod proto {
    include!("generated/switchboard.v1.rs");
}

pub use codec::{
    frame_len, put_frame, split_frame, whole_frame, Direction, FastBuf, FrameCodec, Incoming,
    IncomingCodec, WireError, DEFAULT_MAX_FRAME, FRAME_GROW_CHUNK,
};
pub use deliver::{decode_queued_delivery, decode_queued_delivery_reusing, QueuedDelivery};
pub use fast::{decode_delivery, decode_ok, decode_publish, Delivery};
pub use frames::{decode_frame, encode_frame, is_logged_kind, FrameExt, KIND_NAMES};
pub use headers::{check_headers, HeaderError};
pub use layout::{put_varint, LENGTH_PREFIX_LEN};
pub use peek::check_client_frame;
pub use peek::decode_client_publish;
pub use proto::frame::Kind;
pub use proto::{ErrorCode, Frame};

/// Version of the wire protocol this crate speaks, sent in
/// [`proto::Hello::protocol_version`] and [`proto::Probe::version`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Magic number that starts every discovery [`proto::Probe`]: "SBD1" as a
/// big-endian `u32`.
pub const PROBE_MAGIC: u32 = 0x5342_4431;

/// Feature a client lists in `Hello.features` (and a hub in
/// `Welcome.features`) to sequence both directions (reliable delivery).
pub const FEATURE_RELIABLE: &str = "reliable";

/// Feature a hub lists in `Welcome.features` when it continued the
/// client's previous reliable session.
pub const FEATURE_RESUMED: &str = "resumed";

/// Feature a client lists in `Hello.features` when it says with
/// [`proto::Listen`] whether it takes direct messages and requests; until it
/// does, a `Direct` or `Request` to it is refused with `NOT_LISTENING`.
pub const FEATURE_LISTEN: &str = "listen";

/// Longest client id, in bytes of UTF-8 (see [`validate_client_id`]).
pub const MAX_CLIENT_ID_LEN: usize = 256;

/// Checks a client id: 1 to [`MAX_CLIENT_ID_LEN`] bytes of UTF-8 without
/// control characters. The error says what is wrong and how to mend it.
///
/// ```
/// assert!(switchboard_wire::validate_client_id("worker-1").is_ok());
/// assert!(switchboard_wire::validate_client_id("").is_err());
/// assert!(switchboard_wire::validate_client_id("a\nb").is_err());
/// ```
pub fn validate_client_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!(
            "client id is empty; choose a name of 1 to {MAX_CLIENT_ID_LEN} bytes"
        ));
    }
    if id.len() > MAX_CLIENT_ID_LEN {
        return Err(format!(
            "client id is {} bytes, more than {MAX_CLIENT_ID_LEN}; choose a shorter name",
            id.len()
        ));
    }
    if id.chars().any(char::is_control) {
        return Err("client id contains a control character; use printable text".into());
    }
    Ok(())
}

/// Reliable delivery: a receiver acknowledges at the latest after this many
/// sequence numbers taken without an acknowledgement going out...
pub const ACK_EVERY: u64 = 64;

/// ...or this long after it took a sequenced frame, unless a frame going
/// the other way carried the acknowledgement first (`Frame.acked`).
pub const ACK_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

/// Keepalive: a peer from which nothing arrived for this many keepalive
/// intervals is taken as gone. A hub disconnects such a client
/// (`Goodbye{TIMEOUT}`, interval `Welcome.keepalive_ms`); a client
/// reconnects from such a hub (interval: its ping interval).
pub const KEEPALIVE_MISSES: u32 = 3;

/// Length of the random nonces in probes and handshakes, in bytes.
pub const NONCE_LEN: usize = 16;

/// Frames shared by the unit tests of several modules.
#[cfg(test)]
mod test_frames {
    use prost::Message;

    /// A sequenced `Deliver` with every shared field set and an
    /// acknowledgement piggybacked: what a reliable subscriber receives.
    pub(crate) fn sample_deliver() -> crate::Frame {
        let mut f = crate::Frame::from(crate::proto::Deliver {
            sub_id: 300,
            topic: "orders.eu".into(),
            from: "alice".into(),
            payload: bytes::Bytes::from_static(&[7; 100]),
            reply_to: "inbox.1".into(),
            headers: Vec::new(),
        })
        .with_seq(1 << 40);
        f.acked = 5;
        f
    }

    /// A `Deliver` frame whose topic's last byte is not UTF-8: prost
    /// refuses it, so every hand decoder must refuse it too.
    pub(crate) fn deliver_with_bad_utf8() -> Vec<u8> {
        let mut bad = crate::Frame::from(crate::proto::Deliver {
            topic: "ab".into(),
            ..Default::default()
        })
        .encode_to_vec();
        let n = bad.len();
        bad[n - 1] = 0xff;
        bad
    }
}
