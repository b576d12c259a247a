// Bounded streams with the Rust client's overflow policies, against a real
// hub: "block" (the default) loses nothing and holds the connection,
// "dropNewest" and "dropOldest" drop, count and announce. Also publishNowait + flush.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import type { Client, ClientEvent, Message } from "../src/index.js";
import { Hub, within } from "./helpers.js";

let hub: Hub;
const clients: Client[] = [];
async function connect(id: string, extra: Parameters<Hub["connect"]>[1] = {}): Promise<Client> {
  const c = await hub.connect(id, extra);
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

/** Publishes `n` numbered messages on `topic`, each confirmed by the hub. */
async function publishN(c: Client, topic: string, n: number): Promise<void> {
  for (let i = 0; i < n; i++) await c.publish(topic, String(i));
}

/** Reads `n` messages. */
async function take(it: AsyncIterator<Message>, n: number): Promise<string[]> {
  const out: string[] = [];
  while (out.length < n) {
    const r = await within(it.next(), 5_000, `message ${out.length}`);
    assert.ok(!r.done);
    out.push(r.value.text());
  }
  return out;
}

/**
 * Waits until the subscription has counted `dropped` drops: after a round
 * trip through a kv write (the deliveries were queued before its answer),
 * then polling for at most 5 s, since frames are handed to streams in later
 * event-loop turns. Fails rather than waits longer.
 */
async function settle(c: Client, s: { dropped: number }, dropped: number): Promise<void> {
  await c.kvSet("overflow.settle", "x");
  const deadline = Date.now() + 5_000;
  while (s.dropped < dropped && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
}

const range = (a: number, b: number) => Array.from({ length: b - a }, (_, i) => String(a + i));

test("dropNewest: what does not fit is dropped, counted and announced", async () => {
  const sub = await connect("ov-sub-new");
  const pub = await connect("ov-pub-new");
  const events = sub.events()[Symbol.asyncIterator]();
  const s = await sub.subscribe("ov.new", { bufferSize: 3, overflow: "dropNewest" });
  await publishN(pub, "ov.new", 10);
  await settle(sub, s, 7);
  assert.equal(s.dropped, 7);
  const it = s[Symbol.asyncIterator]();
  assert.deepEqual(await take(it, 3), ["0", "1", "2"]);
  // One burst, one event: the drops of its first turn (the rest are told by the next event).
  const first = (await within(events.next(), 2_000, "slowConsumer event")).value as ClientEvent;
  assert.ok(first.type === "slowConsumer", first.type);
  assert.equal(first.pattern, "ov.new");
  assert.equal(first.subId, s.id);
  assert.ok(first.dropped >= 1 && first.dropped <= 7 && first.total === first.dropped, JSON.stringify({ ...first, subId: 0 }));
  // Room again, then a second burst: its event tells the rest, the total is every drop.
  await publishN(pub, "ov.new", 5);
  await settle(sub, s, 9);
  assert.equal(s.dropped, 9);
  const second = (await within(events.next(), 2_000, "second slowConsumer event")).value as ClientEvent;
  assert.ok(second.type === "slowConsumer", second.type);
  // The two events account for every drop up to the second one's total;
  // drops in a later turn of the same burst are only in `total` and
  // `dropped` until the next event (a burst may span turns).
  assert.equal(first.dropped + second.dropped, second.total);
  assert.ok(second.total > first.total && second.total <= 9, JSON.stringify({ ...second, subId: 0 }));
  assert.deepEqual(await take(it, 3), ["0", "1", "2"]);
  await s.unsubscribe();
});

test("dropOldest: a flood is announced once per burst, not once per event-loop turn", async () => {
  const sub = await connect("ov-sub-burst");
  const pub = await connect("ov-pub-burst");
  const told: ClientEvent[] = [];
  void (async () => {
    for await (const e of sub.events()) told.push(e);
  })();
  const s = await sub.subscribe("ov.burst", { bufferSize: 5, overflow: "dropOldest" });
  for (let i = 0; i < 1_500; i++) pub.publishNowait("ov.burst", String(i));
  await within(pub.flush(), 10_000, "flush");
  await settle(sub, s, 1_495);
  assert.equal(s.dropped, 1_495);
  // The deliveries came over many turns; a round trip more lets a late event show.
  await sub.kvSet("overflow.settle", "y");
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(told.length, 1, JSON.stringify(told.map((e) => e.type)));
  assert.deepEqual(await take(s[Symbol.asyncIterator](), 5), range(1_495, 1_500));
  await s.unsubscribe();
});

test("dropOldest: the oldest make room, counted", async () => {
  const sub = await connect("ov-sub-old");
  const pub = await connect("ov-pub-old");
  const s = await sub.subscribe("ov.old", { bufferSize: 3, overflow: "dropOldest" });
  await publishN(pub, "ov.old", 10);
  await settle(sub, s, 7);
  assert.equal(s.dropped, 7);
  assert.deepEqual(await take(s[Symbol.asyncIterator](), 3), ["7", "8", "9"]);
  await s.unsubscribe();
});

test("block (the default): a full stream holds the connection, nothing is lost, order kept", async () => {
  const sub = await connect("ov-sub-block", { bufferSize: 4 });
  const pub = await connect("ov-pub-block");
  const s = await sub.subscribe("ov.block");
  const other = await sub.subscribe("ov.other");
  await publishN(pub, "ov.block", 200);
  await pub.publish("ov.other", "behind");
  await new Promise((r) => setTimeout(r, 100));
  // Head of line: the other subscription's message is behind the full one, and a call waits too.
  let answered = false;
  const get = sub.kvGet("overflow.none").then((v) => {
    answered = true;
    return v;
  });
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(answered, false, "a call behind a full blocking stream waits");
  assert.equal(s.dropped, 0);
  // Reading slowly gets everything, in order.
  const got = await take(s[Symbol.asyncIterator](), 200);
  assert.deepEqual(got, range(0, 200));
  assert.equal((await within(get, 5_000, "kvGet after the stream drained")).found, false);
  assert.deepEqual(await take(other[Symbol.asyncIterator](), 1), ["behind"]);
  assert.equal(s.dropped, 0);
  await s.unsubscribe();
  await other.unsubscribe();
});

test("block: leaving the loop of a full stream frees the connection", async () => {
  const sub = await connect("ov-sub-leave", { bufferSize: 2 });
  const pub = await connect("ov-pub-leave");
  const s = await sub.subscribe("ov.leave");
  await publishN(pub, "ov.leave", 20);
  await new Promise((r) => setTimeout(r, 100));
  for await (const m of s) {
    assert.equal(m.text(), "0");
    break;
  }
  // The connection is free again: a call is answered.
  assert.equal((await within(sub.kvGet("overflow.none"), 5_000, "kvGet")).found, false);
});

test("publishNowait and flush: every message once, in order, without a confirmation each", async () => {
  const sub = await connect("nowait-sub");
  const pub = await connect("nowait-pub");
  const s = await sub.subscribe("nowait.t");
  for (let i = 0; i < 2_000; i++) pub.publishNowait("nowait.t", String(i));
  await within(pub.flush(), 10_000, "flush");
  assert.deepEqual(await take(s[Symbol.asyncIterator](), 2_000), range(0, 2_000));
  await s.unsubscribe();
  // Nothing sent: flush is one round trip.
  await within(pub.flush(), 5_000, "empty flush");
  await pub.close();
  assert.throws(() => pub.publishNowait("nowait.t", "closed"), (e: unknown) => e instanceof Error && e.constructor.name === "Disconnected");
  await assert.rejects(pub.flush(), (e: unknown) => e instanceof Error && e.constructor.name === "Disconnected");
});

test("the inbox does not hold the connection of a client that never reads its messages", async () => {
  const quiet = await connect("ov-quiet", { bufferSize: 2 });
  const loud = await connect("ov-loud");
  for (let i = 0; i < 10; i++) await loud.broadcast(String(i));
  // The quiet client's connection still answers.
  assert.equal((await within(quiet.kvGet("overflow.none"), 5_000, "kvGet")).found, false);
  // Reading now: the last two, the rest dropped oldest first.
  assert.deepEqual(await take(quiet.messages()[Symbol.asyncIterator](), 2), ["8", "9"]);
});
