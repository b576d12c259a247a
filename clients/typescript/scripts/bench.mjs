// `npm run bench`: request/reply p50 and 1->1 pub/sub msgs/s through this
// client (Node, over the hub's WebSocket), the Rust client on the same hub
// (`switchboard bench --addr`), and nats.js on nats-server when both are
// present (`npm install --no-save nats`, nats-server on PATH). Numbers are
// printed, not asserted. Use a release hub: `cargo build --release -p
// switchboard --bin switchboard` (else the debug build is used, and says so).
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { WebSocket } from "ws";
import { Client } from "../dist/src/index.js";

const root = new URL("../../../", import.meta.url).pathname;
const release = join(root, "target/release/switchboard");
const BIN = process.env.SWITCHBOARD_BIN ?? (existsSync(release) ? release : join(root, "target/debug/switchboard"));
const REQUESTS = Number(process.env.BENCH_REQUESTS ?? 5_000);
const MESSAGES = Number(process.env.BENCH_MESSAGES ?? 100_000);
const WINDOW = 1_000;
const payload = new Uint8Array(64);
const TOKEN = "bench-token";

const p50 = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (n) => Math.round(n).toLocaleString("en-US");

async function runReqReply(request) {
  for (let i = 0; i < 200; i++) await request();
  const lat = [];
  for (let i = 0; i < REQUESTS; i++) {
    const t0 = process.hrtime.bigint();
    await request();
    lat.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  return p50(lat);
}

async function runPubSub(publish, flush, received) {
  const t0 = performance.now();
  for (let i = 0; i < MESSAGES; i += WINDOW) {
    const ps = [];
    for (let j = i; j < Math.min(i + WINDOW, MESSAGES); j++) ps.push(publish());
    await Promise.all(ps);
  }
  await flush();
  await received;
  return MESSAGES / ((performance.now() - t0) / 1000);
}

async function switchboardRows() {
  const dir = mkdtempSync(join(tmpdir(), "sb-bench-"));
  const env = { ...process.env, SWITCHBOARD_RUNTIME_DIR: dir, SWITCHBOARD_TOKEN: TOKEN };
  const hub = spawn(BIN, ["--json", "hub", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--no-unix"], { env, stdio: ["ignore", "pipe", "inherit"] });
  const ready = JSON.parse(await new Promise((r) => createInterface({ input: hub.stdout }).once("line", r)));
  try {
    const url = `ws://${ready.http}/v1/ws`;
    const opts = { url, token: TOKEN, WebSocket, bufferSize: MESSAGES + 1 };
    const server = await Client.connect({ ...opts, clientId: "bench-server" });
    server.serve((req) => req.payload);
    const c = await Client.connect({ ...opts, clientId: "bench-client" });
    const rr = await runReqReply(() => c.request("bench-server", payload));
    const sub = await Client.connect({ ...opts, clientId: "bench-sub" });
    const s = await sub.subscribe("bench.t");
    const received = (async () => {
      let n = 0;
      for await (const _ of s) if (++n === MESSAGES) break;
    })();
    const ps = await runPubSub(() => c.publish("bench.t", payload), async () => {}, received);
    for (const x of [server, c, sub]) await x.close();
    console.log(`typescript client (Node ${process.version}, WebSocket): request/reply p50 ${p50rr(rr)}, pub/sub 1->1 ${fmt(ps)} msgs/s (confirmed publishes, ${WINDOW} in flight)`);
    const rust = spawnSync(BIN, ["--addr", ready.addr, "bench", "--messages", String(MESSAGES), "--requests", String(REQUESTS), "--fanout", "2"], { env, encoding: "utf8", timeout: 300_000 });
    console.log(`rust client (switchboard bench, TCP), same hub:\n${(rust.stdout || rust.stderr).trim().replace(/^/gm, "  ")}`);
  } finally {
    hub.kill("SIGTERM");
    rmSync(dir, { recursive: true, force: true });
  }
}

function p50rr(us) {
  return `${us.toFixed(0)} µs`;
}

async function natsRow() {
  let nats;
  try {
    nats = await import("nats");
  } catch {
    console.log("nats.js: skipped (npm install --no-save nats)");
    return;
  }
  if (spawnSync("nats-server", ["--version"]).status !== 0) {
    console.log("nats.js: skipped (nats-server not on PATH)");
    return;
  }
  const port = await new Promise((r) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => r(p));
    });
  });
  const server = spawn("nats-server", ["-a", "127.0.0.1", "-p", String(port)], { stdio: "ignore" });
  try {
    let nc;
    for (let i = 0; i < 50 && !nc; i++) {
      nc = await nats.connect({ servers: `127.0.0.1:${port}` }).catch(() => new Promise((r) => setTimeout(() => r(undefined), 100)));
    }
    const responder = nc.subscribe("bench.req");
    (async () => {
      for await (const m of responder) m.respond(m.data);
    })();
    const rr = await runReqReply(() => nc.request("bench.req", payload, { timeout: 5_000 }));
    const pub = await nats.connect({ servers: `127.0.0.1:${port}` });
    const sub = nc.subscribe("bench.t");
    await nc.flush();
    const received = (async () => {
      let n = 0;
      for await (const _ of sub) if (++n === MESSAGES) break;
    })();
    const ps = await runPubSub(() => pub.publish("bench.t", payload), () => pub.flush(), received);
    console.log(`nats.js (TCP, nats-server): request/reply p50 ${p50rr(rr)}, pub/sub 1->1 ${fmt(ps)} msgs/s (publish + final flush)`);
    await pub.close();
    await nc.close();
  } finally {
    server.kill("SIGTERM");
  }
}

if (!BIN.includes("release")) console.log(`note: ${BIN} is a debug build; the figures mean little`);
await switchboardRows();
await natsRow();
