/**
 * The connection under a {@link Client}: its state and events, reliable
 * delivery (numbered frames, acknowledgements, resend and duplicate
 * suppression), reconnecting and resuming, routing incoming frames to the
 * waiting calls and streams, and closing. The calls themselves are in
 * `client.ts`.
 *
 * @module
 */

import { create, toBinary } from "@bufbuild/protobuf";
import {
  ErrorCode,
  FrameSchema,
  PresenceKind,
  type Frame,
  type HubIdentity,
  type Request as RequestMsg,
  type Welcome,
} from "./gen/switchboard/v1/switchboard_pb.js";
import { keyId } from "./auth.js";
import {
  AuthFailed,
  Disconnected,
  Forbidden,
  HubUnverified,
  IdTakenOver,
  InvalidArgument,
  ProtocolError,
  SwitchboardError,
  Timeout,
  errorFromCode,
} from "./errors.js";
import {
  DEFAULT_MAX_FRAME,
  DEFAULT_REQUEST_TIMEOUT_MS,
  MAX_TIMER_MS,
  NUMBERED,
  Wire,
  decodeFrame,
  encodePublish,
  type FrameKind,
  type KindValue,
} from "./frames.js";
import { handshake } from "./handshake.js";
import {
  IncomingRequest,
  Message,
  bytes,
  encoder,
  fromHeaders,
  type Handler,
  type KvUpdate,
  type PresenceEvent,
} from "./messages.js";
import type { ClientEvent, ClientState, ConnectOptions, StreamOptions, WebSocketLike } from "./options.js";
import { AsyncQueue } from "./queue.js";
import { Reliable } from "./reliable.js";

interface Pending {
  resolve: (f: Frame) => void;
  reject: (e: SwitchboardError) => void;
  timer?: Timer;
  /** Sent as a numbered frame: survives a resumed connection. */
  numbered: boolean;
}

/** A cancellable timer made by {@link longTimeout}. @internal */
export interface Timer {
  /** Stops the timer; the callback does not run. */
  cancel(): void;
}

/**
 * `setTimeout` for any delay: it takes at most {@link MAX_TIMER_MS}
 * (about 24.8 days; a longer delay fires after 1 ms with a
 * `TimeoutOverflowWarning`), so a longer wait is made of several timers in
 * turn. A negative or non-finite delay counts as 0. @internal
 *
 * @param fn - called once the delay has passed
 * @param ms - the delay, ms
 */
export function longTimeout(fn: () => void, ms: number): Timer {
  let handle: ReturnType<typeof setTimeout>;
  const arm = (left: number) => {
    handle = setTimeout(() => (left > MAX_TIMER_MS ? arm(left - MAX_TIMER_MS) : fn()), Math.min(left, MAX_TIMER_MS));
  };
  arm(Number.isFinite(ms) && ms > 0 ? ms : 0);
  return { cancel: () => clearTimeout(handle) };
}

/**
 * Encodes a frame; a value protobuf cannot encode (a number out of its
 * field's range, say) throws an {@link InvalidArgument}.
 */
function encode(kind: Frame["kind"], seq: bigint, acked: bigint): Uint8Array {
  try {
    if (kind.case === "publish") return encodePublish(seq, acked, kind.value);
    return toBinary(FrameSchema, create(FrameSchema, { seq, acked, kind } as never));
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    throw new InvalidArgument(`cannot encode the ${kind.case ?? "empty"} frame: ${why}`, ErrorCode.INVALID_ARGUMENT, { cause: e });
  }
}


/**
 * The connection machinery shared by every call of {@link Client}; not
 * used on its own.
 */
export abstract class Connection {
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
  /** The socket's framing. */
  private wire!: Wire;
  private connected = false;
  /** Whether the hub granted reliable delivery. */
  protected reliableOn = false;
  private key!: Uint8Array;
  private kid!: Uint8Array;
  /** Reliable delivery's sequence state (reliable.ts). */
  private readonly rel = new Reliable(
    (upTo) => this.sendFrame({ case: "ack", value: { upTo } }),
    () => this.connected && !this.closedWith,
  );
  /** Connections lost and resumed (or started afresh) since connecting. */
  reconnects = 0;
  private readonly listeners = new Set<AsyncQueue<ClientEvent>>();
  /** {@link flush} calls waiting for a `Pong`, by nonce. */
  private readonly pongWaiters = new Map<bigint, () => void>();
  private nextPing = 1n;
  /** Whether the socket is corked until the current turn's microtasks run. */
  private corked = false;
  /** Whether the socket was paused (the `ws` package) because a stream is full. */
  private paused = false;
  /** Frames held behind a full stream with the "block" policy, in order. */
  private backlog: Frame[] = [];
  /**
   * Per subscription with drops: drops not yet announced, and whether a
   * burst is on (a drop since the stream last took an item without one).
   */
  private readonly drops = new Map<bigint, { unannounced: number; burst: boolean; scheduled: boolean }>();
  /** {@link drain} was called: no new calls. */
  protected draining = false;
  /** The next correlation, subscription or watch id. */
  protected nextId = 1n;
  /** Calls waiting for their answer, by correlation id. */
  protected readonly pending = new Map<bigint, Pending>();
  /** Subscriptions' streams, by subscription id. */
  protected readonly subs = new Map<bigint, AsyncQueue<Message>>();
  /** Service handlers, by subscription id. */
  protected readonly services = new Map<bigint, Handler>();
  /** Kv watches' streams, by watch id. */
  protected readonly watches = new Map<bigint, AsyncQueue<KvUpdate>>();
  /** The presence watch's stream, if one runs. */
  protected presence: AsyncQueue<PresenceEvent> | undefined;
  /** Subscriptions and watches by id, to send again after a fresh session. */
  protected readonly registrations = new Map<bigint, { kind: FrameKind; value: object }>();
  /** Direct and broadcast messages. */
  protected readonly inbox: AsyncQueue<Message>;
  /** The handler of requests to this client id. */
  protected handler: Handler | undefined;
  /** Why the client closed, once it did. */
  protected closedWith: SwitchboardError | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private lastHeard = Date.now();
  private pingEveryMs = 10_000;
  private readonly closedPromise: Promise<SwitchboardError>;
  /** Settles {@link closed}. */
  protected resolveClosed!: (e: SwitchboardError) => void;

  /** The hub URLs, tried in turn (see {@link ConnectOptions.url}). */
  private readonly urls: string[];
  private urlIndex = 0;

  /** The URL of the hub this client is connected to (or was, while reconnecting). */
  get url(): string {
    return this.urls[this.urlIndex]!;
  }

  /** @param opts - the connect options */
  protected constructor(protected readonly opts: ConnectOptions) {
    this.urls = typeof opts.url === "string" ? [opts.url] : [...opts.url];
    if (this.urls.length === 0) throw new SwitchboardError("give at least one URL");
    // Drops its oldest until messages() is called (then: the client's policy).
    this.inbox = this.stream<Message>(undefined, { overflow: "dropOldest" });
    this.closedPromise = new Promise((r) => (this.resolveClosed = r));
  }

  /** Proves the key on a first connection; rejects (and closes) when that fails. */
  protected async open(key: Uint8Array): Promise<void> {
    this.key = key;
    this.kid = await keyId(key);
    // The URLs in turn; the first that answers wins. All failing: the first
    // error that is not about reaching the hub, else the last.
    let w: Welcome | undefined;
    let err: SwitchboardError | undefined;
    for (let i = 0; i < this.urls.length && !w; i++) {
      try {
        w = await this.shake(undefined, i);
      } catch (e) {
        if (!err || err instanceof Disconnected || err instanceof Timeout) err = e as SwitchboardError;
      }
    }
    if (!w) {
      this.closedWith = err!;
      this.resolveClosed(err!);
      throw err!;
    }
    this.welcomed(w, false);
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
   * (a lost connection, being retried), `reconnected` (`resumed`, or a fresh
   * session with `unknown` frames sent whose outcome is unknown), `dropped`
   * (the hub dropped deliveries for this slow consumer, from its `Flow`
   * notices), `slowConsumer` (a subscription's drop policy dropped
   * messages: once per burst) and `closed` (the last event). Each call gives
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

  /** Runs the handshake on a new socket; on success the socket is `this.ws`. */
  private async shake(resume: { lastReceived: bigint; epoch: bigint } | undefined, urlIndex: number): Promise<Welcome> {
    const url = this.urls[urlIndex]!;
    const r = await handshake({ opts: this.opts, url, key: this.key, kid: this.kid, epoch: this.epoch, resume });
    this.urlIndex = urlIndex;
    this.ws = r.ws;
    this.wire = r.wire;
    this.early = r.early;
    return r.welcome;
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
    if (resumed) {
      if (reconnected) this.emit({ type: "reconnected", resumed, epoch: this.epoch, unknown: 0 });
      // The hub holds our session: resend what it did not take, in order, with the original seqs.
      for (const r of this.rel.toResend(w.lastReceived)) this.write(r.kind, r.seq);
      return;
    }
    if (!reconnected) return;
    // A fresh session: what waited has an unknown outcome (flush() calls
    // waiting for kept frames fail too); register again.
    const unknown = this.rel.reset();
    this.emit({ type: "reconnected", resumed, epoch: this.epoch, unknown });
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      p.timer?.cancel();
      p.reject(new Disconnected("the hub did not resume the session (a new hub, or the resume window ended): the outcome is unknown"));
    }
    const again = (f: () => Promise<unknown>) => void f().catch(() => undefined);
    for (const r of this.registrations.values()) again(() => this.call(r.kind, r.value as never));
    if (this.presence && !this.presence.isEnded) again(() => this.call("presenceWatch", {}));
  }

  /** Wires the socket to the running connection after `Welcome`. */
  private attach(): void {
    const ws = this.ws;
    const wire = this.wire;
    // Numbered frames held on the old socket were not acknowledged: the hub
    // resends them. The others (Flow, Pong, Ack) it does not: take them now,
    // so a Flow's drop count still reaches the application.
    const held = this.backlog;
    this.backlog = [];
    this.paused = false;
    for (const f of held) {
      const k = f.kind.case;
      if (f.seq === 0n && (k === "flow" || k === "pong" || k === "ack")) this.dispatch(f);
    }
    const max = this.opts.maxFrame ?? DEFAULT_MAX_FRAME;
    wire.max = max;
    const onframe = (data: unknown) => {
      if (this.closedWith || this.ws !== ws || !this.connected) return;
      let f: Frame;
      try {
        if (data instanceof Error) throw data;
        f = decodeFrame(data, max);
      } catch (e) {
        this.shutdown(e as SwitchboardError, true);
        return;
      }
      this.lastHeard = Date.now();
      if (f.acked) this.rel.acknowledged(f.acked);
      if (this.backlog.length > 0) {
        // A full stream with the "block" policy holds everything behind it.
        this.backlog.push(f);
        return;
      }
      if (!this.handle(f)) {
        this.backlog.push(f);
        const pausable = ws as { pause?: () => void };
        if (pausable.pause) {
          pausable.pause();
          this.paused = true;
        }
      }
    };
    ws.onmessage = (ev: { data: unknown }) => {
      if (this.closedWith || this.ws !== ws || !this.connected) return;
      try {
        wire.receive(ev.data, onframe);
      } catch (e) {
        this.shutdown(e as SwitchboardError, true);
      }
    };
    const early = this.early;
    this.early = [];
    for (const data of early) onframe(data);
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.lost(new Disconnected(`the connection to the hub was lost (WebSocket code ${ev?.code ?? "?"})`));
    };
    this.lastHeard = Date.now();
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => {
      // While this client does not read (a full stream holds the socket
      // paused), what the hub sends waits unread: that is not silence.
      if (this.paused) this.lastHeard = Date.now();
      else if (Date.now() - this.lastHeard > 3 * this.pingEveryMs) {
        this.lost(new Disconnected(`nothing heard from the hub for ${3 * this.pingEveryMs} ms`));
        return;
      }
      this.sendFrame({ case: "ping", value: { nonce: BigInt(Date.now()) } });
    }, this.pingEveryMs);
    (this.pingTimer as { unref?: () => void }).unref?.();
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
      p.timer?.cancel();
      p.reject(new Disconnected(`${reason.message}; a read is not resent`, reason.code, { cause: reason }));
    }
    void this.reconnect(reason);
  }

  /** Tries to reconnect, with backoff and jitter, until the reconnect window ends. */
  private async reconnect(reason: SwitchboardError): Promise<void> {
    const deadline = Date.now() + (this.opts.reconnectWindowMs ?? 30_000);
    let delay = 50;
    let last: unknown = reason;
    // The URL it was connected to first (a standby may take its address
    // over), then the others in turn; the backoff grows once per round.
    const n = this.urls.length;
    const start = this.urlIndex;
    for (let attempt = 0; !this.closedWith && Date.now() < deadline; attempt++) {
      if (attempt % n === 0) {
        await new Promise((r) => setTimeout(r, delay * (0.5 + Math.random())));
        delay = Math.min(delay * 2, 2_000);
      }
      if (this.closedWith) return;
      try {
        const w = await this.shake({ lastReceived: this.rel.lastReceived, epoch: this.epoch }, (start + attempt) % n);
        if (this.closedWith) {
          this.ws.close();
          return;
        }
        this.reconnects++;
        this.welcomed(w, true);
        return;
      } catch (e) {
        last = e;
        // Refused for good; with several URLs an address that cannot prove
        // the key may be another service now: try the others.
        if (e instanceof AuthFailed || e instanceof IdTakenOver || e instanceof Forbidden) break;
        if (e instanceof HubUnverified && n === 1) break;
      }
    }
    const why = last instanceof Error ? last.message : String(last);
    this.shutdown(new Disconnected(`could not reconnect to ${this.urls.join(", ")}: ${why}`, ErrorCode.ERROR_CODE_UNSPECIFIED, { cause: last }), false);
  }

  /**
   * Sends a frame. On a reliable connection numbered kinds get the next seq
   * and are kept until acknowledged (and written on the resumed connection
   * if the socket is down now); other kinds need an open socket. The frame
   * is encoded before it is numbered and kept, so one that cannot be
   * encoded throws ({@link InvalidArgument}) and leaves nothing behind.
   */
  protected sendFrame(kind: Frame["kind"] | { case: FrameKind; value: object }): void {
    const k = kind as Frame["kind"];
    const numbered = this.reliableOn && NUMBERED.has(k.case ?? "");
    if (!numbered && !this.connected) throw new Disconnected("the connection to the hub is down (reconnecting)");
    const acked = this.reliableOn ? this.rel.lastReceived : 0n;
    const bytes = encode(k, numbered ? this.rel.outSeq + 1n : 0n, acked);
    if (numbered) this.rel.number(k);
    if (this.connected) this.writeEncoded(bytes, acked);
  }

  /** Writes a kept frame again (after a resume), with its original seq. */
  private write(kind: Frame["kind"], seq: bigint): void {
    const acked = this.reliableOn ? this.rel.lastReceived : 0n;
    this.writeEncoded(encode(kind, seq, acked), acked);
  }

  /** Writes an encoded frame that carries the acknowledgement `acked`. */
  private writeEncoded(bytes: Uint8Array, acked: bigint): void {
    this.cork();
    this.wire.send(bytes);
    this.rel.carried(acked);
  }

  /**
   * Frames written in one turn of the event loop leave in one socket write
   * where the socket allows it (the `ws` package's TCP socket: corked until
   * the turn's microtasks run). Without it each WebSocket message is its
   * own system call, which was most of a publisher's time. Browsers batch
   * on their own. The stream framing needs none: a turn's frames are one
   * message.
   */
  private cork(): void {
    if (this.corked || this.wire.stream) return;
    const sock = (this.ws as { _socket?: { cork?: () => void; uncork?: () => void } })._socket;
    if (!sock?.cork || !sock.uncork) return;
    sock.cork();
    this.corked = true;
    queueMicrotask(() => {
      this.corked = false;
      sock.uncork!();
    });
  }

  /**
   * Hands one frame on; false when a full stream with the "block" policy
   * refused it (it is then neither taken nor acknowledged).
   */
  private handle(f: Frame): boolean {
    // Sent again after a resume and already handled.
    if (this.rel.isDuplicate(f.seq)) return true;
    try {
      if (!this.dispatch(f)) return false;
    } catch (e) {
      this.shutdown(new ProtocolError(`cannot handle a frame: ${String(e)}`, ErrorCode.BAD_FRAME, { cause: e }), true);
      return true;
    }
    if (f.seq !== 0n && this.reliableOn) {
      // Handed to the application (its queue or handler): taken.
      this.rel.took(f.seq);
    }
    return true;
  }

  /** A stream has room again: hand on the frames held behind a full one, in order. */
  private readonly unblock = (): void => {
    while (this.backlog.length > 0) {
      if (this.closedWith || !this.connected) return;
      if (!this.handle(this.backlog[0]!)) return;
      this.backlog.shift();
    }
    if (this.paused) {
      this.paused = false;
      // The keepalive counts the hub's silence from now on.
      this.lastHeard = Date.now();
      (this.ws as { resume?: () => void }).resume?.();
    }
  };

  /** A bounded stream for the application, with this connection's defaults. */
  protected stream<T>(onReturn?: () => void | Promise<void>, o: StreamOptions = {}): AsyncQueue<T> {
    const q = new AsyncQueue<T>(Math.max(1, o.bufferSize ?? this.opts.bufferSize ?? 8192), onReturn, o.overflow ?? this.opts.overflow ?? "block");
    q.onSpace = this.unblock;
    return q;
  }

  /** Pushes to a stream: false when it is full and blocks; drops on a subscription are announced. */
  private put<T>(q: AsyncQueue<T> | undefined, item: T, subId = 0n): boolean {
    if (!q) return true;
    const r = q.push(item);
    if (r === "full") return false;
    if (r === "dropped" && subId !== 0n) this.noteDrop(subId, q);
    else if (this.drops.size > 0 && subId !== 0n) {
      // Taken without a drop: the stream was below its limit, a burst is over.
      const d = this.drops.get(subId);
      if (d) d.burst = false;
    }
    return true;
  }

  /**
   * Counts a subscription's drop; one `slowConsumer` event per burst (from
   * the first drop after the stream last took an item without one), at
   * the end of that event-loop turn, with the drops so far. Drops later in
   * the same burst are told by the next event (and by the stream's `dropped`).
   */
  private noteDrop(subId: bigint, q: { readonly dropped: number }): void {
    let d = this.drops.get(subId);
    if (!d) this.drops.set(subId, (d = { unannounced: 0, burst: false, scheduled: false }));
    d.unannounced++;
    if (d.burst) return;
    d.burst = true;
    if (d.scheduled) return;
    d.scheduled = true;
    setTimeout(() => {
      const dropped = d.unannounced;
      d.unannounced = 0;
      d.scheduled = false;
      if (!d.burst) this.drops.delete(subId);
      const reg = this.registrations.get(subId)?.value as { pattern?: string } | undefined;
      this.emit({ type: "slowConsumer", subId, pattern: reg?.pattern ?? "", dropped, total: q.dropped });
    }, 0);
  }

  private dispatch(f: Frame): boolean {
    const k = f.kind;
    switch (k.case) {
      case "ok":
      case "kvValue":
      case "clientList":
      case "status":
      case "reply":
        this.answer(k.value.id, f);
        return true;
      case "error":
        if (k.value.id === 0n) {
          // Concerns the connection; a close follows when it is fatal.
          this.lastConnectionError = errorFromCode(k.value.code, k.value.message);
          return true;
        }
        this.answer(k.value.id, f);
        return true;
      case "deliver": {
        const d = k.value;
        const q = this.subs.get(d.subId);
        if (!this.put(q, new Message("publish", d.from, d.payload, fromHeaders(d.headers), d.topic, d.replyTo), d.subId)) return false;
        return true;
      }
      case "kvUpdate": {
        const u = k.value;
        return this.put(this.watches.get(u.watchId), { key: u.key, value: u.value, version: u.version, deleted: u.deleted, by: u.by });
      }
      case "presence": {
        const p = k.value;
        if (!p.client) return true;
        return this.put(this.presence, { kind: p.kind === PresenceKind.LEFT ? "left" : "joined", client: p.client, reason: p.reason } as PresenceEvent);
      }
      case "direct":
        return this.put(this.inbox, new Message("direct", k.value.from, k.value.payload, fromHeaders(k.value.headers)));
      case "broadcast":
        return this.put(this.inbox, new Message("broadcast", k.value.from, k.value.payload, fromHeaders(k.value.headers)));
      case "request":
        this.onRequest(k.value);
        return true;
      case "ping":
        this.sendFrame({ case: "pong", value: { nonce: k.value.nonce } });
        return true;
      case "goodbye":
        this.lost(errorFromCode(k.value.code, k.value.message));
        return true;
      case "pong": {
        const w = this.pongWaiters.get(k.value.nonce);
        if (w) {
          this.pongWaiters.delete(k.value.nonce);
          w();
        }
        return true;
      }
      case "ack":
        this.rel.acknowledged(k.value.upTo);
        return true;
      case "flow":
        if (k.value.dropped > 0n) this.emit({ type: "dropped", by: "hub", count: k.value.dropped });
        return true;
      default:
        // Pong, Flow, Ack and kinds this version does not use or know.
        return true;
    }
  }

  private lastConnectionError: SwitchboardError | undefined;

  private answer(id: bigint, f: Frame): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    p.timer?.cancel();
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

  /**
   * Sends a command with a fresh correlation id and waits for its answer.
   * Gives up at `timeoutMs` (a {@link Timeout}) or when `signal` aborts
   * (its reason; already aborted: nothing is sent); either way the call is
   * forgotten, a late answer ignored, and `onAbandon` runs (a request
   * sends `Cancel`).
   */
  protected call<K extends FrameKind>(
    kind: K,
    value: Omit<Partial<KindValue<K>>, "id" | "$typeName">,
    timeoutMs?: number,
    onAbandon?: (id: bigint) => void,
    signal?: AbortSignal,
  ): Promise<Frame> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (this.draining && kind !== "unsubscribe" && kind !== "kvUnwatch" && kind !== "presenceWatch") {
      return Promise.reject(new Disconnected("the client is draining: it takes no new calls"));
    }
    if (signal?.aborted) return Promise.reject(signal.reason);
    const id = this.nextId++;
    return new Promise<Frame>((resolve, reject) => {
      const onAbort = () => abandon(signal!.reason);
      const settled = () => signal?.removeEventListener("abort", onAbort);
      const p: Pending = {
        resolve: (f) => {
          settled();
          resolve(f);
        },
        reject: (e) => {
          settled();
          reject(e);
        },
        numbered: this.reliableOn && NUMBERED.has(kind),
      };
      const abandon = (why: unknown) => {
        if (this.pending.get(id) !== p) return;
        this.pending.delete(id);
        p.timer?.cancel();
        settled();
        try {
          onAbandon?.(id);
        } catch {
          // the connection is down and the frame cannot be kept: nothing to cancel at the hub
        }
        reject(why);
      };
      if (timeoutMs !== undefined) {
        p.timer = longTimeout(() => abandon(new Timeout(`no answer to ${kind} ${id} within ${timeoutMs} ms`, ErrorCode.TIMEOUT)), timeoutMs);
      }
      signal?.addEventListener("abort", onAbort, { once: true });
      this.pending.set(id, p);
      try {
        this.sendFrame({ case: kind, value: { ...value, id } });
      } catch (e) {
        this.pending.delete(id);
        p.timer?.cancel();
        settled();
        reject(e instanceof SwitchboardError ? e : new InvalidArgument(String(e), ErrorCode.INVALID_ARGUMENT, { cause: e }));
      }
    });
  }

  /**
   * Waits until everything this client sent so far is taken over by the
   * hub: with reliable delivery, until the hub acknowledged every numbered
   * frame (across a resume, too); then one round trip (`Ping`/`Pong`), so
   * frames without a seq sent before the call were read by the hub as well.
   * The partner of {@link Client.publishNowait}.
   *
   * When the connection is lost and the hub starts a fresh session instead
   * of resuming (a restarted hub, or the resume window ended), the frames
   * sent and not yet acknowledged are forgotten with an unknown outcome
   * (as a confirmed publish waiting then fails): flush then rejects with
   * {@link Disconnected} saying how many (the `reconnected` event's
   * `unknown` counts them too).
   *
   * @param timeoutMs - how long to wait (default: the client's `requestTimeoutMs`, 30,000)
   * @throws {@link Timeout}, or {@link Disconnected} when the client closes
   *   meanwhile or a fresh session forgot frames it waited for
   */
  async flush(timeoutMs = this.opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS): Promise<void> {
    if (this.closedWith) throw this.closedWith;
    const deadline = Date.now() + timeoutMs;
    const bounded = <T>(p: Promise<T>, what: string): Promise<T> => {
      let timer: Timer;
      return Promise.race([
        p.finally(() => timer.cancel()),
        new Promise<T>((_, reject) => {
          timer = longTimeout(() => reject(new Timeout(`flush: ${what} within ${timeoutMs} ms`, ErrorCode.TIMEOUT)), deadline - Date.now());
        }),
        this.closedPromise.then((e) => Promise.reject(e)),
      ]);
    };
    await bounded(this.rel.whenAcknowledged(), "the hub did not acknowledge everything sent");
    // A round trip, on the connection as it is now.
    for (;;) {
      if (this.closedWith) throw this.closedWith;
      if (!this.connected) {
        await bounded(new Promise((r) => setTimeout(r, 10)), "no connection to the hub");
        continue;
      }
      const nonce = this.nextPing++;
      const pong = new Promise<void>((resolve) => this.pongWaiters.set(nonce, resolve));
      this.sendFrame({ case: "ping", value: { nonce } });
      try {
        await bounded(pong, "no Pong from the hub");
        return;
      } finally {
        this.pongWaiters.delete(nonce);
      }
    }
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
    while (!this.closedWith && Date.now() < deadline && (this.pending.size > 0 || !this.rel.settled)) {
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
  protected shutdown(reason: SwitchboardError, closeSocket: boolean, byUser = false): void {
    if (this.closedWith) return;
    // A connection-level error just before the close says more than the close.
    const err = !byUser && reason instanceof Disconnected && this.lastConnectionError ? this.lastConnectionError : reason;
    this.closedWith = err;
    this.connected = false;
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.rel.stop();
    if (closeSocket) {
      try {
        // A Goodbye packed this turn leaves before the close.
        this.wire?.flush();
        this.ws.close();
      } catch {
        // already closed
      }
    }
    const pending = [...this.pending.values()];
    this.pending.clear();
    const lost = byUser ? err : new Disconnected(`${err.message}; the outcome of calls in flight is unknown`, err.code, { cause: err });
    for (const p of pending) {
      p.timer?.cancel();
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

