// The hub's dashboard page (served at `/` by a hub started with `--http`),
// built on this package's own client: it connects over the hub's `/v1/ws`
// like any other client and shows the hub's status, the clients (live, by
// presence watch), presence events and the key/value store (live, by kv
// watch). From the status it polls each second it also shows the hub's
// role and standby (with the replication lag), the slow consumers (the
// `dropped:CLIENT_ID` counters) and a chart of frames in and out per second
// over the last five minutes (plain SVG). `npm run dashboard` bundles it into
// crates/switchboard-hub/assets/dashboard.js, which is checked in.
//
// Authentication: the native handshake needs the hub's shared token
// (`SWITCHBOARD_TOKEN`). The page takes it from the URL fragment
// (`/#token=...`, never sent to the server; removed from the address bar at
// once) or from a password field. The token itself never crosses the
// network: the handshake proves it with an HMAC. It is kept in this tab's
// sessionStorage only when the user ticks "remember in this tab".
//
// Topics with subscriber counts have no frame in the native protocol; the
// page reads them from the HTTP API (`GET /v1/topics`) with the HTTP bearer
// token derived from the shared token (an HMAC, in an Authorization header,
// never in a URL). A principal's token of a permission policy is not the
// hub's token: then the topics table says it is unavailable.

import { AuthFailed, Client, HubUnverified, httpToken, keyFromToken, type ClientInfo, type KvUpdate, type PresenceEvent, type Status } from "../src/index.js";

const STORE = "switchboard-token";
const STATUS_EVERY_MS = 1000;
const PRESENCE_KEPT = 50;
/** How far back the rates chart looks. */
const CHART_SPAN_MS = 5 * 60 * 1000;
/** The shortest time the rates chart spans. */
const CHART_MIN_MS = 10 * 1000;
const CHART_W = 600;
const CHART_H = 150;
const ROLES = ["unknown", "primary", "standby"];
const decoder = new TextDecoder("utf-8", { fatal: false });

const $ = (id: string): HTMLElement => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page lacks #${id}`);
  return el;
};

function cell(tr: HTMLTableRowElement, text: string, cls?: string): HTMLTableCellElement {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function ago(ms: number, now: number): string {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

/**
 * The federation line from the status counters `federation_*` (server,
 * cluster and member hubs are keys with the value 1, like `dropped:ID`).
 */
function federationLine(c: { [key: string]: bigint }): string {
  if (!("federation_connected" in c)) return "not federated";
  const named = (prefix: string): string[] =>
    Object.keys(c)
      .filter((k) => k.startsWith(prefix))
      .map((k) => k.slice(prefix.length));
  const server = named("federation_server:")[0] ?? "?";
  const cluster = named("federation_cluster:")[0];
  const members = named("federation_member:").sort();
  const rttMs = Number(c["federation_rtt_us"] ?? 0n) / 1000;
  const age = c["federation_lease_age_ms"];
  const state = c["federation_connected"] === 1n ? "connected to" : "NOT connected, last";
  return (
    `${state} ${server}${cluster ? ` (cluster ${cluster})` : ""}; ` +
    `other hubs: ${members.length ? members.join(", ") : "none"}; ` +
    `rtt ${rttMs.toFixed(1)} ms; lease age ${age === undefined ? "–" : `${age} ms`}; ` +
    `routed ${c["federation_sent"] ?? 0n} out, ${c["federation_received"] ?? 0n} in, ` +
    `dropped ${(c["federation_dropped"] ?? 0n) + (c["federation_malformed"] ?? 0n) + (c["federation_oversized"] ?? 0n) + (c["federation_foreign"] ?? 0n)}`
  );
}

function setState(text: string, cls: "" | "live" | "down"): void {
  const el = $("feed-state");
  el.textContent = text;
  el.className = cls ? `state ${cls}` : "state";
}

/** The token from the URL fragment (then removed from the address bar), or the one the user asked to remember. */
function initialToken(): string | null {
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m?.[1]) {
    history.replaceState(null, "", location.pathname + location.search);
    return decodeURIComponent(m[1]);
  }
  return sessionStorage.getItem(STORE);
}

/** What the page shows, kept between renders. */
class View {
  readonly clients = new Map<string, ClientInfo>();
  readonly kv = new Map<string, KvUpdate>();
  readonly presence: { text: string; kind: string }[] = [];
  last: { status: Status; at: number } | null = null;
  /** Rates sampled from consecutive statuses: time, frames in and out per second. */
  readonly samples: { at: number; rin: number; rout: number }[] = [];

  constructor(readonly self: string) {}

  status(st: Status): void {
    const now = Date.now();
    $("service").textContent = st.identity?.service ?? "";
    $("n-clients").textContent = String(st.clients);
    $("n-subs").textContent = String(st.subscriptions);
    $("n-queue").textContent = String(st.queueDepth);
    $("n-dropped").textContent = String(st.dropped);
    $("n-keys").textContent = String(st.kvKeys);
    if (this.last) {
      const dt = Math.max(0.001, (now - this.last.at) / 1000);
      const rin = Math.max(0, Math.round(Number(st.msgsIn - this.last.status.msgsIn) / dt));
      const rout = Math.max(0, Math.round(Number(st.msgsOut - this.last.status.msgsOut) / dt));
      $("rate-in").textContent = String(rin);
      $("rate-out").textContent = String(rout);
      this.samples.push({ at: now, rin, rout });
      while (this.samples.length > 0 && this.samples[0]!.at < now - CHART_SPAN_MS) this.samples.shift();
      this.renderChart(now);
    }
    $("uptime").textContent = `up ${st.uptimeS} s`;
    this.last = { status: st, at: now };
    this.renderHub(st);
    this.renderSlow(st);
    this.renderClients();
  }

  /** Role, standby and lag, epoch, federation (from the `federation_*` counters). */
  renderHub(st: Status): void {
    const role = ROLES[st.identity?.role ?? 0] ?? "unknown";
    $("hub-role").textContent = role;
    const standby = $("hub-standby");
    const lag = $("hub-lag");
    if (role === "standby") {
      standby.textContent = st.standbyAddr ? `this hub follows ${st.standbyAddr}` : "this hub is a standby (no primary)";
      lag.textContent = "–";
    } else if (st.standbyAddr) {
      standby.textContent = `${st.standbyAddr} attached`;
      lag.textContent = `${st.replLagChanges} changes (${st.replLagBytes} bytes)`;
    } else {
      standby.textContent = "none attached";
      lag.textContent = "–";
    }
    standby.className = st.standbyAddr ? "ok" : "muted";
    $("hub-epoch").textContent = String(st.identity?.epoch ?? 0n);
    const fed = $("hub-federation");
    fed.textContent = federationLine(st.counters);
    fed.className = !("federation_connected" in st.counters)
      ? "muted"
      : st.counters["federation_connected"] === 1n
        ? "ok"
        : "down";
  }

  /** Clients with dropped deliveries (`dropped:CLIENT_ID` counters), most drops first. */
  renderSlow(st: Status): void {
    const body = ($("slow") as HTMLTableElement).tBodies[0]!;
    body.replaceChildren();
    const slow = Object.entries(st.counters)
      .filter(([k, v]) => k.startsWith("dropped:") && v > 0n)
      .map(([k, v]) => ({ client: k.slice("dropped:".length), dropped: v }))
      .sort((a, b) => (a.dropped === b.dropped ? (a.client < b.client ? -1 : 1) : a.dropped > b.dropped ? -1 : 1));
    for (const c of slow) {
      const tr = document.createElement("tr");
      tr.dataset.slow = c.client;
      cell(tr, c.client, "t");
      cell(tr, String(c.dropped), "n");
      body.appendChild(tr);
    }
    if (slow.length === 0) {
      const tr = document.createElement("tr");
      cell(tr, "none: every connected client keeps up", "note").colSpan = 2;
      body.appendChild(tr);
    }
    $("slow-disconnects").textContent = String(st.counters["slow_consumer_disconnects"] ?? 0n);
  }

  /**
   * Frames in and out per second as two SVG polylines: over the last
   * CHART_SPAN_MS, or over the time since the first sample while there is
   * less (at least CHART_MIN_MS), so a young page fills the chart too.
   */
  renderChart(now: number): void {
    const peak = Math.max(1, ...this.samples.map((p) => Math.max(p.rin, p.rout)));
    const span = Math.min(CHART_SPAN_MS, Math.max(CHART_MIN_MS, now - (this.samples[0]?.at ?? now)));
    const x = (at: number): number => CHART_W - ((now - at) / span) * CHART_W;
    const y = (v: number): number => CHART_H - (v / peak) * (CHART_H - 6);
    const line = (pick: (p: { rin: number; rout: number }) => number): string =>
      this.samples.map((p) => `${x(p.at).toFixed(1)},${y(pick(p)).toFixed(1)}`).join(" ");
    $("rates-in").setAttribute("points", line((p) => p.rin));
    $("rates-out").setAttribute("points", line((p) => p.rout));
    const svg = $("rates");
    svg.dataset.samples = String(this.samples.length);
    $("rates-peak").textContent = `${peak} / s`;
    const secs = Math.round(span / 1000);
    const over = secs >= 120 ? `${Math.round(secs / 60)} min` : `${secs} s`;
    $("rates-caption").textContent = `${this.samples.length} samples, one a second, over the last ${over}; peak ${peak} frames / s`;
  }

  presenceEvent(e: PresenceEvent): void {
    if (e.kind === "joined") this.clients.set(e.client.clientId, e.client);
    else this.clients.delete(e.client.clientId);
    this.presence.unshift({
      kind: e.kind,
      text: `${e.client.clientId} ${e.kind} (${e.client.transport})${e.reason ? `: ${e.reason}` : ""}`,
    });
    this.presence.length = Math.min(this.presence.length, PRESENCE_KEPT);
    this.renderClients();
    this.renderPresence();
  }

  topics(list: { pattern: string; subscribers: number }[] | string): void {
    const body = ($("topics") as HTMLTableElement).tBodies[0]!;
    body.replaceChildren();
    if (typeof list === "string") {
      const tr = document.createElement("tr");
      cell(tr, list, "note").colSpan = 2;
      body.appendChild(tr);
      return;
    }
    for (const t of list) {
      const tr = document.createElement("tr");
      tr.dataset.topic = t.pattern;
      cell(tr, t.pattern, "t");
      cell(tr, String(t.subscribers));
      body.appendChild(tr);
    }
  }

  kvUpdate(u: KvUpdate): void {
    if (u.deleted) this.kv.delete(u.key);
    else this.kv.set(u.key, u);
    this.renderKv();
  }

  renderClients(): void {
    const now = Date.now();
    const body = ($("clients") as HTMLTableElement).tBodies[0]!;
    body.replaceChildren();
    for (const c of [...this.clients.values()].sort((a, b) => (a.clientId < b.clientId ? -1 : 1))) {
      const tr = document.createElement("tr");
      tr.dataset.client = c.clientId;
      if (c.clientId === this.self) tr.className = "self";
      cell(tr, c.clientId, "t");
      const badge = document.createElement("span");
      badge.className = "transport";
      badge.textContent = c.transport;
      cell(tr, "").appendChild(badge);
      cell(tr, c.addr);
      cell(tr, c.clientId === this.self ? `${c.agent} (this page)` : c.agent);
      cell(tr, ago(Number(c.connectedAtMs), now));
      body.appendChild(tr);
    }
  }

  renderPresence(): void {
    const list = $("presence");
    list.replaceChildren();
    for (const p of this.presence) {
      const li = document.createElement("li");
      li.className = p.kind;
      li.textContent = p.text;
      list.appendChild(li);
    }
  }

  renderKv(): void {
    const body = ($("kv") as HTMLTableElement).tBodies[0]!;
    body.replaceChildren();
    for (const key of [...this.kv.keys()].sort()) {
      const u = this.kv.get(key)!;
      const tr = document.createElement("tr");
      tr.dataset.key = key;
      cell(tr, key, "t");
      const text = decoder.decode(u.value);
      cell(tr, text.length > 80 ? `${text.slice(0, 80)}…` : text, "v");
      cell(tr, String(u.version));
      cell(tr, u.by);
      body.appendChild(tr);
    }
  }
}

/** Connects, fills the page, and keeps it live until the client closes; then starts over. */
async function run(token: string): Promise<void> {
  const clientId = `dashboard-${crypto.getRandomValues(new Uint32Array(1))[0]!.toString(16)}`;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  setState("connecting…", "");
  let client: Client;
  try {
    client = await Client.connect({ url: `${proto}//${location.host}/v1/ws`, clientId, token, agent: "switchboard dashboard" });
  } catch (e) {
    if (e instanceof AuthFailed || e instanceof HubUnverified) {
      // A wrong token: ask again rather than retry.
      sessionStorage.removeItem(STORE);
      askToken(`wrong token (${e.message})`);
      return;
    }
    setState(`cannot connect: ${(e as Error).message}`, "down");
    setTimeout(() => void run(token), 2000);
    return;
  }
  const view = new View(clientId);
  const bearer = await httpToken(await keyFromToken(token));
  const topics = async (): Promise<void> => {
    try {
      const r = await fetch("/v1/topics", { headers: { authorization: `Bearer ${bearer}` }, cache: "no-store" });
      view.topics(r.ok ? ((await r.json()) as { topics: { pattern: string; subscribers: number }[] }).topics : `unavailable (HTTP ${r.status})`);
    } catch {
      view.topics("unavailable");
    }
  };
  let events: AsyncIterable<PresenceEvent>;
  let kv: AsyncIterable<KvUpdate>;
  try {
    const presence = await client.watchPresence();
    for (const c of presence.clients) view.clients.set(c.clientId, c);
    events = presence.events;
    kv = await client.kvWatch("", { prefix: true });
    view.status(await client.status());
  } catch (e) {
    // E.g. a principal without the right to list clients or read keys.
    setState(`cannot watch the hub: ${(e as Error).message}`, "down");
    await client.close();
    setTimeout(() => void run(token), 5000);
    return;
  }
  await topics();
  view.renderPresence();
  view.renderKv();
  setState("live", "live");

  void (async () => {
    for await (const e of events) view.presenceEvent(e);
  })();
  void (async () => {
    for await (const u of kv) view.kvUpdate(u);
  })();
  void (async () => {
    for await (const ev of client.events()) {
      if (ev.type === "disconnected") setState("reconnecting…", "down");
      else if (ev.type === "reconnected" && ev.resumed) setState("live", "live");
      // A fresh session has lost the presence watch: start the page over.
      else if (ev.type === "reconnected") void client.close();
    }
  })();
  const timer = setInterval(() => {
    if (client.state !== "connected") return;
    client.status().then((st) => view.status(st), () => {});
    void topics();
  }, STATUS_EVERY_MS);
  const err = await client.closed;
  clearInterval(timer);
  setState(`disconnected: ${err.message}`, "down");
  setTimeout(() => void run(token), 2000);
}

/** Shows the token form (with `why` as the state), and connects with what the user types. */
function askToken(why: string): void {
  const form = $("token-form") as HTMLFormElement;
  form.hidden = false;
  setState(why, why === "needs token" ? "" : "down");
  form.onsubmit = (e) => {
    e.preventDefault();
    const t = ($("token-input") as HTMLInputElement).value.trim();
    if (!t) return;
    if (($("token-remember") as HTMLInputElement).checked) sessionStorage.setItem(STORE, t);
    form.hidden = true;
    void run(t);
  };
}

const token = initialToken();
if (token) void run(token);
else askToken("needs token");
