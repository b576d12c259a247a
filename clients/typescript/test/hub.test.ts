// Every call of the client against a real hub process, and interop with
// the CLI (a Rust client) in both directions.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import {
  AuthFailed,
  Disconnected,
  HubUnverified,
  InvalidArgument,
  NoResponders,
  NoSuchClient,
  NotFound,
  NotListening,
  Unsupported,
  RemoteError,
  Timeout,
  VersionMismatch,
  type Client,
} from "../src/index.js";
import { Hub, TOKEN, stopProcess, within } from "./helpers.js";

process.on("unhandledRejection", (e) => {
  throw new Error(`unhandled rejection: ${String(e)}`);
});

let hub: Hub;
const clients: Client[] = [];
async function connect(id: string): Promise<Client> {
  const c = await hub.connect(id);
  clients.push(c);
  return c;
}

before(async () => {
  hub = await Hub.start();
});
after(async () => {
  for (const c of clients) await c.close();
  await hub.stop();
});

test("handshake: registered under the id, the hub's identity known", async () => {
  const c = await connect("ts-hello");
  assert.equal(c.clientId, "ts-hello");
  assert.equal(c.hub?.service, "switchboard");
  assert.ok(c.epoch >= 1n);
  // The identity names the native port, not the HTTP port dialled.
  assert.equal(c.hub?.port, Number(hub.addr.split(":").pop()));
  assert.ok(c.isOpen);
});

test("a wrong token: the hub cannot prove the key, nothing is sent", async () => {
  await assert.rejects(hub.connect("ts-wrong", { token: "not the token" }), HubUnverified);
});

test("a key the hub does not know under the right key id is refused by the hub", async () => {
  // 32 zero bytes: the hub does not know its id, uses its own key, and its
  // proof then does not verify for us either.
  await assert.rejects(hub.connect("ts-zero", { key: new Uint8Array(32) }), (e: unknown) => e instanceof HubUnverified || e instanceof AuthFailed);
});

test("request/reply between two TypeScript clients, headers and method carried", async () => {
  const server = await connect("ts-server");
  server.serve((req) => {
    const h = req.headers.find(([k]) => k === "trace")?.[1];
    return `${req.method}:${req.text()}:${new TextDecoder().decode(h)}:${req.from}`;
  });
  const client = await connect("ts-requester");
  const reply = await client.request("ts-server", "ping", { method: "echo", headers: { trace: "t-1" } });
  assert.equal(reply.text(), "echo:ping:t-1:ts-requester");
  assert.equal(reply.from, "ts-server");
});

test("request errors are typed: no such client, remote error, timeout", async () => {
  const c = await connect("ts-req-errors");
  await assert.rejects(c.request("nobody-here", "x"), NoSuchClient);
  const failing = await connect("ts-failing");
  failing.serve(() => {
    throw new Error("cannot do that");
  });
  await assert.rejects(c.request("ts-failing", "x"), (e: unknown) => e instanceof RemoteError && e.message === "cannot do that" && e.from === "ts-failing");
  const slow = await connect("ts-slow");
  slow.serve(() => new Promise((r) => setTimeout(() => r("late"), 3_000)));
  const t0 = Date.now();
  await assert.rejects(c.request("ts-slow", "x", { timeoutMs: 300 }), Timeout);
  // Before the answer would have come (generous: a loaded machine may be late).
  assert.ok(Date.now() - t0 < 2_500, "the timeout fired before the late answer");
  const silent = await connect("ts-not-serving");
  await assert.rejects(c.request("ts-not-serving", "x"), RemoteError);
  void silent;
});

test("service requests are spread over responders; no responders is typed", async () => {
  const a = await connect("ts-svc-a");
  const b = await connect("ts-svc-b");
  await a.serveService("calc.*", () => "a");
  const stopB = await b.serveService("calc.*", () => "b");
  const c = await connect("ts-svc-user");
  const seen = new Set<string>();
  for (let i = 0; i < 4; i++) seen.add((await c.requestService("calc.add", "1")).text());
  assert.deepEqual([...seen].sort(), ["a", "b"]);
  await stopB();
  await assert.rejects(c.requestService("nothing.here", "x"), NoResponders);
});

test("direct and broadcast messages arrive on messages()", async () => {
  const rx = await connect("ts-rx");
  const tx = await connect("ts-tx");
  await tx.send("ts-rx", "one", [["k", "v"]]);
  await tx.broadcast("everyone");
  const it = rx.messages()[Symbol.asyncIterator]();
  const m1 = (await within(it.next(), 5_000, "direct")).value;
  assert.equal(m1.kind, "direct");
  assert.equal(m1.text(), "one");
  assert.equal(m1.from, "ts-tx");
  assert.deepEqual(m1.headers.map(([k, v]: [string, Uint8Array]) => [k, new TextDecoder().decode(v)]), [["k", "v"]]);
  // Other clients of earlier tests get the broadcast too; ours is the next message here.
  const m2 = (await within(it.next(), 5_000, "broadcast")).value;
  assert.equal(m2.kind, "broadcast");
  assert.equal(m2.text(), "everyone");
  await assert.rejects(tx.send("nobody-here", "x"), NoSuchClient);
});

test("listen: refused with NOT_LISTENING until the client opts in", async () => {
  const shy = await hub.connect("ts-shy", { listen: true });
  clients.push(shy);
  const tx = await connect("ts-to-shy");
  await assert.rejects(tx.send("ts-shy", "too early"), NotListening);
  await assert.rejects(tx.request("ts-shy", "too early"), NotListening);
  shy.serve(() => "now");
  await shy.listen({ messages: true, requests: true });
  await tx.send("ts-shy", "welcome");
  const m = await within(shy.messages()[Symbol.asyncIterator]().next(), 5_000, "direct");
  assert.equal(m.value.text(), "welcome");
  assert.equal((await tx.request("ts-shy", "x")).text(), "now");
  await shy.listen({ messages: false, requests: false });
  await assert.rejects(tx.send("ts-shy", "again"), NotListening);
  const plain = await connect("ts-no-listen");
  await assert.rejects(plain.listen({ messages: true, requests: true }), Unsupported);
});

test("publish/subscribe as an async iterator; leaving the loop unsubscribes", async () => {
  const sub = await connect("ts-sub");
  const pub = await connect("ts-pub");
  const s = await sub.subscribe("orders.*.created");
  for (let i = 0; i < 3; i++) await pub.publish(`orders.eu${i}.created`, `m${i}`, { headers: { n: String(i) } });
  await pub.publish("orders.eu.deleted", "not for us");
  const got: string[] = [];
  for await (const m of s) {
    got.push(`${m.topic}=${m.text()} from ${m.from}`);
    if (got.length === 3) break;
  }
  assert.deepEqual(got, [0, 1, 2].map((i) => `orders.eu${i}.created=m${i} from ts-pub`));
  // The loop left: the hub no longer holds the subscription.
  await assert.rejects(sub["call"]("unsubscribe", { subId: s.id }), NotFound);
  await assert.rejects(pub.publish("bad..topic", "x"), InvalidArgument);
  await assert.rejects(sub.subscribe("a.>.b"), InvalidArgument);
});

test("queue groups share messages", async () => {
  const a = await connect("ts-q-a");
  const b = await connect("ts-q-b");
  const sa = await a.subscribe("jobs.>", { queueGroup: "workers" });
  const sb = await b.subscribe("jobs.>", { queueGroup: "workers" });
  const pub = await connect("ts-q-pub");
  for (let i = 0; i < 4; i++) await pub.publish("jobs.x", String(i));
  const ia = sa[Symbol.asyncIterator]();
  const ib = sb[Symbol.asyncIterator]();
  const got = [];
  for (let i = 0; i < 2; i++) {
    got.push((await within(ia.next(), 5_000, "a")).value.text());
    got.push((await within(ib.next(), 5_000, "b")).value.text());
  }
  assert.deepEqual(got.sort(), ["0", "1", "2", "3"]);
  await sa.unsubscribe();
  await sb.unsubscribe();
});

test("kv get/set/delete with versions and compare-and-set", async () => {
  const c = await connect("ts-kv");
  assert.deepEqual(await c.kvGet("ts.missing"), { found: false, value: new Uint8Array(0), version: 0n });
  const v1 = await c.kvSet("ts.k", "v1");
  const v2 = await c.kvSet("ts.k", "v2", { expectVersion: v1 });
  assert.equal(v2, v1 + 1n);
  await assert.rejects(c.kvSet("ts.k", "v3", { expectVersion: v1 }), VersionMismatch);
  const got = await c.kvGet("ts.k");
  assert.equal(new TextDecoder().decode(got.value), "v2");
  assert.equal(got.version, v2);
  const vd = await c.kvDelete("ts.k");
  assert.equal(vd, v2 + 1n);
  assert.equal((await c.kvGet("ts.k")).found, false);
  await assert.rejects(c.kvDelete("ts.k"), NotFound);
  await assert.rejects(c.kvSet("", "x"), InvalidArgument);
});

test("kv watch: current value, then changes by others; leaving the loop unwatches", async () => {
  const c = await connect("ts-watcher");
  const w = await connect("ts-writer");
  await w.kvSet("watch.a", "1");
  const watch = await c.kvWatch("watch.", { prefix: true });
  const seen: string[] = [];
  const done = (async () => {
    for await (const u of watch) {
      seen.push(`${u.key}=${new TextDecoder().decode(u.value)} v${u.version} deleted=${u.deleted} by=${u.by}`);
      if (seen.length === 3) break;
    }
  })();
  await w.kvSet("watch.b", "2");
  await w.kvDelete("watch.a");
  await within(done, 5_000, "watch updates");
  assert.deepEqual(seen, [
    "watch.a=1 v1 deleted=false by=",
    "watch.b=2 v1 deleted=false by=ts-writer",
    "watch.a= v2 deleted=true by=ts-writer",
  ]);
  // Watch ids come from the same counter as subscriptions: the one above is gone at the hub.
  await assert.rejects(c["call"]("kvUnwatch", { watchId: (c["nextId"] as bigint) - 2n }), NotFound);
});

test("list clients, status, presence", async () => {
  const c = await connect("ts-presence");
  const ids = (await c.listClients()).map((x) => x.clientId);
  assert.ok(ids.includes("ts-presence"));
  const me = (await c.listClients()).find((x) => x.clientId === "ts-presence")!;
  assert.equal(me.transport, "ws");
  const st = await c.status();
  assert.equal(st.identity?.service, "switchboard");
  assert.ok(st.clients >= 1n);
  const { clients, events } = await c.watchPresence();
  assert.ok(clients.some((x) => x.clientId === "ts-presence"));
  const other = await hub.connect("ts-comes-and-goes");
  await other.close();
  const got: string[] = [];
  for await (const e of events) {
    if (e.client.clientId !== "ts-comes-and-goes") continue;
    got.push(`${e.kind} ${e.reason}`);
    if (got.length === 2) break;
  }
  assert.deepEqual(got, ["joined ", "left said goodbye"]);
  // Stopped: a new watch may start.
  const again = await c.watchPresence();
  await again.events.stop();
});

test("drain(): calls in flight complete, new calls are refused, then the client closes", async () => {
  const server = await connect("ts-drain-server");
  server.serve((req) => new Promise((r) => setTimeout(() => r(`late ${req.text()}`), 200)));
  const c = await hub.connect("ts-drain");
  const inFlight = c.request("ts-drain-server", "x");
  const draining = c.drain(5_000);
  await assert.rejects(c.publish("drain.t", "refused"), Disconnected);
  assert.equal((await inFlight).text(), "late x");
  await within(draining, 5_000, "drain");
  assert.equal(c.state, "closed");
});

test("close(): calls fail with Disconnected, streams end, closed resolves", async () => {
  const c = await hub.connect("ts-close");
  const peer = await connect("ts-close-peer");
  peer.serve(() => new Promise(() => {}));
  const s = await c.subscribe("close.>");
  const inFlight = c.request("ts-close-peer", "never answered", { timeoutMs: 10_000 });
  const iter = s[Symbol.asyncIterator]();
  const next = iter.next();
  await c.close();
  await assert.rejects(inFlight, Disconnected);
  assert.deepEqual(await next, { value: undefined, done: true });
  assert.ok((await c.closed) instanceof Disconnected);
  await assert.rejects(c.publish("close.x", "y"), Disconnected);
  await c.close();
});

test("the hub going away fails calls with Disconnected and ends streams with it", async () => {
  const own = await Hub.start();
  try {
    // Without reliable delivery the loss ends the client at once; with it,
    // the client tries to resume until its reconnect window ends.
    const plain = await own.connect("ts-lost", { reliable: false });
    const reliable = await own.connect("ts-lost-reliable", { reconnectWindowMs: 500 });
    const s = await plain.subscribe("lost.>");
    const next = s[Symbol.asyncIterator]().next();
    const waiting = reliable.publish("elsewhere.x", "y").catch((e: unknown) => e);
    own.proc.kill("SIGKILL");
    await assert.rejects(within(next, 5_000, "stream end"), Disconnected);
    await assert.rejects(plain.kvGet("x"), Disconnected);
    const reason = await within(reliable.closed, 5_000, "reliable client gives up");
    assert.ok(reason instanceof Disconnected, String(reason));
    assert.match(reason.message, /could not reconnect/);
    const outcome = await waiting;
    assert.ok(outcome === undefined || outcome instanceof Disconnected);
  } finally {
    await own.stop();
  }
});

// Interop with a Rust API client: the CLI (`switchboard request|serve|pub|sub|kv`)
// is a thin program over `switchboard::Client` (crates/switchboard/src/cli/commands.rs),
// so these tests are the Rust client talking to this one. The examples under
// crates/switchboard/examples/ start their own in-process hub and take no address,
// so they cannot meet a TypeScript client. Request/reply, pub/sub and kv, both directions.
test("interop: the CLI requests from a TypeScript server, and TypeScript requests from the CLI's server", async () => {
  const server = await connect("ts-for-cli");
  server.serve((req) => `ts got ${req.text()}`);
  const r = await hub.cli(["request", "--to", "ts-for-cli", "--timeout", "5", "hello from cli"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), "ts got hello from cli");

  const cliServer = await hub.cliBackground(["serve", "--id", "cli-echo", "--echo"]);
  try {
    const c = await connect("ts-to-cli");
    const reply = await c.request("cli-echo", "hello from ts", { timeoutMs: 5_000 });
    assert.equal(reply.text(), "hello from ts");
    assert.equal(reply.from, "cli-echo");
  } finally {
    await stopProcess(cliServer.proc);
  }
});

test("interop: the CLI publishes to a TypeScript subscriber, and subscribes to a TypeScript publisher", async () => {
  const c = await connect("ts-pubsub-cli");
  const s = await c.subscribe("cli.to.ts");
  const r = await hub.cli(["pub", "cli.to.ts", "from cli"]);
  assert.equal(r.code, 0, r.stderr);
  const m = (await within(s[Symbol.asyncIterator]().next(), 5_000, "delivery")).value;
  assert.equal(m.text(), "from cli");
  await s.unsubscribe();

  const cliSub = await hub.cliBackground(["sub", "ts.to.cli", "--count", "1"]);
  await c.publish("ts.to.cli", "from ts");
  assert.equal(await within(cliSub.exited, 5_000, "cli sub exit"), 0);
  const line = JSON.parse(cliSub.stdout().trim().split("\n")[0]!);
  assert.equal(line.topic, "ts.to.cli");
  assert.equal(line.payload ?? line.text ?? line.value, "from ts");
});

test("interop: kv written by TypeScript is read by the CLI and the other way round", async () => {
  const c = await connect("ts-kv-cli");
  await c.kvSet("shared.from.ts", "ts value");
  const r = await hub.cli(["kv", "get", "shared.from.ts"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), "ts value");
  const w = await hub.cli(["kv", "set", "shared.from.cli", "cli value"]);
  assert.equal(w.code, 0, w.stderr);
  assert.equal(new TextDecoder().decode((await c.kvGet("shared.from.cli")).value), "cli value");
  // A TypeScript watch sees the Rust client's change, and who made it.
  const watch = (await c.kvWatch("shared.watched"))[Symbol.asyncIterator]();
  const cliWrite = await hub.cli(["kv", "set", "shared.watched", "watched value"]);
  assert.equal(cliWrite.code, 0, cliWrite.stderr);
  for (;;) {
    const u = (await within(watch.next(), 5_000, "watch update")).value;
    if (u.by === "") continue; // the current value (none) first
    assert.equal(new TextDecoder().decode(u.value), "watched value");
    assert.notEqual(u.by, c.clientId);
    break;
  }
  await watch.return?.();
  void TOKEN;
});
