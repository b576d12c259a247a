// The two WebSocket framings against a real hub: the stream framing
// (`switchboard.stream`, the default) and one frame per message; both
// carry every kind of traffic, and mix on one hub.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { WebSocket } from "ws";
import type { Client } from "../src/index.js";
import { STREAM_PROTOCOL } from "../src/frames.js";
import { Hub, within } from "./helpers.js";

let hub: Hub;
const clients: Client[] = [];
before(async () => {
  hub = await Hub.start();
});
after(async () => {
  for (const c of clients) await c.close();
  await hub.stop();
});

async function connect(id: string, streamFraming: boolean): Promise<Client> {
  const c = await hub.connect(id, { streamFraming });
  clients.push(c);
  return c;
}

/** The framing a client's socket runs. */
function framing(c: Client): boolean {
  return (c as unknown as { wire: { stream: boolean } }).wire.stream;
}

test("the hub accepts the stream subprotocol when offered, and only then", async () => {
  for (const offer of [true, false]) {
    const ws = offer ? new WebSocket(hub.url, [STREAM_PROTOCOL]) : new WebSocket(hub.url);
    await within(new Promise((r, j) => ((ws.onopen = r), (ws.onerror = j))), 5_000, "open");
    assert.equal(ws.protocol, offer ? STREAM_PROTOCOL : "");
    ws.close();
  }
});

for (const [a, b] of [
  [true, true],
  [false, false],
  [true, false],
] as const) {
  test(`request/reply and 2,000 publishes, stream framing ${a}/${b}`, async () => {
    const server = await connect(`fr-server-${a}-${b}`, a);
    const client = await connect(`fr-client-${a}-${b}`, b);
    assert.equal(framing(server), a);
    assert.equal(framing(client), b);
    server.serve((req) => `echo:${req.text()}`);
    // Many requests in one turn: packed into one message in the stream framing.
    const replies = await within(
      Promise.all(Array.from({ length: 50 }, (_, i) => client.request(server.clientId, `r${i}`))),
      10_000,
      "requests",
    );
    assert.deepEqual(
      replies.map((r) => r.text()),
      Array.from({ length: 50 }, (_, i) => `echo:r${i}`),
    );
    const topic = `fr.${a}.${b}`;
    const sub = await server.subscribe(topic);
    const big = "x".repeat(100_000);
    const n = 2_000;
    for (let i = 0; i < n; i++) client.publishNowait(topic, i === 7 ? big : `m${i}`);
    await client.flush();
    let i = 0;
    for await (const m of sub) {
      assert.equal(m.text(), i === 7 ? big : `m${i}`);
      if (++i === n) break;
    }
  });
}
