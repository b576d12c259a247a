/**
 * The switchboard client over WebSocket (`GET /v1/ws` on the hub's HTTP
 * listener): one binary message is one protobuf `Frame`
 * (docs/PROTOCOL.md, "WebSocket").
 *
 * @module
 */

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  ErrorCode,
  FrameSchema,
  HeaderSchema,
  PresenceKind,
  type ClientInfo,
  type Frame,
  type HubIdentity,
  type Request as RequestMsg,
  type Status,
  type Welcome,
} from "./gen/switchboard/v1/switchboard_pb.js";
import { clientProof, constantTimeEqual, hubProof, keyFromToken, keyId, nonce } from "./auth.js";
import {
  AuthFailed,
  Disconnected,
  Fenced,
  Forbidden,
  HubUnverified,
  IdTakenOver,
  ProtocolError,
  RemoteError,
  SwitchboardError,
  Timeout,
  errorFromCode,
} from "./errors.js";
import { AsyncQueue } from "./queue.js";

type FrameKind = NonNullable<Frame["kind"]["case"]>;
type KindValue<K extends FrameKind> = Extract<Frame["kind"], { case: K }>["value"];

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A payload: bytes, or a string sent as UTF-8. */
export type Payload = Uint8Array | string;

/** Headers: `[key, value]` pairs (order kept, keys may repeat), or a record. Values as bytes or UTF-8 strings. */
export type Headers = ReadonlyArray<readonly [string, Payload]> | Readonly<Record<string, Payload>>;

/** The parts of the WebSocket API this client uses (the browser's, Node 22's global, or the `ws` package's). */
export interface WebSocketLike {
  /** Set to `"arraybuffer"` by the client. */
  binaryType: string;
  /** The connection state (1 = open). */
  readonly readyState: number;
  /** Sends one binary message. */
  send(data: Uint8Array): void;
  /** Closes the socket. */
  close(code?: number, reason?: string): void;
  /** Called when the socket opens. */
  onopen: ((ev: unknown) => void) | null;
  /** Called per message; `data` is an `ArrayBuffer` for binary messages, a string for text. */
  onmessage: ((ev: { data: unknown }) => void) | null;
  /** Called when the socket closes. */
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
  /** Called on a socket error. */
  onerror: ((ev: unknown) => void) | null;
}

/**
 * A WebSocket constructor: `globalThis.WebSocket`, or `WebSocket` from the
 * `ws` package in Node 20. Its instances must behave as {@link WebSocketLike}
 * (the type is loose so that both fit without a cast).
 */
export type WebSocketConstructor = new (url: string) => unknown;

/** Options of {@link Client.connect}. */
export interface ConnectOptions {
  /** The hub's WebSocket URL, e.g. `ws://127.0.0.1:8080/v1/ws`. */
  url: string;
  /** The client id to register under (1 to 256 bytes of UTF-8, no control characters). */
  clientId: string;
  /** The shared token (`SWITCHBOARD_TOKEN`); its SHA-256 is the key. Give this or `key`. */
  token?: string;
  /** The 32-byte key itself (e.g. a hub's secret file). Give this or `token`. */
  key?: Uint8Array;
  /** Free text shown in client lists (default `"@switchboard/client"`). */
  agent?: string;
  /** The WebSocket constructor (default: `globalThis.WebSocket`; pass `ws`'s in Node 20). */
  WebSocket?: WebSocketConstructor;
  /** How long the connection and handshake may take, ms (default 10,000). */
  connectTimeoutMs?: number;
  /** Default timeout of {@link Client.request}, ms (default 30,000). */
  requestTimeoutMs?: number;
  /** Largest frame accepted from the hub after `Welcome`, bytes (default 16 MiB; 64 KiB before). */
  maxFrame?: number;
  /** Messages buffered for {@link Client.messages} and each subscription before the oldest is dropped (default 8,192). */
  bufferSize?: number;
  /**
   * Ask for reliable delivery (default true): numbered frames both ways,
   * acknowledgements, and after a lost connection a reconnect that resumes
   * the session (nothing acknowledged lost, nothing handled twice).
   */
  reliable?: boolean;
  /** How long to keep trying to reconnect after a lost connection, ms (default 30,000, the hub's resume window). */
  reconnectWindowMs?: number;
  /**
   * Announce the `listen` feature: the hub then refuses direct messages and
   * requests to this client (`NOT_LISTENING`, at once) until
   * {@link Client.listen} opts in. Default false: both are always taken.
   */
  listen?: boolean;
}

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

/** The connection's state: see {@link Client.state}. */
export type ClientState = "connected" | "reconnecting" | "closed";

/** What happened to the connection (see {@link Client.events}). */
export type ClientEvent =
  | { type: "disconnected"; error: SwitchboardError }
  | { type: "reconnected"; resumed: boolean; epoch: bigint }
  | { type: "dropped"; by: "hub"; count: bigint }
  | { type: "closed"; error: SwitchboardError };

/** Options of {@link Client.request}. */
export interface RequestOptions {
  /** How long the hub waits for the reply, ms (default: the client's `requestTimeoutMs`). */
  timeoutMs?: number;
  /** A method name for the replier. */
  method?: string;
  /** Headers. */
  headers?: Headers;
}

/** A live subscription: iterate it for the messages; leaving the loop unsubscribes. */
export class Subscription implements AsyncIterable<Message> {
  /**
   * @internal
   * @param id - the subscription id
   * @param pattern - the pattern subscribed to
   * @param queue - the buffer the reader fills
   */
  constructor(
    readonly id: bigint,
    readonly pattern: string,
    private readonly queue: AsyncQueue<Message>,
  ) {}

  /** Messages dropped because the buffer was full. */
  get dropped(): number {
    return this.queue.dropped;
  }

  /** Unsubscribes (waiting for the hub's confirmation) and ends the iteration. */
  async unsubscribe(): Promise<void> {
    await this.queue.return();
  }

  [Symbol.asyncIterator](): AsyncIterator<Message> {
    return this.queue;
  }
}

/** A stream of items from the hub (a kv watch, presence): iterate it; leaving the loop stops it at the hub. */
export class Watch<T> implements AsyncIterable<T> {
  /**
   * @internal
   * @param queue - the buffer the reader fills
   */
  constructor(private readonly queue: AsyncQueue<T>) {}

  /** Items dropped because the buffer was full. */
  get dropped(): number {
    return this.queue.dropped;
  }

  /** Stops the watch at the hub and ends the iteration. */
  async stop(): Promise<void> {
    await this.queue.return();
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return this.queue;
  }
}

interface Pending {
  resolve: (f: Frame) => void;
  reject: (e: SwitchboardError) => void;
  timer?: ReturnType<typeof setTimeout>;
  /** Sent as a numbered frame: survives a resumed connection. */
  numbered: boolean;
}

/** Client kinds that are numbered on a reliable connection (docs/PROTOCOL.md, "Reliable delivery"). */
const NUMBERED = new Set<string>([
  "publish", "direct", "request", "reply", "broadcast", "session", "subscribe", "unsubscribe",
  "kvSet", "kvDelete", "kvWatch", "kvUnwatch", "presenceWatch", "cancel", "listen",
]);
const ACK_EVERY = 64n;
const ACK_DELAY_MS = 10;

const PRE_WELCOME_MAX = 64 * 1024;
const DEFAULT_MAX_FRAME = 16 * 1024 * 1024;

function bytes(p: Payload): Uint8Array {
  return typeof p === "string" ? encoder.encode(p) : p;
}

function toHeaders(h: Headers | undefined) {
  if (!h) return [];
  const pairs: ReadonlyArray<readonly [string, Payload]> = Array.isArray(h)
    ? (h as ReadonlyArray<readonly [string, Payload]>)
    : Object.entries(h as Record<string, Payload>);
  return pairs.map(([key, value]) => create(HeaderSchema, { key, value: bytes(value) }));
}

function fromHeaders(h: ReadonlyArray<{ key: string; value: Uint8Array }>): Array<readonly [string, Uint8Array]> {
  return h.map((x) => [x.key, x.value] as const);
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
export class Client {
  /** The id the hub registered this client under. */
  clientId = "";
  /** The hub's identity from its `Welcome`. */
  hub: HubIdentity | undefined;
  /** The hub's epoch. */
  epoch = 0n;
  /** Largest frame the hub accepts from this client, bytes. */
  hubMaxFrame = DEFAULT_MAX_FRAME;

  private ws!: WebSocketLike;
  /** Messages that arrived between the `Welcome` and attach(). */
  private early: unknown[] = [];
  private connected = false;
  private reliableOn = false;
  private key!: Uint8Array;
  private kid!: Uint8Array;
  private outSeq = 0n;
  private retained: Array<{ seq: bigint; kind: Frame["kind"] }> = [];
  private lastReceived = 0n;
  private lastAckSent = 0n;
  private ackTimer: ReturnType<typeof setTimeout> | undefined;
  /** Connections lost and resumed (or started afresh) since connecting. */
  reconnects = 0;
  private readonly listeners = new Set<AsyncQueue<ClientEvent>>();
  private draining = false;
  private nextId = 1n;
  private readonly pending = new Map<bigint, Pending>();
  private readonly subs = new Map<bigint, AsyncQueue<Message>>();
  private readonly services = new Map<bigint, Handler>();
  private readonly watches = new Map<bigint, AsyncQueue<KvUpdate>>();
  private presence: AsyncQueue<PresenceEvent> | undefined;
  /** Subscriptions and watches by id, to send again after a fresh session. */
  private readonly registrations = new Map<bigint, { kind: FrameKind; value: object }>();
  private readonly inbox: AsyncQueue<Message>;
  private handler: Handler | undefined;
  private closedWith: SwitchboardError | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private lastHeard = Date.now();
  private pingEveryMs = 10_000;
  private readonly closedPromise: Promise<SwitchboardError>;
  private resolveClosed!: (e: SwitchboardError) => void;

  private constructor(private readonly opts: ConnectOptions) {
    this.inbox = new AsyncQueue<Message>(opts.bufferSize ?? 8192);
    this.closedPromise = new Promise((r) => (this.resolveClosed = r));
  }

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
    if (opts.key) {
      if (opts.key.length !== 32) throw new SwitchboardError("the key must be 32 bytes");
      c.key = opts.key;
    } else if (opts.token !== undefined) {
      c.key = await keyFromToken(opts.token);
    } else {
      throw new SwitchboardError("give a token or a key");
    }
    c.kid = await keyId(c.key);
    let w: Welcome;
    try {
      w = await c.handshake(undefined);
    } catch (e) {
      c.closedWith = e as SwitchboardError;
      c.resolveClosed(e as SwitchboardError);
      throw e;
    }
    c.welcomed(w, false);
    return c;
  }

  /** Resolves with the reason when the connection ends (after {@link close}: a {@link Disconnected}). */
  get closed(): Promise<SwitchboardError> {
    return this.closedPromise;
  }

  /** Whether the client is not closed (connected, or reconnecting). */
  get isOpen(): boolean {
    return this.closedWith === undefined;
  }

  /** `"connected"`, `"reconnecting"` (a lost connection being resumed) or `"closed"`. */
  get state(): ClientState {
    if (this.closedWith) return "closed";
    return this.connected ? "connected" : "reconnecting";
  }

  /**
   * What happens to the connection, as an async iterator: `disconnected`
   * (a lost connection, being retried), `reconnected` (`resumed` or a fresh
   * session), `dropped` (the hub dropped deliveries for this slow consumer,
   * from its `Flow` notices) and `closed` (the last event). Each call gives
   * an independent stream of the events from then on; leaving the loop
   * stops it.
   */
  events(): AsyncIterable<ClientEvent> {
    const q: AsyncQueue<ClientEvent> = new AsyncQueue<ClientEvent>(1024, () => {
      this.listeners.delete(q);
    });
    if (this.closedWith) q.end();
    else this.listeners.add(q);
    return { [Symbol.asyncIterator]: () => q };
  }

  private emit(e: ClientEvent): void {
    for (const q of this.listeners) q.push(e);
  }

  /** Opens a socket and runs the handshake on it; resolves with the `Welcome` (the socket is then `this.ws`). */
  private async handshake(resume: { lastReceived: bigint; epoch: bigint } | undefined): Promise<Welcome> {
    this.early = [];
    const o = this.opts;
    const key = this.key;
    const kid = this.kid;
    const WS = o.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) {
      throw new SwitchboardError(
        "no WebSocket implementation: pass the `WebSocket` option (in Node 20: `import { WebSocket } from \"ws\"`)",
      );
    }
    const clientNonce = nonce();
    const timeoutMs = o.connectTimeoutMs ?? 10_000;

    return new Promise<Welcome>((resolve, reject) => {
      let phase: "open" | "challenge" | "welcome" | "done" = "open";
      let ws: WebSocketLike;
      const fail = (e: SwitchboardError) => {
        if (phase === "done") return;
        phase = "done";
        clearTimeout(timer);
        try {
          ws.close();
        } catch {
          // already closed
        }
        reject(e);
      };
      const timer = setTimeout(
        () => fail(new Timeout(`no Welcome from ${o.url} within ${timeoutMs} ms`)),
        timeoutMs,
      );
      try {
        ws = new WS(o.url) as WebSocketLike;
      } catch (e) {
        clearTimeout(timer);
        reject(new Disconnected(`cannot open ${o.url}: ${String(e)}`, undefined, { cause: e }));
        return;
      }
      ws.binaryType = "arraybuffer";
      const send = (kind: Frame["kind"] | { case: FrameKind; value: object }) =>
        ws.send(toBinary(FrameSchema, create(FrameSchema, { kind } as never)));
      ws.onerror = () => {
        // The close event follows with the details.
      };
      ws.onclose = (ev) =>
        fail(new Disconnected(`the connection to ${o.url} closed during the handshake (code ${ev?.code ?? "?"})`));
      ws.onopen = () => {
        const reliable = o.reliable ?? true;
        send({
          case: "hello",
          value: {
            protocolVersion: 1,
            clientId: o.clientId,
            clientNonce,
            features: [...(reliable ? ["reliable"] : []), ...(o.listen ? ["listen"] : [])],
            agent: o.agent ?? "@switchboard/client",
            keyId: kid,
            resume: reliable ? resume : undefined,
          },
        });
        phase = "challenge";
      };
      ws.onmessage = (ev) => {
        if (phase === "done") {
          // Frames right behind the Welcome (the `ws` package can deliver
          // them before the connection is attached): kept for attach().
          if (this.ws === ws) this.early.push(ev.data);
          return;
        }
        let f: Frame;
        try {
          f = this.decode(ev.data, PRE_WELCOME_MAX);
        } catch (e) {
          fail(e as SwitchboardError);
          return;
        }
        const k = f.kind;
        if (k.case === "error") return fail(errorFromCode(k.value.code, k.value.message));
        if (k.case === "goodbye") return fail(errorFromCode(k.value.code, k.value.message));
        if (phase === "challenge" && k.case === "challenge") {
          const ch = k.value;
          phase = "welcome";
          hubProof(key, clientNonce, ch.hubNonce, ch.identity)
            .then(async (expected) => {
              if (phase !== "welcome") return;
              if ((ch.identity?.epoch ?? 0n) < this.epoch) {
                return fail(
                  new Fenced(`the hub at ${o.url} has epoch ${ch.identity?.epoch ?? 0n}, below epoch ${this.epoch} already seen: an old primary`, ErrorCode.FENCED),
                );
              }
              if (!constantTimeEqual(expected, ch.proof)) {
                return fail(
                  new HubUnverified(
                    `the hub at ${o.url} could not prove the key: wrong token, or not the hub you meant; nothing was sent to it`,
                  ),
                );
              }
              const proof = await clientProof(key, ch.hubNonce, clientNonce, o.clientId);
              if (phase !== "welcome") return;
              send({ case: "auth", value: { proof } });
            })
            .catch((e: unknown) => fail(new SwitchboardError(`handshake failed: ${String(e)}`, undefined, { cause: e })));
          return;
        }
        if (phase === "welcome" && k.case === "welcome") {
          phase = "done";
          clearTimeout(timer);
          this.ws = ws;
          resolve(k.value);
          return;
        }
        fail(new ProtocolError(`unexpected ${k.case ?? "frame without a kind"} during the handshake`, ErrorCode.BAD_FRAME));
      };
    });
  }

  /** Takes a `Welcome` over: resumes or starts afresh, then runs the connection. */
  private welcomed(w: Welcome, reconnected: boolean): void {
    this.clientId = w.clientId;
    this.hub = w.identity;
    if (w.epoch > this.epoch) this.epoch = w.epoch;
    if (w.maxFrame) this.hubMaxFrame = w.maxFrame;
    if (w.keepaliveMs) this.pingEveryMs = Math.min(10_000, Math.max(50, Math.floor(w.keepaliveMs / 2)));
    this.reliableOn = w.features.includes("reliable");
    const resumed = w.features.includes("resumed");
    this.connected = true;
    this.attach();
    if (reconnected) this.emit({ type: "reconnected", resumed, epoch: this.epoch });
    if (resumed) {
      // The hub holds our session: resend what it did not take, in order, with the original seqs.
      this.retained = this.retained.filter((r) => r.seq > w.lastReceived);
      for (const r of this.retained) this.write(r.kind, r.seq);
      return;
    }
    if (!reconnected) return;
    // A fresh session: what waited has an unknown outcome; register again.
    this.retained = [];
    this.lastReceived = 0n;
    this.lastAckSent = 0n;
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(new Disconnected("the hub did not resume the session (a new hub, or the resume window ended): the outcome is unknown"));
    }
    const again = (f: () => Promise<unknown>) => void f().catch(() => undefined);
    for (const r of this.registrations.values()) again(() => this.call(r.kind, r.value as never));
    if (this.presence && !this.presence.isEnded) again(() => this.call("presenceWatch", {}));
  }

  /** Wires the socket to the running connection after `Welcome`. */
  private attach(): void {
    const ws = this.ws;
    const max = this.opts.maxFrame ?? DEFAULT_MAX_FRAME;
    const onmessage = (ev: { data: unknown }) => {
      if (this.closedWith || this.ws !== ws || !this.connected) return;
      let f: Frame;
      try {
        f = this.decode(ev.data, max);
      } catch (e) {
        this.shutdown(e as SwitchboardError, true);
        return;
      }
      this.lastHeard = Date.now();
      if (f.acked) this.acknowledged(f.acked);
      if (f.seq !== 0n) {
        // Sent again after a resume and already handled.
        if (f.seq <= this.lastReceived) return;
      }
      try {
        this.dispatch(f);
      } catch (e) {
        this.shutdown(new ProtocolError(`cannot handle a frame: ${String(e)}`, ErrorCode.BAD_FRAME, { cause: e }), true);
        return;
      }
      if (f.seq !== 0n && this.reliableOn) {
        // Handed to the application (its queue or handler): taken.
        this.lastReceived = f.seq;
        this.scheduleAck();
      }
    };
    ws.onmessage = onmessage;
    const early = this.early;
    this.early = [];
    for (const data of early) onmessage({ data });
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.lost(new Disconnected(`the connection to the hub was lost (WebSocket code ${ev?.code ?? "?"})`));
    };
    this.lastHeard = Date.now();
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => {
      if (Date.now() - this.lastHeard > 3 * this.pingEveryMs) {
        this.lost(new Disconnected(`nothing heard from the hub for ${3 * this.pingEveryMs} ms`));
        return;
      }
      this.sendFrame({ case: "ping", value: { nonce: BigInt(Date.now()) } });
    }, this.pingEveryMs);
    (this.pingTimer as { unref?: () => void }).unref?.();
  }

  /** The hub took our frames up to `upTo`: forget them. */
  private acknowledged(upTo: bigint): void {
    let n = 0;
    while (n < this.retained.length && this.retained[n]!.seq <= upTo) n++;
    if (n > 0) this.retained.splice(0, n);
  }

  /** Acknowledges at once after 64 seqs, else 10 ms later unless a frame carried it meanwhile. */
  private scheduleAck(): void {
    if (this.lastReceived - this.lastAckSent >= ACK_EVERY) {
      this.sendFrame({ case: "ack", value: { upTo: this.lastReceived } });
      return;
    }
    if (this.ackTimer) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = undefined;
      if (this.connected && !this.closedWith && this.lastReceived > this.lastAckSent) {
        this.sendFrame({ case: "ack", value: { upTo: this.lastReceived } });
      }
    }, ACK_DELAY_MS);
  }

  /** The connection was lost: resume on a new one when reliable, else end. */
  private lost(reason: SwitchboardError): void {
    if (this.closedWith || !this.connected) return;
    this.connected = false;
    if (this.pingTimer) clearInterval(this.pingTimer);
    try {
      this.ws.close();
    } catch {
      // already closed
    }
    if (!this.reliableOn || reason instanceof IdTakenOver) {
      this.shutdown(reason, false);
      return;
    }
    this.emit({ type: "disconnected", error: reason });
    // Reads that are not numbered are not resent: fail them now.
    for (const [id, p] of [...this.pending]) {
      if (p.numbered) continue;
      this.pending.delete(id);
      if (p.timer) clearTimeout(p.timer);
      p.reject(new Disconnected(`${reason.message}; a read is not resent`, reason.code, { cause: reason }));
    }
    void this.reconnect(reason);
  }

  /** Tries to reconnect, with backoff and jitter, until the reconnect window ends. */
  private async reconnect(reason: SwitchboardError): Promise<void> {
    const deadline = Date.now() + (this.opts.reconnectWindowMs ?? 30_000);
    let delay = 50;
    let last: unknown = reason;
    while (!this.closedWith && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, delay * (0.5 + Math.random())));
      delay = Math.min(delay * 2, 2_000);
      if (this.closedWith) return;
      try {
        const w = await this.handshake({ lastReceived: this.lastReceived, epoch: this.epoch });
        if (this.closedWith) {
          this.ws.close();
          return;
        }
        this.reconnects++;
        this.welcomed(w, true);
        return;
      } catch (e) {
        last = e;
        if (e instanceof HubUnverified || e instanceof AuthFailed || e instanceof IdTakenOver || e instanceof Forbidden) break;
      }
    }
    const why = last instanceof Error ? last.message : String(last);
    this.shutdown(new Disconnected(`could not reconnect to ${this.opts.url}: ${why}`, ErrorCode.ERROR_CODE_UNSPECIFIED, { cause: last }), false);
  }

  private decode(data: unknown, max: number): Frame {
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

  /**
   * Sends a frame. On a reliable connection numbered kinds get the next seq
   * and are kept until acknowledged (and written on the resumed connection
   * if the socket is down now); other kinds need an open socket.
   */
  private sendFrame(kind: Frame["kind"] | { case: FrameKind; value: object }): void {
    const k = kind as Frame["kind"];
    if (this.reliableOn && NUMBERED.has(k.case ?? "")) {
      const seq = ++this.outSeq;
      this.retained.push({ seq, kind: k });
      if (this.connected) this.write(k, seq);
      return;
    }
    if (!this.connected) throw new Disconnected("the connection to the hub is down (reconnecting)");
    this.write(k, 0n);
  }

  private write(kind: Frame["kind"], seq: bigint): void {
    const acked = this.reliableOn ? this.lastReceived : 0n;
    const frame = create(FrameSchema, { seq, acked, kind } as never);
    this.ws.send(toBinary(FrameSchema, frame));
    if (acked > this.lastAckSent) this.lastAckSent = acked;
  }

  private dispatch(f: Frame): void {
    const k = f.kind;
    switch (k.case) {
      case "ok":
      case "kvValue":
      case "clientList":
      case "status":
      case "reply":
        this.answer(k.value.id, f);
        return;
      case "error":
        if (k.value.id === 0n) {
          // Concerns the connection; a close follows when it is fatal.
          this.lastConnectionError = errorFromCode(k.value.code, k.value.message);
          return;
        }
        this.answer(k.value.id, f);
        return;
      case "deliver": {
        const d = k.value;
        this.subs
          .get(d.subId)
          ?.push(new Message("publish", d.from, d.payload, fromHeaders(d.headers), d.topic, d.replyTo));
        return;
      }
      case "kvUpdate": {
        const u = k.value;
        this.watches.get(u.watchId)?.push({ key: u.key, value: u.value, version: u.version, deleted: u.deleted, by: u.by });
        return;
      }
      case "presence": {
        const p = k.value;
        if (p.client) {
          this.presence?.push({ kind: p.kind === PresenceKind.LEFT ? "left" : "joined", client: p.client, reason: p.reason });
        }
        return;
      }
      case "direct":
        this.inbox.push(new Message("direct", k.value.from, k.value.payload, fromHeaders(k.value.headers)));
        return;
      case "broadcast":
        this.inbox.push(new Message("broadcast", k.value.from, k.value.payload, fromHeaders(k.value.headers)));
        return;
      case "request":
        this.onRequest(k.value);
        return;
      case "ping":
        this.sendFrame({ case: "pong", value: { nonce: k.value.nonce } });
        return;
      case "goodbye":
        this.lost(errorFromCode(k.value.code, k.value.message));
        return;
      case "ack":
        this.acknowledged(k.value.upTo);
        return;
      case "flow":
        if (k.value.dropped > 0n) this.emit({ type: "dropped", by: "hub", count: k.value.dropped });
        return;
      default:
        // Pong, Flow, Ack and kinds this version does not use or know.
        return;
    }
  }

  private lastConnectionError: SwitchboardError | undefined;

  private answer(id: bigint, f: Frame): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (p.timer) clearTimeout(p.timer);
    if (f.kind.case === "error") p.reject(errorFromCode(f.kind.value.code, f.kind.value.message));
    else p.resolve(f);
  }

  private onRequest(r: RequestMsg): void {
    const handler = r.subId !== 0n ? this.services.get(r.subId) : this.handler;
    const req = new IncomingRequest(r.id, r.from, r.method, r.payload, fromHeaders(r.headers), r.service);
    const reply = (payload: Uint8Array, isError: boolean) => {
      if (this.closedWith) return;
      this.sendFrame({ case: "reply", value: { id: r.id, to: r.from, payload, isError } });
    };
    if (!handler) {
      reply(encoder.encode(`${this.clientId} does not serve requests`), true);
      return;
    }
    Promise.resolve()
      .then(() => handler(req))
      .then(
        (p) => reply(bytes(p), false),
        (e: unknown) => reply(encoder.encode(e instanceof Error ? e.message : String(e)), true),
      );
  }

  /** Sends a command with a fresh correlation id and waits for its answer. */
  private call<K extends FrameKind>(
    kind: K,
    value: Omit<Partial<KindValue<K>>, "id" | "$typeName">,
    timeoutMs?: number,
    onTimeout?: (id: bigint) => void,
  ): Promise<Frame> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (this.draining && kind !== "unsubscribe" && kind !== "kvUnwatch" && kind !== "presenceWatch") {
      return Promise.reject(new Disconnected("the client is draining: it takes no new calls"));
    }
    const id = this.nextId++;
    return new Promise<Frame>((resolve, reject) => {
      const p: Pending = { resolve, reject, numbered: this.reliableOn && NUMBERED.has(kind) };
      if (timeoutMs !== undefined) {
        p.timer = setTimeout(() => {
          this.pending.delete(id);
          onTimeout?.(id);
          reject(new Timeout(`no answer to ${kind} ${id} within ${timeoutMs} ms`, ErrorCode.TIMEOUT));
        }, timeoutMs);
      }
      this.pending.set(id, p);
      try {
        this.sendFrame({ case: kind, value: { ...value, id } });
      } catch (e) {
        this.pending.delete(id);
        if (p.timer) clearTimeout(p.timer);
        reject(e instanceof SwitchboardError ? e : new InvalidArgumentLocal(String(e)));
      }
    });
  }

  /**
   * Sends a request to a client and waits for its reply.
   *
   * @param to - the target client id
   * @param payload - the request payload
   * @param opts - timeout, method and headers
   * @returns the reply
   * @throws {@link NoSuchClient}, {@link Timeout}, {@link TargetGone},
   *   {@link RemoteError} (the replier failed), {@link Disconnected}, …
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
   * @param opts - timeout, method and headers
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
    const timeoutMs = opts.timeoutMs ?? this.opts.requestTimeoutMs ?? 30_000;
    const f = await this.call(
      "request",
      {
        ...target,
        payload: bytes(payload),
        timeoutMs,
        method: opts.method ?? "",
        headers: toHeaders(opts.headers),
      },
      // The hub answers TIMEOUT at the deadline; this timer is the backstop.
      timeoutMs + 250,
      (id) => {
        if (!this.closedWith) this.sendFrame({ case: "cancel", value: { id } });
      },
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
   * iterator (one reader). Messages arriving before anyone iterates are
   * buffered (`bufferSize`, oldest dropped first).
   */
  messages(): AsyncIterable<Message> {
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
   * Subscribes to a topic pattern (`*` one segment, a final `>` the rest);
   * resolves once the hub confirmed. Iterate the result for the messages;
   * leaving the loop (`break`, `return`, a throw) unsubscribes.
   *
   * @param pattern - the pattern, e.g. `orders.*.created`
   * @param opts - a queue group: each message goes to one member of the group
   * @throws {@link InvalidArgument} for a bad pattern, {@link LimitExceeded}, …
   */
  async subscribe(pattern: string, opts: { queueGroup?: string } = {}): Promise<Subscription> {
    const subId = this.nextId++;
    const q: AsyncQueue<Message> = new AsyncQueue<Message>(this.opts.bufferSize ?? 8192, async () => {
      this.subs.delete(subId);
      this.registrations.delete(subId);
      if (!this.closedWith) await this.call("unsubscribe", { subId });
    });
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
   * @throws {@link VersionMismatch}, {@link InvalidArgument}, {@link LimitExceeded}, …
   */
  async kvSet(key: string, value: Payload, opts: { expectVersion?: bigint } = {}): Promise<bigint> {
    const f = await this.call("kvSet", { key, value: bytes(value), expectVersion: opts.expectVersion });
    if (f.kind.case !== "kvValue") throw new ProtocolError(`kvSet was answered with ${f.kind.case}`, ErrorCode.BAD_FRAME);
    return f.kind.value.version;
  }

  /**
   * Deletes a key.
   *
   * @param key - the key
   * @param opts - the compare-and-delete version
   * @returns the deletion's version
   * @throws {@link NotFound} when the key does not exist, {@link VersionMismatch}, …
   */
  async kvDelete(key: string, opts: { expectVersion?: bigint } = {}): Promise<bigint> {
    const f = await this.call("kvDelete", { key, expectVersion: opts.expectVersion });
    if (f.kind.case !== "kvValue") throw new ProtocolError(`kvDelete was answered with ${f.kind.case}`, ErrorCode.BAD_FRAME);
    return f.kind.value.version;
  }

  /**
   * Watches a key (or every key under a prefix): the stream yields the
   * current value(s) first (`by` empty), then every change in order.
   * Leaving the loop, or {@link Watch.stop}, ends the watch at the hub.
   *
   * @param key - the key, or the prefix with `prefix: true` (empty: every key)
   * @param opts - whether `key` is a prefix
   * @throws {@link InvalidArgument}, {@link LimitExceeded}, …
   */
  async kvWatch(key: string, opts: { prefix?: boolean } = {}): Promise<Watch<KvUpdate>> {
    const watchId = this.nextId++;
    const q = new AsyncQueue<KvUpdate>(this.opts.bufferSize ?? 8192, async () => {
      this.watches.delete(watchId);
      this.registrations.delete(watchId);
      if (!this.closedWith) await this.call("kvUnwatch", { watchId });
    });
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
    const q: AsyncQueue<PresenceEvent> = new AsyncQueue<PresenceEvent>(this.opts.bufferSize ?? 8192, async () => {
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

  /**
   * Leaves gracefully: takes no new calls, waits (at most `timeoutMs`,
   * default 30,000) until every call in flight is answered and the hub has
   * acknowledged every frame sent, then {@link close}s.
   *
   * @param timeoutMs - how long to wait before closing anyway
   */
  async drain(timeoutMs = 30_000): Promise<void> {
    if (this.closedWith) return;
    this.draining = true;
    const deadline = Date.now() + timeoutMs;
    while (!this.closedWith && Date.now() < deadline && (this.pending.size > 0 || this.retained.length > 0)) {
      await new Promise((r) => setTimeout(r, 10));
    }
    await this.close();
  }

  /**
   * Leaves: sends `Goodbye`, closes the socket, fails calls still waiting
   * with {@link Disconnected} and ends every stream. Safe to call twice.
   */
  async close(): Promise<void> {
    if (this.closedWith) return;
    try {
      if (this.connected) this.sendFrame({ case: "goodbye", value: { code: ErrorCode.ERROR_CODE_UNSPECIFIED, message: "closed by the client" } });
    } catch {
      // the socket is already gone
    }
    this.shutdown(new Disconnected("the client was closed"), true, true);
  }

  /** Ends the connection once: fails what waits, ends the streams. */
  private shutdown(reason: SwitchboardError, closeSocket: boolean, byUser = false): void {
    if (this.closedWith) return;
    // A connection-level error just before the close says more than the close.
    const err = !byUser && reason instanceof Disconnected && this.lastConnectionError ? this.lastConnectionError : reason;
    this.closedWith = err;
    this.connected = false;
    if (this.pingTimer) clearInterval(this.pingTimer);
    if (this.ackTimer) clearTimeout(this.ackTimer);
    if (closeSocket) {
      try {
        this.ws.close();
      } catch {
        // already closed
      }
    }
    const pending = [...this.pending.values()];
    this.pending.clear();
    const lost = byUser ? err : new Disconnected(`${err.message}; the outcome of calls in flight is unknown`, err.code, { cause: err });
    for (const p of pending) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(lost);
    }
    for (const q of [...this.subs.values(), ...this.watches.values()]) q.end(byUser ? undefined : err);
    this.subs.clear();
    this.watches.clear();
    this.presence?.end(byUser ? undefined : err);
    this.inbox.end(byUser ? undefined : err);
    this.emit({ type: "closed", error: err });
    for (const q of this.listeners) q.end();
    this.listeners.clear();
    this.resolveClosed(err);
  }
}

class InvalidArgumentLocal extends SwitchboardError {}
