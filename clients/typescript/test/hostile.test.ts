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

/** A stub that runs `behaviour` per client frame; `handshake` makes it answer Hello and Auth correctly first. */
async function stub(behaviour: Behaviour, handshake: { hello: boolean; auth: boolean }) {
  const key = await keyFromToken(TOKEN);
  const server = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((r) => server.once("listening", r));
  server.on("connection", (ws) => {
    let phase: "hello" | "auth" | "after" = "hello";
    ws.on("message", async (data: Buffer) => {
      const frame = fromBinary(FrameSchema, new Uint8Array(data));
      if (phase === "hello" && handshake.hello && frame.kind.case === "hello") {
        const hubNonce = nonce();
        const proof = await hubProof(key, frame.kind.value.clientNonce, hubNonce, identity);
        ws.send(encode({ case: "challenge", value: { identity, hubNonce, proof } } as Frame["kind"]));
        phase = "auth";
        return;
      }
      if (phase === "auth" && handshake.auth && frame.kind.case === "auth") {
        ws.send(encode({ case: "welcome", value: { clientId: "victim", epoch: 1n, maxFrame: 1 << 24, keepaliveMs: 30_000 } } as Frame["kind"]));
        phase = "after";
        return;
      }
      behaviour(ws, phase, frame);
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

test("no unhandled rejections", async () => {
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(unhandled, []);
});

void LimitExceeded;
