//! Making one connection: dialling (a TCP address, a Unix socket, a hub
//! found by discovery — over its socket when its hint names one, else over
//! TCP — or a dialer's transport) and driving the client handshake
//! ([`ClientHandshake`], the same one a standby hub drives) over it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use switchboard_discovery as discovery;
use switchboard_discovery::handshake::{
    ClientHandshake, HandshakeError, HandshakeParams, Step, HANDSHAKE_MAX_FRAME,
};
use switchboard_wire::{proto, FrameCodec, DEFAULT_MAX_FRAME};
use switchboard_wire::{FEATURE_LISTEN, FEATURE_RELIABLE};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::shared::{Shared, Target};
use super::tls;
use super::transport::{self, Opened, Rd, Wr};
use super::unix;
use crate::ClientError;

/// Where one connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A hub's Unix socket; the TCP address (when known) is the one
    /// reported.
    Unix(PathBuf, SocketAddr),
}

/// An authenticated connection, not yet driven.
pub(crate) struct Connected {
    pub reader: FramedRead<Rd, FrameCodec>,
    pub writer: Wr,
    pub welcome: proto::Welcome,
    pub addr: SocketAddr,
    /// Where it went (tried first when reconnecting).
    pub endpoint: Endpoint,
    /// The hub's instance id, from the identity it proved.
    pub instance_id: String,
}

/// Makes one connection: to `preferred` first if given, else (or when it
/// fails) to the configured address or a discovered hub.
pub(crate) async fn connect_once(
    shared: &Shared,
    preferred: Option<Endpoint>,
    discovery_deadline: Duration,
) -> Result<Connected, ClientError> {
    let cfg = &shared.cfg;
    match &cfg.target {
        Target::Dialer(dialer) => {
            let what = format!("{dialer:?}");
            return within_connect_timeout(shared, &what, async {
                let opened = dialer.dial(shared.cfg.tls.as_ref()).await?;
                handshake(shared, opened, None).await
            })
            .await;
        }
        Target::Unix(path) => {
            let unspecified = SocketAddr::from(([127, 0, 0, 1], 0));
            return connect_to(shared, Endpoint::Unix(path.clone(), unspecified)).await;
        }
        _ => {}
    }
    let mut last_err = None;
    if let Some(endpoint) = preferred.clone() {
        match connect_to(shared, endpoint).await {
            Ok(c) => return Ok(c),
            Err(e) => last_err = Some(e),
        }
    }
    let candidates = match &cfg.target {
        Target::Addr(addr) => tokio::net::lookup_host(tls_target(shared, addr)?)
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?
            .map(|a| vec![Endpoint::Tcp(a)])
            .collect::<Vec<_>>(),
        Target::Dialer(_) | Target::Unix(_) => Vec::new(),
        Target::Service(service) => {
            match discover_current(shared, service, discovery_deadline).await {
                Ok(found) => found,
                // Say why the known hub was refused rather than that no
                // other one answered.
                Err(e) => return Err(last_err.filter(|l| l.is_fenced()).unwrap_or(e)),
            }
        }
    };
    // One hub per entry: its socket first when it has one, then TCP.
    for endpoints in candidates {
        for endpoint in endpoints {
            if Some(&endpoint) == preferred.as_ref() {
                continue;
            }
            let unix = matches!(endpoint, Endpoint::Unix(..));
            match connect_to(shared, endpoint).await {
                Ok(c) => return Ok(c),
                Err(e) if unix => {
                    tracing::debug!(error = %e, "the hub's unix socket failed; trying tcp");
                    last_err = Some(e);
                }
                // A hub that refused our proof will keep refusing it.
                Err(e @ ClientError::AuthFailed(_)) => return Err(e),
                Err(e) => last_err = Some(e),
            }
        }
    }
    Err(last_err.unwrap_or_else(|| match &cfg.target {
        Target::Service(service) => ClientError::NotFound {
            service: service.clone(),
            detail: "discovery returned no address".to_string(),
        },
        Target::Addr(addr) => ClientError::Connect {
            addr: addr.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "address resolved to nothing",
            ),
        },
        Target::Dialer(d) => ClientError::Connect {
            addr: format!("{d:?}"),
            source: std::io::Error::other("no connection"),
        },
        Target::Unix(path) => ClientError::Connect {
            addr: format!("unix:{}", path.display()),
            source: std::io::Error::other("no connection"),
        },
    }))
}

/// Hubs of `service`, highest epoch first, each as its endpoints (its
/// Unix socket first, when its hint names one). When the first hub found
/// has an epoch below the highest seen (an old primary still running),
/// looks for all of them.
async fn discover_current(
    shared: &Shared,
    service: &str,
    timeout: Duration,
) -> Result<Vec<Vec<Endpoint>>, ClientError> {
    let secret = shared.secret.as_ref().ok_or_else(|| {
        ClientError::Secret("discovery needs the secret or a token; none was given".into())
    })?;
    let seen = shared.max_epoch.load(Ordering::Relaxed);
    let mut found = crate::discover::find(service, secret, false, timeout).await?;
    if found.iter().all(|h| h.identity.epoch < seen) {
        if let Ok(all) = crate::discover::find(service, secret, true, timeout).await {
            found = all;
        }
    }
    found.sort_by_key(|h| std::cmp::Reverse(h.identity.epoch));
    Ok(found
        .into_iter()
        .map(|h| {
            let unix = h.unix.map(|path| Endpoint::Unix(path, h.addr));
            unix.into_iter().chain([Endpoint::Tcp(h.addr)]).collect()
        })
        .collect())
}

async fn within_connect_timeout(
    shared: &Shared,
    what: &str,
    connect: impl std::future::Future<Output = Result<Connected, ClientError>>,
) -> Result<Connected, ClientError> {
    let timeout = shared.cfg.connect_timeout;
    match tokio::time::timeout(timeout, connect).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout(format!(
            "connecting to {what} took longer than {} ms",
            timeout.as_millis()
        ))),
    }
}

async fn connect_to(shared: &Shared, endpoint: Endpoint) -> Result<Connected, ClientError> {
    let what = match &endpoint {
        Endpoint::Tcp(addr) => addr.to_string(),
        Endpoint::Unix(path, _) => format!("unix:{}", path.display()),
    };
    within_connect_timeout(shared, &what, async {
        let opened = match &endpoint {
            Endpoint::Tcp(addr) => match &shared.cfg.tls {
                Some(tls) => {
                    let host = match &shared.cfg.target {
                        Target::Addr(a) => Some(tls::host_of(tls::split_scheme(a).0)),
                        _ => None,
                    };
                    transport::tls(*addr, tls, host).await?
                }
                None => transport::tcp(*addr).await?,
            },
            Endpoint::Unix(path, addr) => unix::open(path, &shared.cfg.unix_owners, *addr).await?,
        };
        handshake(shared, opened, Some(endpoint)).await
    })
    .await
}

/// The `host:port` of a configured address; a `tls://` address needs a
/// TLS setting.
fn tls_target<'a>(shared: &Shared, addr: &'a str) -> Result<&'a str, ClientError> {
    let (host_port, asks_tls) = tls::split_scheme(addr);
    if asks_tls && shared.cfg.tls.is_none() {
        return Err(ClientError::InvalidArgument(format!(
            "{addr} asks for TLS but no CA to trust is set; give one with ClientBuilder::tls (--tls-ca)"
        )));
    }
    Ok(host_port)
}

/// Runs the client handshake over an opened transport. Without a secret
/// (a Unix socket only) the client authenticates by its peer credentials.
async fn handshake(
    shared: &Shared,
    (r, w, addr): Opened,
    endpoint: Option<Endpoint>,
) -> Result<Connected, ClientError> {
    let codec = FrameCodec::new().max_inbound(HANDSHAKE_MAX_FRAME);
    let mut reader = FramedRead::with_capacity(r, codec.clone(), 64 * 1024);
    let mut writer = FramedWrite::new(w, codec);
    let (mut handshake, hello) = match (&shared.secret, &endpoint) {
        (Some(secret), _) => ClientHandshake::new(hello(shared), secret, discovery::nonce()),
        (None, Some(Endpoint::Unix(..))) => {
            ClientHandshake::new_peer(hello(shared), discovery::nonce())
        }
        (None, _) => {
            return Err(ClientError::Secret(
                "no secret or token to prove; give one (only a unix socket admits a client without one)".into(),
            ))
        }
    };
    writer.send(hello).await?;
    let welcomed = loop {
        let frame = match reader.next().await {
            Some(Ok(frame)) => frame,
            // A TLS server that refuses the client's certificate says so
            // at the client's first read.
            Some(Err(switchboard_wire::WireError::Io(e))) => {
                return Err(match tls::alert_after_handshake(&e, &addr.to_string()) {
                    Some(tls) => tls.into(),
                    None => e.into(),
                })
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                return Err(ClientError::Protocol(format!(
                    "the peer at {addr} closed the connection during the handshake; is it a switchboard hub?"
                )))
            }
        };
        match handshake.on_frame(frame) {
            Ok(Step::Send(frame) | Step::SendLast(frame, _)) => writer.send(frame).await?,
            Ok(Step::Done(welcomed)) => break welcomed,
            Err(e) => return Err(refused(e, addr)),
        }
    };
    let epoch = welcomed.identity.epoch.max(welcomed.welcome.epoch);
    shared.max_epoch.fetch_max(epoch, Ordering::Relaxed);
    reader.decoder_mut().set_max_inbound(DEFAULT_MAX_FRAME);
    Ok(Connected {
        reader,
        writer: writer.into_inner(),
        welcome: welcomed.welcome,
        addr,
        endpoint: endpoint.unwrap_or(Endpoint::Tcp(addr)),
        instance_id: welcomed.identity.instance_id,
    })
}

/// What this client says in its `Hello` and demands of the hub.
fn hello(shared: &Shared) -> HandshakeParams {
    let cfg = &shared.cfg;
    let seen = shared.max_epoch.load(Ordering::Relaxed);
    let (features, resume) = if cfg.reliable {
        let resume = shared.reg.lock().resumable.then(|| proto::Resume {
            last_received: shared.in_last.load(Ordering::Relaxed),
            epoch: seen,
        });
        (vec![FEATURE_RELIABLE.into(), FEATURE_LISTEN.into()], resume)
    } else {
        (vec![FEATURE_LISTEN.into()], None)
    };
    HandshakeParams {
        client_id: cfg.id.clone(),
        agent: cfg.agent.clone(),
        features,
        resume,
        standby: false,
        service: match &cfg.target {
            Target::Service(service) => Some(service.clone()),
            _ => None,
        },
        min_epoch: seen,
    }
}

/// The client's error for a hub refused during the handshake at `addr`.
fn refused(e: HandshakeError, addr: SocketAddr) -> ClientError {
    match e {
        HandshakeError::Refused(e) => ClientError::from_hub(e.code, e.message),
        HandshakeError::Unverified => ClientError::HubUnverified {
            addr: addr.to_string(),
        },
        HandshakeError::WrongService { wanted, found } => ClientError::NotFound {
            service: wanted,
            detail: format!("the hub at {addr} serves service {found:?}"),
        },
        HandshakeError::Fenced { epoch, seen } => ClientError::Fenced(format!(
            "the hub at {addr} has epoch {epoch}, below epoch {seen} already seen: \
             it is an old primary that was replaced; refusing it"
        )),
        HandshakeError::Goodbye(_) => {
            ClientError::Protocol("expected welcome during the handshake, got goodbye".to_string())
        }
        HandshakeError::UnknownKind => ClientError::Protocol(format!(
            "the hub at {addr} sent a frame of an unknown kind during the handshake"
        )),
        other => ClientError::Protocol(other.to_string()),
    }
}
