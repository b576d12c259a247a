//! Length-prefixed framing of [`Frame`]s.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

use crate::deliver::HandFrame;
use crate::fast::Delivery;
use crate::layout::LENGTH_PREFIX_LEN;
use crate::Frame;

/// Default largest frame, in bytes of protobuf (the 4-byte prefix excluded),
/// for both directions: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Which way a frame was travelling when a limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A frame being received.
    Inbound,
    /// A frame being sent.
    Outbound,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        })
    }
}

/// Errors of framing and decoding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A frame is larger than the configured limit. For inbound frames this is
    /// detected from the length prefix alone, before anything is allocated.
    #[error("{direction} frame of {len} bytes exceeds the limit of {limit} bytes; raise the limit or send smaller payloads")]
    FrameTooLarge {
        /// Inbound or outbound.
        direction: Direction,
        /// Length announced by the prefix (inbound) or encoded length
        /// (outbound).
        len: u64,
        /// The configured maximum.
        limit: usize,
    },
    /// The frame's bytes are not a valid protobuf `Frame`.
    #[error("malformed frame: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the partial frame that had arrived.
        buffered: usize,
    },
    /// The frame was refused before decoding: a kind this side does not
    /// accept from the peer.
    #[error("{kind} frame refused: {reason}")]
    Rejected {
        /// Name of the frame's kind.
        kind: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The frame was refused before decoding: within its kind's size limit,
    /// but over a bound on what it holds (too many headers, or a body that
    /// would decode to far more memory than its bytes). `id` is the
    /// frame's correlation id (0 when it has none).
    #[error("{kind} frame refused: {reason}")]
    OverLimit {
        /// Name of the frame's kind.
        kind: &'static str,
        /// The frame's correlation id, 0 when it has none.
        id: u64,
        /// What is over which bound.
        reason: String,
    },
    /// The frame's field layout is broken (a bad field header, a group
    /// encoding, a length past the end, two kind fields), found before
    /// decoding: the peer does not speak the protocol.
    #[error("malformed frame: {reason}")]
    Malformed {
        /// What is wrong.
        reason: &'static str,
    },
    /// The underlying transport failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// The protocol error code a peer should be told for this error.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            WireError::FrameTooLarge { .. } | WireError::OverLimit { .. } => {
                crate::ErrorCode::LimitExceeded
            }
            WireError::Decode(_) | WireError::Truncated { .. } | WireError::Malformed { .. } => {
                crate::ErrorCode::BadFrame
            }
            WireError::Rejected { .. } => crate::ErrorCode::Unsupported,
            WireError::Io(_) => crate::ErrorCode::Internal,
        }
    }
}

/// Most bytes [`split_frame`] reserves ahead for a frame still arriving:
/// the buffer grows with the bytes that actually come, never by a whole
/// announced length up front (a hostile prefix costs nothing).
pub const FRAME_GROW_CHUNK: usize = 128 * 1024;

/// Takes the next whole frame body (its length prefix removed) out of
/// `src`, or `None` while fewer bytes are buffered. The announced length
/// is checked against `max` before anything is reserved; the body shares
/// `src`'s allocation (decoders slice `bytes` and string fields out of it
/// without copying). This is the one parser of the length prefix: every
/// byte-stream reader in the project calls it.
///
/// ```
/// use bytes::BytesMut;
/// use switchboard_wire::{put_frame, split_frame, Frame};
///
/// let mut buf = BytesMut::new();
/// put_frame(&Frame::publish("a.b", "hi"), &mut buf);
/// let body = split_frame(&mut buf, 1024)?.expect("whole");
/// assert!(buf.is_empty());
/// assert_eq!(switchboard_wire::decode_frame(body, 1024)?, Frame::publish("a.b", "hi"));
/// # Ok::<(), switchboard_wire::WireError>(())
/// ```
#[inline]
pub fn split_frame(src: &mut BytesMut, max: usize) -> Result<Option<Bytes>, WireError> {
    let Some(len) = whole_frame(src, max)? else {
        return Ok(None);
    };
    src.advance(LENGTH_PREFIX_LEN);
    Ok(Some(src.split_to(len).freeze()))
}

/// The body length of the frame at the start of `src` when the whole frame
/// is buffered (then `src[LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN + len]` is
/// its body), `None` while it is still arriving: then room for at most
/// [`FRAME_GROW_CHUNK`] more bytes is reserved. The announced length is
/// checked against `max` first. For readers that decode small frames in
/// place instead of splitting them off ([`split_frame`] is this plus the
/// split).
#[inline]
pub fn whole_frame(src: &mut BytesMut, max: usize) -> Result<Option<usize>, WireError> {
    if src.len() < LENGTH_PREFIX_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
    if len > max {
        return Err(WireError::FrameTooLarge {
            direction: Direction::Inbound,
            len: len as u64,
            limit: max,
        });
    }
    let total = LENGTH_PREFIX_LEN + len;
    if src.len() < total {
        // Bounded by the limit checked above, and by one chunk per call.
        src.reserve((total - src.len()).min(FRAME_GROW_CHUNK));
        return Ok(None);
    }
    Ok(Some(len))
}

/// Appends `frame` with its length prefix to `dst`, with no size limit
/// (for links whose limits are checked elsewhere, and for tests; a
/// connection's writer uses [`FrameCodec`], which checks its outbound
/// limit). The one writer of the length prefix beside the codec and the
/// hand encoders.
pub fn put_frame(frame: &Frame, dst: &mut BytesMut) {
    let len = frame.encoded_len();
    dst.reserve(LENGTH_PREFIX_LEN + len);
    dst.put_u32(len as u32);
    // Cannot fail: capacity was reserved above.
    let _ = frame.encode(&mut FastBuf(dst));
}

/// tokio-util codec for length-prefixed [`Frame`]s.
///
/// Each frame is a 4-byte big-endian length `n` followed by `n` bytes of
/// protobuf. The decoder checks `n` against [`FrameCodec::max_inbound`]
/// before reserving any memory, so a hostile prefix such as `0xFFFF_FFFF`
/// costs nothing; it never buffers more than one maximum-size frame.
///
/// After an error the connection's byte stream is no longer in a known state:
/// close the connection.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_inbound: usize,
    max_outbound: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameCodec {
    /// A codec with [`DEFAULT_MAX_FRAME`] in both directions.
    pub fn new() -> Self {
        Self {
            max_inbound: DEFAULT_MAX_FRAME,
            max_outbound: DEFAULT_MAX_FRAME,
        }
    }

    /// A codec with the same limit in both directions.
    pub fn with_max_frame(max: usize) -> Self {
        Self {
            max_inbound: max,
            max_outbound: max,
        }
    }

    /// Sets the largest frame accepted from the peer.
    pub fn max_inbound(mut self, max: usize) -> Self {
        self.max_inbound = max;
        self
    }

    /// Sets the largest frame this side may send.
    pub fn max_outbound(mut self, max: usize) -> Self {
        self.max_outbound = max;
        self
    }

    /// Changes the inbound limit on a codec already in use (for example to
    /// lift the small pre-handshake limit once a peer has authenticated).
    pub fn set_max_inbound(&mut self, max: usize) {
        self.max_inbound = max;
    }

    /// Changes the outbound limit on a codec already in use.
    pub fn set_max_outbound(&mut self, max: usize) {
        self.max_outbound = max;
    }

    /// The largest frame accepted from the peer.
    pub fn inbound_limit(&self) -> usize {
        self.max_inbound
    }

    /// The largest frame this side may send.
    pub fn outbound_limit(&self) -> usize {
        self.max_outbound
    }

    /// Takes the next whole frame body (length prefix removed) out of
    /// `src`, checking the announced length against the inbound limit.
    fn next_body(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        split_frame(src, self.max_inbound)
    }

    /// Refuses a frame body of `len` bytes over the outbound limit.
    fn check_outbound(&self, len: usize) -> Result<(), WireError> {
        if len > self.max_outbound || len > u32::MAX as usize {
            return Err(WireError::FrameTooLarge {
                direction: Direction::Outbound,
                len: len as u64,
                limit: self.max_outbound,
            });
        }
        Ok(())
    }

    /// Appends `hand` with its length prefix to `dst`, checked against
    /// the outbound limit as every frame this codec encodes: for a sender
    /// that holds a frame's parts, not a [`Frame`] (a client's publish
    /// from a borrowed topic).
    pub fn encode_hand(&self, hand: &HandFrame<'_>, dst: &mut BytesMut) -> Result<(), WireError> {
        let len = hand.encoded_len();
        self.check_outbound(len)?;
        dst.reserve(LENGTH_PREFIX_LEN + len);
        dst.put_u32(len as u32);
        hand.encode_body(dst);
        Ok(())
    }

    fn encode_ref(&self, frame: &Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        // A publish without headers and an `Ok` are encoded by hand: prost's
        // generic encoder cost a publisher ~730 instructions per 64-byte
        // publish.
        if let Some(hand) = HandFrame::of(frame) {
            return self.encode_hand(&hand, dst);
        }
        let len = frame.encoded_len();
        self.check_outbound(len)?;
        dst.reserve(LENGTH_PREFIX_LEN + len);
        dst.put_u32(len as u32);
        // Cannot fail: capacity was reserved above.
        frame
            .encode(&mut FastBuf(dst))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(())
    }
}

/// Length of `frame`'s protobuf encoding (without the length prefix),
/// computed by hand for the kinds with a hand encoder
/// ([`HandFrame`]): what a sender checks against the frame limit and
/// counts against its buffers before queueing a frame.
#[inline]
pub fn frame_len(frame: &Frame) -> usize {
    match HandFrame::of(frame) {
        Some(hand) => hand.encoded_len(),
        None => frame.encoded_len(),
    }
}

/// A [`BytesMut`] for prost to encode into, writing single bytes (every
/// varint and field key) straight into reserved capacity. `BytesMut` takes
/// each of them through `put_slice` (a capacity check and a `memcpy` call
/// per byte), which made the varints the largest cost of encoding a small
/// frame. Reserve the encoded length first: then no byte write reallocates.
pub struct FastBuf<'a>(pub &'a mut BytesMut);

// SAFETY: every method forwards to `BytesMut`'s own implementation, except
// `put_u8`, which writes one byte within the capacity checked right before
// and only then extends the length over it.
unsafe impl BufMut for FastBuf<'_> {
    #[inline]
    fn remaining_mut(&self) -> usize {
        self.0.remaining_mut()
    }

    #[inline]
    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: forwarded; the caller upholds `BytesMut`'s contract.
        unsafe { self.0.advance_mut(cnt) }
    }

    #[inline]
    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        self.0.chunk_mut()
    }

    #[inline]
    fn put_slice(&mut self, src: &[u8]) {
        self.0.extend_from_slice(src);
    }

    #[inline]
    fn put<T: bytes::Buf>(&mut self, src: T)
    where
        Self: Sized,
    {
        self.0.put(src);
    }

    #[inline]
    fn put_u8(&mut self, n: u8) {
        let len = self.0.len();
        if len < self.0.capacity() {
            // SAFETY: `len < capacity`, so the byte at `len` is within the
            // allocation; it is written before the length covers it.
            unsafe {
                self.0.as_mut_ptr().add(len).write(n);
                self.0.set_len(len + 1);
            }
        } else {
            self.0.extend_from_slice(&[n]);
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        let Some(body) = self.next_body(src)? else {
            return Ok(None);
        };
        if let Some(frame) = crate::fast::decode(&body) {
            return Ok(Some(frame));
        }
        Ok(Some(Frame::decode(body)?))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(WireError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

/// What [`IncomingCodec`] yields: a delivery decoded without copying, or
/// any other frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A `Deliver` in the layout a hub writes.
    Delivery(Delivery),
    /// Anything else, decoded by prost; boxed, so that a reader moves a
    /// delivery, the common case, at its own size, not at the size of
    /// `Frame`'s largest kind.
    Frame(Box<Frame>),
}

/// A [`FrameCodec`] for a client's receiving side: deliveries come out as
/// [`Delivery`] values whose strings share the receive buffer (no
/// allocation per message), everything else as [`Frame`]s. Wrap a codec
/// with [`FrameCodec::incoming`] (or `FramedRead::map_decoder`).
#[derive(Debug, Clone)]
pub struct IncomingCodec(pub FrameCodec);

impl FrameCodec {
    /// This codec as an [`IncomingCodec`].
    pub fn incoming(self) -> IncomingCodec {
        IncomingCodec(self)
    }
}

impl Decoder for IncomingCodec {
    type Item = Incoming;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, WireError> {
        let Some(body) = self.0.next_body(src)? else {
            return Ok(None);
        };
        if let Some(d) = crate::fast::decode_delivery(&body) {
            return Ok(Some(Incoming::Delivery(d)));
        }
        Ok(Some(Incoming::Frame(Box::new(Frame::decode(body)?))))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, WireError> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() => Ok(None),
            None => Err(WireError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        self.encode_ref(&frame, dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        self.encode_ref(frame, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_buf_writes_what_prost_writes() {
        let frame = Frame::publish("orders.eu", vec![7u8; 300]);
        let want = frame.encode_to_vec();
        // Without reserved room (every byte grows the buffer) and with it.
        for room in [0, want.len()] {
            let mut buf = BytesMut::with_capacity(room);
            buf.extend_from_slice(b"xy");
            frame.encode(&mut FastBuf(&mut buf)).expect("encodes");
            assert_eq!(&buf[..2], b"xy");
            assert_eq!(&buf[2..], &want[..]);
        }
    }
}
