//! Feeds arbitrary bytes to the stream decoder in arbitrary chunks.
//!
//! Input layout: byte 0 picks the inbound limit (0..=255 * 16 bytes), byte 1
//! the chunk size the stream arrives in (1..=256); the rest is the stream.
//! Checks that decoding never panics, that whatever stays buffered is a
//! partial frame within the limit, that the buffer stays bounded, and that
//! `decode_frame` agrees with the codec on single frames.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use switchboard_wire::{decode_frame, FrameCodec, WireError, LENGTH_PREFIX_LEN};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let [limit_byte, chunk_byte, stream @ ..] = data else {
        return;
    };
    let limit = usize::from(*limit_byte) * 16;
    let chunk = usize::from(*chunk_byte) + 1;
    let mut codec = FrameCodec::with_max_frame(limit);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut failed = false;

    'feed: for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let _ = frame.kind_name();
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'feed;
                }
            }
        }
        // Only a partial frame, within the limit, may remain buffered.
        if buf.len() >= LENGTH_PREFIX_LEN {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            assert!(
                len <= limit,
                "buffered a frame of {len} over the limit {limit}"
            );
            assert!(buf.len() < LENGTH_PREFIX_LEN + len);
        }
        let bound = (2 * (LENGTH_PREFIX_LEN + limit + chunk)).max(1 << 17) + 64;
        assert!(
            buf.capacity() <= bound,
            "buffer grew to {} (limit {limit}, chunk {chunk})",
            buf.capacity()
        );
    }

    if !failed {
        for _ in 0..=stream.len() {
            match codec.decode_eof(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {
                    assert!(
                        buf.is_empty(),
                        "clean end with {} bytes buffered",
                        buf.len()
                    );
                    break;
                }
                Err(WireError::Truncated { buffered }) => {
                    assert!(buffered > 0 && buffered == buf.len());
                    break;
                }
                Err(_) => break,
            }
        }
    }

    // The first frame, decoded as a bare body, gives the same result.
    if stream.len() >= LENGTH_PREFIX_LEN {
        let len = u32::from_be_bytes([stream[0], stream[1], stream[2], stream[3]]) as usize;
        if let Some(body) = stream.get(LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN + len) {
            match decode_frame(Bytes::copy_from_slice(body), limit) {
                Ok(frame) => assert_eq!(frames.first(), Some(&frame)),
                Err(_) => assert!(frames.is_empty()),
            }
        }
    }
    let _ = decode_frame(Bytes::copy_from_slice(stream), limit);
});
