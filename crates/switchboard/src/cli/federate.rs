//! The hub's `--federate nats://…[,nats://…]`, `--federate-creds FILE` and
//! `--federate-tls-ca FILE`: join a federation of hubs over a NATS cluster
//! (ARCHITECTURE.md, "Federation"), over the configuration file's
//! `[federation]` table. Without the `federation` feature they are refused.

use std::path::PathBuf;

use clap::Args;

use super::config::{FederationSection, Invalid};

/// The hub's federation options.
#[derive(Debug, Args)]
pub struct FederateArgs {
    /// Federate with the hubs of this service on a NATS cluster with
    /// JetStream: client ids become unique cluster-wide. Comma-separated
    /// server URLs, e.g. nats://h1:4222,nats://h2:4222; a user and
    /// password or a token go before the host (nats://USER:PASS@h1:4222,
    /// nats://TOKEN@h1:4222), better in the configuration file than here.
    #[arg(long, value_name = "URLS")]
    pub federate: Option<String>,
    /// NATS credentials for --federate (or the configuration file's
    /// [federation] servers): a .creds file (JWT and nkey seed) or an nkey
    /// user seed file (SU...).
    #[arg(long, value_name = "FILE")]
    pub federate_creds: Option<PathBuf>,
    /// CA certificate (PEM) the NATS servers' TLS certificates must chain
    /// to; with it the connection to NATS requires TLS.
    #[arg(long, value_name = "FILE")]
    pub federate_tls_ca: Option<PathBuf>,
    /// This hub's name in the federation (default: random). Give a
    /// primary and its hot standby (--standby) the same name: the standby
    /// takes the name, the ids and the leases over when the primary
    /// fails, and the old primary is fenced.
    #[arg(long, value_name = "NAME")]
    pub federate_name: Option<String>,
}

impl FederateArgs {
    /// Sets the flags given over the file's `[federation]` table.
    pub fn apply_to(self, file: &mut FederationSection) -> Result<(), Invalid> {
        if let Some(list) = self.federate {
            file.servers = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if file.servers.is_empty() {
                return Err(Invalid(
                    "--federate: no NATS server given; use nats://HOST:PORT[,nats://HOST:PORT...]"
                        .into(),
                ));
            }
        }
        if self.federate_creds.is_some() {
            file.creds = self.federate_creds;
        }
        if self.federate_tls_ca.is_some() {
            file.tls_ca = self.federate_tls_ca;
        }
        if self.federate_name.is_some() {
            file.hub_name = self.federate_name;
        }
        Ok(())
    }
}

/// Joins the cluster when `[federation]` names servers and sets the hub's
/// remote seam. `standby`: the hub starts as a hot standby; its
/// federation only watches until the hub takes over (then it joins under
/// `hub_name`, which must be the primary's). `kv_max_keys` and
/// `queue_bytes` are the hub's limits, which the federation applies to
/// the shared store and to the queue towards NATS. Returns the federation
/// too, so the caller can stop the hub when it is fenced.
#[cfg(feature = "federation")]
pub async fn join(
    f: &FederationSection,
    service: &str,
    standby: bool,
    kv_max_keys: usize,
    queue_bytes: usize,
    b: switchboard::HubBuilder,
) -> anyhow::Result<(switchboard::HubBuilder, Option<Fenced>)> {
    use switchboard::federation::{Federation, FederationOptions};
    if f.servers.is_empty() {
        return Ok((b, None));
    }
    if standby && f.hub_name.is_none() {
        anyhow::bail!("a federated standby needs the primary's hub name: give both the same --federate-name (or [federation] hub_name)");
    }
    let mut opts = FederationOptions::new(
        service,
        FederationOptions::parse_servers(&f.servers.join(","))?,
    );
    opts.creds = f.creds.clone();
    opts.tls_ca = f.tls_ca.clone();
    if let Some(name) = &f.hub_name {
        opts.hub_name = name.clone();
    }
    opts.standby = standby;
    opts.kv_max_keys = kv_max_keys;
    opts.queue_bytes = queue_bytes;
    let fed = Federation::connect(opts).await?;
    tracing::info!(hub = fed.hub_name(), standby, "joined the federation");
    let b = b.remote(fed.remote());
    Ok((b, Some(Fenced(fed))))
}

/// The hub's federation, to learn when it is fenced.
#[cfg(feature = "federation")]
pub struct Fenced(switchboard::federation::Federation);

#[cfg(feature = "federation")]
impl Fenced {
    /// Waits until a standby took this hub's federation name over with a
    /// higher epoch (this hub is an old primary).
    pub async fn wait(&self) {
        self.0.fenced().await;
    }
}

/// Never fenced: this build has no federation (no value exists).
#[cfg(not(feature = "federation"))]
pub enum Fenced {}

#[cfg(not(feature = "federation"))]
impl Fenced {
    /// Never called: there is no value.
    pub async fn wait(&self) {
        match *self {}
    }
}

/// Refuses a federation: this build has none.
#[cfg(not(feature = "federation"))]
pub async fn join(
    f: &FederationSection,
    _service: &str,
    _standby: bool,
    _kv_max_keys: usize,
    _queue_bytes: usize,
    b: switchboard::HubBuilder,
) -> anyhow::Result<(switchboard::HubBuilder, Option<Fenced>)> {
    if !f.servers.is_empty() {
        anyhow::bail!("this switchboard was built without the `federation` feature; --federate and [federation] are not available");
    }
    Ok((b, None))
}
