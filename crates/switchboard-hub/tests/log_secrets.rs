//! No secret, token or proof reaches the hub's logs: every `tracing` event
//! and span of a run with failed and successful handshakes, wrong and right
//! HTTP tokens (header and query), a probe and a protocol error is recorded
//! at every level and searched for the key, the token text, the HTTP bearer
//! token and the proofs exchanged; with a policy, a token principal's
//! token, its SHA-256 and key (native handshake and bearer, right and
//! wrong); and, on a TLS hub, the private key
//! files' contents, in the logs and in every TLS error.
//!
//! Its own test binary, as it installs a global subscriber.

mod common;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use common::{config, TestClient, WAIT};
use switchboard_discovery::{client_proof, nonce, Secret};
use switchboard_hub::{http_token, ClientTls, HttpConfig, Hub, Policy, TlsServer};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{PROBE_MAGIC, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records every field of every span and event as text.
struct Recorder {
    text: Arc<Mutex<String>>,
    next: std::sync::atomic::AtomicU64,
}

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }
    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        let _ = write!(self.0, " {}={value:?}", field.name());
        self.0.push_str(&String::from_utf8_lossy(value));
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut t = self.text.lock().unwrap();
        t.push_str(span.metadata().name());
        span.record(&mut Fields(&mut t));
        t.push('\n');
        Id::from_u64(
            self.next
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .max(1),
        )
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut t = self.text.lock().unwrap();
        values.record(&mut Fields(&mut t));
        t.push('\n');
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut t = self.text.lock().unwrap();
        t.push_str(event.metadata().level().as_str());
        event.record(&mut Fields(&mut t));
        t.push('\n');
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// A token principal's token in the test policy.
const APP_TOKEN: &str = "log secrets app token";

/// A native handshake announcing `announced`'s key id and proving `proof`
/// (the right key or not); the proofs exchanged go to `proofs`. The answer
/// to `Auth` (`None`: closed without one).
async fn token_handshake(
    c: &mut TestClient,
    id: &str,
    announced: &Secret,
    proof: &Secret,
    proofs: &mut Vec<Vec<u8>>,
) -> Result<Option<Kind>> {
    let client_nonce = nonce();
    c.send(proto::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_id: id.into(),
        client_nonce: client_nonce.to_vec().into(),
        key_id: announced.key_id().to_vec().into(),
        ..Default::default()
    })
    .await?;
    let Some(Kind::Challenge(ch)) = c.expect().await?.kind else {
        bail!("no challenge")
    };
    proofs.push(ch.proof.to_vec());
    let mine = client_proof(proof, &ch.hub_nonce, &client_nonce, id);
    proofs.push(mine.to_vec());
    c.send(proto::Auth {
        proof: mine.to_vec().into(),
    })
    .await?;
    Ok(c.recv().await?.and_then(|f| f.kind))
}

async fn http(addr: std::net::SocketAddr, path: &str, auth: Option<&str>) -> Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = auth {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw)).await??;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_token_or_proof_is_logged() -> Result<()> {
    let text = Arc::new(Mutex::new(String::new()));
    tracing::subscriber::set_global_default(Recorder {
        text: text.clone(),
        next: 1.into(),
    })?;

    let key = *b"0123456789abcdef0123456789ABCDEF";
    let secret = Secret::from_bytes(key);
    let bearer = http_token(&secret);
    let mut cfg = config();
    cfg.secret = Secret::from_bytes(key);
    cfg.http = Some(HttpConfig::new("127.0.0.1:0".parse()?));
    let hub = Hub::start(cfg).await?;
    let addr = hub.local_addr();
    let http_addr = hub.http_addr().expect("gateway runs");
    let mut proofs: Vec<Vec<u8>> = Vec::new();

    // A probe, a wrong secret, the right one, then a protocol error.
    let mut c = TestClient::connect_raw(addr).await?;
    c.send(proto::Probe {
        magic: PROBE_MAGIC,
        version: PROTOCOL_VERSION,
        service: "hubtest".into(),
        nonce: nonce().to_vec().into(),
    })
    .await?;
    for f in c.expect_closed().await? {
        if let Some(Kind::ProbeReply(r)) = f.kind {
            proofs.push(r.proof.to_vec());
        }
    }
    let mut c = TestClient::connect_raw(addr).await?;
    let client_nonce = nonce();
    c.send(proto::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_id: "wrong".into(),
        client_nonce: client_nonce.to_vec().into(),
        ..Default::default()
    })
    .await?;
    let Some(Kind::Challenge(ch)) = c.expect().await?.kind else {
        bail!("no challenge")
    };
    proofs.push(ch.proof.to_vec());
    let wrong = client_proof(
        &Secret::from_token("not the secret"),
        &ch.hub_nonce,
        &client_nonce,
        "wrong",
    );
    proofs.push(wrong.to_vec());
    c.send(proto::Auth {
        proof: wrong.to_vec().into(),
    })
    .await?;
    c.expect_closed().await?;
    let mut c = TestClient::connect_raw(addr).await?;
    assert!(c.handshake("right", &secret).await?.is_none());
    c.send_bytes(&[0, 0, 0, 2, 0xff, 0xff]).await?;
    c.expect_closed().await?;

    // HTTP: no token, a wrong one, the right one in the header and in the
    // query string.
    let wrong_bearer = "f".repeat(64);
    assert!(http(http_addr, "/v1/status", None).await?.contains(" 401 "));
    let a = http(http_addr, "/v1/status", Some(&wrong_bearer)).await?;
    assert!(a.contains(" 401 ") && !a.contains(&wrong_bearer), "{a}");
    assert!(http(http_addr, "/v1/status", Some(&bearer))
        .await?
        .contains(" 200 "));
    assert!(http(http_addr, &format!("/v1/status?token={bearer}"), None)
        .await?
        .contains(" 200 "));
    hub.shutdown().await;

    // TLS: a hub whose key is read from a file, a TLS client that trusts
    // another CA, a plaintext client on the TLS port, and key files that
    // do not fit (a key for another certificate, a key given as the
    // certificate). Neither the logs nor the errors hold the keys.
    let dir = tempfile::tempdir()?;
    let key_pair = rcgen::KeyPair::generate()?;
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.self_signed(&key_pair)?;
    let other = rcgen::KeyPair::generate()?;
    let other_cert =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.self_signed(&other)?;
    let (cert_file, key_file, other_file) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("other.pem"),
    );
    std::fs::write(&cert_file, cert.pem())?;
    std::fs::write(&key_file, key_pair.serialize_pem())?;
    std::fs::write(&other_file, other.serialize_pem())?;
    let mut cfg = config();
    cfg.tls = Some(TlsServer::from_pem_files(&cert_file, &key_file, None)?);
    let mut errors = vec![format!("{:?}", cfg.tls)];
    let hub = Hub::start(cfg).await?;
    let distrust = ClientTls::new(vec![other_cert.der().clone()], None)?;
    match distrust.connect(hub.local_addr(), Some("localhost")).await {
        Ok(_) => bail!("a TLS client that trusts another CA connected"),
        Err(e) => errors.push(format!("{e} {e:?}")),
    }
    let mut c = TestClient::connect_raw(hub.local_addr()).await?;
    assert!(c.handshake("plain", &secret).await?.is_some());
    for (chain, key) in [(&cert_file, &other_file), (&key_file, &key_file)] {
        match TlsServer::from_pem_files(chain, key, None) {
            Ok(_) => bail!("a TLS setting whose key does not fit was accepted"),
            Err(e) => errors.push(format!("{e} {e:?}")),
        }
    }
    hub.shutdown().await;

    // A policy naming a token principal: a native handshake with its token
    // (right, and a wrong proof under its key id), and HTTP calls with the
    // token as the bearer token (right and wrong). Neither the token, its
    // SHA-256 (the key, as the policy file stores it) nor the key's bytes
    // are logged.
    let app_digest = Policy::hash_token(APP_TOKEN);
    let policy = format!(
        "[[principal]]\nname = \"app\"\ntoken_sha256 = [\"{app_digest}\"]\nids = [\"app-*\"]\nhttp = true\nclients = true\n"
    );
    let mut cfg = config();
    cfg.secret = Secret::from_bytes(key);
    cfg.http = Some(HttpConfig::new("127.0.0.1:0".parse()?));
    cfg.admission = Some(Arc::new(Policy::parse(&policy)?));
    let hub = Hub::start(cfg).await?;
    let app_key = Secret::from_token(APP_TOKEN);
    let app_key_bytes = {
        use sha2::Digest;
        sha2::Sha256::digest(APP_TOKEN.as_bytes())
    };
    let mut c = TestClient::connect_raw(hub.local_addr()).await?;
    let answer = token_handshake(&mut c, "app-1", &app_key, &app_key, &mut proofs).await?;
    assert!(matches!(answer, Some(Kind::Welcome(_))), "{answer:?}");
    let mut c = TestClient::connect_raw(hub.local_addr()).await?;
    let wrong = Secret::from_token("not the app token");
    let answer = token_handshake(&mut c, "app-2", &app_key, &wrong, &mut proofs).await?;
    assert!(matches!(answer, Some(Kind::Error(_)) | None), "{answer:?}");
    let http_addr = hub.http_addr().expect("gateway runs");
    let wrong_app = format!("{APP_TOKEN}x");
    assert!(http(http_addr, "/v1/status", Some(APP_TOKEN))
        .await?
        .contains(" 200 "));
    let a = http(http_addr, "/v1/status", Some(&wrong_app)).await?;
    assert!(a.contains(" 401 ") && !a.contains(&wrong_app), "{a}");
    hub.shutdown().await;

    let logged = text.lock().unwrap().clone();
    assert!(
        logged.lines().count() >= 3,
        "the recorder saw the run: {logged}"
    );
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut needles = vec![
        String::from_utf8_lossy(&key).into_owned(),
        String::from_utf8_lossy(&key[..8]).into_owned(),
        hex(&key),
        format!("{:?}", &key[..8]).trim_end_matches(']').to_owned(),
        common::TOKEN.to_owned(),
        bearer.clone(),
        wrong_bearer,
        APP_TOKEN.to_owned(),
        wrong_app,
        app_digest.clone(),
        app_digest.to_uppercase(),
        format!("{:?}", &app_key_bytes[..8])
            .trim_end_matches(']')
            .to_owned(),
    ];
    for p in &proofs {
        needles.push(hex(p));
        needles.push(format!("{:?}", &p[..8]).trim_end_matches(']').to_owned());
    }
    for n in &needles {
        assert!(
            !logged.contains(n.as_str()),
            "the log holds {n:?}:\n{logged}"
        );
    }
    let key_lines: Vec<String> = [key_pair.serialize_pem(), other.serialize_pem()]
        .iter()
        .flat_map(|pem| {
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!key_lines.is_empty());
    let errors = errors.join("\n");
    for line in &key_lines {
        assert!(
            !logged.contains(line.as_str()),
            "the log holds a key line:\n{logged}"
        );
        assert!(
            !errors.contains(line.as_str()),
            "an error holds a key line:\n{errors}"
        );
    }
    Ok(())
}
