// The publisher's hand-written frame encoder gives the bytes protobuf-es gives.
import { test } from "node:test";
import assert from "node:assert/strict";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { FrameSchema, HeaderSchema } from "../src/gen/switchboard/v1/switchboard_pb.js";
import { MAX_TIMER_MS, encodePublish, type PublishFields } from "../src/frames.js";
import { longTimeout } from "../src/connection.js";

const cases: Array<[bigint, bigint, PublishFields]> = [
  [0n, 0n, {}],
  [1n, 0n, { id: 1n, topic: "a.b", payload: new Uint8Array([1, 2, 3]) }],
  [300n, 2n ** 40n, { id: 2n ** 35n, topic: "ü.topic", payload: new Uint8Array(200).fill(7), replyTo: "inbox.x" }],
  [5n, 4n, { id: 0n, topic: "t", payload: new Uint8Array(0), headers: [create(HeaderSchema, { key: "k", value: new Uint8Array([9]) }), create(HeaderSchema, { key: "empty", value: new Uint8Array(0) })] }],
  [2n ** 53n - 1n, 127n, { id: 128n, topic: "x".repeat(130), payload: new Uint8Array(20_000) }],
];

test("encodePublish: byte for byte what toBinary gives, and decodes back", () => {
  for (const [seq, acked, p] of cases) {
    const ours = encodePublish(seq, acked, p);
    const theirs = toBinary(FrameSchema, create(FrameSchema, { seq, acked, kind: { case: "publish", value: p } } as never));
    assert.deepEqual(ours, theirs);
    const back = fromBinary(FrameSchema, ours);
    assert.equal(back.seq, seq);
    assert.equal(back.kind.case, "publish");
  }
});

test("decodeHot: Deliver, Ok and Ack decode as fromBinary does; anything else falls back", async () => {
  const { decodeHot } = await import("../src/frames.js");
  const frames = [
    { seq: 7n, acked: 3n, kind: { case: "deliver", value: { subId: 9n, topic: "a.b", from: "pub", payload: new Uint8Array([1, 2]), replyTo: "r", headers: [{ key: "k", value: new Uint8Array([5]) }] } } },
    { seq: 2n ** 40n, acked: 0n, kind: { case: "deliver", value: { subId: 1n, topic: "ü", from: "", payload: new Uint8Array(0), replyTo: "", headers: [] } } },
    { seq: 0n, acked: 12n, kind: { case: "ok", value: { id: 300n } } },
    { seq: 0n, acked: 0n, kind: { case: "ack", value: { upTo: 0n } } },
  ];
  for (const init of frames) {
    const bytes = toBinary(FrameSchema, create(FrameSchema, init as never));
    const ref = fromBinary(FrameSchema, bytes);
    const hot = decodeHot(bytes);
    assert.ok(hot, `decoded ${init.kind.case}`);
    assert.equal(hot.seq, ref.seq);
    assert.equal(hot.acked, ref.acked);
    assert.equal(hot.kind.case, ref.kind.case);
    const strip = (v: object) => JSON.parse(JSON.stringify(v, (k, x) => (k === "$typeName" ? undefined : typeof x === "bigint" ? `${x}n` : x instanceof Uint8Array ? [...x] : x)));
    assert.deepEqual(strip(hot.kind.value!), strip(ref.kind.value!));
  }
  // Other kinds, unknown fields, truncation: not decoded here.
  assert.equal(decodeHot(toBinary(FrameSchema, create(FrameSchema, { kind: { case: "ping", value: { nonce: 1n } } } as never))), undefined);
  assert.equal(decodeHot(new Uint8Array([0xfa, 0x02, 0x05, 0x08])), undefined);
  assert.equal(decodeHot(new Uint8Array([0x08, 0x01, 0x98, 0x06, 0x01])), undefined);
  assert.equal(decodeHot(new Uint8Array([0xfa, 0x02, 0x02, 0x78, 0x01])), undefined);
});

test("longTimeout: a delay above setTimeout's limit is waited out in parts, not fired at once", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  let fired = 0;
  const timer = longTimeout(() => fired++, 2 ** 32 - 1 + 250);
  t.mock.timers.tick(MAX_TIMER_MS);
  assert.equal(fired, 0);
  t.mock.timers.tick(MAX_TIMER_MS);
  assert.equal(fired, 0);
  t.mock.timers.tick(251);
  assert.equal(fired, 1);
  const cancelled = longTimeout(() => fired++, MAX_TIMER_MS * 3);
  t.mock.timers.tick(MAX_TIMER_MS + 1);
  cancelled.cancel();
  t.mock.timers.tick(MAX_TIMER_MS * 3);
  assert.equal(fired, 1);
  timer.cancel();
});
