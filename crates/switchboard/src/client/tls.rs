//! TLS to the hub ([`TlsOptions`], set with
//! [`ClientBuilder::tls`](crate::ClientBuilder::tls)): which CAs the client
//! trusts, the certificate it shows under mutual TLS, the server name it
//! checks. Addresses written `tls://host:port` use TLS and check `host`.

use std::fmt;
use std::path::PathBuf;

pub(crate) use switchboard_discovery::tls::alert_after_handshake;
use switchboard_discovery::tls::{
    certs_from_file, certs_from_pem, key_from_file, key_from_pem, ClientTls, TlsError,
};

/// The scheme of an address that asks for TLS.
pub(crate) const TLS_SCHEME: &str = "tls://";

/// PEM data, from a file or in memory.
#[derive(Clone)]
enum Pem {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// How a client speaks TLS to the hub: the CA certificates it trusts (the
/// hub's certificate must be signed by one), optionally a client
/// certificate and key (mutual TLS), optionally the name to check the
/// hub's certificate against (default: the host of a `tls://` address, or
/// the IP address dialled).
///
/// ```no_run
/// # async fn run() -> Result<(), switchboard::ClientError> {
/// use switchboard::{Client, TlsOptions};
/// let client = Client::builder("worker-1")
///     .addr("tls://hub.example.com:7447")
///     .tls(TlsOptions::ca_file("/etc/switchboard/ca.pem"))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsOptions {
    ca: Pem,
    identity: Option<(Pem, Pem)>,
    server_name: Option<String>,
}

impl fmt::Debug for TlsOptions {
    // Never the key: only where things come from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = |p: &Pem| match p {
            Pem::File(path) => path.display().to_string(),
            Pem::Bytes(_) => "bytes".to_owned(),
        };
        f.debug_struct("TlsOptions")
            .field("ca", &origin(&self.ca))
            .field(
                "client_cert",
                &self.identity.as_ref().map(|(c, _)| origin(c)),
            )
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsOptions {
    /// Trusts the CA certificates in the PEM file `path`.
    pub fn ca_file(path: impl Into<PathBuf>) -> TlsOptions {
        TlsOptions {
            ca: Pem::File(path.into()),
            identity: None,
            server_name: None,
        }
    }

    /// Trusts the CA certificates in `pem`.
    pub fn ca_pem(pem: impl Into<Vec<u8>>) -> TlsOptions {
        TlsOptions {
            ca: Pem::Bytes(pem.into()),
            identity: None,
            server_name: None,
        }
    }

    /// Shows the certificate chain and key in these PEM files (mutual TLS).
    pub fn client_cert_files(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> TlsOptions {
        self.identity = Some((Pem::File(cert.into()), Pem::File(key.into())));
        self
    }

    /// Shows this PEM certificate chain and key (mutual TLS).
    pub fn client_cert_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> TlsOptions {
        self.identity = Some((Pem::Bytes(cert.into()), Pem::Bytes(key.into())));
        self
    }

    /// Checks the hub's certificate against `name` instead of the host
    /// dialled.
    pub fn server_name(mut self, name: impl Into<String>) -> TlsOptions {
        self.server_name = Some(name.into());
        self
    }

    /// Reads the files and builds the rustls configuration.
    pub(crate) fn build(&self) -> Result<ClientTls, TlsError> {
        let cas = match &self.ca {
            Pem::File(path) => certs_from_file("CA", path)?,
            Pem::Bytes(pem) => certs_from_pem("CA", "bytes", pem)?,
        };
        let identity = match &self.identity {
            None => None,
            Some((cert, key)) => {
                let chain = match cert {
                    Pem::File(path) => certs_from_file("client certificate", path)?,
                    Pem::Bytes(pem) => certs_from_pem("client certificate", "bytes", pem)?,
                };
                let key = match key {
                    Pem::File(path) => key_from_file(path)?,
                    Pem::Bytes(pem) => key_from_pem("bytes", pem)?,
                };
                Some((chain, key))
            }
        };
        let tls = ClientTls::new(cas, identity)?;
        Ok(match &self.server_name {
            Some(name) => tls.with_server_name(name.clone()),
            None => tls,
        })
    }
}

/// Splits a `tls://host:port` address into `host:port` and whether TLS
/// was asked for.
pub(crate) fn split_scheme(addr: &str) -> (&str, bool) {
    match addr.strip_prefix(TLS_SCHEME) {
        Some(rest) => (rest, true),
        None => (addr, false),
    }
}

/// The host part of `host:port` (`[v6]:port` too).
pub(crate) fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((host, _)) => host,
        None => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_scheme_and_host() {
        assert_eq!(split_scheme("tls://hub:7447"), ("hub:7447", true));
        assert_eq!(split_scheme("hub:7447"), ("hub:7447", false));
        assert_eq!(host_of("hub.example.com:7447"), "hub.example.com");
        assert_eq!(host_of("[::1]:7447"), "::1");
    }
}
