// `npm run bench`: request/reply p50 and 1->1 pub/sub msgs/s through this
// client (Node, over the hub's WebSocket), the Rust client on the same hub
// (`switchboard bench --addr`), and nats.js on nats-server when both are
// present (`npm install --no-save nats nats.ws`, nats-server on PATH):
// nats.js over TCP and nats.ws over nats-server's WebSocket port. Then the
// ratios against nats.js and the browser bundle's size. Numbers are
// printed, not asserted. Use a release hub: `cargo build --release -p
// switchboard --bin switchboard` (else the debug build is used, and says so).
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
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

/** Figures by row: { rr: p50 µs, ps: msgs/s }. */
const rows = {};
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
    // Unconfirmed publishes (still numbered and acknowledged), then a flush: as nats.js's publish + flush.
    const s2 = await sub.subscribe("bench.n");
    const received2 = (async () => {
      let n = 0;
      for await (const _ of s2) if (++n === MESSAGES) break;
    })();
    const psNowait = await runPubSub(() => c.publishNowait("bench.n", payload), () => c.flush(), received2);
    rows.tsNowait = { rr, ps: psNowait };
    console.log(`typescript client, publishNowait + flush: pub/sub 1->1 ${fmt(psNowait)} msgs/s`);
    // The same without the stream framing (one frame per WebSocket message).
    const c1 = await Client.connect({ ...opts, clientId: "bench-client-1", streamFraming: false });
    const sub1 = await Client.connect({ ...opts, clientId: "bench-sub-1", streamFraming: false });
    const rr1 = await runReqReply(() => c1.request("bench-server", payload));
    const s3 = await sub1.subscribe("bench.m");
    const received3 = (async () => {
      let n = 0;
      for await (const _ of s3) if (++n === MESSAGES) break;
    })();
    const psMessages = await runPubSub(() => c1.publishNowait("bench.m", payload), () => c1.flush(), received3);
    rows.tsMessages = { rr: rr1, ps: psMessages };
    console.log(`typescript client, one frame per message (streamFraming: false): request/reply p50 ${p50rr(rr1)}, publishNowait + flush ${fmt(psMessages)} msgs/s`);
    for (const x of [server, c, sub, c1, sub1]) await x.close();
    rows.ts = { rr, ps };
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
  const wsPort = await new Promise((r) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => r(p));
    });
  });
  // The WebSocket port needs a configuration file.
  const dir = mkdtempSync(join(tmpdir(), "nats-bench-"));
  const conf = join(dir, "nats.conf");
  writeFileSync(conf, `listen: "127.0.0.1:${port}"\nwebsocket {\n  listen: "127.0.0.1:${wsPort}"\n  no_tls: true\n}\n`);
  const server = spawn("nats-server", ["-c", conf], { stdio: "ignore" });
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
    rows.nats = { rr, ps };
    console.log(`nats.js ${natsVersion("nats")} (TCP, nats-server): request/reply p50 ${p50rr(rr)}, pub/sub 1->1 ${fmt(ps)} msgs/s (publish + final flush)`);
    await pub.close();
    await nc.close();
    await natsWsRow(wsPort);
  } finally {
    server.kill("SIGTERM");
    rmSync(dir, { recursive: true, force: true });
  }
}

function natsVersion(pkg) {
  try {
    return JSON.parse(readFileSync(new URL(`../node_modules/${pkg}/package.json`, import.meta.url), "utf8")).version;
  } catch {
    return "?";
  }
}

/** nats.ws over nats-server's WebSocket port (the `ws` package as the global WebSocket in Node 20). */
async function natsWsRow(wsPort) {
  let natsWs;
  try {
    if (!globalThis.WebSocket) globalThis.WebSocket = WebSocket;
    natsWs = await import("nats.ws");
  } catch {
    console.log("nats.ws: skipped (npm install --no-save nats.ws)");
    return;
  }
  const servers = `ws://127.0.0.1:${wsPort}`;
  const nc = await natsWs.connect({ servers });
  const responder = nc.subscribe("bench.wsreq");
  (async () => {
    for await (const m of responder) m.respond(m.data);
  })();
  const rr = await runReqReply(() => nc.request("bench.wsreq", payload, { timeout: 5_000 }));
  const pub = await natsWs.connect({ servers });
  const sub = nc.subscribe("bench.wst");
  await nc.flush();
  const received = (async () => {
    let n = 0;
    for await (const _ of sub) if (++n === MESSAGES) break;
  })();
  const ps = await runPubSub(() => pub.publish("bench.wst", payload), () => pub.flush(), received);
  rows.natsWs = { rr, ps };
  console.log(`nats.ws ${natsVersion("nats.ws")} (WebSocket, nats-server): request/reply p50 ${p50rr(rr)}, pub/sub 1->1 ${fmt(ps)} msgs/s (publish + final flush)`);
  await pub.close();
  await nc.close();
}

function ratios() {
  for (const [label, t] of [["confirmed publish", rows.ts], ["publishNowait", rows.tsNowait], ["publishNowait, one frame per message", rows.tsMessages]]) {
    if (!t) continue;
    for (const [name, r] of [["nats.js (TCP)", rows.nats], ["nats.ws (WebSocket)", rows.natsWs]]) {
      if (!r) continue;
      console.log(`typescript client (${label}) vs ${name}: throughput ${(t.ps / r.ps).toFixed(2)}x (goal >= 1.0), p50 ${(t.rr / r.rr).toFixed(2)}x (goal <= 1.0)`);
    }
  }
  spawnSync(process.execPath, [new URL("./bundle.mjs", import.meta.url).pathname], { stdio: "inherit", cwd: new URL("..", import.meta.url).pathname });
}

if (!BIN.includes("release")) console.log(`note: ${BIN} is a debug build; the figures mean little`);
await switchboardRows();
await natsRow();
ratios();
