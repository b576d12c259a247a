//! Binding the hub's listener to a free port.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;

use rand::Rng;
use socket2::{Domain, Protocol, Socket, Type};

/// Default range for random port choices: the IANA dynamic range, which
/// well-known services never claim.
pub const DEFAULT_BIND_RANGE: RangeInclusive<u16> = 49152..=65535;

/// Default number of random ports tried before falling back to port 0.
pub const DEFAULT_BIND_ATTEMPTS: u32 = 64;

/// Backlog of the listening socket.
const BACKLOG: i32 = 1024;

/// How to pick the listening port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortChoice {
    /// A random port from `range`, retried on conflict up to
    /// [`BindOptions::attempts`] times, then the operating system's choice.
    Random {
        /// Ports to choose from.
        range: RangeInclusive<u16>,
    },
    /// The operating system's choice (port 0).
    Os,
    /// Exactly this port; an error if it is taken.
    Fixed(u16),
}

impl Default for PortChoice {
    fn default() -> Self {
        PortChoice::Random {
            range: DEFAULT_BIND_RANGE,
        }
    }
}

/// Where and how to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindOptions {
    /// Address to listen on: `127.0.0.1` by default; `::1`, `0.0.0.0` and
    /// `::` work too.
    pub ip: IpAddr,
    /// How to choose the port.
    pub port: PortChoice,
    /// Random ports tried before falling back to port 0.
    pub attempts: u32,
}

impl Default for BindOptions {
    fn default() -> Self {
        BindOptions {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: PortChoice::default(),
            attempts: DEFAULT_BIND_ATTEMPTS,
        }
    }
}

/// Binds a listener as `opts` says. Must be called within a tokio runtime.
///
/// `SO_REUSEADDR` is set on Unix (so a restarted hub can take its old port
/// while old connections linger in `TIME_WAIT`); `SO_REUSEPORT` never is,
/// so no two listeners share a port.
pub async fn bind(opts: &BindOptions) -> io::Result<tokio::net::TcpListener> {
    let std = bind_std(opts)?;
    tokio::net::TcpListener::from_std(std)
}

/// Blocking variant of [`bind`] returning a non-blocking std listener.
pub fn bind_std(opts: &BindOptions) -> io::Result<std::net::TcpListener> {
    match &opts.port {
        PortChoice::Fixed(port) => bind_port(opts.ip, *port),
        PortChoice::Os => {
            // With SO_REUSEADDR the kernel may choose a port whose
            // TIME_WAIT or bound sockets make `listen` fail with "address
            // in use"; ask again a few times.
            let mut last = None;
            for _ in 0..8 {
                match bind_port(opts.ip, 0) {
                    Ok(l) => return Ok(l),
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                    Err(e) => return Err(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
        }
        PortChoice::Random { range } => {
            if range.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "empty port range; give a range such as 49152..=65535",
                ));
            }
            let mut rng = rand::rng();
            for _ in 0..opts.attempts {
                let port = rng.random_range(range.clone());
                if port == 0 {
                    continue;
                }
                match bind_port(opts.ip, port) {
                    Ok(l) => return Ok(l),
                    Err(e) if retryable(&e) => continue,
                    Err(e) => return Err(e),
                }
            }
            tracing::debug!(
                attempts = opts.attempts,
                "no free random port found, falling back to port 0"
            );
            bind_port(opts.ip, 0)
        }
    }
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
    )
}

fn bind_port(ip: IpAddr, port: u16) -> io::Result<std::net::TcpListener> {
    let addr = SocketAddr::new(ip, port);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR, on port 0 too: the connections this listener accepts
    // inherit it, and only then can a restarted hub or a standby bind the
    // same port while they linger in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    #[tokio::test]
    async fn random_port_is_in_range() {
        let opts = BindOptions {
            port: PortChoice::Random {
                range: 40000..=40999,
            },
            ..Default::default()
        };
        let l = bind(&opts).await.unwrap();
        let port = l.local_addr().unwrap().port();
        // 64 random tries among 1,000 ports: a fallback would need 64
        // conflicts in a row.
        assert!((40000..=40999).contains(&port), "{port}");
        assert_eq!(
            l.local_addr().unwrap().ip(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
    }

    #[tokio::test]
    async fn fixed_port_taken_is_an_error() {
        let first = bind(&BindOptions {
            port: PortChoice::Os,
            ..Default::default()
        })
        .await
        .unwrap();
        let port = first.local_addr().unwrap().port();
        let err = bind(&BindOptions {
            port: PortChoice::Fixed(port),
            ..Default::default()
        })
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[tokio::test]
    async fn random_choice_retries_then_falls_back() {
        // A one-port range that is taken: every attempt conflicts, so the
        // OS picks.
        let first = bind(&BindOptions {
            port: PortChoice::Os,
            ..Default::default()
        })
        .await
        .unwrap();
        let taken = first.local_addr().unwrap().port();
        let l = bind(&BindOptions {
            port: PortChoice::Random {
                range: taken..=taken,
            },
            attempts: 3,
            ..Default::default()
        })
        .await
        .unwrap();
        let port = l.local_addr().unwrap().port();
        assert_ne!(port, taken);
        assert_ne!(port, 0);
    }

    #[tokio::test]
    async fn other_addresses_bind() {
        for ip in [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ] {
            match bind(&BindOptions {
                ip,
                ..Default::default()
            })
            .await
            {
                Ok(l) => assert_eq!(l.local_addr().unwrap().ip(), ip),
                // Hosts without IPv6 cannot bind it; nothing else may fail.
                Err(e) => assert!(ip.is_ipv6(), "{ip}: {e}"),
            }
        }
    }

    #[test]
    fn empty_range_is_refused() {
        #[allow(clippy::reversed_empty_ranges)]
        let range = 5..=4;
        let err = bind_std(&BindOptions {
            port: PortChoice::Random { range },
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
