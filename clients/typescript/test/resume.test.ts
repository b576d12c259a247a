// Reliable delivery across lost connections: the client resumes its session
// on the same hub, nothing acknowledged is lost, nothing arrives twice.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import type { Client } from "../src/index.js";
import { Hub, within } from "./helpers.js";

process.on("unhandledRejection", (e) => {
  throw new Error(`unhandled rejection: ${String(e)}`);
});

let hub: Hub;
before(async () => {
  hub = await Hub.start();
});
after(async () => {
  await hub.stop();
});

/** Cuts the client's socket without a Goodbye, as a network failure would. */
function drop(c: Client): void {
  const ws = (c as unknown as { ws: { terminate?: () => void; close: () => void } }).ws;
  if (ws.terminate) ws.terminate();
  else ws.close();
}

test("pub/sub through repeated connection losses on both sides: every message once, in order", async () => {
  const sub = await hub.connect("ts-resume-sub");
  const pub = await hub.connect("ts-resume-pub");
  const s = await sub.subscribe("resume.t");
  const N = 3000;
  const got: number[] = [];
  const reading = (async () => {
    for await (const m of s) {
      got.push(Number(m.text()));
      if (got.length === N) break;
    }
  })();
  const dropSub = setInterval(() => drop(sub), 120);
  const dropPub = setInterval(() => drop(pub), 170);
  try {
    for (let i = 0; i < N; i += 50) {
      const batch = [];
      for (let j = i; j < Math.min(i + 50, N); j++) batch.push(pub.publish("resume.t", String(j)));
      await within(Promise.all(batch), 15_000, `publishes from ${i}`).catch((e) => {
        const st = (c: Client) => { const x = c as unknown as Record<string, unknown>; return JSON.stringify({ open: c.isOpen, connected: x.connected, reconnects: c.reconnects, retained: (x.retained as unknown[]).length, pending: (x.pending as Map<unknown, unknown>).size, lastReceived: String(x.lastReceived), outSeq: String(x.outSeq) }); };
        throw new Error(`${String(e)} pub ${st(pub)} sub ${st(sub)}`);
      });
      // Paced, so the run spans drops of both sides however fast the client is.
      await new Promise((r) => setTimeout(r, 8));
    }
  } finally {
    clearInterval(dropPub);
  }
  await within(reading, 15_000, "all messages");
  clearInterval(dropSub);
  assert.equal(got.length, N);
  assert.deepEqual(got, Array.from({ length: N }, (_, i) => i));
  assert.ok(sub.reconnects > 0 && pub.reconnects > 0, `reconnects: sub ${sub.reconnects}, pub ${pub.reconnects}`);
  await sub.close();
  await pub.close();
});

test("a request in flight survives the requester's and the server's lost connections", async () => {
  const server = await hub.connect("ts-resume-server");
  server.serve((req) => new Promise((r) => setTimeout(() => r(`done ${req.text()}`), 300)));
  const c = await hub.connect("ts-resume-requester");
  const reply = c.request("ts-resume-server", "job", { timeoutMs: 5_000 });
  setTimeout(() => drop(c), 50);
  setTimeout(() => drop(server), 100);
  assert.equal((await within(reply, 6_000, "reply")).text(), "done job");
  assert.ok(c.reconnects >= 1);
  await c.close();
  await server.close();
});

test("state and events: disconnected, reconnected (resumed), closed", async () => {
  const c = await hub.connect("ts-events");
  assert.equal(c.state, "connected");
  const seen: string[] = [];
  const reading = (async () => {
    for await (const e of c.events()) {
      seen.push(e.type === "reconnected" ? `reconnected resumed=${e.resumed}` : e.type);
    }
  })();
  drop(c);
  const states = new Set<string>();
  await within(
    (async () => {
      while (!seen.includes("reconnected resumed=true")) {
        states.add(c.state);
        await new Promise((r) => setTimeout(r, 1));
      }
    })(),
    5_000,
    "reconnect",
  );
  assert.ok(states.has("reconnecting"), [...states].join());
  assert.equal(c.state, "connected");
  await c.kvSet("events.k", "v");
  await c.close();
  assert.equal(c.state, "closed");
  await within(reading, 5_000, "events end");
  assert.deepEqual(seen, ["disconnected", "reconnected resumed=true", "closed"]);
});
