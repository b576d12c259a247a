// Live view of a switchboard hub, fed by the /v1/feed WebSocket.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let last = null;

  function token() {
    const m = /(?:^|[#&])token=([0-9a-fA-F]+)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem("switchboard-token", m[1]);
      history.replaceState(null, "", location.pathname);
      return m[1];
    }
    return sessionStorage.getItem("switchboard-token");
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function ago(ms, now) {
    const s = Math.max(0, Math.round((now - ms) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }

  function render(v) {
    const st = v.status;
    $("service").textContent = st.service || "";
    $("n-clients").textContent = st.clients;
    $("n-subs").textContent = st.subscriptions;
    $("n-queue").textContent = st.queue_depth;
    $("n-dropped").textContent = st.dropped;
    if (last) {
      const dt = Math.max(0.001, (v.time_ms - last.time_ms) / 1000);
      $("rate-in").textContent = Math.round((st.msgs_in - last.status.msgs_in) / dt);
      $("rate-out").textContent = Math.round((st.msgs_out - last.status.msgs_out) / dt);
    }
    $("uptime").textContent = "up " + st.uptime_s + " s";

    const cb = $("clients").tBodies[0];
    cb.replaceChildren();
    for (const c of v.clients) {
      const tr = document.createElement("tr");
      tr.dataset.client = c.client_id;
      cell(tr, c.client_id, "t");
      const t = cell(tr, "");
      const badge = document.createElement("span");
      badge.className = "transport";
      badge.textContent = c.transport;
      t.appendChild(badge);
      cell(tr, c.addr);
      cell(tr, c.agent);
      cell(tr, ago(c.connected_at_ms, v.time_ms));
      cb.appendChild(tr);
    }

    const tb = $("topics").tBodies[0];
    tb.replaceChildren();
    for (const t of v.topics) {
      const tr = document.createElement("tr");
      tr.dataset.topic = t.pattern;
      cell(tr, t.pattern, "t");
      cell(tr, t.subscribers);
      tb.appendChild(tr);
    }

    const pl = $("presence");
    pl.replaceChildren();
    for (const p of v.presence.slice().reverse()) {
      const li = document.createElement("li");
      li.className = p.event;
      li.textContent = p.client.client_id + " " + p.event + " (" + p.client.transport + ")" +
        (p.reason ? ": " + p.reason : "");
      pl.appendChild(li);
    }
    last = v;
  }

  function connect(tok) {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(proto + "//" + location.host + "/v1/feed?token=" + encodeURIComponent(tok));
    const state = $("feed-state");
    ws.onopen = () => { state.textContent = "live"; state.className = "state live"; };
    ws.onmessage = (e) => render(JSON.parse(e.data));
    ws.onclose = () => {
      state.textContent = "disconnected"; state.className = "state down";
      setTimeout(() => connect(tok), 2000);
    };
  }

  const tok = token();
  if (tok) {
    connect(tok);
  } else {
    $("token-form").hidden = false;
    $("feed-state").textContent = "needs token";
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const t = $("token-input").value.trim();
      sessionStorage.setItem("switchboard-token", t);
      $("token-form").hidden = true;
      connect(t);
    });
  }
})();
