//! A bounded loop of publish encode + decode for instruction counting.
//!
//! Timings on a shared machine swing with its load; instruction counts do
//! not. Run the built binary under callgrind twice, with `0` and with `N`
//! iterations, and divide the difference by `N`:
//!
//! ```text
//! cargo bench -p switchboard-wire --bench codec_count --no-run
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/deps/codec_count-<hash> 64 100000
//! ```
//!
//! Arguments: payload size in bytes (default 64), iterations (default
//! 100000). Without valgrind it prints the wall-clock time per frame.

use std::hint::black_box;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use switchboard_wire::{proto, Frame, FrameCodec};
use tokio_util::codec::{Decoder, Encoder};

fn main() {
    // `cargo bench` passes `--bench`; take only numeric arguments.
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let payload_len = numbers.first().copied().unwrap_or(64);
    let iterations = numbers.get(1).copied().unwrap_or(100_000);

    let frame = Frame::from(proto::Publish {
        id: 42,
        topic: "orders.eu.created".into(),
        from: "svc-orders-7".into(),
        payload: Bytes::from(vec![0x5A; payload_len]),
        reply_to: String::new(),
        ..Default::default()
    })
    .with_seq(1_000_000);
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::with_capacity(frame.wire_len());

    let start = Instant::now();
    for _ in 0..iterations {
        codec
            .encode(black_box(&frame), &mut buf)
            .expect("the frame is within the default limit");
        let decoded = codec
            .decode(&mut buf)
            .expect("the frame decodes")
            .expect("the whole frame is buffered");
        black_box(decoded);
    }
    let elapsed = start.elapsed();
    if iterations > 0 {
        let per_frame = elapsed.as_nanos() as f64 / iterations as f64;
        println!(
            "publish {payload_len} B payload ({} B on the wire): {iterations} encode+decode, \
             {per_frame:.0} ns/frame, {:.2} GB/s",
            frame.wire_len(),
            frame.wire_len() as f64 / per_frame
        );
    }
}
