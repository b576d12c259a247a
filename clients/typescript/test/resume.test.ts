// Reliable delivery across lost connections: the client resumes its session
// on the same hub, nothing acknowledged is lost, nothing arrives twice.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { ErrorCode, InvalidArgument, type Client } from "../src/index.js";
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

/** The client's internals a test may look at. */
function internals(c: Client): { pending: Map<bigint, unknown>; rel: { outSeq: bigint; retained: unknown[] }; paused: boolean } {
  return c as unknown as { pending: Map<bigint, unknown>; rel: { outSeq: bigint; retained: unknown[] }; paused: boolean };
}

test("a request timeout the protocol cannot carry is an InvalidArgument before anything is sent; flush and a resume still work", async () => {
  const c = await hub.connect("ts-bad-timeout");
  const seq = internals(c).rel.outSeq;
  for (const bad of [1.5, -1, NaN, Infinity, 2 ** 32, 2 ** 53]) {
    await assert.rejects(
      c.request("ts-bad-timeout", "x", { timeoutMs: bad }),
      (e: unknown) => e instanceof InvalidArgument && e.code === ErrorCode.INVALID_ARGUMENT && /timeoutMs/.test(e.message),
      `timeoutMs ${bad}`,
    );
  }
  await assert.rejects(c.kvSet("bad.version", "v", { expectVersion: -1n }), InvalidArgument);
  await assert.rejects(c.kvDelete("bad.version", { expectVersion: 2n ** 64n }), InvalidArgument);
  // Nothing was numbered or kept, nothing waits.
  assert.equal(internals(c).rel.outSeq, seq);
  assert.equal(internals(c).pending.size, 0);
  await within(c.flush(), 5_000, "flush after bad timeouts");
  // A dropped connection resumes, and what was sent meanwhile goes through.
  const events = c.events()[Symbol.asyncIterator]();
  drop(c);
  const sent = c.kvSet("bad.after", "v");
  assert.deepEqual((await within(events.next(), 5_000, "disconnected")).value?.type, "disconnected");
  const e = (await within(events.next(), 10_000, "reconnected")).value;
  assert.ok(e?.type === "reconnected" && e.resumed, JSON.stringify(e, (_, v) => (typeof v === "bigint" ? String(v) : v)));
  assert.ok((await within(sent, 10_000, "kvSet after the resume")) > 0n);
  await within(c.flush(), 5_000, "flush after the resume");
  assert.equal(c.state, "connected");
  await c.close();
});

test("timeoutMs 0 waits for the hub's default (30 s), not 250 ms; a timeout above setTimeout's limit does not fire early", async () => {
  const server = await hub.connect("ts-zero-server");
  server.serve((req) => new Promise((r) => setTimeout(() => r(`late ${req.text()}`), 700)));
  const c = await hub.connect("ts-zero-requester");
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(`${w.name}: ${w.message}`);
  process.on("warning", onWarning);
  try {
    assert.equal((await within(c.request("ts-zero-server", "zero", { timeoutMs: 0 }), 5_000, "timeoutMs 0")).text(), "late zero");
    assert.equal((await within(c.request("ts-zero-server", "huge", { timeoutMs: 2 ** 32 - 1 }), 5_000, "timeoutMs 2^32-1")).text(), "late huge");
    const d = await hub.connect("ts-zero-default", { requestTimeoutMs: 0 });
    assert.equal((await within(d.request("ts-zero-server", "default"), 5_000, "requestTimeoutMs 0")).text(), "late default");
    await d.close();
    // Warnings are emitted on a later turn.
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(warnings, []);
  } finally {
    process.off("warning", onWarning);
  }
  assert.equal(internals(c).pending.size, 0);
  await c.close();
  await server.close();
});

test("an AbortSignal abandons a request: it rejects at once with the reason, the hub gets Cancel, a late reply is ignored", async () => {
  const server = await hub.connect("ts-abort-server");
  let replied!: () => void;
  const late = new Promise<void>((r) => (replied = r));
  let abandoned = false;
  server.serve(async (req) => {
    await new Promise((r) => setTimeout(r, 500));
    if (req.text() === "slow") setImmediate(replied);
    return `reply ${req.text()}`;
  });
  const c = await hub.connect("ts-abort-requester");
  const ac = new AbortController();
  const call = c.request("ts-abort-server", "slow", { timeoutMs: 10_000, signal: ac.signal });
  setTimeout(() => ac.abort(), 50);
  await assert.rejects(within(call, 400, "the aborted request"), (e: unknown) => {
    abandoned = true;
    return e instanceof Error && e.name === "AbortError" && e === ac.signal.reason;
  });
  assert.equal(abandoned, true);
  assert.equal(internals(c).pending.size, 0);
  // The Cancel went before this read: the hub holds no request any more, while the server still works on it.
  assert.equal((await within(c.status(), 5_000, "status")).pendingRequests, 0n);
  // The reply comes after the abort and is ignored; the client keeps working.
  await within(late, 5_000, "the server's late reply");
  await within(c.flush(), 5_000, "flush after the late reply");
  assert.equal((await within(c.request("ts-abort-server", "next", { timeoutMs: 5_000 }), 5_000, "next")).text(), "reply next");
  // Its own reason, and a signal aborted already: rejected before anything is sent.
  const reason = new Error("changed my mind");
  const seq = internals(c).rel.outSeq;
  await assert.rejects(c.request("ts-abort-server", "never", { signal: AbortSignal.abort(reason) }), (e: unknown) => e === reason);
  assert.equal(internals(c).rel.outSeq, seq);
  assert.equal(internals(c).pending.size, 0);
  assert.equal(c.state, "connected");
  await c.close();
  await server.close();
});

test("a full stream holding the socket paused is not taken for a silent hub by the keepalive", async () => {
  // Keepalive 300 ms: the client pings every 150 ms and gives up on a hub silent for 450 ms.
  const quick = await Hub.start("[hub]\nkeepalive_ms = 300\n");
  try {
    const sub = await quick.connect("ts-paused-sub", { bufferSize: 4 });
    const pub = await quick.connect("ts-paused-pub");
    const seen: string[] = [];
    void (async () => {
      for await (const e of sub.events()) seen.push(e.type);
    })();
    const s = await sub.subscribe("paused.t");
    for (let i = 0; i < 50; i++) await pub.publish("paused.t", String(i));
    await within(
      (async () => {
        while (!internals(sub).paused) await new Promise((r) => setTimeout(r, 5));
      })(),
      5_000,
      "the subscriber pauses its socket",
    );
    // More than three times the silence the keepalive allows, paused all along.
    await new Promise((r) => setTimeout(r, 1_500));
    assert.equal(internals(sub).paused, true);
    assert.deepEqual(seen, []);
    assert.equal(sub.reconnects, 0);
    const got: string[] = [];
    for await (const m of s) {
      got.push(m.text());
      if (got.length === 50) break;
    }
    assert.deepEqual(got, Array.from({ length: 50 }, (_, i) => String(i)));
    assert.equal(sub.state, "connected");
    await sub.close();
    await pub.close();
  } finally {
    await quick.stop();
  }
});
