/**
 * Frames on the wire: decoding one WebSocket message into a `Frame` with
 * the size limits, and which kinds are numbered for reliable delivery.
 *
 * @module
 */

import { fromBinary } from "@bufbuild/protobuf";
import { ErrorCode, FrameSchema, type Frame } from "./gen/switchboard/v1/switchboard_pb.js";
import { ProtocolError } from "./errors.js";

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
  try {
    return fromBinary(FrameSchema, buf);
  } catch (e) {
    throw new ProtocolError(`the hub sent an undecodable frame (${buf.length} bytes): ${String(e)}`, ErrorCode.BAD_FRAME, {
      cause: e,
    });
  }
}
