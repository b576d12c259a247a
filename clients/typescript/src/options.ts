/**
 * How a client connects ({@link ConnectOptions}), the WebSocket it needs,
 * and what it reports about its connection ({@link ClientState},
 * {@link ClientEvent}).
 *
 * @module
 */

import type { SwitchboardError } from "./errors.js";
import type { Overflow } from "./queue.js";

export type { Overflow } from "./queue.js";

/** The parts of the WebSocket API this client uses (the browser's, Node 22's global, or the `ws` package's). */
export interface WebSocketLike {
  /** Set to `"arraybuffer"` by the client (`"nodebuffer"` where it sticks: the `ws` package). */
  binaryType: string;
  /** The connection state (1 = open). */
  readonly readyState: number;
  /** The subprotocol the server accepted (`""` for none). */
  readonly protocol?: string;
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
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => unknown;

/** Options of {@link Client.connect}. */
export interface ConnectOptions {
  /**
   * The hub's WebSocket URL, e.g. `ws://127.0.0.1:8080/v1/ws`, or a list of
   * them (like a NATS server list): connecting tries them in order; after a
   * lost connection the client tries the URL it was connected to first,
   * then the others in turn, so it finds a hot standby that took over on a
   * different HTTP address and resumes the session there.
   */
  url: string | readonly string[];
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
  /**
   * Offer the stream framing (the `switchboard.stream` subprotocol, default
   * true): the frames written in one event-loop turn leave as one WebSocket
   * message, which is much cheaper than a message each. A hub that does
   * not accept it gets one frame per message, as without the offer.
   */
  streamFraming?: boolean;
  /** How long the connection and handshake may take, ms (default 10,000). */
  connectTimeoutMs?: number;
  /**
   * Default timeout of {@link Client.request}, ms (default 30,000; a whole
   * number from 0, the hub's default of 30 s, to 2^32−1), and of
   * {@link Client.flush}.
   */
  requestTimeoutMs?: number;
  /** Largest frame accepted from the hub after `Welcome`, bytes (default 16 MiB; 64 KiB before). */
  maxFrame?: number;
  /**
   * Capacity of each incoming stream ({@link Client.messages},
   * subscriptions, kv watches, presence), in items (default 8,192); a
   * subscription or watch may set its own.
   */
  bufferSize?: number;
  /**
   * What a full stream does (default `"block"`, as in the Rust client: the
   * connection holds everything behind it, unacknowledged, until the
   * application takes an item; nothing is lost). A subscription or watch
   * may choose `"dropNewest"` or `"dropOldest"` instead: see {@link Overflow}.
   */
  overflow?: Overflow;
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

/** The connection's state: see {@link Client.state}. */
export type ClientState = "connected" | "reconnecting" | "closed";

/** What happened to the connection (see {@link Client.events}). */
export type ClientEvent =
  | { type: "disconnected"; error: SwitchboardError }
  | {
      type: "reconnected";
      /** Whether the hub resumed the session; false: a fresh one (calls waiting for an answer failed with `Disconnected`). */
      resumed: boolean;
      /** The hub's epoch. */
      epoch: bigint;
      /**
       * Numbered frames sent and not acknowledged that a fresh session
       * forgot: their outcome is unknown (the old hub may or may not have
       * handled them; {@link Client.publishNowait} messages among them are
       * not resent). 0 when resumed.
       */
      unknown: number;
    }
  | { type: "dropped"; by: "hub"; count: bigint }
  | { type: "slowConsumer"; subId: bigint; pattern: string; dropped: number; total: number }
  | { type: "closed"; error: SwitchboardError };


/** A stream's own buffer and overflow policy (see {@link ConnectOptions.overflow}). */
export interface StreamOptions {
  /** Capacity in items (default: the client's `bufferSize`). */
  bufferSize?: number;
  /** What a full buffer does (default: the client's `overflow`, itself `"block"` by default). */
  overflow?: Overflow;
}
