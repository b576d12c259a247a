/**
 * Keys and proofs of the switchboard handshake (docs/PROTOCOL.md, "The
 * secret", "Key ids" and "Proofs"), computed with WebCrypto
 * (`crypto.subtle`), so the same code runs in browsers and in Node ≥ 20.
 *
 * @module
 */

import type { HubIdentity } from "./gen/switchboard/v1/switchboard_pb.js";

const encoder = new TextEncoder();

function subtle(): SubtleCrypto {
  const c = globalThis.crypto;
  if (!c?.subtle) {
    throw new Error(
      "WebCrypto (globalThis.crypto.subtle) is not available: use Node >= 20 or a browser in a secure context (https or localhost)",
    );
  }
  return c.subtle;
}

/** Concatenates byte arrays. */
export function concat(parts: readonly Uint8Array[]): Uint8Array {
  let len = 0;
  for (const p of parts) len += p.length;
  const out = new Uint8Array(len);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function u32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n >>> 0, false);
  return b;
}

function u64(n: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, n), false);
  return b;
}

/** `lp(x)`: `x`'s length as a big-endian u32, then `x`'s bytes (strings as UTF-8). */
export function lp(x: Uint8Array | string): Uint8Array {
  const bytes = typeof x === "string" ? encoder.encode(x) : x;
  return concat([u32(bytes.length), bytes]);
}

async function sha256(data: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await subtle().digest("SHA-256", data as BufferSource));
}

async function hmac(key: Uint8Array, data: Uint8Array): Promise<Uint8Array> {
  const k = await subtle().importKey(
    "raw",
    key as BufferSource,
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  return new Uint8Array(await subtle().sign("HMAC", k, data as BufferSource));
}

/** The 32-byte key for a shared token: `SHA-256(UTF-8 bytes of the token)`. */
export async function keyFromToken(token: string): Promise<Uint8Array> {
  if (token.length === 0) throw new Error("the token is empty");
  return sha256(encoder.encode(token));
}

/** The key id sent in `Hello.key_id`: the first 8 bytes of `SHA-256("switchboard key id" || key)`. */
export async function keyId(key: Uint8Array): Promise<Uint8Array> {
  const digest = await sha256(concat([encoder.encode("switchboard key id"), key]));
  return digest.slice(0, 8);
}

/** The bytes the hub proof's HMAC runs over. */
export function hubProofInput(
  clientNonce: Uint8Array,
  hubNonce: Uint8Array,
  identity: HubIdentity | undefined,
): Uint8Array {
  return concat([
    lp("switchboard/v1/hub-proof"),
    lp(clientNonce),
    lp(hubNonce),
    lp(identity?.service ?? ""),
    lp(identity?.instanceId ?? ""),
    u32(identity?.pid ?? 0),
    u32(identity?.port ?? 0),
    u64(identity?.epoch ?? 0n),
    u64(identity?.startedAtMs ?? 0n),
    u32(identity?.role ?? 0),
  ]);
}

/** The hub's proof of the key over the client's nonce, its own nonce and its identity. */
export async function hubProof(
  key: Uint8Array,
  clientNonce: Uint8Array,
  hubNonce: Uint8Array,
  identity: HubIdentity | undefined,
): Promise<Uint8Array> {
  return hmac(key, hubProofInput(clientNonce, hubNonce, identity));
}

/** The bytes the client proof's HMAC runs over. */
export function clientProofInput(
  hubNonce: Uint8Array,
  clientNonce: Uint8Array,
  clientId: string,
): Uint8Array {
  return concat([
    lp("switchboard/v1/client-proof"),
    lp(hubNonce),
    lp(clientNonce),
    lp(clientId),
  ]);
}

/** The client's proof of the key, sent in `Auth.proof`. */
export async function clientProof(
  key: Uint8Array,
  hubNonce: Uint8Array,
  clientNonce: Uint8Array,
  clientId: string,
): Promise<Uint8Array> {
  return hmac(key, clientProofInput(hubNonce, clientNonce, clientId));
}

/** The HTTP gateway's bearer token for a key: 64 lower-case hex digits. */
export async function httpToken(key: Uint8Array): Promise<string> {
  const proof = await clientProof(key, encoder.encode("switchboard/v1/http-token"), new Uint8Array(0), "http");
  return toHex(proof);
}

/** Compares two byte arrays in time that does not depend on where they differ. */
export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

/** 16 fresh random bytes, for a nonce. */
export function nonce(): Uint8Array {
  const n = new Uint8Array(16);
  globalThis.crypto.getRandomValues(n);
  return n;
}

/** Lower-case hex of bytes. */
export function toHex(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return s;
}

/** Bytes of a hex string (whitespace ignored). */
export function fromHex(hex: string): Uint8Array {
  const clean = hex.replace(/\s+/g, "");
  if (clean.length % 2 !== 0 || /[^0-9a-fA-F]/.test(clean)) throw new Error(`not hex: ${hex}`);
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}
