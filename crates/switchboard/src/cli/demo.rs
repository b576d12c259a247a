//! `switchboard demo`: a hub and several clients in this process, showing
//! every pattern with readable output.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use switchboard::{Client, Hub, PresenceEvent};

const TOKEN: &str = "switchboard-demo";

struct Out {
    json: bool,
}

impl Out {
    fn section(&self, n: u32, title: &str) {
        if !self.json {
            println!("\n{n}. {title}");
        }
    }
    fn line(&self, part: &str, text: String, extra: serde_json::Value) {
        if self.json {
            let mut v = json!({"part": part, "text": text});
            if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
                obj.extend(more);
            }
            println!("{v}");
        } else {
            println!("   {text}");
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn connect(service: &str, id: &str) -> anyhow::Result<Client> {
    Ok(Client::builder(id)
        .service(service)
        .token(TOKEN)
        .agent("switchboard-demo")
        .connect()
        .await?)
}

pub async fn run(json_out: bool) -> anyhow::Result<()> {
    let out = Out { json: json_out };
    if !json_out {
        println!("switchboard demo: one hub and a few clients, all in this process");
    }
    let service = format!("demo-{}", std::process::id());

    // 1. Discovery.
    out.section(1, "discovery");
    let hub = Hub::builder()
        .service(&service)
        .token(TOKEN)
        .start()
        .await?;
    out.line(
        "discovery",
        format!(
            "hub for service {service:?} bound a random free port: {}",
            hub.local_addr()
        ),
        json!({"service": service, "addr": hub.local_addr().to_string()}),
    );
    let t = Instant::now();
    let found = switchboard::discover(
        &service,
        &switchboard::Secret::from_token(TOKEN),
        false,
        Duration::from_secs(5),
    )
    .await?;
    let first = found
        .first()
        .ok_or_else(|| anyhow::anyhow!("discovery found nothing"))?;
    out.line(
        "discovery",
        format!(
            "discovered it by name via the {} in {}, proof verified (instance {})",
            first.via,
            ms(t.elapsed()),
            first.hub.instance_id
        ),
        json!({"via": first.via.to_string(), "addr": first.addr.to_string()}),
    );
    let ui = connect(&service, "ui").await?;
    let worker = connect(&service, "worker").await?;
    let login = connect(&service, "login").await?;
    out.line(
        "discovery",
        "clients \"ui\", \"worker\" and \"login\" connected and authenticated".to_string(),
        json!({"clients": ["ui", "worker", "login"]}),
    );

    // 2. Request/reply.
    out.section(2, "request/reply");
    let _serving = worker
        .serve(|req| async move {
            let text = String::from_utf8_lossy(req.payload()).to_string();
            Ok::<_, String>(format!("thumbnail of {text} ready").into())
        })
        .await?;
    let t = Instant::now();
    let reply = ui.request("worker", "photo-17.jpg").await?;
    out.line(
        "request",
        format!(
            "ui -> worker: \"photo-17.jpg\"   worker -> ui: {:?} ({})",
            String::from_utf8_lossy(&reply),
            ms(t.elapsed())
        ),
        json!({"reply": String::from_utf8_lossy(&reply)}),
    );
    match ui.request("nobody", "x").await {
        Err(e) => out.line(
            "request",
            format!("ui -> nobody: refused at once ({e})"),
            json!({"error": e.to_string()}),
        ),
        Ok(_) => anyhow::bail!("a request to an unknown client succeeded"),
    }

    // 3. Pub/sub fan-out and queue groups.
    out.section(3, "pub/sub fan-out");
    let mut subs = Vec::new();
    for (client, pattern) in [
        (&ui, "orders.>"),
        (&worker, "orders.*.created"),
        (&login, "orders.eu.created"),
    ] {
        subs.push((
            client.id().to_string(),
            pattern,
            client.subscribe(pattern).await?,
        ));
    }
    login.publish("orders.eu.created", "order #1001").await?;
    for (id, pattern, sub) in &mut subs {
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("subscription ended"))?;
        out.line(
            "pubsub",
            format!(
                "{id:<6} subscribed to {pattern:<18} got {:?} on {}",
                String::from_utf8_lossy(&m.payload),
                m.topic
            ),
            json!({"subscriber": id, "pattern": pattern, "topic": m.topic}),
        );
    }
    let mut g1 = ui.subscribe_group("jobs.>", "workers").await?;
    let mut g2 = worker.subscribe_group("jobs.>", "workers").await?;
    for i in 0..10 {
        login.publish(&format!("jobs.{i}"), "job").await?;
    }
    let (mut n1, mut n2) = (0, 0);
    while n1 + n2 < 10 {
        tokio::select! {
            Some(_) = g1.next() => n1 += 1,
            Some(_) = g2.next() => n2 += 1,
            _ = tokio::time::sleep(Duration::from_secs(5)) => anyhow::bail!("queue group deliveries missing"),
        }
    }
    out.line(
        "pubsub",
        format!("queue group \"workers\": 10 jobs shared out, ui took {n1}, worker took {n2}"),
        json!({"group": "workers", "ui": n1, "worker": n2}),
    );

    // 4. Key/value sync: a login token.
    out.section(4, "key/value sync (login token)");
    let mut ui_watch = ui.kv().watch("session.token").await?;
    let mut worker_watch = worker.kv().watch("session.token").await?;
    let t = Instant::now();
    let version = login.kv().set("session.token", "tok-7f3a").await?;
    for (id, w) in [("ui", &mut ui_watch), ("worker", &mut worker_watch)] {
        let ev = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("watch ended"))?;
        out.line(
            "kv",
            format!(
                "{id:<6} sees session.token = {:?} (version {}, set by {}) after {}",
                String::from_utf8_lossy(&ev.value),
                ev.version,
                ev.by,
                ms(t.elapsed())
            ),
            json!({"watcher": id, "version": ev.version}),
        );
    }
    match login.kv().cas("session.token", version - 1, "stale").await {
        Err(e) => out.line(
            "kv",
            format!("a stale compare-and-set is refused: {e}"),
            json!({"cas": "refused"}),
        ),
        Ok(_) => anyhow::bail!("a stale compare-and-set succeeded"),
    }

    // 5. Presence.
    out.section(5, "presence");
    let mut presence = ui.presence().await?;
    let names: Vec<_> = presence
        .current()
        .iter()
        .map(|c| c.client_id.clone())
        .collect();
    out.line(
        "presence",
        format!("connected now: {}", names.join(", ")),
        json!({"clients": names}),
    );
    let guest = connect(&service, "guest").await?;
    guest.close().await;
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(5), presence.next()).await? {
            Some(PresenceEvent::Joined(c)) => out.line(
                "presence",
                format!("{} joined", c.client_id),
                json!({"joined": c.client_id}),
            ),
            Some(PresenceEvent::Left { client, .. }) => out.line(
                "presence",
                format!("{} left", client.client_id),
                json!({"left": client.client_id}),
            ),
            Some(_) => {}
            None => anyhow::bail!("presence stream ended"),
        }
    }

    // 6. Session.
    out.section(6, "ordered session");
    super::demo_session::run(&service, TOKEN, &out_fn(&out)).await?;

    // Status.
    let status = ui.status().await?;
    if !json_out {
        println!(
            "\nhub status: {} clients, {} subscriptions, {} frames in, {} frames out, {} dropped",
            status.clients, status.subscriptions, status.msgs_in, status.msgs_out, status.dropped
        );
    }
    drop((subs, g1, g2, ui_watch, worker_watch, presence));
    for c in [&ui, &worker, &login] {
        c.close().await;
    }
    hub.shutdown().await;
    if !json_out {
        println!("done.");
    }
    Ok(())
}

fn out_fn(out: &Out) -> impl Fn(String) + '_ {
    move |text: String| out.line("session", text, json!({}))
}
