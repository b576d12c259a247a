//! Decodes arbitrary bytes as a frame body; whatever decodes must re-encode
//! and decode to the same frame, through prost and through the codec. The
//! crate's decoder (which decodes deliveries by hand) must agree with prost
//! on every input, accepted or refused.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use switchboard_wire::{decode_frame, encode_frame, Frame, FrameCodec, LENGTH_PREFIX_LEN};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let ours = decode_frame(Bytes::copy_from_slice(data), usize::MAX);
    let prost = Frame::decode(Bytes::copy_from_slice(data));
    assert_eq!(ours.as_ref().ok(), prost.as_ref().ok(), "hand decoder differs from prost");
    let Ok(frame) = ours else {
        return;
    };
    let _ = frame.kind_name();

    let body = frame.encode_to_vec();
    assert_eq!(body.len(), frame.encoded_len());
    let again = Frame::decode(&body[..]).expect("a re-encoded frame decodes");
    assert_eq!(again, frame);
    // Encoding is canonical: a second trip gives the same bytes.
    assert_eq!(again.encode_to_vec(), body);

    let wire = encode_frame(&frame, body.len()).expect("a frame fits its own size");
    assert_eq!(wire.len(), LENGTH_PREFIX_LEN + body.len());
    let mut buf = BytesMut::from(&wire[..]);
    let decoded = FrameCodec::with_max_frame(body.len())
        .decode(&mut buf)
        .expect("the codec decodes what it encoded")
        .expect("a whole frame is buffered");
    assert_eq!(decoded, frame);
    assert!(buf.is_empty());
});
