//! The dashboard in a real browser: headless Chromium driven through
//! chromedriver (WebDriver) loads the page from a running hub; the page is a
//! client of the hub (the TypeScript client over `/v1/ws`), and clients
//! joining and leaving, counters and kv keys must show on it live, as must
//! the hub's role and standby, a slow consumer with its drop count and the
//! chart of frame rates.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them). Without them the test prints a notice and passes, unless `CI` is
//! set, where it fails. `SWITCHBOARD_SCREENSHOT=1` saves the page to
//! `docs/dashboard.png`.

mod common;

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::TestClient;
use fantoccini::{ClientBuilder, Locator};
use serde_json::json;
use switchboard_discovery::Secret;
use switchboard_hub::{http_token, HttpConfig, Hub};
use switchboard_wire::proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

fn find(names: &[&str], env: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in names {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts chromedriver on a free loopback port and waits until it answers.
async fn chromedriver(bin: &PathBuf) -> Result<(Child, u16)> {
    for _ in 0..5 {
        let port = free_port()?;
        let mut child = Command::new(bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start chromedriver")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let req = format!(
                    "GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
                );
                if s.write_all(req.as_bytes()).await.is_ok() {
                    let mut out = Vec::new();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
                    if String::from_utf8_lossy(&out).contains("\"ready\"") {
                        return Ok((child, port));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill().await;
    }
    bail!("chromedriver did not start")
}

#[tokio::test]
async fn the_dashboard_shows_clients_live_in_chromium() -> Result<()> {
    let chromium = find(
        &["chromium", "chromium-browser", "google-chrome"],
        "CHROMIUM",
    );
    let driver = find(&["chromedriver"], "CHROMEDRIVER");
    let (Some(chromium), Some(driver)) = (chromium, driver) else {
        if std::env::var_os("CI").is_some() {
            bail!("chromium and chromedriver are required in CI; install the Debian packages chromium and chromium-driver");
        }
        eprintln!("notice: skipping the browser test: chromium or chromedriver not found (install chromium and chromium-driver)");
        return Ok(());
    };

    let mut config = common::config();
    config.http = Some(HttpConfig::new("127.0.0.1:0".parse()?));
    // A small outbound queue, so a client that never reads soon has
    // deliveries dropped (the page never holds a megabyte).
    config.limits.queue_bytes = 1024 * 1024;
    let hub = Hub::start(config).await?;
    let http_addr = hub.http_addr().context("gateway")?;
    let token = http_token(&Secret::from_token(common::TOKEN));
    assert_eq!(token, hub.http_token());

    let (_driver, port) = chromedriver(&driver).await?;
    let profile = tempfile::tempdir()?;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,820",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let browser = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .context("cannot open a chromium session")?;
    let result = drive(&browser, &hub, http_addr, &token).await;
    let _ = browser.close().await;
    hub.shutdown().await;
    result
}

/// Polls `check` on the page until it holds (at most 15 s).
async fn wait_for(
    browser: &fantoccini::Client,
    what: &str,
    css: &str,
    want: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(el) = browser.find(Locator::Css(css)).await {
            if let Ok(text) = el.text().await {
                if want(&text) {
                    return Ok(text);
                }
                last = text;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the page never showed {what} (last text of {css}: {last:?})")
}

async fn drive(
    browser: &fantoccini::Client,
    hub: &switchboard_hub::HubHandle,
    http_addr: std::net::SocketAddr,
    token: &str,
) -> Result<()> {
    // The page is a client of the hub: it takes the hub's shared token from
    // the URL fragment (never sent to the server) and drops it from the
    // address bar.
    let fragment = common::TOKEN.replace(' ', "%20");
    browser
        .goto(&format!("http://{http_addr}/#token={fragment}"))
        .await?;
    wait_for(browser, "a live page", "#feed-state", |t| t == "live").await?;
    let url = browser.current_url().await?;
    assert!(url.fragment().is_none(), "the token stays in {url}");
    let me = wait_for(browser, "the page itself", "tr.self", |t| {
        t.contains("this page")
    })
    .await?;
    assert!(me.starts_with("dashboard-") && me.contains("ws"), "{me}");
    wait_for(browser, "one client", "#n-clients", |t| t == "1").await?;

    // The hub panel: a primary without a standby; no federation reported.
    wait_for(browser, "the role", "#hub-role", |t| t == "primary").await?;
    wait_for(browser, "no standby", "#hub-standby", |t| {
        t == "none attached"
    })
    .await?;
    wait_for(browser, "the epoch", "#hub-epoch", |t| {
        t.parse::<u64>().is_ok()
    })
    .await?;
    wait_for(browser, "the federation line", "#hub-federation", |t| {
        t == "not federated"
    })
    .await?;
    wait_for(browser, "no slow consumer", "#slow", |t| t.contains("none")).await?;

    // A client connecting appears at once, with its transport (presence
    // watch), and the counters follow (status).
    let mut ui = TestClient::connect(hub.local_addr(), "ui").await?;
    let row = wait_for(browser, "the new client", "tr[data-client=\"ui\"]", |t| {
        t.contains("tcp")
    })
    .await?;
    assert!(row.starts_with("ui"), "row: {row}");
    wait_for(browser, "two clients", "#n-clients", |t| t == "2").await?;

    // A client leaving disappears, and the presence log says so.
    {
        let temp = TestClient::connect(hub.local_addr(), "probe-cli").await?;
        wait_for(browser, "probe-cli", "#clients", |t| {
            t.contains("probe-cli")
        })
        .await?;
        drop(temp);
    }
    wait_for(browser, "a departure", "#presence", |t| {
        t.contains("probe-cli joined") && t.contains("probe-cli left")
    })
    .await?;
    wait_for(browser, "probe-cli gone", "#clients", |t| {
        !t.contains("probe-cli") && t.contains("ui")
    })
    .await?;

    // More of the hub for the picture: workers, an HTTP client, kv keys.
    let mut workers = Vec::new();
    for id in ["worker-1", "worker-2"] {
        let mut w = TestClient::connect(hub.local_addr(), id).await?;
        w.subscribe(1, "jobs.*", "workers").await?;
        workers.push(w);
    }
    ui.subscribe(1, "events.>", "").await?;
    let body = json!({ "client": "http-agent", "pattern": "events.>" }).to_string();
    let mut s = tokio::net::TcpStream::connect(http_addr).await?;
    let req = format!(
        "POST /v1/subscribe HTTP/1.1\r\nHost: {http_addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    for (key, value) in [
        ("config/region", "eu-west"),
        ("config/replicas", "3"),
        ("jobs/resize/last", "photo-1182.jpg"),
    ] {
        let id = ui.next_id();
        ui.send(proto::KvSet {
            id,
            key: key.into(),
            value: value.as_bytes().to_vec().into(),
            expect_version: None,
        })
        .await?;
    }
    for i in 0..200u32 {
        ui.send(proto::Publish {
            topic: "jobs.resize".into(),
            payload: i.to_be_bytes().to_vec().into(),
            ..Default::default()
        })
        .await?;
    }
    // A subscriber that never reads: once the socket buffers and its
    // queue (1 MiB) are full, the hub drops its oldest deliveries and the
    // page lists it with the count.
    let mut slowpoke = TestClient::connect(hub.local_addr(), "slowpoke").await?;
    slowpoke.subscribe(1, "bulk", "").await?;
    let chunk = vec![7u8; 64 * 1024];
    for _ in 0..400 {
        ui.send(proto::Publish {
            topic: "bulk".into(),
            payload: chunk.clone().into(),
            ..Default::default()
        })
        .await?;
    }
    let slow = wait_for(
        browser,
        "the slow consumer",
        "tr[data-slow=\"slowpoke\"]",
        |t| {
            t.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        },
    )
    .await?;
    assert!(slow.starts_with("slowpoke"), "row: {slow}");
    assert!(
        !browser
            .find(Locator::Css("#slow"))
            .await?
            .text()
            .await?
            .contains("worker-"),
        "only the slow client is listed"
    );
    // The chart: one sample a second, each a point of both lines.
    wait_for(browser, "a chart", "#rates-caption", |t| {
        t.split_whitespace()
            .next()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n >= 5)
    })
    .await?;
    let points = browser
        .execute(
            "return ['rates-in', 'rates-out'].map(id => document.getElementById(id).points.numberOfItems)",
            vec![],
        )
        .await?;
    let points: Vec<u64> = serde_json::from_value(points)?;
    assert!(points.iter().all(|&n| n >= 5), "chart points: {points:?}");
    wait_for(
        browser,
        "the HTTP client",
        "tr[data-client=\"http-agent\"]",
        |t| t.contains("http"),
    )
    .await?;
    let kv = wait_for(
        browser,
        "a kv key",
        "tr[data-key=\"config/replicas\"]",
        |t| t.contains('3'),
    )
    .await?;
    assert!(kv.contains("ui"), "changed by: {kv}");
    wait_for(browser, "three keys", "#n-keys", |t| t == "3").await?;
    // Topics come from `GET /v1/topics` with the derived bearer token.
    wait_for(browser, "the topic", "tr[data-topic=\"jobs.*\"]", |t| {
        t.ends_with('2')
    })
    .await?;
    wait_for(browser, "the subscriptions", "#n-subs", |t| {
        t.parse::<u64>().is_ok_and(|n| n >= 4)
    })
    .await?;

    if std::env::var_os("SWITCHBOARD_SCREENSHOT").is_some() {
        let png = browser.screenshot().await?;
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/dashboard.png");
        std::fs::write(&path, png).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("screenshot saved to {}", path.display());
    }

    // Nothing was stored: a fresh load without the fragment asks for the
    // token; typed into the form (not remembered), it connects.
    browser.goto(&format!("http://{http_addr}/")).await?;
    wait_for(browser, "the token form", "#feed-state", |t| {
        t == "needs token"
    })
    .await?;
    let stored = browser
        .execute("return sessionStorage.length + localStorage.length", vec![])
        .await?;
    assert_eq!(stored, json!(0), "the page stored something");
    browser
        .find(Locator::Id("token-input"))
        .await?
        .send_keys(common::TOKEN)
        .await?;
    browser
        .find(Locator::Css("#token-form button"))
        .await?
        .click()
        .await?;
    wait_for(browser, "a live page", "#feed-state", |t| t == "live").await?;
    wait_for(browser, "the clients", "#clients", |t| {
        t.contains("worker-2")
    })
    .await?;
    let stored = browser
        .execute("return sessionStorage.length", vec![])
        .await?;
    assert_eq!(stored, json!(0), "the token was stored unasked");

    // A wrong token brings the form back instead of retrying. (From
    // another page: a fragment change alone does not reload.)
    browser.goto("about:blank").await?;
    browser
        .goto(&format!("http://{http_addr}/#token=not-the-token"))
        .await?;
    wait_for(browser, "a refusal", "#feed-state", |t| {
        t.starts_with("wrong token")
    })
    .await?;
    assert!(
        browser
            .find(Locator::Id("token-input"))
            .await?
            .is_displayed()
            .await?
    );
    drop(workers);
    drop(slowpoke);
    Ok(())
}
