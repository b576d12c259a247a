//! TLS end to end: the client over `tls://` (request/reply, pub/sub, a
//! reconnect), the typed refusals (unknown CA, wrong name, expired, a port
//! that does not speak TLS, plaintext to a TLS port), mutual TLS reaching
//! the admission seam, HTTPS and WSS on the gateway, and the plaintext
//! guard. Certificates are made here with rcgen; no key is checked in.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::StreamExt;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use switchboard::discovery::tls::{ClientTls, TlsError};
use switchboard::hub::router::admission::{Admission, Identity, Peer, Proof, Refusal};
use switchboard::hub::{HubConfig, TlsServer};
use switchboard::{Client, ClientError, Hub, HubTls, TlsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "tls test token";
const WAIT: Duration = Duration::from_secs(10);

/// A test CA.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ok(Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `cn` with these SANs: `(cert PEM, key PEM)`.
    fn leaf(&self, cn: &str, sans: &[&str], expired: bool) -> Result<(String, String)> {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        if expired {
            params.not_before = rcgen::date_time_ymd(2001, 1, 1);
            params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A hub's TLS setting: a certificate for localhost and 127.0.0.1.
fn server(ca: &Ca, client_ca: Option<&Ca>, expired: bool) -> Result<TlsServer> {
    let (cert, key) = ca.leaf("hub", &["localhost", "127.0.0.1"], expired)?;
    let client_ca = client_ca.map(Ca::pem);
    Ok(TlsServer::from_pem(
        cert.as_bytes(),
        key.as_bytes(),
        client_ca.as_ref().map(|c| c.as_bytes()),
    )?)
}

fn hub_config(tls: Option<TlsServer>, http: bool) -> Result<HubConfig> {
    let mut b = Hub::builder()
        .token(TOKEN)
        .listen("127.0.0.1:0")
        .write_hint(false)
        .tls(HubTls {
            server: tls,
            ..HubTls::default()
        });
    if http {
        b = b.http("127.0.0.1:0");
    }
    Ok(b.config()?)
}

fn client(id: &str, addr: &str, tls: Option<TlsOptions>) -> switchboard::ClientBuilder {
    let b = Client::builder(id)
        .addr(addr)
        .token(TOKEN)
        .reconnect(false)
        .connect_timeout(WAIT);
    match tls {
        Some(t) => b.tls(t),
        None => b,
    }
}

fn tls_error(r: Result<Client, ClientError>) -> Result<TlsError> {
    match r {
        Err(ClientError::Tls(e)) => Ok(e),
        Err(other) => bail!("expected a TLS error, got {other:?}"),
        Ok(_) => bail!("expected a TLS error, the client connected"),
    }
}

#[tokio::test]
async fn request_reply_and_pubsub_over_tls() -> Result<()> {
    let ca = Ca::new("test CA")?;
    let hub =
        switchboard::hub::Hub::start(hub_config(Some(server(&ca, None, false)?), false)?).await?;
    let addr = format!("tls://localhost:{}", hub.local_addr().port());
    let trust = TlsOptions::ca_pem(ca.pem());
    let calc = client("calc", &addr, Some(trust.clone())).connect().await?;
    let _serving = calc
        .serve(|req| async move { Ok::<_, String>(req.payload().to_vec().into()) })
        .await?;
    let user = client("user", &addr, Some(trust.clone()))
        .reconnect(true)
        .connect()
        .await?;
    assert_eq!(&user.request("calc", "ping").await?[..], b"ping" as &[u8]);

    let mut sub = calc.subscribe("news.>").await?;
    let payload = vec![7u8; 64 * 1024];
    for _ in 0..20 {
        user.publish("news.tls", payload.clone()).await?;
    }
    for _ in 0..20 {
        let msg = tokio::time::timeout(WAIT, sub.next())
            .await?
            .expect("a message");
        assert_eq!(msg.payload.len(), payload.len());
    }
    let clients = user.clients().await?;
    assert!(clients.iter().all(|c| c.transport == "tls"), "{clients:?}");
    calc.close().await;

    // A reconnect speaks TLS again: a new hub on the same port.
    let port = hub.local_addr().port();
    hub.shutdown().await;
    // The old hub's connections may still hold the port for a moment after
    // shutdown returns (their sockets close on their own tasks): bind again
    // until it is free, within the test bound.
    let deadline = Instant::now() + WAIT;
    let hub = loop {
        let mut config = hub_config(Some(server(&ca, None, false)?), false)?;
        config.bind.port = switchboard::discovery::PortChoice::Fixed(port);
        match switchboard::hub::Hub::start(config).await {
            Ok(hub) => break hub,
            Err(e) if Instant::now() < deadline => {
                assert!(e.to_string().contains("in use"), "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let clients = loop {
        if let Ok(list) = user.clients().await {
            break list;
        }
        assert!(Instant::now() < deadline, "no reconnect within {WAIT:?}");
        let _ = user.wait_connected(WAIT).await;
    };
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(clients[0].transport, "tls");
    user.close().await;
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_wrong_ca_a_wrong_name_and_an_expired_certificate_are_refused() -> Result<()> {
    let ca = Ca::new("test CA")?;
    let other = Ca::new("another CA")?;
    let hub =
        switchboard::hub::Hub::start(hub_config(Some(server(&ca, None, false)?), false)?).await?;
    let port = hub.local_addr().port();
    let addr = format!("tls://localhost:{port}");

    let e = tls_error(
        client("a", &addr, Some(TlsOptions::ca_pem(other.pem())))
            .connect()
            .await,
    )?;
    assert!(matches!(e, TlsError::UnknownIssuer { .. }), "{e}");
    assert!(e.to_string().contains("not signed by a trusted CA"), "{e}");

    let wrong_name = TlsOptions::ca_pem(ca.pem()).server_name("elsewhere.example");
    let e = tls_error(client("a", &addr, Some(wrong_name)).connect().await)?;
    assert!(matches!(e, TlsError::WrongName { .. }), "{e}");
    assert!(e.to_string().contains("elsewhere.example"), "{e}");
    hub.shutdown().await;

    let hub =
        switchboard::hub::Hub::start(hub_config(Some(server(&ca, None, true)?), false)?).await?;
    let addr = format!("tls://localhost:{}", hub.local_addr().port());
    let e = tls_error(
        client("a", &addr, Some(TlsOptions::ca_pem(ca.pem())))
            .connect()
            .await,
    )?;
    assert!(matches!(e, TlsError::Expired { .. }), "{e}");
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn plaintext_to_a_tls_port_gets_a_clear_error_quickly() -> Result<()> {
    let ca = Ca::new("test CA")?;
    let hub =
        switchboard::hub::Hub::start(hub_config(Some(server(&ca, None, false)?), false)?).await?;
    let addr = hub.local_addr().to_string();
    let started = Instant::now();
    let e = match client("plain", &addr, None).connect().await {
        Err(e) => e,
        Ok(_) => bail!("a plaintext client connected to a TLS port"),
    };
    // Well within the 5 s handshake timeout: refused, not timed out.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(e, ClientError::Forbidden(_)), "{e:?}");
    assert!(
        e.to_string().contains("requires TLS") && e.to_string().contains("tls://"),
        "{e}"
    );

    // Discovery's probe is still answered on the TLS port.
    let secret = switchboard::Secret::from_token(TOKEN);
    let service = hub.identity().service.clone();
    let found = switchboard::discovery::probe(hub.local_addr(), &service, &secret, WAIT).await?;
    assert_eq!(found.identity.instance_id, hub.identity().instance_id);

    // A tls:// address without a CA is a usage error, not a plaintext try.
    let tls_addr = format!("tls://{addr}");
    match client("plain", &tls_addr, None).connect().await {
        Err(ClientError::InvalidArgument(m)) => assert!(m.contains("--tls-ca"), "{m}"),
        other => bail!("expected InvalidArgument, got {other:?}"),
    }
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_tls_client_to_a_plaintext_port_gets_a_clear_error() -> Result<()> {
    let ca = Ca::new("test CA")?;
    let hub = switchboard::hub::Hub::start(hub_config(None, false)?).await?;
    let addr = format!("tls://127.0.0.1:{}", hub.local_addr().port());
    let e = tls_error(
        client("a", &addr, Some(TlsOptions::ca_pem(ca.pem())))
            .connect()
            .await,
    )?;
    assert!(matches!(e, TlsError::NotTls { .. }), "{e:?}");
    assert!(e.to_string().contains("does not speak TLS"), "{e}");
    hub.shutdown().await;
    Ok(())
}

/// Records what the hub's admission seam is told and maps a certificate's
/// common name to a principal.
#[derive(Debug, Default)]
struct Recorder {
    peers: Mutex<Vec<Peer>>,
    principals: Mutex<Vec<String>>,
}

impl Admission for Recorder {
    fn identify(&self, peer: &Peer, _proof: &Proof) -> Result<Identity, Refusal> {
        self.peers.lock().unwrap().push(peer.clone());
        match &peer.cert {
            Some(cert) => Ok(Identity {
                principal: format!("cert:{}", cert.common_name),
                uid: None,
            }),
            None => Err(Refusal::forbidden("a client certificate is required")),
        }
    }

    fn admit_client(&self, info: &switchboard::wire::proto::ClientInfo) -> Result<(), Refusal> {
        self.principals.lock().unwrap().push(info.principal.clone());
        Ok(())
    }
}

#[tokio::test]
async fn a_client_certificate_reaches_the_admission_seam() -> Result<()> {
    let ca = Ca::new("server CA")?;
    let clients_ca = Ca::new("client CA")?;
    let recorder = Arc::new(Recorder::default());
    let mut config = hub_config(Some(server(&ca, Some(&clients_ca), false)?), false)?;
    config.admission = Some(recorder.clone());
    let hub = switchboard::hub::Hub::start(config).await?;
    let addr = format!("tls://localhost:{}", hub.local_addr().port());

    let (cert, key) = clients_ca.leaf("worker-7", &["worker7.example"], false)?;
    let with_cert = TlsOptions::ca_pem(ca.pem()).client_cert_pem(cert, key);
    let c = client("w7", &addr, Some(with_cert)).connect().await?;
    {
        let peers = recorder.peers.lock().unwrap();
        let peer = peers.last().expect("identify ran");
        assert_eq!(peer.transport, "tls");
        let cert = peer.cert.as_ref().expect("the certificate's identity");
        assert_eq!(cert.common_name, "worker-7");
        assert_eq!(cert.sans, ["worker7.example"]);
    }
    assert_eq!(*recorder.principals.lock().unwrap(), ["cert:worker-7"]);
    c.close().await;

    // Without a certificate, or with one from another CA: refused by TLS.
    for opts in [TlsOptions::ca_pem(ca.pem()), {
        let (cert, key) = ca.leaf("intruder", &[], false)?;
        TlsOptions::ca_pem(ca.pem()).client_cert_pem(cert, key)
    }] {
        let e = tls_error(client("x", &addr, Some(opts)).connect().await)?;
        assert!(matches!(e, TlsError::ClientCertRefused { .. }), "{e:?}");
    }
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn https_and_wss_on_the_gateway() -> Result<()> {
    let ca = Ca::new("test CA")?;
    let hub =
        switchboard::hub::Hub::start(hub_config(Some(server(&ca, None, false)?), true)?).await?;
    let http = hub.http_addr().expect("the gateway listens");

    // HTTPS: the status call with the bearer token.
    let tls = ClientTls::new(
        switchboard::discovery::tls::certs_from_pem("CA", "bytes", ca.pem().as_bytes())?,
        None,
    )?;
    let mut s = tls.connect(http, Some("localhost")).await?;
    let head = format!(
        "GET /v1/status HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        hub.http_token()
    );
    s.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw)).await??;
    let answer = String::from_utf8_lossy(&raw);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // WSS: a full client.
    let url = format!("wss://localhost:{}/v1/ws", http.port());
    let ws = Client::builder("over-wss")
        .websocket(url)
        .token(TOKEN)
        .reconnect(false)
        .tls(TlsOptions::ca_pem(ca.pem()))
        .connect()
        .await?;
    let listed = ws.clients().await?;
    assert!(
        listed
            .iter()
            .any(|c| c.client_id == "over-wss" && c.transport == "wss"),
        "{listed:?}"
    );
    ws.close().await;
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_non_loopback_listener_needs_tls_or_insecure_plaintext() -> Result<()> {
    let config = Hub::builder()
        .token(TOKEN)
        .listen("0.0.0.0:0")
        .write_hint(false)
        .config()?;
    let e = match switchboard::hub::Hub::start(config).await {
        Err(e) => e.to_string(),
        Ok(_) => bail!("a plaintext hub on 0.0.0.0 started"),
    };
    assert!(e.contains("0.0.0.0"), "{e}");
    assert!(
        e.contains("--tls-cert") && e.contains("--insecure-plaintext"),
        "{e}"
    );

    // The HTTP listener too, even for a hub reached in memory.
    let mut config = hub_config(None, false)?;
    config.http = Some(switchboard::hub::HttpConfig::new("0.0.0.0:0".parse()?));
    let e = match switchboard::hub::Hub::start_in_memory(config).await {
        Err(e) => e.to_string(),
        Ok(_) => bail!("a plaintext gateway on 0.0.0.0 started"),
    };
    assert!(e.contains("HTTP listener on 0.0.0.0"), "{e}");
    Ok(())
}

#[tokio::test]
async fn a_standby_follows_a_tls_primary_and_takes_over_with_tls() -> Result<()> {
    use switchboard::hub::StandbyState;
    let ca = Ca::new("test CA")?;
    let primary =
        switchboard::hub::Hub::start(hub_config(Some(server(&ca, None, false)?), false)?).await?;
    let mut config = hub_config(Some(server(&ca, None, false)?), false)?;
    config.tls_client = Some(ClientTls::new(
        switchboard::discovery::tls::certs_from_pem("CA", "bytes", ca.pem().as_bytes())?,
        None,
    )?);
    let standby = switchboard::hub::Hub::standby(config, Some(primary.local_addr())).await?;
    let mut state = standby.watch();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|s| matches!(s, StandbyState::Following { .. })),
    )
    .await??;

    // The primary goes; the standby serves its address, over TLS.
    let addr = format!("tls://localhost:{}", primary.local_addr().port());
    primary.shutdown().await;
    let taken = tokio::time::timeout(WAIT, standby.promoted())
        .await?
        .expect("took over")?;
    let c = client("after", &addr, Some(TlsOptions::ca_pem(ca.pem())))
        .connect()
        .await?;
    assert_eq!(c.clients().await?[0].transport, "tls");
    c.close().await;
    taken.shutdown().await;
    Ok(())
}

/// Runs the `switchboard` binary with a private runtime directory.
fn cli(dir: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    c.args(args)
        .env("SWITCHBOARD_RUNTIME_DIR", dir)
        .env("SWITCHBOARD_TOKEN", TOKEN)
        .env_remove("SWITCHBOARD_LOG")
        .stdin(std::process::Stdio::null());
    c
}

#[test]
fn the_cli_serves_and_dials_tls() -> Result<()> {
    use std::io::BufRead;
    let dir = tempfile::tempdir()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    }
    let ca = Ca::new("cli CA")?;
    let (cert, key) = ca.leaf("hub", &["localhost"], false)?;
    let file = |name: &str, text: &str| -> Result<String> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    };
    let (ca_file, cert_file, key_file) = (
        file("ca.pem", &ca.pem())?,
        file("hub.pem", &cert)?,
        file("hub.key", &key)?,
    );

    let refused = cli(dir.path(), &["hub", "--listen", "0.0.0.0:0"]).output()?;
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        text.contains("--insecure-plaintext") && text.contains("--tls-cert"),
        "{text}"
    );

    let mut hub = cli(
        dir.path(),
        &[
            "--json",
            "hub",
            "--service",
            "tlscli",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert_file,
            "--tls-key",
            &key_file,
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .spawn()?;
    let mut ready = String::new();
    std::io::BufReader::new(hub.stdout.take().expect("stdout")).read_line(&mut ready)?;
    let ready: serde_json::Value = serde_json::from_str(&ready)?;
    let port = ready["addr"]
        .as_str()
        .unwrap_or_default()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();

    let tls_addr = format!("tls://localhost:{port}");
    let ok = cli(
        dir.path(),
        &[
            "status", "--addr", &tls_addr, "--tls-ca", &ca_file, "--wait", "0",
        ],
    )
    .output()?;
    let plain = cli(
        dir.path(),
        &[
            "status",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--wait",
            "0",
        ],
    )
    .output()?;
    let wrong = cli(
        dir.path(),
        &[
            "status", "--addr", &tls_addr, "--tls-ca", &cert_file, "--wait", "0",
        ],
    )
    .output()?;
    let _ = hub.kill();
    let _ = hub.wait();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let text = String::from_utf8_lossy(&plain.stderr);
    assert!(
        !plain.status.success() && text.contains("requires TLS"),
        "{text}"
    );
    let text = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(5), "{text}");
    assert!(text.contains("not signed by a trusted CA"), "{text}");
    Ok(())
}
