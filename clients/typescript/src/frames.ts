/**
 * Frames on the wire: the two WebSocket framings ({@link Wire}), decoding
 * a frame with the size limits, and which kinds are numbered for reliable
 * delivery.
 *
 * @module
 */

import { fromBinary } from "@bufbuild/protobuf";
import { ErrorCode, FrameSchema, type Frame } from "./gen/switchboard/v1/switchboard_pb.js";
import { ProtocolError } from "./errors.js";
import type { WebSocketLike } from "./options.js";

/** A frame kind's name (`"publish"`, `"reply"`, …). @internal */
export type FrameKind = NonNullable<Frame["kind"]["case"]>;
/** The message carried by a frame kind. @internal */
export type KindValue<K extends FrameKind> = Extract<Frame["kind"], { case: K }>["value"];

/** Client kinds that are numbered on a reliable connection (docs/PROTOCOL.md, "Reliable delivery"). */
export const NUMBERED = new Set<string>([
  "publish", "direct", "request", "reply", "broadcast", "session", "subscribe", "unsubscribe",
  "kvSet", "kvDelete", "kvWatch", "kvUnwatch", "presenceWatch", "cancel", "listen",
]);
/** A separate `Ack` goes out at once after this many unacknowledged frames… */
export const ACK_EVERY = 64n;
/** …or this many ms after the first, unless a frame carried the acknowledgement. */
export const ACK_DELAY_MS = 10;

/**
 * The hub's request timeout when a `Request` carries `timeout_ms = 0`, ms
 * (docs/PROTOCOL.md, "What answers what": 0 means the hub's default, 30 s).
 */
export const HUB_DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
/** The client's default request and flush timeout when `requestTimeoutMs` is not given, ms. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
/** Largest `Request.timeout_ms` (a `uint32`), ms: about 49.7 days. */
export const MAX_REQUEST_TIMEOUT_MS = 2 ** 32 - 1;
/** Largest delay `setTimeout` takes, ms (about 24.8 days); longer waits are made of several timers. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** Largest frame accepted before `Welcome`, bytes. */
export const PRE_WELCOME_MAX = 64 * 1024;
/** Largest frame accepted after `Welcome` by default, bytes. */
export const DEFAULT_MAX_FRAME = 16 * 1024 * 1024;

/**
 * Decodes one WebSocket message into a frame; text, non-binary, oversized
 * or undecodable messages throw a {@link ProtocolError}. @internal
 */
export function decodeFrame(data: unknown, max: number): Frame {
  if (typeof data === "string") {
    throw new ProtocolError("the hub sent a text message; the protocol carries binary frames only", ErrorCode.BAD_FRAME);
  }
  let buf: Uint8Array;
  if (data instanceof ArrayBuffer) buf = new Uint8Array(data);
  else if (ArrayBuffer.isView(data)) buf = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  else throw new ProtocolError("the hub sent a message that is not binary", ErrorCode.BAD_FRAME);
  if (buf.length > max) {
    throw new ProtocolError(`the hub sent a frame of ${buf.length} bytes, above the limit of ${max}`, ErrorCode.LIMIT_EXCEEDED);
  }
  const hot = decodeHot(buf);
  if (hot) return hot;
  try {
    return fromBinary(FrameSchema, buf);
  } catch (e) {
    throw new ProtocolError(`the hub sent an undecodable frame (${buf.length} bytes): ${String(e)}`, ErrorCode.BAD_FRAME, {
      cause: e,
    });
  }
}

const utf8 = new TextEncoder();

/** Bytes of `v` as a varint (v < 2^53). */
function varintLength(v: number): number {
  if (v < 128) return 1;
  if (v < 16384) return 2;
  if (v < 2097152) return 3;
  let n = 3;
  v = Math.floor(v / 2097152);
  while (v > 0) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

function putVarint(buf: Uint8Array, pos: number, v: number): number {
  while (v >= 128) {
    buf[pos++] = (v % 128) | 128;
    v = Math.floor(v / 128);
  }
  buf[pos++] = v;
  return pos;
}

/** Length of a length-delimited field of `len` bytes with a one-byte tag. */
const delimited = (len: number) => 1 + varintLength(len) + len;

const topicCache = new Map<string, Uint8Array>();

/** A topic's UTF-8, cached (publishers repeat their topics); the cache is cleared at 1,024 entries. */
function topicBytes(topic: string): Uint8Array {
  let b = topicCache.get(topic);
  if (!b) {
    if (topicCache.size >= 1024) topicCache.clear();
    b = utf8.encode(topic);
    topicCache.set(topic, b);
  }
  return b;
}

/** What {@link encodePublish} needs: a `Publish` as the client builds it. */
export interface PublishFields {
  /** Correlation id. */
  id?: bigint;
  /** The topic. */
  topic?: string;
  /** The payload. */
  payload?: Uint8Array;
  /** The reply subject. */
  replyTo?: string;
  /** Headers. */
  headers?: ReadonlyArray<{ key: string; value: Uint8Array }>;
}

/**
 * Encodes `Frame{seq, acked, publish}` directly, byte for byte what
 * `toBinary(FrameSchema, …)` gives (proto3: zero and empty fields left
 * out, fields in number order), without building the message objects: the
 * publisher's hot path. @internal
 */
export function encodePublish(seq: bigint, acked: bigint, p: PublishFields): Uint8Array {
  const id = Number(p.id ?? 0n);
  const topic = p.topic ? topicBytes(p.topic) : undefined;
  const payload = p.payload && p.payload.length > 0 ? p.payload : undefined;
  const replyTo = p.replyTo ? utf8.encode(p.replyTo) : undefined;
  const hs = p.headers;
  let headers: Array<{ key: Uint8Array; value: Uint8Array; len: number }> | undefined;
  let body = 0;
  if (hs && hs.length > 0) {
    headers = [];
    for (const h of hs) {
      const key = utf8.encode(h.key);
      const len = (key.length ? delimited(key.length) : 0) + (h.value.length ? delimited(h.value.length) : 0);
      headers.push({ key, value: h.value, len });
      body += delimited(len);
    }
  }
  if (id) body += 1 + varintLength(id);
  if (topic) body += delimited(topic.length);
  if (payload) body += delimited(payload.length);
  if (replyTo) body += delimited(replyTo.length);
  const s = Number(seq);
  const a = Number(acked);
  const size = (s ? 1 + varintLength(s) : 0) + (a ? 1 + varintLength(a) : 0) + 2 + varintLength(body) + body;
  const buf = new Uint8Array(size);
  let pos = 0;
  if (s) {
    buf[pos++] = 0x08; // seq = 1, varint
    pos = putVarint(buf, pos, s);
  }
  if (a) {
    buf[pos++] = 0x10; // acked = 2, varint
    pos = putVarint(buf, pos, a);
  }
  buf[pos++] = 0xe2; // publish = 44, length-delimited: (44 << 3) | 2 = 354
  buf[pos++] = 0x02;
  pos = putVarint(buf, pos, body);
  if (id) {
    buf[pos++] = 0x08;
    pos = putVarint(buf, pos, id);
  }
  if (topic) pos = putBytes(buf, pos, 0x12, topic);
  if (payload) pos = putBytes(buf, pos, 0x22, payload);
  if (replyTo) pos = putBytes(buf, pos, 0x2a, replyTo);
  if (headers) {
    for (const h of headers) {
      buf[pos++] = 0x32; // headers = 6
      pos = putVarint(buf, pos, h.len);
      if (h.key.length) pos = putBytes(buf, pos, 0x0a, h.key);
      if (h.value.length) pos = putBytes(buf, pos, 0x12, h.value);
    }
  }
  return buf;
}

/** Writes a length-delimited field with a one-byte tag; returns the new position. */
function putBytes(buf: Uint8Array, pos: number, tag: number, b: Uint8Array): number {
  buf[pos++] = tag;
  pos = putVarint(buf, pos, b.length);
  buf.set(b, pos);
  return pos + b.length;
}

const utf8d = new TextDecoder();

/** A cursor over a frame's bytes for {@link decodeHot}. */
class Cursor {
  pos = 0;
  constructor(readonly buf: Uint8Array, readonly end: number) {}
  varint(): number {
    let v = 0;
    let mul = 1;
    for (;;) {
      if (this.pos >= this.end) throw new RangeError("truncated varint");
      const b = this.buf[this.pos++]!;
      v += (b & 127) * mul;
      if (b < 128) return v;
      mul *= 128;
      if (mul > 2 ** 56) throw new RangeError("varint too long");
    }
  }
  bytes(): Uint8Array {
    const len = this.varint();
    const start = this.pos;
    if (start + len > this.end) throw new RangeError("truncated field");
    this.pos += len;
    return this.buf.subarray(start, start + len);
  }
}

/**
 * Decodes the frames a busy connection is made of (`Deliver`, `Ok`, `Ack`,
 * with `seq` and `acked`) without the reflective decoder; `undefined` for
 * anything else, or any field it does not know (also a number at or above
 * 2^53), so the caller falls back to `fromBinary`. @internal
 */
export function decodeHot(buf: Uint8Array): Frame | undefined {
  try {
    const c = new Cursor(buf, buf.length);
    let seq = 0;
    let acked = 0;
    let kind: Frame["kind"] | undefined;
    while (c.pos < c.end) {
      const tag = c.varint();
      if (tag === 0x08) seq = c.varint();
      else if (tag === 0x10) acked = c.varint();
      else if (tag === 378 && !kind) {
        // deliver = 47
        const body = c.bytes();
        const d = new Cursor(body, body.length);
        let subId = 0;
        let topic = "";
        let from = "";
        let payload: Uint8Array = new Uint8Array(0);
        let replyTo = "";
        const headers: Array<{ key: string; value: Uint8Array }> = [];
        while (d.pos < d.end) {
          const t = d.varint();
          if (t === 0x08) subId = d.varint();
          else if (t === 0x12) topic = utf8d.decode(d.bytes());
          else if (t === 0x1a) from = utf8d.decode(d.bytes());
          else if (t === 0x22) payload = d.bytes().slice();
          else if (t === 0x2a) replyTo = utf8d.decode(d.bytes());
          else if (t === 0x32) {
            const hb = d.bytes();
            const h = new Cursor(hb, hb.length);
            let key = "";
            let value: Uint8Array = new Uint8Array(0);
            while (h.pos < h.end) {
              const ht = h.varint();
              if (ht === 0x0a) key = utf8d.decode(h.bytes());
              else if (ht === 0x12) value = h.bytes().slice();
              else return undefined;
            }
            headers.push({ key, value });
          } else return undefined;
        }
        kind = { case: "deliver", value: { subId: BigInt(subId), topic, from, payload, replyTo, headers } } as never;
      } else if ((tag === 242 || tag === 226) && !kind) {
        // ok = 30, ack = 28: one varint field each
        const body = c.bytes();
        const o = new Cursor(body, body.length);
        let v = 0;
        while (o.pos < o.end) {
          if (o.varint() !== 0x08) return undefined;
          v = o.varint();
        }
        kind = (tag === 242 ? { case: "ok", value: { id: BigInt(v) } } : { case: "ack", value: { upTo: BigInt(v) } }) as never;
      } else return undefined;
      if (seq >= 2 ** 53 || acked >= 2 ** 53) return undefined;
    }
    if (!kind) return undefined;
    return { seq: BigInt(seq), acked: BigInt(acked), kind } as Frame;
  } catch {
    return undefined;
  }
}

/**
 * The WebSocket subprotocol of the stream framing (docs/PROTOCOL.md,
 * "WebSocket"): the binary messages concatenated are the length-prefixed
 * byte stream of TCP.
 */
export const STREAM_PROTOCOL = "switchboard.stream";

/** A packed message is sent once it reaches this many bytes (else at the end of the event-loop turn). @internal */
export const PACK_BYTES = 64 * 1024;

function tooLarge(len: number, max: number): ProtocolError {
  return new ProtocolError(`the hub sent a frame of ${len} bytes, above the limit of ${max}`, ErrorCode.LIMIT_EXCEEDED);
}

/**
 * One socket's framing. Without the stream framing a message is one frame;
 * with it (the hub accepted {@link STREAM_PROTOCOL}) the frames written in
 * one event-loop turn leave as one message of length-prefixed frames, and
 * received messages are read as a byte stream: a message may hold several
 * frames, or part of one. @internal
 */
export class Wire {
  /** True when the socket carries the stream framing. */
  readonly stream: boolean;
  /** Frame bodies waiting to be packed, and their bytes with prefixes. */
  private out: Uint8Array[] = [];
  private outBytes = 0;
  private scheduled = false;
  /** The length prefix being read, and how much of it is here. */
  private readonly head = new Uint8Array(4);
  private headHave = 0;
  /** The body being filled across messages, and how much of it is here. */
  private body: Uint8Array | undefined;
  private bodyHave = 0;
  constructor(private readonly ws: WebSocketLike) {
    this.stream = ws.protocol === STREAM_PROTOCOL;
  }

  /** Sends one encoded frame (packed with the turn's others in the stream framing). */
  send(frame: Uint8Array): void {
    if (!this.stream) {
      this.ws.send(frame);
      return;
    }
    this.out.push(frame);
    this.outBytes += 4 + frame.length;
    if (this.outBytes >= PACK_BYTES) this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  /** Sends what is packed now (before a close, so a `Goodbye` leaves first). */
  flush(): void {
    this.scheduled = false;
    if (this.out.length === 0) return;
    const msg = new Uint8Array(this.outBytes);
    const view = new DataView(msg.buffer);
    let at = 0;
    for (const f of this.out) {
      view.setUint32(at, f.length);
      msg.set(f, at + 4);
      at += 4 + f.length;
    }
    this.out = [];
    this.outBytes = 0;
    if (this.ws.readyState === 1) this.ws.send(msg);
  }

  /** Largest frame accepted in the stream framing (set per handshake phase). */
  max = PRE_WELCOME_MAX;

  /**
   * Hands each frame a received message completes to `each`: the message
   * itself without the stream framing; else its bytes are appended to the
   * stream and split by length prefix (a frame wholly inside the message is
   * not copied). A length over {@link max} (read before each frame, so
   * `each` may change it) throws a {@link ProtocolError}
   * (`LIMIT_EXCEEDED`) before its body is buffered; a text message throws
   * one (`BAD_FRAME`).
   */
  receive(data: unknown, each: (frame: unknown) => void): void {
    if (!this.stream) return each(data);
    let buf: Uint8Array;
    if (typeof data === "string") {
      throw new ProtocolError("the hub sent a text message; the protocol carries binary frames only", ErrorCode.BAD_FRAME);
    } else if (data instanceof ArrayBuffer) buf = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) buf = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else throw new ProtocolError("the hub sent a message that is not binary", ErrorCode.BAD_FRAME);
    let at = 0;
    while (at < buf.length) {
      if (this.body) {
        const take = Math.min(this.body.length - this.bodyHave, buf.length - at);
        this.body.set(buf.subarray(at, at + take), this.bodyHave);
        this.bodyHave += take;
        at += take;
        if (this.bodyHave === this.body.length) {
          each(this.body);
          this.body = undefined;
        }
        continue;
      }
      const take = Math.min(4 - this.headHave, buf.length - at);
      this.head.set(buf.subarray(at, at + take), this.headHave);
      this.headHave += take;
      at += take;
      if (this.headHave < 4) break;
      this.headHave = 0;
      const len = new DataView(this.head.buffer).getUint32(0);
      if (len > this.max) throw tooLarge(len, this.max);
      if (buf.length - at >= len) {
        each(buf.subarray(at, at + len));
        at += len;
      } else {
        this.body = new Uint8Array(len);
        this.bodyHave = 0;
      }
    }
  }
}
