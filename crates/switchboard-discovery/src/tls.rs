//! TLS pieces both ends share (rustls with the `ring` provider): reading
//! certificates and keys from PEM, the client's configuration
//! ([`ClientTls`]: trust anchors, an optional client certificate, an
//! optional server name) and dialling with it, and [`TlsError`], which
//! tells a wrong CA, a wrong name, an expired certificate and a port that
//! does not speak TLS apart.
//!
//! Errors name files, never their contents: a key's bytes never reach an
//! error or a log line.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The first byte of every TLS connection (a handshake record). The
/// native protocol's first byte is the top byte of a frame length, and a
/// frame that long is never allowed before authentication, so one byte
/// tells the two apart.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// Why a TLS setting could not be loaded, or a TLS connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        /// What the file should hold ("certificate", "private key", "CA").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A PEM file (or PEM bytes) holds nothing usable.
    #[error("{what} {origin} holds no usable PEM {expected}; give a PEM file with at least one")]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The file, or "bytes".
        origin: String,
        /// What was looked for ("CERTIFICATE blocks", "PRIVATE KEY block").
        expected: &'static str,
    },
    /// rustls refused the certificates or the key (a key that does not
    /// match the certificate, an unsupported algorithm).
    #[error("unusable TLS setting: {0}")]
    Config(String),
    /// The server's certificate is not signed by a trusted CA.
    #[error("the certificate of {addr} is not signed by a trusted CA; give the CA that issued it (--tls-ca)")]
    UnknownIssuer {
        /// The server.
        addr: String,
    },
    /// The server's certificate is not valid for the name asked for.
    #[error("the certificate of {addr} is not valid for the name {name:?}; connect by a name the certificate holds, or set the server name")]
    WrongName {
        /// The server.
        addr: String,
        /// The name checked.
        name: String,
    },
    /// The server's certificate has expired (or is not yet valid).
    #[error(
        "the certificate of {addr} has expired or is not yet valid; renew it, or check the clocks"
    )]
    Expired {
        /// The server.
        addr: String,
    },
    /// The peer answered with something that is not TLS.
    #[error(
        "{addr} does not speak TLS on this port; connect without tls:// (or to the hub's TLS port)"
    )]
    NotTls {
        /// The server.
        addr: String,
    },
    /// The server refused this client's certificate (or its absence).
    #[error("{addr} refused this client's certificate; give one issued by the CA the hub trusts (--tls-cert, --tls-key)")]
    ClientCertRefused {
        /// The server.
        addr: String,
    },
    /// Any other TLS failure.
    #[error("TLS with {addr} failed: {detail}")]
    Handshake {
        /// The server.
        addr: String,
        /// What rustls said.
        detail: String,
    },
    /// The connection failed below TLS.
    #[error("cannot connect to {addr}: {source}")]
    Io {
        /// The server.
        addr: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// The rustls crypto provider every configuration uses (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Certificates from PEM bytes (`origin` names them in errors).
pub fn certs_from_pem(
    what: &'static str,
    origin: &str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            origin: origin.to_owned(),
            expected: "CERTIFICATE blocks",
        });
    }
    Ok(certs)
}

/// Certificates from a PEM file.
pub fn certs_from_file(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_from_pem(what, &path.display().to_string(), &read(what, path)?)
}

/// A private key (PKCS#8, PKCS#1 or SEC1) from PEM bytes. The bytes never
/// appear in the error.
pub fn key_from_pem(origin: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| TlsError::Pem {
        what: "private key",
        origin: origin.to_owned(),
        expected: "PRIVATE KEY block",
    })
}

/// A private key from a PEM file.
pub fn key_from_file(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    key_from_pem(&path.display().to_string(), &read("private key", path)?)
}

/// A trust store holding `cas`.
pub fn root_store(cas: Vec<CertificateDer<'static>>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| TlsError::Config(format!("a CA certificate is unusable: {e}")))?;
    }
    Ok(roots)
}

/// A client's TLS setting: whom it trusts, the certificate it shows (mutual
/// TLS), and the server name it checks. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: Option<String>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field(
                "client_cert",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl ClientTls {
    /// Trusts the CA certificates in `ca_pem`, and shows `identity` (a
    /// certificate chain and its key) when given.
    pub fn new(
        cas: Vec<CertificateDer<'static>>,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<ClientTls, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(root_store(cas)?);
        let config = match identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Config(format!("the client certificate or key: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        Ok(ClientTls {
            config: Arc::new(config),
            server_name: None,
        })
    }

    /// Trusts the CA certificates in the PEM file `ca`.
    pub fn from_ca_file(ca: &Path) -> Result<ClientTls, TlsError> {
        ClientTls::new(certs_from_file("CA", ca)?, None)
    }

    /// Checks the server's certificate against `name` instead of the host
    /// dialled.
    pub fn with_server_name(mut self, name: impl Into<String>) -> ClientTls {
        self.server_name = Some(name.into());
        self
    }

    /// The server name set with [`ClientTls::with_server_name`].
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// Dials `addr` and runs the TLS handshake, checking the certificate
    /// against the configured server name, else `host` (when given), else
    /// the address's IP.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        host: Option<&str>,
    ) -> Result<TlsStream<TcpStream>, TlsError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| TlsError::Io {
                addr: addr.to_string(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        self.handshake(tcp, addr, host).await
    }

    /// Runs the TLS handshake over the connected `tcp` (to `addr`).
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        host: Option<&str>,
    ) -> Result<TlsStream<TcpStream>, TlsError> {
        let name = match self.server_name.as_deref().or(host) {
            Some(name) => name.to_owned(),
            None => addr.ip().to_string(),
        };
        let server = ServerName::try_from(name.clone()).map_err(|_| {
            TlsError::Config(format!(
                "{name:?} is not a valid server name; give a DNS name or an IP address"
            ))
        })?;
        TlsConnector::from(self.config.clone())
            .connect(server, tcp)
            .await
            .map_err(|e| classify(e, &addr.to_string(), &name))
    }
}

/// The typed error for an I/O error of a TLS connection to `addr`,
/// checked against `name`.
pub fn classify(e: io::Error, addr: &str, name: &str) -> TlsError {
    let addr = addr.to_owned();
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        // The peer closed the connection mid-handshake, or answered with
        // bytes that are not a TLS record.
        return match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData => TlsError::NotTls { addr },
            _ => TlsError::Io { addr, source: e },
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                TlsError::UnknownIssuer { addr }
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsError::WrongName {
                    addr,
                    name: name.to_owned(),
                }
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => TlsError::Expired { addr },
            other => TlsError::Handshake {
                addr,
                detail: format!("the certificate is invalid: {other:?}"),
            },
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            TlsError::NotTls { addr }
        }
        rustls::Error::AlertReceived(alert) => {
            use rustls::AlertDescription as A;
            match alert {
                A::CertificateRequired
                | A::BadCertificate
                | A::UnknownCA
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::AccessDenied => TlsError::ClientCertRefused { addr },
                other => TlsError::Handshake {
                    addr,
                    detail: format!("the server sent the alert {other:?}"),
                },
            }
        }
        other => TlsError::Handshake {
            addr,
            detail: other.to_string(),
        },
    }
}

/// The typed error an I/O error after the handshake stands for, when it is
/// a TLS alert (a server that wanted a client certificate says so only
/// after the client's first read, under TLS 1.3).
pub fn alert_after_handshake(e: &io::Error, addr: &str) -> Option<TlsError> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::AlertReceived(_) => {
            Some(classify(io::Error::new(e.kind(), tls.clone()), addr, ""))
        }
        _ => None,
    }
}
