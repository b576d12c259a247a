//! Hubs authenticate to NATS when credentials are given (user and
//! password or a token in the URL, an nkey seed or `.creds` file) and
//! can use TLS to it: each test starts one nats-server with JetStream
//! and an `authorization` or `tls` block.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{eventually, nats_server, FedHub, Node};
use switchboard::federation::{Federation, FederationError, FederationOptions};

fn options(url: &str) -> FederationOptions {
    let mut o = FederationOptions::new(common::SERVICE, vec![url.to_owned()]);
    o.replicas = Some(1);
    o.connect_timeout = Duration::from_secs(15);
    o
}

/// Joins through `url` (changed by `tune`) and proves the hub works:
/// a client registers and its id is written to the bucket.
async fn joins(url: &str, tune: impl FnOnce(&mut FederationOptions)) -> anyhow::Result<()> {
    let hub = FedHub::start_with("hub-a", url, Duration::from_secs(5), |o| {
        o.replicas = Some(1);
        tune(o);
    })
    .await?;
    let _c = hub.client("dev-1").await?;
    eventually("the id is written to the bucket", || {
        hub.fed.directory().stats().written() == 1
    })
    .await;
    Ok(())
}

/// Joining fails with [`FederationError::Auth`], and no secret of
/// `secrets` is in the error text.
async fn refused(opts: FederationOptions, secrets: &[&str]) {
    let err = Federation::connect(opts)
        .await
        .expect_err("wrong credentials are refused");
    let text = err.to_string();
    assert!(matches!(err, FederationError::Auth { .. }), "{err:?}");
    assert!(text.contains("authenticate"), "{text}");
    for s in secrets {
        assert!(!text.contains(s), "a secret in {text:?}");
        assert!(!format!("{err:?}").contains(s), "a secret in {err:?}");
    }
}

fn with_auth(url: &str, userinfo: &str) -> String {
    url.replacen("://", &format!("://{userinfo}@"), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_in_the_url() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let node = Node::single(
        &bin,
        dir.path(),
        "nats",
        "authorization { users: [ { user: hub, password: \"pw s3cret/x\" } ] }",
    )
    .await?;
    // Percent-encoded: the password has a space and a slash.
    joins(&with_auth(&node.url, "hub:pw%20s3cret%2Fx"), |_| {}).await?;
    refused(
        options(&with_auth(&node.url, "hub:wrong-pw9")),
        &["wrong-pw9"],
    )
    .await;
    refused(options(&node.url), &[]).await;
    // The options' Debug output shows no password either.
    let shown = format!(
        "{:?}",
        options(&with_auth(&node.url, "hub:pw%20s3cret%2Fx"))
    );
    assert!(!shown.contains("s3cret"), "{shown}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_the_url() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let node = Node::single(
        &bin,
        dir.path(),
        "nats",
        "authorization { token: \"tok-s3cret\" }",
    )
    .await?;
    joins(&with_auth(&node.url, "tok-s3cret"), |_| {}).await?;
    refused(
        options(&with_auth(&node.url, "tok-wrong7")),
        &["tok-wrong7"],
    )
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_seed_file() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let key = nkeys::KeyPair::new_user();
    let node = Node::single(
        &bin,
        dir.path(),
        "nats",
        &format!(
            "authorization {{ users: [ {{ nkey: {} }} ] }}",
            key.public_key()
        ),
    )
    .await?;
    let seed_file = dir.path().join("hub.nk");
    std::fs::write(&seed_file, format!("{}\n", key.seed()?))?;
    joins(&node.url, |o| o.creds = Some(seed_file.clone())).await?;

    let other = nkeys::KeyPair::new_user();
    let other_file = dir.path().join("other.nk");
    std::fs::write(&other_file, other.seed()?)?;
    let mut o = options(&node.url);
    o.creds = Some(other_file);
    let other_seed = other.seed()?;
    refused(o, &[&other_seed]).await;

    // A file that is neither kind is a configuration error naming both.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, "not a key")?;
    let mut o = options(&node.url);
    o.creds = Some(junk);
    let err = Federation::connect(o).await.expect_err("junk refused");
    assert!(matches!(err, FederationError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("nkey user seed"), "{err}");
    Ok(())
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write a test file");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_and_a_password() -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let ca = |_: ()| -> anyhow::Result<_> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
    };
    let ours = ca(())?;
    let theirs = ca(())?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?
        .signed_by(&key, &ours)?;
    let ca_path = write(dir.path(), "ca.pem", &ours.pem());
    let other_ca = write(dir.path(), "other-ca.pem", &theirs.pem());
    let cert_path = write(dir.path(), "server.pem", &cert.pem());
    let key_path = write(dir.path(), "server.key", &key.serialize_pem());
    let node = Node::single(
        &bin,
        dir.path(),
        "tls",
        &format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\n\
             authorization {{ users: [ {{ user: hub, password: tls-s3cret }} ] }}",
            cert_path.display(),
            key_path.display()
        ),
    )
    .await?;
    let url = with_auth(&node.url, "hub:tls-s3cret");
    joins(&url, |o| o.tls_ca = Some(ca_path.clone())).await?;
    // A certificate that does not chain to the CA given: refused.
    let mut o = options(&url);
    o.tls_ca = Some(other_ca);
    o.connect_timeout = Duration::from_secs(5);
    let err = Federation::connect(o).await.expect_err("wrong CA refused");
    assert!(!err.to_string().contains("tls-s3cret"), "{err}");
    // Over TLS, a wrong password is an authentication error.
    let mut o = options(&with_auth(&node.url, "hub:nope-8"));
    o.tls_ca = Some(ca_path);
    refused(o, &["nope-8"]).await;
    Ok(())
}
