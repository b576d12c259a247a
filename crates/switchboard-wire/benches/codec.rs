//! Criterion benchmarks of the frame codec: a publish frame with a 64-byte
//! and with a 64 KiB payload, encoded into and decoded out of a reused
//! buffer. Throughput is counted in bytes on the wire (prefix included).
//!
//! Run with `cargo bench -p switchboard-wire --bench codec`.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput};
use switchboard_wire::{proto, Frame, FrameCodec};
use tokio_util::codec::{Decoder, Encoder};

fn publish(payload_len: usize) -> Frame {
    Frame::from(proto::Publish {
        id: 42,
        topic: "orders.eu.created".into(),
        from: "svc-orders-7".into(),
        payload: Bytes::from(vec![0x5A; payload_len]),
        reply_to: String::new(),
        ..Default::default()
    })
    .with_seq(1_000_000)
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    for (label, payload_len) in [("64B", 64), ("64KiB", 64 * 1024)] {
        let frame = publish(payload_len);
        group.throughput(Throughput::Bytes(frame.wire_len() as u64));

        group.bench_with_input(
            BenchmarkId::new("encode+decode", label),
            &frame,
            |b, frame| {
                let mut codec = FrameCodec::default();
                let mut buf = BytesMut::with_capacity(frame.wire_len());
                b.iter(|| {
                    codec.encode(black_box(frame), &mut buf).unwrap();
                    let decoded = codec.decode(&mut buf).unwrap().unwrap();
                    black_box(decoded)
                });
            },
        );

        group.bench_with_input(BenchmarkId::new("encode", label), &frame, |b, frame| {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::with_capacity(frame.wire_len());
            b.iter(|| {
                buf.clear();
                codec.encode(black_box(frame), &mut buf).unwrap();
                black_box(buf.len())
            });
        });

        group.bench_with_input(BenchmarkId::new("decode", label), &frame, |b, frame| {
            let mut codec = FrameCodec::default();
            let mut wire = BytesMut::new();
            codec.encode(frame, &mut wire).unwrap();
            let wire = wire.freeze();
            let mut buf = BytesMut::with_capacity(wire.len());
            b.iter(|| {
                buf.extend_from_slice(black_box(&wire));
                black_box(codec.decode(&mut buf).unwrap().unwrap())
            });
        });
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    codec(&mut c);
    c.final_summary();
}
