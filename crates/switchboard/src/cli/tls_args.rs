//! The TLS options of the command line: the hub's (`--tls-cert`,
//! `--tls-key`, `--tls-client-ca`, `--insecure-plaintext`) and every
//! client's (`--tls-ca`, `--tls-cert`, `--tls-key`, global; `--tls-ca` is
//! also the trust anchor of a standby's link to its primary).

use std::path::PathBuf;

use clap::Args;
use switchboard::TlsOptions;

/// TLS options accepted before or after the subcommand.
#[derive(Debug, Args, Clone, Default)]
pub struct TlsGlobal {
    /// Trust this CA (PEM) and speak TLS to the hub; an address written
    /// tls://HOST:PORT asks for TLS too. For `hub --standby`: the CA of the
    /// primary's certificate.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Certificate chain (PEM): a client's for mutual TLS, or with `hub`
    /// the hub's own (then TLS on every listener).
    #[arg(long, global = true, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, global = true, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TlsGlobal {
    /// The client's TLS options, if --tls-ca is given.
    pub fn client(&self) -> Option<TlsOptions> {
        let ca = self.tls_ca.as_ref()?;
        let opts = TlsOptions::ca_file(ca);
        Some(match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => opts.client_cert_files(cert, key),
            _ => opts,
        })
    }
}

/// The hub's TLS options (besides --tls-cert and --tls-key).
#[derive(Debug, Args, Clone, Default)]
pub struct HubTlsArgs {
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Allow listening on a non-loopback address without TLS (insecure:
    /// anyone on the path reads and changes the traffic; warns on every
    /// start).
    #[arg(long)]
    pub insecure_plaintext: bool,
}

impl HubTlsArgs {
    /// Puts these and the global TLS options over the configuration
    /// file's `[tls]` table.
    pub fn apply(&self, g: &TlsGlobal, file: &mut super::config::TlsSection) {
        if g.tls_cert.is_some() {
            file.cert = g.tls_cert.clone();
            file.key = g.tls_key.clone();
        }
        if g.tls_ca.is_some() {
            file.ca = g.tls_ca.clone();
        }
        if self.tls_client_ca.is_some() {
            file.client_ca = self.tls_client_ca.clone();
        }
        file.insecure_plaintext |= self.insecure_plaintext;
    }
}
