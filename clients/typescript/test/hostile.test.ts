// A hostile hub stub on loopback: bad bytes give typed errors, never a
// crash or an unhandled rejection.
import { test } from "node:test";
import assert from "node:assert/strict";
import type { AddressInfo } from "node:net";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { WebSocket, WebSocketServer } from "ws";
import { FrameSchema, HubIdentitySchema, type Frame } from "../src/gen/switchboard/v1/switchboard_pb.js";
import { hubProof, keyFromToken, nonce } from "../src/auth.js";
import {
  AuthFailed,
  Client,
  Disconnected,
  HubUnverified,
  LimitExceeded,
  ProtocolError,
  SwitchboardError,
  Timeout,
  type ClientEvent,
} from "../src/index.js";
import { within } from "./helpers.js";

const unhandled: unknown[] = [];
process.on("unhandledRejection", (e) => unhandled.push(e));

const TOKEN = "stub-token";
const identity = create(HubIdentitySchema, { service: "switchboard", instanceId: "stub", pid: 1, port: 1, epoch: 1n });

function encode(kind: Frame["kind"]): Uint8Array {
  return toBinary(FrameSchema, create(FrameSchema, { kind } as never));
}

type Behaviour = (ws: WebSocket, phase: "hello" | "auth" | "after", frame: Frame | undefined) => void;

/** `body` with its 4-byte length prefix (the stream framing). */
function prefixed(body: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length);
  out.set(body, 4);
  return out;
}

/**
 * A stub that runs `behaviour` per client frame; `handshake` makes it
 * answer Hello and Auth correctly first. Without `stream` it refuses the
 * stream framing (one frame per message); with it, it accepts it and sends
 * its handshake frames one byte per message.
 */
async function stub(
  behaviour: Behaviour,
  handshake: { hello: boolean; auth: boolean; stream?: boolean; welcome?: (connection: number) => Record<string, unknown> },
) {
  const key = await keyFromToken(TOKEN);
  const server = new WebSocketServer({
    host: "127.0.0.1",
    port: 0,
    handleProtocols: (offered) => (handshake.stream && offered.has("switchboard.stream") ? "switchboard.stream" : false),
  });
  await new Promise((r) => server.once("listening", r));
  let connections = 0;
  server.on("connection", (ws) => {
    const connection = ++connections;
    let phase: "hello" | "auth" | "after" = "hello";
    let pending = new Uint8Array(0);
    const out = (body: Uint8Array) => {
      if (!handshake.stream) return ws.send(body);
      for (const b of prefixed(body)) ws.send(new Uint8Array([b]));
    };
    const onframe = async (frame: Frame) => {
      if (phase === "hello" && handshake.hello && frame.kind.case === "hello") {
        const hubNonce = nonce();
        const proof = await hubProof(key, frame.kind.value.clientNonce, hubNonce, identity);
        out(encode({ case: "challenge", value: { identity, hubNonce, proof } } as Frame["kind"]));
        phase = "auth";
        return;
      }
      if (phase === "auth" && handshake.auth && frame.kind.case === "auth") {
        const extra = handshake.welcome?.(connection) ?? {};
        out(encode({ case: "welcome", value: { clientId: "victim", epoch: 1n, maxFrame: 1 << 24, keepaliveMs: 30_000, ...extra } } as Frame["kind"]));
        phase = "after";
        return;
      }
      behaviour(ws, phase, frame);
    };
    ws.on("message", async (data: Buffer) => {
      if (!handshake.stream) return onframe(fromBinary(FrameSchema, new Uint8Array(data)));
      const all = new Uint8Array(pending.length + data.length);
      all.set(pending);
      all.set(data, pending.length);
      let at = 0;
      while (all.length - at >= 4) {
        const len = new DataView(all.buffer, at).getUint32(0);
        if (all.length - at - 4 < len) break;
        await onframe(fromBinary(FrameSchema, all.subarray(at + 4, at + 4 + len)));
        at += 4 + len;
      }
      pending = all.slice(at);
    });
  });
  const port = (server.address() as AddressInfo).port;
  return {
    connect: (extra: Record<string, unknown> = {}) =>
      Client.connect({
        url: `ws://127.0.0.1:${port}/v1/ws`,
        clientId: "victim",
        token: TOKEN,
        WebSocket: WebSocket,
        connectTimeoutMs: 2_000,
        ...extra,
      }),
    close: () => new Promise((r) => server.close(r)),
  };
}

const garbage = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x0f, 0x01, 0x02]);

test("garbage bytes instead of a Challenge: ProtocolError", async () => {
  const s = await stub((ws) => ws.send(garbage), { hello: false, auth: false });
  await assert.rejects(within(s.connect(), 5_000, "connect"), ProtocolError);
  await s.close();
});

test("a truncated Challenge: ProtocolError", async () => {
  const s = await stub(
    (ws) => {
      const full = encode({ case: "challenge", value: { identity, hubNonce: nonce(), proof: new Uint8Array(32) } } as Frame["kind"]);
      ws.send(full.slice(0, full.length - 10));
    },
    { hello: false, auth: false },
  );
  await assert.rejects(within(s.connect(), 5_000, "connect"), ProtocolError);
  await s.close();
});

test("an oversized frame before Welcome: LIMIT_EXCEEDED as a ProtocolError", async () => {
  const s = await stub((ws) => ws.send(new Uint8Array(64 * 1024 + 1)), { hello: false, auth: false });
  await assert.rejects(within(s.connect(), 5_000, "connect"), (e: unknown) => e instanceof ProtocolError && e.codeName === "LIMIT_EXCEEDED");
  await s.close();
});

test("a text message: ProtocolError", async () => {
  const s = await stub((ws) => ws.send("hello?"), { hello: false, auth: false });
  await assert.rejects(within(s.connect(), 5_000, "connect"), ProtocolError);
  await s.close();
});

test("a Challenge with a wrong proof: HubUnverified, no Auth sent", async () => {
  let authSeen = false;
  const s = await stub(
    (ws, phase, f) => {
      if (phase === "hello") {
        ws.send(encode({ case: "challenge", value: { identity, hubNonce: nonce(), proof: new Uint8Array(32) } } as Frame["kind"]));
      } else if (f?.kind.case === "auth") authSeen = true;
    },
    { hello: false, auth: false },
  );
  await assert.rejects(within(s.connect(), 5_000, "connect"), HubUnverified);
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(authSeen, false);
  await s.close();
});

test("the hub refuses the Auth: AuthFailed", async () => {
  const s = await stub(
    (ws) => ws.send(encode({ case: "error", value: { id: 0n, code: 3, message: "proof does not verify" } } as Frame["kind"])),
    { hello: true, auth: false },
  );
  await assert.rejects(within(s.connect(), 5_000, "connect"), AuthFailed);
  await s.close();
});

test("a hub that never answers: Timeout within connectTimeoutMs", async () => {
  const s = await stub(() => {}, { hello: false, auth: false });
  const t0 = Date.now();
  await assert.rejects(s.connect({ connectTimeoutMs: 300 }), Timeout);
  assert.ok(Date.now() - t0 < 2_000);
  await s.close();
});

test("nothing listening: Disconnected", async () => {
  const s = await stub(() => {}, { hello: false, auth: false });
  const url = "ws://127.0.0.1:1/v1/ws";
  await assert.rejects(
    Client.connect({ url, clientId: "x", token: TOKEN, WebSocket: WebSocket, connectTimeoutMs: 2_000 }),
    Disconnected,
  );
  await s.close();
});

for (const [name, bad, check] of [
  ["garbage", (ws: WebSocket) => ws.send(garbage), (e: unknown) => e instanceof Disconnected && e.cause instanceof ProtocolError],
  ["an oversized frame", (ws: WebSocket) => ws.send(new Uint8Array(1024 + 1)), (e: unknown) => e instanceof Disconnected && e.cause instanceof ProtocolError],
  ["a truncated frame", (ws: WebSocket) => ws.send(encode({ case: "ok", value: { id: 1n } } as Frame["kind"]).slice(0, 3)), (e: unknown) => e instanceof Disconnected && e.cause instanceof ProtocolError],
  ["a close", (ws: WebSocket) => ws.close(), (e: unknown) => e instanceof Disconnected],
] as const) {
  test(`after Welcome, ${name} fails the call in flight with a typed error and closes`, async () => {
    const s = await stub((ws, phase) => phase === "after" && bad(ws), { hello: true, auth: true });
    const c = await within(s.connect({ maxFrame: 1024 }), 5_000, "connect");
    await assert.rejects(within(c.kvGet("k"), 5_000, "kvGet"), check);
    const reason = await c.closed;
    assert.ok(reason instanceof SwitchboardError);
    assert.equal(c.isOpen, false);
    await assert.rejects(c.publish("a", "b"), SwitchboardError);
    await c.close();
    await s.close();
  });
}

test("stream framing: a Challenge and a Welcome split one byte per message connect", async () => {
  const s = await stub(() => {}, { hello: true, auth: true, stream: true });
  const c = await within(s.connect(), 5_000, "connect");
  assert.equal(c.isOpen, true);
  await c.close();
  await s.close();
});

for (const [name, bad, code] of [
  ["a length over maxFrame", (ws: WebSocket) => ws.send(prefixed(new Uint8Array(1025)).subarray(0, 4)), "LIMIT_EXCEEDED"],
  ["garbage", (ws: WebSocket) => ws.send(prefixed(garbage)), "BAD_FRAME"],
  ["a text message", (ws: WebSocket) => ws.send("hello?"), "BAD_FRAME"],
] as const) {
  test(`stream framing: after Welcome, ${name} fails the call in flight with a typed error`, async () => {
    const s = await stub((ws, phase) => phase === "after" && bad(ws), { hello: true, auth: true, stream: true });
    const c = await within(s.connect({ maxFrame: 1024 }), 5_000, "connect");
    await assert.rejects(
      within(c.kvGet("k"), 5_000, "kvGet"),
      (e: unknown) => e instanceof Disconnected && e.cause instanceof ProtocolError && e.cause.codeName === code,
    );
    assert.ok((await c.closed) instanceof SwitchboardError);
    await c.close();
    await s.close();
  });
}

test("a Flow held behind a full stream is told (a dropped event) when the connection is resumed", async () => {
  const s = await stub(
    (ws, phase, frame) => {
      if (phase !== "after" || frame?.kind.case !== "subscribe") return;
      const { id, subId } = frame.kind.value;
      // One message: the answer, three deliveries for a stream of two, then a Flow; then the connection drops.
      const frames = [
        toBinary(FrameSchema, create(FrameSchema, { seq: 1n, kind: { case: "ok", value: { id } } } as never)),
        ...[2n, 3n, 4n].map((seq) =>
          toBinary(FrameSchema, create(FrameSchema, { seq, kind: { case: "deliver", value: { subId, topic: "held.t", payload: new Uint8Array([Number(seq)]) } } } as never)),
        ),
        encode({ case: "flow", value: { dropped: 42n, queueDepth: 0n } } as Frame["kind"]),
      ];
      const parts = frames.map(prefixed);
      const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const p of parts) {
        all.set(p, at);
        at += p.length;
      }
      ws.send(all, () => setTimeout(() => ws.terminate(), 50));
    },
    {
      hello: true,
      auth: true,
      stream: true,
      welcome: (n) => ({ features: n === 1 ? ["reliable"] : ["reliable", "resumed"], lastReceived: 0n }),
    },
  );
  const c = await within(s.connect({ bufferSize: 2 }), 5_000, "connect");
  try {
    const events = c.events()[Symbol.asyncIterator]();
    await within(c.subscribe("held.t"), 5_000, "subscribe");
    const seen: string[] = [];
    for (;;) {
      const e = (await within(events.next(), 10_000, `events after ${seen.join(", ")}`)).value as ClientEvent;
      seen.push(e.type === "dropped" ? `dropped ${e.count}` : e.type);
      if (e.type === "dropped" || e.type === "closed") break;
    }
    assert.deepEqual(seen, ["disconnected", "dropped 42"]);
  } finally {
    await c.close();
    await s.close();
  }
});

test("no unhandled rejections", async () => {
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(unhandled, []);
});

void LimitExceeded;
