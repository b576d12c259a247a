//! Making one connection: dialling (a TCP address, an address found by
//! discovery, or a dialer's transport) and driving the client handshake
//! ([`ClientHandshake`], the same one a standby hub drives) over it.

use std::net::SocketAddr;
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
use crate::ClientError;

/// An authenticated connection, not yet driven.
pub(crate) struct Connected {
    pub reader: FramedRead<Rd, FrameCodec>,
    pub writer: Wr,
    pub welcome: proto::Welcome,
    pub addr: SocketAddr,
    /// The hub's instance id, from the identity it proved.
    pub instance_id: String,
}

/// Makes one connection: to `preferred` first if given, else (or when it
/// fails) to the configured address or a discovered hub.
pub(crate) async fn connect_once(
    shared: &Shared,
    preferred: Option<SocketAddr>,
    discovery_deadline: Duration,
) -> Result<Connected, ClientError> {
    let cfg = &shared.cfg;
    if let Target::Dialer(dialer) = &cfg.target {
        let what = format!("{dialer:?}");
        return within_connect_timeout(shared, &what, async {
            handshake(shared, dialer.dial(shared.cfg.tls.as_ref()).await?).await
        })
        .await;
    }
    let mut last_err = None;
    if let Some(addr) = preferred {
        match connect_addr(shared, addr).await {
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
            .collect::<Vec<_>>(),
        Target::Dialer(_) => Vec::new(),
        Target::Service(service) => {
            match discover_current(shared, service, discovery_deadline).await {
                Ok(found) => found,
                // Say why the known hub was refused rather than that no
                // other one answered.
                Err(e) => return Err(last_err.filter(|l| l.is_fenced()).unwrap_or(e)),
            }
        }
    };
    for addr in candidates {
        if Some(addr) == preferred {
            continue;
        }
        match connect_addr(shared, addr).await {
            Ok(c) => return Ok(c),
            // A hub that refused our proof will keep refusing it.
            Err(e @ ClientError::AuthFailed(_)) => return Err(e),
            Err(e) => last_err = Some(e),
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
    }))
}

/// Hubs of `service`, highest epoch first. When the first hub found has an
/// epoch below the highest seen (an old primary still running), looks for
/// all of them.
async fn discover_current(
    shared: &Shared,
    service: &str,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, ClientError> {
    let seen = shared.max_epoch.load(Ordering::Relaxed);
    let mut found = crate::discover::find(service, &shared.secret, false, timeout).await?;
    if found.iter().all(|h| h.identity.epoch < seen) {
        if let Ok(all) = crate::discover::find(service, &shared.secret, true, timeout).await {
            found = all;
        }
    }
    found.sort_by_key(|h| std::cmp::Reverse(h.identity.epoch));
    Ok(found.into_iter().map(|h| h.addr).collect())
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

async fn connect_addr(shared: &Shared, addr: SocketAddr) -> Result<Connected, ClientError> {
    within_connect_timeout(shared, &addr.to_string(), async {
        let opened = match &shared.cfg.tls {
            Some(tls) => {
                let host = match &shared.cfg.target {
                    Target::Addr(a) => Some(tls::host_of(tls::split_scheme(a).0)),
                    _ => None,
                };
                transport::tls(addr, tls, host).await?
            }
            None => transport::tcp(addr).await?,
        };
        handshake(shared, opened).await
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

/// Runs the client handshake over an opened transport.
async fn handshake(shared: &Shared, (r, w, addr): Opened) -> Result<Connected, ClientError> {
    let codec = FrameCodec::new().max_inbound(HANDSHAKE_MAX_FRAME);
    let mut reader = FramedRead::with_capacity(r, codec.clone(), 64 * 1024);
    let mut writer = FramedWrite::new(w, codec);
    let (mut handshake, hello) =
        ClientHandshake::new(hello(shared), &shared.secret, discovery::nonce());
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
