/**
 * The handshake (docs/PROTOCOL.md, "Handshake"): open a WebSocket, send
 * `Hello`, verify the hub's proof in its `Challenge` before proving the key
 * with `Auth`, and wait for `Welcome`.
 *
 * @module
 */

import { create, toBinary } from "@bufbuild/protobuf";
import { ErrorCode, FrameSchema, type Frame, type Welcome } from "./gen/switchboard/v1/switchboard_pb.js";
import { clientProof, constantTimeEqual, hubProof, nonce } from "./auth.js";
import { Disconnected, Fenced, HubUnverified, ProtocolError, SwitchboardError, Timeout, errorFromCode } from "./errors.js";
import { DEFAULT_MAX_FRAME, PRE_WELCOME_MAX, STREAM_PROTOCOL, Wire, decodeFrame, type FrameKind } from "./frames.js";
import type { ConnectOptions, WebSocketConstructor, WebSocketLike } from "./options.js";

/** What a finished handshake hands over. @internal */
export interface Handshaken {
  /** The open socket, past the handshake. */
  ws: WebSocketLike;
  /** The socket's framing (its stream state continues past the `Welcome`). */
  wire: Wire;
  /** The hub's `Welcome`. */
  welcome: Welcome;
  /**
   * Frames that arrived right behind the `Welcome` (in its message, or
   * before the caller took the socket over; filled until then), or the
   * error that splitting them met.
   */
  early: unknown[];
}

/** What {@link handshake} needs. @internal */
export interface HandshakeParams {
  /** The connect options (client id, reliable, listen, agent, timeouts, WebSocket). */
  opts: ConnectOptions;
  /** The URL to connect to. */
  url: string;
  /** The 32-byte key. */
  key: Uint8Array;
  /** The key's id. */
  kid: Uint8Array;
  /** The highest hub epoch seen: a hub below it is refused ({@link Fenced}). */
  epoch: bigint;
  /** The session to resume, if any. */
  resume: { lastReceived: bigint; epoch: bigint } | undefined;
}

/**
 * Opens a socket and runs the handshake on it; resolves with the socket and
 * the `Welcome`. @internal
 */
export async function handshake(p: HandshakeParams): Promise<Handshaken> {
  const offer = p.opts.streamFraming ?? true;
  try {
    return await attempt(p, offer);
  } catch (e) {
    // The `ws` package refuses a server that accepts none of the offered
    // subprotocols (browsers and Node 22's WebSocket go on without one):
    // a hub without the stream framing is asked again without the offer.
    if (offer && e instanceof NoSubprotocol) return attempt(p, false);
    throw e;
  }
}

/** The server accepted none of the offered subprotocols and the socket refused that. */
class NoSubprotocol extends Disconnected {}

async function attempt(p: HandshakeParams, offer: boolean): Promise<Handshaken> {
  const o = p.opts;
  const { key, kid, resume } = p;
  const WS = o.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (!WS) {
    throw new SwitchboardError(
      "no WebSocket implementation: pass the `WebSocket` option (in Node 20: `import { WebSocket } from \"ws\"`)",
    );
  }
  const clientNonce = nonce();
  const timeoutMs = o.connectTimeoutMs ?? 10_000;

  const early: unknown[] = [];
  let welcomed = false;
  return new Promise<Handshaken>((resolve, reject) => {
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
      () => fail(new Timeout(`no Welcome from ${p.url} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    try {
      ws = (offer ? new WS(p.url, [STREAM_PROTOCOL]) : new WS(p.url)) as WebSocketLike;
    } catch (e) {
      clearTimeout(timer);
      reject(new Disconnected(`cannot open ${p.url}: ${String(e)}`, undefined, { cause: e }));
      return;
    }
    // The `ws` package hands binary messages over as Node Buffers without a
    // copy; elsewhere (browsers, Node 22's WebSocket) the value is ignored
    // and an ArrayBuffer is asked for.
    ws.binaryType = "nodebuffer";
    if (ws.binaryType !== "nodebuffer") ws.binaryType = "arraybuffer";
    // The framing is known once the socket is open (the accepted subprotocol).
    let wire: Wire | undefined;
    const send = (kind: Frame["kind"] | { case: FrameKind; value: object }) =>
      wire!.send(toBinary(FrameSchema, create(FrameSchema, { kind } as never)));
    let noSubprotocol = false;
    ws.onerror = (ev) => {
      // The `ws` package's words when the server selected no subprotocol.
      noSubprotocol = /no subprotocol/i.test(String((ev as { message?: unknown })?.message ?? ""));
      // The close event follows with the details.
    };
    ws.onclose = (ev) =>
      fail(
        new (noSubprotocol && phase === "open" ? NoSubprotocol : Disconnected)(
          `the connection to ${p.url} closed during the handshake (code ${ev?.code ?? "?"})`,
        ),
      );
    ws.onopen = () => {
      wire = new Wire(ws);
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
      if (phase === "done" && !welcomed) return;
      try {
        wire!.receive(ev.data, onframe);
      } catch (e) {
        // Frames right behind the Welcome (the `ws` package can deliver
        // them before the connection is attached) keep the error for the
        // caller, in order.
        if (phase === "done") early.push(e);
        else fail(e as SwitchboardError);
      }
    };
    const onframe = (data: unknown) => {
      if (phase === "done") {
        if (welcomed) early.push(data);
        return;
      }
      let f: Frame;
      try {
        f = decodeFrame(data, PRE_WELCOME_MAX);
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
            if ((ch.identity?.epoch ?? 0n) < p.epoch) {
              return fail(
                new Fenced(`the hub at ${p.url} has epoch ${ch.identity?.epoch ?? 0n}, below epoch ${p.epoch} already seen: an old primary`, ErrorCode.FENCED),
              );
            }
            if (!constantTimeEqual(expected, ch.proof)) {
              return fail(
                new HubUnverified(
                  `the hub at ${p.url} could not prove the key: wrong token, or not the hub you meant; nothing was sent to it`,
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
        welcomed = true;
        wire!.max = o.maxFrame ?? DEFAULT_MAX_FRAME;
        resolve({ ws, wire: wire!, welcome: k.value, early });
        return;
      }
      fail(new ProtocolError(`unexpected ${k.case ?? "frame without a kind"} during the handshake`, ErrorCode.BAD_FRAME));
    };
  });
}
