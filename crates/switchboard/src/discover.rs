//! Finding hubs by service name.

use std::time::Duration;

use std::net::SocketAddr;

use switchboard_discovery::{self as discovery, DiscoverError, DiscoverOptions, FoundHub, Secret};

use crate::{ClientError, HubInfo};

/// A hub found by [`discover`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveredHub {
    /// Where it answered.
    pub addr: SocketAddr,
    /// Who it proved to be.
    pub hub: HubInfo,
    /// How it was found: `"hint"`, `"table"`, `"scan"` or `"direct"`.
    pub via: String,
}

/// Finds the verified hubs serving `service` with `secret`, fastest path
/// first (hint files in the runtime directory, then the OS table of
/// listening sockets, then a connect scan), within `deadline`. With `all`
/// false it returns as soon as one hub is verified.
///
/// For finer control (hint directories, scan range, IPv6) call
/// [`discovery::discover`] directly.
pub async fn discover(
    service: &str,
    secret: &Secret,
    all: bool,
    deadline: Duration,
) -> Result<Vec<DiscoveredHub>, ClientError> {
    Ok(find(service, secret, all, deadline)
        .await?
        .into_iter()
        .map(|h| DiscoveredHub {
            addr: h.addr,
            via: h.via.to_string(),
            hub: h.identity.into(),
        })
        .collect())
}

/// [`discover`] with the discovery crate's results.
pub(crate) async fn find(
    service: &str,
    secret: &Secret,
    all: bool,
    deadline: Duration,
) -> Result<Vec<FoundHub>, ClientError> {
    let opts = DiscoverOptions {
        all,
        deadline,
        secret: Some(secret.clone()),
        ..DiscoverOptions::default()
    };
    match discovery::discover(service, &opts).await {
        Ok(found) if !found.is_empty() => Ok(found),
        Ok(_) => Err(ClientError::NotFound {
            service: service.to_string(),
            detail: "nothing answered".to_string(),
        }),
        Err(DiscoverError::NotFound { tried, .. }) if !tried.unverified.is_empty() => {
            Err(ClientError::HubUnverified {
                addr: tried.unverified[0].to_string(),
            })
        }
        Err(DiscoverError::NotFound { service, tried }) => Err(ClientError::NotFound {
            service,
            detail: tried.to_string(),
        }),
        Err(DiscoverError::InvalidService(e)) => Err(ClientError::InvalidArgument(e.to_string())),
        Err(e) => Err(ClientError::Discovery(e.to_string())),
    }
}
