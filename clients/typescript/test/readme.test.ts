// The README's example, run against a hub (kept in step with README.md by hand).
import { test } from "node:test";
import assert from "node:assert/strict";
import { WebSocket } from "ws";
import { Client, NoSuchClient } from "../src/index.js";
import { Hub, TOKEN } from "./helpers.js";

test("the README example runs", async () => {
  const hub = await Hub.start();
  try {
    const token = TOKEN;
    const url = hub.url;
    const log: string[] = [];
    // --- as in README.md, with the URL of the test hub ---
    const c = await Client.connect({ url, clientId: "web-1", token, WebSocket });
    c.serve((req) => `hello, ${req.from}`);
    const sub = await c.subscribe("orders.>");
    await c.publish("orders.eu.created", JSON.stringify({ id: 7 }));
    for await (const m of sub) { log.push(`${m.topic} ${m.text()}`); break; }
    try { await c.request("worker", "ping", { timeoutMs: 2_000 }); } catch (e) { if (!(e instanceof NoSuchClient)) throw e; }
    await c.kvSet("config.mode", "fast");
    await c.close();
    // ---
    assert.deepEqual(log, ['orders.eu.created {"id":7}']);
  } finally {
    await hub.stop();
  }
});
