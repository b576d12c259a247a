//! The hub's `--federate nats://…[,nats://…]`, `--federate-creds FILE` and
//! `--federate-tls-ca FILE`: join a federation of hubs over a NATS cluster
//! (ARCHITECTURE.md, "Federation"). Without the `federation` feature the
//! options are refused.

use std::path::PathBuf;

use clap::Args;

/// The hub's federation options.
#[derive(Debug, Args)]
pub struct FederateArgs {
    /// Federate with the hubs of this service on a NATS cluster with
    /// JetStream: client ids become unique cluster-wide. Comma-separated
    /// server URLs, e.g. nats://h1:4222,nats://h2:4222.
    #[arg(long, value_name = "URLS")]
    pub federate: Option<String>,
    /// NATS credentials file (JWT and nkey seed) for --federate.
    #[arg(long, value_name = "FILE", requires = "federate")]
    pub federate_creds: Option<PathBuf>,
    /// CA certificate (PEM) the NATS servers' TLS certificates must chain
    /// to; with it the connection to NATS requires TLS.
    #[arg(long, value_name = "FILE", requires = "federate")]
    pub federate_tls_ca: Option<PathBuf>,
}

impl FederateArgs {
    /// Joins the cluster when `--federate` is given and sets the hub's
    /// remote seam.
    #[cfg(feature = "federation")]
    pub async fn apply(
        &self,
        service: &str,
        b: switchboard::HubBuilder,
    ) -> anyhow::Result<switchboard::HubBuilder> {
        use switchboard::federation::{Federation, FederationOptions};
        let Some(list) = &self.federate else {
            return Ok(b);
        };
        let mut opts = FederationOptions::new(service, FederationOptions::parse_servers(list)?);
        opts.creds = self.federate_creds.clone();
        opts.tls_ca = self.federate_tls_ca.clone();
        let fed = Federation::connect(opts).await?;
        tracing::info!(hub = fed.hub_name(), "joined the federation");
        Ok(b.remote(fed.remote()))
    }

    /// Refuses `--federate`: this build has no federation.
    #[cfg(not(feature = "federation"))]
    pub async fn apply(
        &self,
        _service: &str,
        b: switchboard::HubBuilder,
    ) -> anyhow::Result<switchboard::HubBuilder> {
        if self.federate.is_some() {
            anyhow::bail!("this switchboard was built without the `federation` feature; --federate is not available");
        }
        Ok(b)
    }
}
