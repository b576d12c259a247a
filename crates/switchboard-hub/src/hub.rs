//! Starting a hub: [`Hub::start`] (TCP), [`Hub::start_in_memory`],
//! [`Hub::standby`].

use std::net::SocketAddr;
use std::sync::Arc;

use switchboard_discovery::{bind, new_instance_id, now_ms, validate_service};
use switchboard_wire::proto;

use crate::config::{HubConfig, HubError};
use crate::handle::HubHandle;
use crate::primary;
use crate::replication::follower::StandbyHandle;
use crate::router::{Router, RouterConfig};
use crate::stats::HubStats;

/// Entry point: [`Hub::start`].
#[derive(Debug)]
pub struct Hub;

impl Hub {
    /// Binds the listener, writes the hint (if configured) and starts
    /// serving on the current tokio runtime.
    pub async fn start(config: HubConfig) -> Result<HubHandle, HubError> {
        check_config(&config)?;
        let listener = match &config.listener {
            Some(given) => {
                let inherited = |source| HubError::Bind {
                    addr: "the listener it was given".into(),
                    source,
                };
                let l = given.try_clone().map_err(inherited)?;
                l.set_nonblocking(true).map_err(inherited)?;
                let l = tokio::net::TcpListener::from_std(l).map_err(inherited)?;
                check_exposure(&config, Some(l.local_addr().map_err(inherited)?.ip()))?;
                l
            }
            None => {
                check_exposure(&config, Some(config.bind.ip))?;
                bind(&config.bind).await.map_err(|source| HubError::Bind {
                    addr: format!("{}", config.bind.ip),
                    source,
                })?
            }
        };
        let local_addr = listener.local_addr().map_err(|source| HubError::Bind {
            addr: format!("{}", config.bind.ip),
            source,
        })?;
        let (identity, router, stats) = new_primary(&config, local_addr.port());
        primary::serve(config, Some(listener), identity, router, stats).await
    }

    /// Starts a hub that listens on no port and writes no hint: clients
    /// reach it only through [`HubHandle::connect_in_memory`] (the
    /// `switchboard` facade's `Hub::in_memory`). It is the same hub, with
    /// the same router, handshake and limits; only the transport is an
    /// in-process pipe. For tests and for programs that embed a hub for
    /// their own tasks. An HTTP gateway, when configured, still listens.
    pub async fn start_in_memory(config: HubConfig) -> Result<HubHandle, HubError> {
        check_config(&config)?;
        check_exposure(&config, None)?;
        let (identity, router, stats) = new_primary(&config, 0);
        primary::serve(config, None, identity, router, stats).await
    }

    /// Starts a hot standby of `config.service`: it finds the primary
    /// (at `primary` when given, else by discovery, waiting until one
    /// appears), mirrors it, and takes over its address when it fails.
    /// See [`StandbyHandle`](StandbyHandle).
    pub async fn standby(
        config: HubConfig,
        primary: Option<SocketAddr>,
    ) -> Result<StandbyHandle, HubError> {
        check_config(&config)?;
        check_exposure(&config, Some(config.bind.ip))?;
        Ok(crate::replication::follower::start(config, primary))
    }
}

/// The identity, router and counters of a new primary listening on `port`
/// (0: in memory only).
fn new_primary(config: &HubConfig, port: u16) -> (proto::HubIdentity, Router, Arc<HubStats>) {
    let identity = proto::HubIdentity {
        service: config.service.clone(),
        instance_id: new_instance_id(),
        pid: std::process::id(),
        port: u32::from(port),
        epoch: config.epoch,
        started_at_ms: now_ms(),
        role: proto::Role::Primary as i32,
    };
    let stats = Arc::new(HubStats::default());
    let router = Router::new(
        RouterConfig {
            identity: identity.clone(),
            limits: config.limits.clone(),
            keepalive: config.keepalive,
        },
        stats.clone(),
    );
    (identity, router, stats)
}

fn check_config(config: &HubConfig) -> Result<(), HubError> {
    validate_service(&config.service)?;
    if config.limits.pre_auth_max_frame < 64 || config.limits.max_frame < 1024 {
        return Err(HubError::Config(
            "frame limits are too small; allow at least 64 bytes before and 1 KiB after authentication".into(),
        ));
    }
    if config.limits.queue_hard_bytes < config.limits.queue_bytes {
        return Err(HubError::Config(
            "queue_hard_bytes is below queue_bytes; the hard limit must be at least the soft one"
                .into(),
        ));
    }
    if config.heartbeat_interval.is_zero() || config.heartbeat_misses == 0 {
        return Err(HubError::Config(
            "heartbeat_interval and heartbeat_misses must be above zero".into(),
        ));
    }
    if config.limits.change_log_changes == 0 || config.limits.change_log_bytes == 0 {
        return Err(HubError::Config(
            "change_log_changes and change_log_bytes must be above zero".into(),
        ));
    }
    if config.limits.change_log_changes > crate::limits::MAX_CHANGES_PER_COMMIT {
        return Err(HubError::Config(format!(
            "change_log_changes is above {}, the most a standby takes between two commit points",
            crate::limits::MAX_CHANGES_PER_COMMIT
        )));
    }
    Ok(())
}

/// The plaintext guard: a listener on a non-loopback address (the native
/// one at `native`, when it listens, and the HTTP one) needs TLS, unless
/// `insecure_plaintext` allows it, and then every start warns.
fn check_exposure(config: &HubConfig, native: Option<std::net::IpAddr>) -> Result<(), HubError> {
    if config.tls.is_some() {
        return Ok(());
    }
    let http = config.http.as_ref().map(|h| h.addr.ip());
    let exposed: Vec<String> = [native.map(|ip| ("native", ip)), http.map(|ip| ("HTTP", ip))]
        .into_iter()
        .flatten()
        .filter(|(_, ip)| !ip.is_loopback())
        .map(|(what, ip)| format!("the {what} listener on {ip}"))
        .collect();
    if exposed.is_empty() {
        return Ok(());
    }
    let exposed = exposed.join(" and ");
    if config.insecure_plaintext {
        tracing::warn!(
            "{exposed} serves plaintext to the network (insecure_plaintext): anyone on the path can read and change the traffic; give a TLS certificate (--tls-cert, --tls-key)"
        );
        return Ok(());
    }
    Err(HubError::Config(format!(
        "{exposed} would serve plaintext to the network; give a TLS certificate and key (--tls-cert, --tls-key), or allow plaintext with --insecure-plaintext (insecure_plaintext), or listen on loopback"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_discovery::Secret;

    #[test]
    fn insecure_plaintext_lets_a_non_loopback_listener_start() {
        let mut config = HubConfig::with_secret("guard", Secret::from_token("t"));
        let any: std::net::IpAddr = "0.0.0.0".parse().unwrap();
        assert!(check_exposure(&config, Some(any)).is_err());
        assert!(check_exposure(&config, Some("127.0.0.1".parse().unwrap())).is_ok());
        assert!(check_exposure(&config, Some("::1".parse().unwrap())).is_ok());
        config.insecure_plaintext = true;
        assert!(check_exposure(&config, Some(any)).is_ok());
    }
}
