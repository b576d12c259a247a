// The handshake's keys and proofs against docs/PROTOCOL.md's test vector,
// and the encoding of frames against the vector's bytes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { create, toBinary } from "@bufbuild/protobuf";
import { FrameSchema, HubIdentitySchema, Role } from "../src/gen/switchboard/v1/switchboard_pb.js";
import { clientProof, clientProofInput, fromHex, hubProof, hubProofInput, httpToken, keyFromToken, keyId, toHex } from "../src/auth.js";

// The protocol document, read so the test follows it if it changes.
const doc = readFileSync(new URL("../../../../docs/PROTOCOL.md", import.meta.url), "utf8");

function table(label: string): string {
  const row = doc.split("\n").find((l) => l.startsWith(`| ${label} |`));
  assert.ok(row, `PROTOCOL.md test vector row "${label}"`);
  const m = /`([0-9a-f]+)`/.exec(row.slice(label.length + 3));
  assert.ok(m, `hex value in row "${label}"`);
  return m[1]!;
}

/** The hex bytes of a `<!-- vector: NAME -->` listing (each line's hex before two spaces). */
function listing(name: string, dropPrefix: boolean): string {
  const start = doc.indexOf(`<!-- vector: ${name} -->`);
  assert.ok(start >= 0, `vector ${name}`);
  const from = doc.indexOf("```text\n", start) + 8;
  const body = doc.slice(from, doc.indexOf("\n```", from));
  const lines = body.split("\n").map((l) => l.split("  ")[0]!.replace(/\s+/g, ""));
  return (dropPrefix ? lines.slice(1) : lines).join("");
}

const identity = create(HubIdentitySchema, {
  service: "switchboard",
  instanceId: "0123456789abcdef",
  pid: 4242,
  port: 53211,
  epoch: 1n,
  startedAtMs: 1700000000000n,
  role: Role.PRIMARY,
});
const clientNonce = fromHex("000102030405060708090a0b0c0d0e0f");
const hubNonce = fromHex("101112131415161718191a1b1c1d1e1f");

test("key, key id and proofs match the test vector", async () => {
  const key = await keyFromToken("correct horse battery staple");
  assert.equal(toHex(key), table("key = SHA-256(token)"));
  assert.equal(toHex(await keyId(key)), table('key id = SHA-256("switchboard key id" \\|\\| key)[..8]'));
  assert.equal(toHex(hubProofInput(clientNonce, hubNonce, identity)), listing("hub-proof-input", false));
  assert.equal(toHex(await hubProof(key, clientNonce, hubNonce, identity)), table("hub proof"));
  assert.equal(toHex(clientProofInput(hubNonce, clientNonce, "worker-1")), listing("client-proof-input", false));
  assert.equal(toHex(await clientProof(key, hubNonce, clientNonce, "worker-1")), table("client proof, client id `worker-1`"));
  assert.equal(await httpToken(key), table("HTTP bearer token"));
});

test("Hello and Publish encode to the vector's bytes (WebSocket: no length prefix)", () => {
  const hello = create(FrameSchema, {
    kind: {
      case: "hello",
      value: { protocolVersion: 1, features: ["reliable", "listen"], clientId: "worker-1", clientNonce, agent: "example/1.0" },
    },
  });
  assert.equal(toHex(toBinary(FrameSchema, hello)), listing("hello", true));
  const publish = create(FrameSchema, {
    seq: 5n,
    acked: 3n,
    kind: { case: "publish", value: { id: 7n, topic: "orders.eu", payload: new TextEncoder().encode("hi") } },
  });
  assert.equal(toHex(toBinary(FrameSchema, publish)), listing("publish", true));
});

test("an empty token is refused", async () => {
  await assert.rejects(keyFromToken(""), /empty/);
});
