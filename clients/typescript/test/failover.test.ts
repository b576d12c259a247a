// A hub failover: the primary is killed with SIGKILL while a hot standby is
// attached, during confirmed publishes from Node and a subscriber in Node.
// The standby takes over the native and the HTTP port; the clients resume
// on it: every message once, in order.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { WebSocket } from "ws";
import { Client, Disconnected, type ClientEvent } from "../src/index.js";
import { BIN, Hub, TOKEN, stopProcess, within } from "./helpers.js";

process.on("unhandledRejection", (e) => {
  throw new Error(`unhandled rejection: ${String(e)}`);
});

/** A free loopback port (bound and released). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** Starts a hub process and resolves with its first JSON line matching `event`. */
function hubProcess(args: string[], dir: string, event: string): Promise<{ proc: ChildProcess; line: Record<string, unknown>; lines: AsyncIterableIterator<string> }> {
  const proc = spawn(BIN, ["--json", "hub", ...args], { env: Hub.env(dir), stdio: ["ignore", "pipe", "inherit"] });
  const rl = createInterface({ input: proc.stdout! });
  const lines = rl[Symbol.asyncIterator]();
  return within(
    (async () => {
      for (;;) {
        const r = await lines.next();
        if (r.done) throw new Error(`the hub exited before its ${event} line`);
        const line = JSON.parse(r.value) as Record<string, unknown>;
        if (line.event === event) return { proc, line, lines };
      }
    })(),
    20_000,
    `hub ${event}`,
  );
}

const N = Number(process.env.SWITCHBOARD_TS_FAILOVER_MESSAGES ?? 20_000);

/**
 * A primary and a hot standby; SIGKILL of the primary during `N` confirmed
 * publishes. The standby serves the primary's HTTP address after the
 * takeover, or (`otherPort`) its own, which the clients know from their URL list.
 */
async function failover(otherPort: boolean): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "sb-ts-failover-"));
  const http = `127.0.0.1:${await freePort()}`;
  const standbyHttp = otherPort ? `127.0.0.1:${await freePort()}` : http;
  const procs: ChildProcess[] = [];
  try {
    const primary = await hubProcess(["--listen", "127.0.0.1:0", "--http", http, "--no-unix"], dir, "ready");
    procs.push(primary.proc);
    const addr = String(primary.line.addr);
    const standby = await hubProcess(["--standby", "--primary", addr, "--http", standbyHttp, "--no-unix"], dir, "standby");
    procs.push(standby.proc);

    const url = `ws://${http}/v1/ws`;
    const standbyUrl = `ws://${standbyHttp}/v1/ws`;
    const opts = { url: otherPort ? [url, standbyUrl] : url, token: TOKEN, WebSocket, connectTimeoutMs: 5_000 };
    const sub = await Client.connect({ ...opts, clientId: "ts-failover-sub" });
    const pub = await Client.connect({ ...opts, clientId: "ts-failover-pub" });
    const s = await sub.subscribe("failover.t");
    const got: number[] = [];
    const reading = (async () => {
      for await (const m of s) {
        got.push(Number(m.text()));
        if (got.length === N) break;
      }
    })();
    let killed = false;
    const batch = 100;
    for (let i = 0; i < N; i += batch) {
      const ps = [];
      for (let j = i; j < Math.min(i + batch, N); j++) ps.push(pub.publish("failover.t", String(j)));
      if (!killed && i >= N / 2) {
        // With this batch written and not yet confirmed.
        primary.proc.kill("SIGKILL");
        killed = true;
      }
      await within(Promise.all(ps), 30_000, `publishes from ${i}`);
    }
    await within(reading, 30_000, "every message");
    assert.equal(got.length, N);
    let inOrder = true;
    for (let i = 0; i < N; i++) if (got[i] !== i) inOrder = false;
    assert.ok(inOrder, "in order, each once");
    assert.ok(sub.reconnects >= 1 && pub.reconnects >= 1, `reconnects: sub ${sub.reconnects}, pub ${pub.reconnects}`);
    assert.ok(sub.epoch >= 2n, `epoch after the takeover: ${sub.epoch}`);
    // Where the clients are now: the standby's address.
    assert.equal(sub.url, standbyUrl);
    assert.equal(pub.url, standbyUrl);
    await sub.close();
    await pub.close();
  } finally {
    for (const p of procs) await stopProcess(p);
    rmSync(dir, { recursive: true, force: true });
  }
}

test(`failover: SIGKILL of the primary during ${N} confirmed publishes, every message once, in order`, { timeout: 120_000 }, async () => {
  await failover(false);
});

test(`failover to a standby on another HTTP address (a URL list): SIGKILL of the primary during ${N} confirmed publishes, every message once, in order`, { timeout: 120_000 }, async () => {
  await failover(true);
});

test("a URL list: connecting skips an address nobody serves", async () => {
  const hub = await Hub.start();
  try {
    const dead = `ws://127.0.0.1:${await freePort()}/v1/ws`;
    const c = await Client.connect({ url: [dead, hub.url], clientId: "ts-urls", token: TOKEN, WebSocket, connectTimeoutMs: 5_000 });
    assert.equal(c.url, hub.url);
    await c.close();
    await assert.rejects(Client.connect({ url: [dead], clientId: "ts-urls-2", token: TOKEN, WebSocket, connectTimeoutMs: 5_000 }), (e: unknown) => e instanceof Error && e.constructor.name === "Disconnected");
  } finally {
    await hub.stop();
  }
});

/**
 * Runs `body` with a hub on a fixed HTTP port that can be killed and
 * started again on the same port and runtime directory: `start` starts one
 * more hub process and returns it. Every process is stopped afterwards.
 */
async function restartable(prefix: string, body: (url: string, start: () => Promise<ChildProcess>) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const http = `127.0.0.1:${await freePort()}`;
  const procs: ChildProcess[] = [];
  const start = async () => {
    const hub = await hubProcess(["--listen", "127.0.0.1:0", "--http", http, "--no-unix"], dir, "ready");
    procs.push(hub.proc);
    return hub.proc;
  };
  try {
    await body(`ws://${http}/v1/ws`, start);
  } finally {
    for (const p of procs) await stopProcess(p);
    rmSync(dir, { recursive: true, force: true });
  }
}

test("a hub restarted without the session: a fresh session, subscriptions and watches sent again, waiting calls failed", { timeout: 60_000 }, async () => {
  await restartable("sb-ts-fresh-", async (url, start) => {
    const first = await start();
    const c = await Client.connect({ url, token: TOKEN, WebSocket, clientId: "ts-fresh", connectTimeoutMs: 5_000 });
    const s = await c.subscribe("fresh.t");
    const w = await c.kvWatch("fresh.key");
    const server = await Client.connect({ url, token: TOKEN, WebSocket, clientId: "ts-fresh-server", reliable: false });
    server.serve(() => new Promise(() => {}));
    const waiting = c.request("ts-fresh-server", "never answered", { timeoutMs: 20_000 }).catch((e: unknown) => e);
    await new Promise((r) => setTimeout(r, 100));
    first.kill("SIGKILL");
    await new Promise((r) => first.once("exit", r));
    await start();
    const outcome = await within(waiting, 10_000, "the waiting request fails");
    assert.ok(outcome instanceof Error && outcome.constructor.name === "Disconnected", String(outcome));
    assert.match((outcome as Error).message, /outcome is unknown/);
    const other = await Client.connect({ url, token: TOKEN, WebSocket, clientId: "ts-fresh-pub" });
    // The subscription and the watch were sent again on the new hub.
    await within(
      (async () => {
        for (;;) {
          await other.publish("fresh.t", "after");
          const clients = await other.listClients();
          if (clients.some((x) => x.clientId === "ts-fresh")) break;
          await new Promise((r) => setTimeout(r, 50));
        }
      })(),
      10_000,
      "the client is back",
    );
    await other.publish("fresh.t", "after");
    const m = await within(s[Symbol.asyncIterator]().next(), 5_000, "delivery on the new hub");
    assert.equal(m.value.text(), "after");
    await other.kvSet("fresh.key", "v");
    const u = await within(w[Symbol.asyncIterator]().next(), 5_000, "watch on the new hub");
    assert.equal(new TextDecoder().decode(u.value.value), "v");
    assert.ok(c.reconnects >= 1);
    await c.close();
    await other.close();
    await server.close();
  });
});

test("flush across a hub restart (a fresh session): rejects with Disconnected saying how many frames have an unknown outcome", { timeout: 60_000 }, async () => {
  await restartable("sb-ts-fresh-flush-", async (url, start) => {
    const first = await start();
    const c = await Client.connect({ url, token: TOKEN, WebSocket, clientId: "ts-fresh-flush", connectTimeoutMs: 5_000 });
    const events: ClientEvent[] = [];
    void (async () => {
      for await (const e of c.events()) events.push(e);
    })();
    first.kill("SIGKILL");
    await new Promise((r) => first.once("exit", r));
    // Sent while the hub is down: numbered and kept, never acknowledged.
    for (let i = 0; i < 10; i++) c.publishNowait("fresh.flush", `lost ${i}`);
    const flushed = c.flush(20_000).then(
      () => undefined,
      (e: unknown) => e,
    );
    await start();
    const outcome = await within(flushed, 15_000, "flush across the restart");
    assert.ok(outcome instanceof Disconnected, String(outcome));
    assert.match(outcome.message, /outcome of 10 sent frames .*unknown/);
    const fresh = events.find((e) => e.type === "reconnected");
    assert.ok(fresh?.type === "reconnected" && !fresh.resumed && fresh.unknown === 10, String(fresh?.type));
    // The client works on the new hub; a new flush resolves.
    c.publishNowait("fresh.flush", "after");
    await within(c.flush(), 5_000, "flush on the new hub");
    await c.close();
  });
});
