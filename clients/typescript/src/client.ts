/**
 * The switchboard client over WebSocket (`GET /v1/ws` on the hub's HTTP
 * listener): one binary message is one protobuf `Frame`
 * (docs/PROTOCOL.md, "WebSocket"). This file has the calls (request/reply,
 * serving, messages, pub/sub, kv, presence); the connection they run on is
 * in `connection.ts`, the handshake in `handshake.ts`.
 *
 * @module
 */

import { ErrorCode, type ClientInfo, type Frame, type Status } from "./gen/switchboard/v1/switchboard_pb.js";
import { keyFromToken } from "./auth.js";
import { Disconnected, InvalidArgument, ProtocolError, RemoteError, SwitchboardError } from "./errors.js";
import { Connection } from "./connection.js";
import { DEFAULT_REQUEST_TIMEOUT_MS, HUB_DEFAULT_REQUEST_TIMEOUT_MS, MAX_REQUEST_TIMEOUT_MS } from "./frames.js";
import {
  ReplyMessage,
  bytes,
  decoder,
  fromHeaders,
  toHeaders,
  type Handler,
  type Headers,
  type KvEntry,
  type KvUpdate,
  type Message,
  type Payload,
  type PresenceEvent,
  type RequestOptions,
} from "./messages.js";
import type { ConnectOptions, Overflow, StreamOptions } from "./options.js";
import { AsyncQueue } from "./queue.js";
import { Subscription, Watch } from "./streams.js";

export * from "./messages.js";
export * from "./options.js";
export * from "./streams.js";

/** The client's own timer of a request runs this much longer than the hub's deadline (as in the Rust client), ms. */
const BACKSTOP_MS = 250;

/**
 * Checks a request timeout before anything is sent: `Request.timeout_ms`
 * is a `uint32`, so a whole number of ms from 0 (the hub's default) to
 * 2^32−1.
 *
 * @throws {@link InvalidArgument} otherwise, naming the option
 */
function checkTimeout(name: string, ms: number): number {
  if (typeof ms !== "number" || !Number.isInteger(ms) || ms < 0 || ms > MAX_REQUEST_TIMEOUT_MS) {
    throw new InvalidArgument(
      `${name} must be a whole number of milliseconds from 0 (the hub's default, ${HUB_DEFAULT_REQUEST_TIMEOUT_MS} ms) to ${MAX_REQUEST_TIMEOUT_MS}, not ${String(ms)}`,
      ErrorCode.INVALID_ARGUMENT,
    );
  }
  return ms;
}

/**
 * Checks a compare-and-set version before anything is sent (a `uint64`).
 *
 * @throws {@link InvalidArgument} unless it is a `bigint` from 0 to 2^64−1, or undefined
 */
function checkVersion(v: bigint | undefined): bigint | undefined {
  if (v !== undefined && (typeof v !== "bigint" || v < 0n || v >= 2n ** 64n)) {
    throw new InvalidArgument(`expectVersion must be a bigint from 0 to 2^64-1, not ${String(v)}`, ErrorCode.INVALID_ARGUMENT);
  }
  return v;
}

/**
 * A connection to a switchboard hub over WebSocket. Create one with
 * {@link Client.connect}; end it with {@link Client.close}.
 *
 * ```ts
 * const c = await Client.connect({ url: "ws://127.0.0.1:8080/v1/ws", clientId: "web", token });
 * const reply = await c.request("worker", "hello");
 * ```
 */
export class Client extends Connection {
  /**
   * Opens a WebSocket to the hub, runs the handshake (verifying the hub's
   * proof before proving ourselves) and resolves once the hub sent `Welcome`.
   *
   * @param opts - where to connect and how to prove the key
   * @throws {@link HubUnverified} when the hub's proof does not verify,
   *   {@link AuthFailed} when the hub refuses ours, {@link Timeout} when the
   *   handshake takes longer than `connectTimeoutMs`, {@link Disconnected}
   *   when the socket fails, {@link ProtocolError} on bytes that break the
   *   protocol, or the error the hub sent.
   */
  static async connect(opts: ConnectOptions): Promise<Client> {
    const c = new Client(opts);
    let key: Uint8Array;
    if (opts.key) {
      if (opts.key.length !== 32) throw new SwitchboardError("the key must be 32 bytes");
      key = opts.key;
    } else if (opts.token !== undefined) {
      key = await keyFromToken(opts.token);
    } else {
      throw new SwitchboardError("give a token or a key");
    }
    await c.open(key);
    return c;
  }

  /**
   * Sends a request to a client and waits for its reply.
   *
   * @param to - the target client id
   * @param payload - the request payload
   * @param opts - timeout, method, headers, and a `signal` to abandon the call
   * @returns the reply
   * @throws {@link NoSuchClient}, {@link Timeout}, {@link TargetGone},
   *   {@link RemoteError} (the replier failed), {@link Disconnected},
   *   {@link InvalidArgument} (a timeout that is not a whole number of ms
   *   from 0 to 2^32−1: nothing is sent), the `signal`'s reason when it
   *   aborts (as `fetch` does: by default a `DOMException` named
   *   `"AbortError"`), …
   */
  async request(to: string, payload: Payload, opts: RequestOptions = {}): Promise<ReplyMessage> {
    return this.doRequest({ to }, payload, opts);
  }

  /**
   * Sends a request to a service subject; the hub picks one responder
   * among the clients serving a matching pattern ({@link Client.serveService}).
   *
   * @param service - the service subject, e.g. `billing.invoice`
   * @param payload - the request payload
   * @param opts - timeout, method, headers, and a `signal` to abandon the call
   * @throws {@link NoResponders} when nobody serves the subject, else as {@link Client.request}
   */
  async requestService(service: string, payload: Payload, opts: RequestOptions = {}): Promise<ReplyMessage> {
    return this.doRequest({ service }, payload, opts);
  }

  private async doRequest(
    target: { to?: string; service?: string },
    payload: Payload,
    opts: RequestOptions,
  ): Promise<ReplyMessage> {
    const timeoutMs =
      opts.timeoutMs !== undefined
        ? checkTimeout("timeoutMs", opts.timeoutMs)
        : checkTimeout("requestTimeoutMs", this.opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS);
    const f = await this.call(
      "request",
      {
        ...target,
        payload: bytes(payload),
        timeoutMs,
        method: opts.method ?? "",
        headers: toHeaders(opts.headers),
      },
      // The hub answers TIMEOUT at the deadline (0: its default); this timer is the backstop.
      (timeoutMs === 0 ? HUB_DEFAULT_REQUEST_TIMEOUT_MS : timeoutMs) + BACKSTOP_MS,
      // Given up (the backstop, or the signal): the hub forgets the request.
      (id) => {
        if (!this.closedWith) this.sendFrame({ case: "cancel", value: { id } });
      },
      opts.signal,
    );
    if (f.kind.case !== "reply") throw new ProtocolError(`a request was answered with ${f.kind.case}`, ErrorCode.BAD_FRAME);
    const r = f.kind.value;
    if (r.isError) throw new RemoteError(decoder.decode(r.payload), r.from);
    return new ReplyMessage(r.from, r.payload, fromHeaders(r.headers));
  }

  /**
   * Answers requests addressed to this client id with `handler`: its return
   * value is the reply; a thrown error becomes an error reply (the requester
   * gets a {@link RemoteError}). Replaces an earlier handler; without one,
   * requests are refused at once with an error reply.
   *
   * @param handler - called per request
   */
  serve(handler: Handler | undefined): void {
    this.handler = handler;
  }

  /**
   * Serves a service subject pattern (`billing.*`): requests to a matching
   * subject are spread over every client serving it.
   *
   * @param pattern - the subject pattern
   * @param handler - called per request
   * @returns a function that stops serving (waits for the hub's confirmation)
   */
  async serveService(pattern: string, handler: Handler): Promise<() => Promise<void>> {
    const subId = this.nextId++;
    this.services.set(subId, handler);
    this.registrations.set(subId, { kind: "subscribe", value: { subId, pattern, service: true } });
    try {
      await this.call("subscribe", { subId, pattern, service: true });
    } catch (e) {
      this.services.delete(subId);
      this.registrations.delete(subId);
      throw e;
    }
    return async () => {
      this.registrations.delete(subId);
      if (!this.services.delete(subId)) return;
      if (!this.closedWith) await this.call("unsubscribe", { subId });
    };
  }

  /**
   * Says what this client takes besides its subscriptions, when it was
   * connected with `listen: true`: `messages` (direct and broadcast) and
   * `requests` (to its client id). Each call replaces both flags; kept
   * across a resume and sent again after a fresh session.
   *
   * @param flags - what to take
   * @throws {@link Unsupported} when the client did not announce `listen`
   */
  async listen(flags: { messages: boolean; requests: boolean }): Promise<void> {
    await this.call("listen", { ...flags });
    this.registrations.set(0n, { kind: "listen", value: { ...flags } });
  }

  /**
   * Sends a one-way message to a client; resolves once the hub queued it.
   *
   * @param to - the target client id
   * @param payload - the payload
   * @param headers - optional headers
   * @throws {@link NoSuchClient}, {@link QueueFull}, {@link TargetGone}, {@link Disconnected}, …
   */
  async send(to: string, payload: Payload, headers?: Headers): Promise<void> {
    await this.call("direct", { to, payload: bytes(payload), headers: toHeaders(headers) });
  }

  /**
   * Sends a message to every other connected client; resolves once the hub took it.
   *
   * @param payload - the payload
   * @param headers - optional headers
   */
  async broadcast(payload: Payload, headers?: Headers): Promise<void> {
    await this.call("broadcast", { payload: bytes(payload), headers: toHeaders(headers) });
  }

  /**
   * The direct and broadcast messages sent to this client, as an async
   * iterator (one reader). Until this is first called the buffer
   * (`bufferSize`) drops its oldest message when full, so a client that
   * never reads its messages (broadcasts reach everyone) does not hold its
   * connection; from then on the client's `overflow` policy applies
   * (`"block"` by default: read what you asked for).
   */
  messages(): AsyncIterable<Message> {
    this.inbox.overflow = this.opts.overflow ?? "block";
    return { [Symbol.asyncIterator]: () => this.inbox };
  }

  /**
   * Publishes a message to a topic; resolves once the hub routed it.
   *
   * @param topic - the topic, e.g. `orders.eu.created`
   * @param payload - the payload
   * @param opts - headers and a `replyTo` subject for the subscribers
   * @throws {@link InvalidArgument} for a bad topic, {@link Disconnected}, …
   */
  async publish(topic: string, payload: Payload, opts: { headers?: Headers; replyTo?: string } = {}): Promise<void> {
    await this.call("publish", {
      topic,
      payload: bytes(payload),
      headers: toHeaders(opts.headers),
      replyTo: opts.replyTo ?? "",
    });
  }

  /**
   * Publishes without confirmation: returns once the frame is queued on this
   * connection (the Rust client's `publish_nowait`), the fastest way to
   * publish. With reliable delivery the frame is still numbered, kept until
   * the hub acknowledges it and resent after a resume; {@link flush} waits
   * for that. The hub's refusal of a bad topic is not reported.
   *
   * @param topic - the topic
   * @param payload - the payload
   * @param opts - headers and a `replyTo` subject
   * @throws {@link Disconnected} when closed, draining, or (without reliable delivery) not connected
   */
  publishNowait(topic: string, payload: Payload, opts: { headers?: Headers; replyTo?: string } = {}): void {
    if (this.closedWith) throw this.closedWith;
    if (this.draining) throw new Disconnected("the client is draining: it takes no new calls");
    this.sendFrame({
      case: "publish",
      value: { id: 0n, topic, payload: bytes(payload), headers: toHeaders(opts.headers), replyTo: opts.replyTo ?? "" },
    });
  }

  /**
   * Subscribes to a topic pattern (`*` one segment, a final `>` the rest);
   * resolves once the hub confirmed. Iterate the result for the messages;
   * leaving the loop (`break`, `return`, a throw) unsubscribes.
   *
   * @param pattern - the pattern, e.g. `orders.*.created`
   * @param opts - a queue group (each message goes to one member of the
   *   group), and the stream's `bufferSize` and `overflow` policy (default:
   *   the client's; see {@link Overflow})
   * @throws {@link InvalidArgument} for a bad pattern, {@link LimitExceeded}, …
   */
  async subscribe(pattern: string, opts: { queueGroup?: string } & StreamOptions = {}): Promise<Subscription> {
    const subId = this.nextId++;
    const q: AsyncQueue<Message> = this.stream<Message>(async () => {
      this.subs.delete(subId);
      this.registrations.delete(subId);
      if (!this.closedWith) await this.call("unsubscribe", { subId });
    }, opts);
    this.subs.set(subId, q);
    const value = { subId, pattern, queueGroup: opts.queueGroup ?? "" };
    this.registrations.set(subId, { kind: "subscribe", value });
    try {
      await this.call("subscribe", value);
    } catch (e) {
      this.subs.delete(subId);
      this.registrations.delete(subId);
      q.end();
      throw e;
    }
    return new Subscription(subId, pattern, q);
  }

  /**
   * Reads a key.
   *
   * @param key - the key
   */
  async kvGet(key: string): Promise<KvEntry> {
    const f = await this.call("kvGet", { key });
    if (f.kind.case !== "kvValue") throw new ProtocolError(`kvGet was answered with ${f.kind.case}`, ErrorCode.BAD_FRAME);
    const v = f.kind.value;
    return { found: v.found, value: v.value, version: v.version };
  }

  /**
   * Sets a key; with `expectVersion`, only if the key's version equals it
   * (0: only if the key does not exist).
   *
   * @param key - the key
   * @param value - the value (at most 1 MiB)
   * @param opts - the compare-and-set version
   * @returns the key's new version
   * @throws {@link VersionMismatch}, {@link InvalidArgument} (also for an
   *   `expectVersion` outside 0 to 2^64−1: nothing is sent), {@link LimitExceeded}, …
   */
  async kvSet(key: string, value: Payload, opts: { expectVersion?: bigint } = {}): Promise<bigint> {
    const f = await this.call("kvSet", { key, value: bytes(value), expectVersion: checkVersion(opts.expectVersion) });
    if (f.kind.case !== "kvValue") throw new ProtocolError(`kvSet was answered with ${f.kind.case}`, ErrorCode.BAD_FRAME);
    return f.kind.value.version;
  }

  /**
   * Deletes a key.
   *
   * @param key - the key
   * @param opts - the compare-and-delete version
   * @returns the deletion's version
   * @throws {@link NotFound} when the key does not exist, {@link VersionMismatch},
   *   {@link InvalidArgument} for an `expectVersion` outside 0 to 2^64−1 (nothing is sent), …
   */
  async kvDelete(key: string, opts: { expectVersion?: bigint } = {}): Promise<bigint> {
    const f = await this.call("kvDelete", { key, expectVersion: checkVersion(opts.expectVersion) });
    if (f.kind.case !== "kvValue") throw new ProtocolError(`kvDelete was answered with ${f.kind.case}`, ErrorCode.BAD_FRAME);
    return f.kind.value.version;
  }

  /**
   * Watches a key (or every key under a prefix): the stream yields the
   * current value(s) first (`by` empty), then every change in order.
   * Leaving the loop, or {@link Watch.stop}, ends the watch at the hub.
   *
   * @param key - the key, or the prefix with `prefix: true` (empty: every key)
   * @param opts - whether `key` is a prefix; the stream's `bufferSize` and `overflow`
   * @throws {@link InvalidArgument}, {@link LimitExceeded}, …
   */
  async kvWatch(key: string, opts: { prefix?: boolean } & StreamOptions = {}): Promise<Watch<KvUpdate>> {
    const watchId = this.nextId++;
    const q = this.stream<KvUpdate>(async () => {
      this.watches.delete(watchId);
      this.registrations.delete(watchId);
      if (!this.closedWith) await this.call("kvUnwatch", { watchId });
    }, opts);
    this.watches.set(watchId, q);
    const value = { watchId, key, prefix: opts.prefix ?? false };
    this.registrations.set(watchId, { kind: "kvWatch", value });
    try {
      await this.call("kvWatch", value);
    } catch (e) {
      this.watches.delete(watchId);
      this.registrations.delete(watchId);
      q.end();
      throw e;
    }
    return new Watch(q);
  }

  /** Every registered client (all transports, this one included), sorted by id. */
  async listClients(): Promise<ClientInfo[]> {
    const f = await this.call("listClients", {});
    if (f.kind.case !== "clientList") throw new ProtocolError(`listClients was answered with ${f.kind.case}`, ErrorCode.BAD_FRAME);
    return f.kind.value.clients;
  }

  /** The hub's status and counters. */
  async status(): Promise<Status> {
    const f = await this.call("statusRequest", {});
    if (f.kind.case !== "status") throw new ProtocolError(`status was answered with ${f.kind.case}`, ErrorCode.BAD_FRAME);
    return f.kind.value;
  }

  /**
   * Watches presence: resolves with the clients registered now (this one
   * included) and a stream of other clients joining and leaving. Leaving the
   * loop, or {@link Watch.stop}, ends the watch at the hub. One presence
   * watch per client at a time.
   */
  async watchPresence(): Promise<{ clients: ClientInfo[]; events: Watch<PresenceEvent> }> {
    if (this.presence && !this.presence.isEnded) throw new SwitchboardError("a presence watch is already running");
    const q: AsyncQueue<PresenceEvent> = this.stream<PresenceEvent>(async () => {
      if (this.presence === q) this.presence = undefined;
      if (!this.closedWith) await this.call("presenceWatch", { stop: true });
    });
    this.presence = q;
    let f: Frame;
    try {
      f = await this.call("presenceWatch", {});
    } catch (e) {
      this.presence = undefined;
      q.end();
      throw e;
    }
    if (f.kind.case !== "clientList") throw new ProtocolError(`presenceWatch was answered with ${f.kind.case}`, ErrorCode.BAD_FRAME);
    return { clients: f.kind.value.clients, events: new Watch(q) };
  }
}
