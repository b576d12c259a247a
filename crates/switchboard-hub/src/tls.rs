//! TLS on the hub's listeners: the server setting ([`TlsServer`]: a
//! certificate chain, its key, and for mutual TLS the CA that signs client
//! certificates), the native listener's first-byte split (TLS, or a
//! plaintext probe answered and anything else refused with a clear
//! error), the identity in a verified client certificate, and the HTTP
//! listener that accepts TLS in a task per connection.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use switchboard_discovery::tls::{
    certs_from_file, certs_from_pem, key_from_file, key_from_pem, provider, root_store, TlsError,
    TLS_HANDSHAKE_BYTE,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::router::admission::{CertIdentity, Peer};
use crate::shared::Shared;

/// The hub's TLS setting (`HubConfig::tls`): what it shows, and for mutual
/// TLS whom it lets in. Cheap to clone.
#[derive(Clone)]
pub struct TlsServer {
    acceptor: TlsAcceptor,
    mutual: bool,
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServer")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Reads the certificate chain and key (PEM files), and for mutual TLS
    /// the CA that client certificates must be signed by. Errors name the
    /// file and never its contents.
    pub fn from_pem_files(
        cert_chain: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<TlsServer, TlsError> {
        let chain = certs_from_file("certificate", cert_chain)?;
        let key = key_from_file(key)?;
        let cas = client_ca
            .map(|ca| certs_from_file("client CA", ca))
            .transpose()?;
        TlsServer::new(chain, key, cas)
    }

    /// The same from PEM bytes.
    pub fn from_pem(
        cert_chain: &[u8],
        key: &[u8],
        client_ca: Option<&[u8]>,
    ) -> Result<TlsServer, TlsError> {
        let chain = certs_from_pem("certificate", "bytes", cert_chain)?;
        let key = key_from_pem("bytes", key)?;
        let cas = client_ca
            .map(|ca| certs_from_pem("client CA", "bytes", ca))
            .transpose()?;
        TlsServer::new(chain, key, cas)
    }

    /// From parsed certificates and key.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        client_cas: Option<Vec<CertificateDer<'static>>>,
    ) -> Result<TlsServer, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mutual = client_cas.is_some();
        let builder = match client_cas {
            Some(cas) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(root_store(cas)?),
                    provider(),
                )
                .build()
                .map_err(|e| TlsError::Config(format!("the client CA: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(format!("the certificate or its key: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsServer {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            mutual,
        })
    }

    /// Whether client certificates are required (mutual TLS).
    pub fn mutual(&self) -> bool {
        self.mutual
    }
}

/// The identity in the verified client certificate of `stream`, if any.
pub(crate) fn peer_identity<S>(stream: &TlsStream<S>) -> Option<CertIdentity> {
    let leaf = stream.get_ref().1.peer_certificates()?.first()?;
    cert_identity(leaf)
}

/// The common name and subject alternative names of a DER certificate.
pub(crate) fn cert_identity(der: &[u8]) -> Option<CertIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    sans.push((*s).to_owned())
                }
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => sans
                        .push(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).ok()?).to_string()),
                    16 => sans.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).ok()?).to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Some(CertIdentity { common_name, sans })
}

/// Serves one connection accepted on the native listener of a TLS hub:
/// the first byte picks TLS (then the native connection over it) or
/// plaintext (a probe answered, anything else refused with an error that
/// says to use TLS). Runs under the connection's handshake permit.
pub(crate) async fn serve_native(
    tcp: TcpStream,
    addr: SocketAddr,
    tls: TlsServer,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) {
    let conn = shared.alloc_conn();
    let timeout = shared.handshake_timeout;
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        r = tokio::time::timeout(timeout, tcp.peek(&mut first)) => r,
        _ = shared.shutdown.cancelled() => return,
    };
    match peeked {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_BYTE => {}
        Ok(Ok(1)) => {
            let peer = Peer::tcp(addr);
            return crate::conn::serve_plaintext_on_tls(tcp, peer, shared, permit).await;
        }
        // Closed, failed, or silent for the whole handshake timeout.
        _ => return,
    }
    let accepted = tokio::select! {
        r = tokio::time::timeout(timeout, tls.acceptor.accept(tcp)) => r,
        _ = shared.shutdown.cancelled() => return,
    };
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!("TLS handshake timed out"),
    };
    let peer = Peer {
        transport: "tls",
        addr: addr.to_string(),
        unix: None,
        cert: peer_identity(&stream),
    };
    crate::conn::serve(stream, peer, conn, shared, permit, tracing::Span::none()).await;
}

/// Most TLS handshakes of the HTTP listener running at once; more wait to
/// be accepted.
const HTTP_HANDSHAKES: usize = 256;

/// The HTTP listener of a TLS hub: a task accepts TCP connections and
/// spawns a TLS handshake for each (so a slow handshake never holds up the
/// next accept); finished ones are handed to axum.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(Capped<TlsStream<TcpStream>>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener` with `tls` until `shared` shuts down, at most
    /// `cap` connections open at once (as [`PlainListener`]: the rest
    /// wait in the kernel's backlog, unaccepted).
    pub(crate) fn new(
        listener: TcpListener,
        tls: TlsServer,
        handshake_timeout: Duration,
        cap: usize,
    ) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(HTTP_HANDSHAKES));
        let conns = Arc::new(tokio::sync::Semaphore::new(cap.max(1)));
        tokio::spawn(
            async move {
                loop {
                    let Ok(open) = conns.clone().acquire_owned().await else {
                        return;
                    };
                    let Ok(permit) = handshakes.clone().acquire_owned().await else {
                        return;
                    };
                    let (tcp, addr) = tokio::select! {
                        r = listener.accept() => match r {
                            Ok(accepted) => accepted,
                            Err(e) => {
                                tracing::warn!(error = %e, "accept failed");
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            }
                        },
                        _ = tx.closed() => return,
                    };
                    let _ = tcp.set_nodelay(true);
                    let (acceptor, tx) = (tls.acceptor.clone(), tx.clone());
                    tokio::spawn(async move {
                        let accepted =
                            tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await;
                        drop(permit);
                        match accepted {
                            Ok(Ok(stream)) => {
                                let stream = Capped {
                                    io: stream,
                                    _permit: open,
                                };
                                let _ = tx.send((stream, addr)).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%addr, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                        }
                    });
                }
            }
            .in_current_span(),
        );
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Capped<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task ends only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Who an HTTP or WebSocket peer is: its address, whether it came over TLS
/// and the identity in its client certificate.
#[derive(Debug, Clone)]
pub(crate) struct HttpPeer {
    /// The remote address.
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The verified client certificate (mutual TLS).
    pub cert: Option<CertIdentity>,
}

/// The gateway's plaintext listener: every accepted connection gets
/// `TCP_NODELAY`, as the native and TLS listeners' do (without it a
/// WebSocket client's small frames meet Nagle's algorithm and the peer's
/// delayed acknowledgement, and a request/reply round trip that takes
/// under a millisecond now and then takes 40 ms); and at most `cap`
/// connections are open at once, each holding a permit until it closes:
/// beyond that, new connections wait in the kernel's backlog, unaccepted,
/// so idle or half-sent HTTP connections cannot take every file
/// descriptor of the hub (its native port and its other connections keep
/// working).
pub(crate) struct PlainListener {
    inner: TcpListener,
    permits: Arc<tokio::sync::Semaphore>,
}

/// Wraps `listener` as a [`PlainListener`] of at most `cap` connections.
pub(crate) fn plain_listener(listener: TcpListener, cap: usize) -> PlainListener {
    PlainListener {
        inner: listener,
        permits: Arc::new(tokio::sync::Semaphore::new(cap.max(1))),
    }
}

impl axum::serve::Listener for PlainListener {
    type Io = Capped<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Capped<TcpStream>, SocketAddr) {
        let permit = match self.permits.clone().acquire_owned().await {
            Ok(permit) => permit,
            // Never closed: the listener owns the semaphore.
            Err(_) => std::future::pending().await,
        };
        // axum's own accept: it retries failed accepts after a pause.
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        (
            Capped {
                io: tcp,
                _permit: permit,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection that holds its listener's permit until it is dropped.
pub(crate) struct Capped<S> {
    io: S,
    _permit: OwnedSemaphorePermit,
}

impl<S> Capped<S> {
    /// The connection.
    pub(crate) fn get_ref(&self) -> &S {
        &self.io
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Capped<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Capped<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, PlainListener>>
    for HttpPeer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, PlainListener>) -> HttpPeer {
        HttpPeer {
            addr: *stream.remote_addr(),
            tls: false,
            cert: None,
        }
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for HttpPeer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> HttpPeer {
        HttpPeer {
            addr: *stream.remote_addr(),
            tls: true,
            cert: peer_identity(stream.io().get_ref()),
        }
    }
}

/// A TLS stream carries frames like TCP; its halves share the TLS state
/// (split like the in-memory pipe).
impl crate::transport::ByteStream for TlsStream<TcpStream> {
    type Read = tokio::io::ReadHalf<TlsStream<TcpStream>>;
    type Write = tokio::io::WriteHalf<TlsStream<TcpStream>>;
    fn halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
    fn try_write(w: &mut Self::Write, buf: &[u8]) {
        use futures::FutureExt;
        use tokio::io::AsyncWriteExt;
        let _ = w.write(buf).now_or_never();
        let _ = w.flush().now_or_never();
    }
    async fn readable(_: &Self::Read) {}
}

/// The reading half of a replication link.
pub(crate) type LinkRd = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
/// The writing half of a replication link (flush after each write: TLS
/// may hold records back until then).
pub(crate) type LinkWr = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// Dials the primary at `addr` for a replication link, over TLS when
/// `tls` is set.
pub(crate) async fn dial_link(
    addr: SocketAddr,
    tls: Option<&switchboard_discovery::tls::ClientTls>,
) -> Result<(LinkRd, LinkWr), String> {
    if let Some(tls) = tls {
        let stream = tls.connect(addr, None).await.map_err(|e| e.to_string())?;
        let (rd, wr) = tokio::io::split(stream);
        return Ok((Box::new(rd), Box::new(wr)));
    }
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    Ok((Box::new(rd), Box::new(wr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_gives_its_common_name_and_every_san() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![
            "svc.example".to_owned(),
            "10.1.2.3".to_owned(),
            "::1".to_owned(),
        ])
        .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "worker-1");
        let cert = params.self_signed(&key).unwrap();
        let id = cert_identity(cert.der()).unwrap();
        assert_eq!(id.common_name, "worker-1");
        assert_eq!(id.sans, ["svc.example", "10.1.2.3", "::1"]);
        assert!(cert_identity(b"not a certificate").is_none());
    }

    #[tokio::test]
    async fn the_plain_gateway_listener_turns_nagle_off() {
        use axum::serve::Listener;
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = plain_listener(tcp, 8);
        let (client, (server, _)) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let _client = client.unwrap();
        assert!(
            server.get_ref().nodelay().unwrap(),
            "accepted without TCP_NODELAY"
        );
    }

    #[tokio::test]
    async fn the_plain_gateway_listener_holds_at_most_its_cap_of_connections() {
        use axum::serve::Listener;
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = plain_listener(tcp, 2);
        let mut clients = Vec::new();
        let mut held = Vec::new();
        for _ in 0..2 {
            let (client, (server, _)) = tokio::join!(TcpStream::connect(addr), listener.accept());
            clients.push(client.unwrap());
            held.push(server);
        }
        // A third connects (the kernel's backlog) but is not accepted ...
        clients.push(TcpStream::connect(addr).await.unwrap());
        let third = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(third.is_err(), "accepted beyond the cap");
        // ... until one of the two closes.
        drop(held.pop());
        let third = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await;
        assert!(third.is_ok(), "not accepted after a connection closed");
    }
}
