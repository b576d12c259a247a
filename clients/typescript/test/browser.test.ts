// The browser build in headless Chromium (playwright-core, /usr/bin/chromium):
// a page using the bundled client exchanges requests and pub/sub messages
// with Rust clients (the CLI) through a hub. Skipped without Chromium,
// except under CI=1, where it fails instead.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Hub, TOKEN, stopProcess, within } from "./helpers.js";

const CHROMIUM = process.env.SWITCHBOARD_CHROMIUM ?? "/usr/bin/chromium";
const BUNDLE = new URL("../browser/switchboard.min.js", import.meta.url);
const missing = !existsSync(CHROMIUM) ? `${CHROMIUM} is missing` : !existsSync(BUNDLE) ? "the bundle is missing (npm run bundle)" : "";
if (missing && process.env.CI) throw new Error(`browser test: ${missing}`);

const PAGE = `<!doctype html><meta charset="utf-8"><title>switchboard</title>
<script type="module">import * as sb from "./switchboard.min.js"; window.sb = sb; document.title = "ready";</script>`;

test("a page with the bundled client talks to Rust clients through the hub", { skip: missing || false, timeout: 60_000 }, async () => {
  const { chromium } = await import("playwright-core");
  const hub = await Hub.start();
  const bundle = readFileSync(BUNDLE);
  const web = createServer((req, res) => {
    if (req.url === "/switchboard.min.js") {
      res.writeHead(200, { "content-type": "text/javascript" }).end(bundle);
    } else {
      res.writeHead(200, { "content-type": "text/html" }).end(PAGE);
    }
  });
  await new Promise<void>((r) => web.listen(0, "127.0.0.1", r));
  const pageUrl = `http://127.0.0.1:${(web.address() as AddressInfo).port}/`;
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const cliServer = await hub.cliBackground(["serve", "--id", "cli-echo", "--echo"]);
  try {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(pageUrl);
    await page.waitForFunction(() => document.title === "ready", undefined, { timeout: 10_000 });

    // The page connects (the browser's own WebSocket and WebCrypto), serves
    // requests, subscribes, and requests from the CLI's echo server.
    const first = await page.evaluate(
      async ({ url, token }) => {
        const { Client } = (window as unknown as { sb: typeof import("../src/index.js") }).sb;
        const c = await Client.connect({ url, clientId: "browser-1", token });
        c.serve((req) => `browser got ${req.text()}`);
        const sub = await c.subscribe("to.browser");
        (window as unknown as Record<string, unknown>).pending = (async () => {
          for await (const m of sub) return `${m.from.length > 0}:${m.text()}`;
          return "ended";
        })();
        (window as unknown as Record<string, unknown>).client = c;
        const reply = await c.request("cli-echo", "hi from the browser", { timeoutMs: 5_000 });
        return { reply: reply.text(), from: reply.from, transport: (await c.listClients()).find((x) => x.clientId === "browser-1")?.transport };
      },
      { url: hub.url, token: TOKEN },
    );
    assert.deepEqual(first, { reply: "hi from the browser", from: "cli-echo", transport: "ws" });

    // The CLI requests from the page, and publishes to it.
    const r = await hub.cli(["request", "--to", "browser-1", "--timeout", "5", "hello page"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), "browser got hello page");
    const p = await hub.cli(["pub", "to.browser", "published by the cli"]);
    assert.equal(p.code, 0, p.stderr);
    const delivered = await within(
      page.evaluate(() => (window as unknown as { pending: Promise<string> }).pending),
      10_000,
      "delivery in the page",
    );
    assert.equal(delivered, "true:published by the cli");

    // The page publishes; the CLI subscriber prints it.
    const cliSub = await hub.cliBackground(["sub", "from.browser", "--count", "1"]);
    await page.evaluate(async () => {
      const c = (window as unknown as { client: import("../src/index.js").Client }).client;
      await c.publish("from.browser", "published by the page");
      await c.close();
    });
    assert.equal(await within(cliSub.exited, 10_000, "cli sub"), 0);
    assert.match(cliSub.stdout(), /published by the page/);
    assert.deepEqual(errors, []);
  } finally {
    await stopProcess(cliServer.proc);
    await browser.close();
    await new Promise((r) => web.close(r));
    await hub.stop();
  }
});

test("the browser bundle stays small (goal: at most 40 KiB gzipped)", { skip: existsSync(BUNDLE) ? false : "the bundle is missing (npm run bundle)" }, () => {
  const size = JSON.parse(readFileSync(new URL("../browser/size.json", import.meta.url), "utf8")) as { bytes: number; gzip_bytes: number };
  console.log(`browser bundle: ${size.bytes} bytes minified, ${size.gzip_bytes} bytes gzipped`);
  assert.ok(size.gzip_bytes <= 40 * 1024, `${size.gzip_bytes} bytes gzipped`);
});
