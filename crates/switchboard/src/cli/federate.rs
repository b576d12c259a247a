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
        Ok(())
    }
}

/// Joins the cluster when `[federation]` names servers and sets the hub's
/// remote seam.
#[cfg(feature = "federation")]
pub async fn join(
    f: &FederationSection,
    service: &str,
    b: switchboard::HubBuilder,
) -> anyhow::Result<switchboard::HubBuilder> {
    use switchboard::federation::{Federation, FederationOptions};
    if f.servers.is_empty() {
        return Ok(b);
    }
    let mut opts = FederationOptions::new(
        service,
        FederationOptions::parse_servers(&f.servers.join(","))?,
    );
    opts.creds = f.creds.clone();
    opts.tls_ca = f.tls_ca.clone();
    let fed = Federation::connect(opts).await?;
    tracing::info!(hub = fed.hub_name(), "joined the federation");
    Ok(b.remote(fed.remote()))
}

/// Refuses a federation: this build has none.
#[cfg(not(feature = "federation"))]
pub async fn join(
    f: &FederationSection,
    _service: &str,
    b: switchboard::HubBuilder,
) -> anyhow::Result<switchboard::HubBuilder> {
    if !f.servers.is_empty() {
        anyhow::bail!("this switchboard was built without the `federation` feature; --federate and [federation] are not available");
    }
    Ok(b)
}
