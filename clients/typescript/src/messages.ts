/**
 * The values a client sends and receives: payloads, headers, messages,
 * requests, replies, kv entries and presence events.
 *
 * @module
 */

import { create } from "@bufbuild/protobuf";
import { HeaderSchema, type ClientInfo } from "./gen/switchboard/v1/switchboard_pb.js";

/** @internal */
export const encoder = new TextEncoder();
/** @internal */
export const decoder = new TextDecoder();

/** A payload: bytes, or a string sent as UTF-8. */
export type Payload = Uint8Array | string;

/** Headers: `[key, value]` pairs (order kept, keys may repeat), or a record. Values as bytes or UTF-8 strings. */
export type Headers = ReadonlyArray<readonly [string, Payload]> | Readonly<Record<string, Payload>>;
/** A message sent to this client directly or by broadcast. */
export class Message {
  /**
   * @param kind - `"direct"` or `"broadcast"`, or `"publish"` for a subscription delivery
   * @param from - the sender's client id
   * @param payload - the payload bytes
   * @param headers - the headers, in order
   * @param topic - the topic (deliveries only; `""` otherwise)
   * @param replyTo - the publisher's `reply_to` (deliveries only)
   */
  constructor(
    readonly kind: "direct" | "broadcast" | "publish",
    readonly from: string,
    readonly payload: Uint8Array,
    readonly headers: ReadonlyArray<readonly [string, Uint8Array]>,
    readonly topic = "",
    readonly replyTo = "",
  ) {}

  /** The payload decoded as UTF-8. */
  text(): string {
    return decoder.decode(this.payload);
  }
}

/** A request this client is asked to answer (see {@link Client.serve}). */
export class IncomingRequest {
  /**
   * @param id - the requester's correlation id
   * @param from - the requester's client id
   * @param method - the method name, if the requester gave one
   * @param payload - the payload bytes
   * @param headers - the headers, in order
   * @param service - the service subject, for requests through a service subscription
   */
  constructor(
    readonly id: bigint,
    readonly from: string,
    readonly method: string,
    readonly payload: Uint8Array,
    readonly headers: ReadonlyArray<readonly [string, Uint8Array]>,
    readonly service: string,
  ) {}

  /** The payload decoded as UTF-8. */
  text(): string {
    return decoder.decode(this.payload);
  }
}

/** What a request handler returns: the reply payload (a thrown error becomes an error reply). */
export type Handler = (req: IncomingRequest) => Payload | Promise<Payload>;

/** The answer to {@link Client.request}. */
export class ReplyMessage {
  /**
   * @param from - the replier's client id
   * @param payload - the payload bytes
   * @param headers - the headers, in order
   */
  constructor(
    readonly from: string,
    readonly payload: Uint8Array,
    readonly headers: ReadonlyArray<readonly [string, Uint8Array]>,
  ) {}

  /** The payload decoded as UTF-8. */
  text(): string {
    return decoder.decode(this.payload);
  }
}

/** A key's value as read by {@link Client.kvGet}. */
export interface KvEntry {
  /** Whether the key exists. */
  found: boolean;
  /** The value (empty when not found). */
  value: Uint8Array;
  /** The key's version (0 if never set; for a deleted key, the deletion's). */
  version: bigint;
}

/** A watched key's value or change (see {@link Client.kvWatch}). */
export interface KvUpdate {
  /** The key. */
  key: string;
  /** The value (empty when deleted). */
  value: Uint8Array;
  /** The key's version after the change. */
  version: bigint;
  /** Whether the key was deleted. */
  deleted: boolean;
  /** The client that changed it; empty for the current values sent when the watch starts. */
  by: string;
}

/** A client joining or leaving (see {@link Client.watchPresence}). */
export interface PresenceEvent {
  /** `"joined"` or `"left"`. */
  kind: "joined" | "left";
  /** The client. */
  client: ClientInfo;
  /** Why it left, for humans (empty when joining). */
  reason: string;
}

/** Options of {@link Client.request}. */
export interface RequestOptions {
  /**
   * How long the hub waits for the reply, ms: a whole number from 0 to
   * 2^32−1, where 0 means the hub's default (30 s); anything else is an
   * {@link InvalidArgument} before the request is sent. The client gives
   * up 250 ms after the hub would. Default: the client's `requestTimeoutMs`.
   */
  timeoutMs?: number;
  /**
   * Abandons the call when it aborts: the promise rejects at once with the
   * signal's `reason` (as `fetch` does; `AbortController.abort()` without a
   * reason gives a `DOMException` named `"AbortError"`), the call is
   * forgotten (a late reply is ignored) and the hub is sent `Cancel`, so it
   * forgets the request too. A signal aborted already rejects before
   * anything is sent.
   */
  signal?: AbortSignal;
  /** A method name for the replier. */
  method?: string;
  /** Headers. */
  headers?: Headers;
}


/** A payload as bytes (strings as UTF-8). @internal */
export function bytes(p: Payload): Uint8Array {
  return typeof p === "string" ? encoder.encode(p) : p;
}

/** Headers as protobuf `Header`s. @internal */
export function toHeaders(h: Headers | undefined) {
  if (!h) return [];
  const pairs: ReadonlyArray<readonly [string, Payload]> = Array.isArray(h)
    ? (h as ReadonlyArray<readonly [string, Payload]>)
    : Object.entries(h as Record<string, Payload>);
  return pairs.map(([key, value]) => create(HeaderSchema, { key, value: bytes(value) }));
}

/** Protobuf `Header`s as `[key, value]` pairs. @internal */
export function fromHeaders(h: ReadonlyArray<{ key: string; value: Uint8Array }>): Array<readonly [string, Uint8Array]> {
  return h.map((x) => [x.key, x.value] as const);
}
