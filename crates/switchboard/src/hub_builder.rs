//! Running a hub inside this process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchboard_discovery::{BindOptions, PortChoice, Secret};
use switchboard_hub::router::admission::Admission;
use switchboard_hub::router::remote::Remote;
use switchboard_hub::{HttpConfig, HubConfig, HubError, HubHandle, Limits, UnixSocket};

/// Starts a hub in this process; see [`Hub::builder`].
///
/// The hub answers discovery probes and client connections on one listener.
/// By default it binds a random free loopback port, writes the rendezvous
/// hint for its service (removed again on shutdown) and uses the per-user
/// secret file.
#[derive(Debug)]
pub struct Hub;

impl Hub {
    /// A builder with the defaults: service
    /// [`DEFAULT_SERVICE`](crate::DEFAULT_SERVICE), random free loopback
    /// port, per-user secret, hint file written.
    pub fn builder() -> HubBuilder {
        HubBuilder {
            service: crate::DEFAULT_SERVICE.to_string(),
            listen: None,
            secret: None,
            write_hint: true,
            limits: None,
            keepalive: None,
            http: None,
            heartbeat: None,
            unix: None,
            tls: None,
            admission: None,
            remote: None,
            http_config: None,
            handshake_timeout: None,
            listener: None,
        }
    }

    /// Starts a hub reached in memory only, with a random secret: no port,
    /// no hint file, no secret file. Clients connect with
    /// [`ClientBuilder::in_memory`](crate::ClientBuilder::in_memory); the
    /// router, handshake and limits are the same as over TCP. For tests
    /// and for programs whose tasks talk through an embedded hub.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use switchboard::{Client, Hub};
    ///
    /// let hub = Hub::in_memory().await?;
    /// let a = Client::builder("a").in_memory(&hub).connect().await?;
    /// let b = Client::builder("b").in_memory(&hub).connect().await?;
    /// let mut inbox = b.messages().await?;
    /// a.send("b", "hello").await?;
    /// assert_eq!(&inbox.recv().await.unwrap().payload[..], b"hello");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn in_memory() -> Result<HubHandle, HubError> {
        Hub::builder()
            .secret(Secret::random())
            .start_in_memory()
            .await
    }
}

/// Settings of an in-process hub.
#[derive(Debug, Clone)]
pub struct HubBuilder {
    service: String,
    listen: Option<String>,
    secret: Option<Secret>,
    write_hint: bool,
    limits: Option<Limits>,
    keepalive: Option<Option<Duration>>,
    http: Option<String>,
    heartbeat: Option<(Duration, u32)>,
    unix: Option<UnixSocket>,
    tls: Option<HubTls>,
    admission: Option<Arc<dyn Admission>>,
    remote: Option<Arc<dyn Remote>>,
    http_config: Option<HttpConfig>,
    handshake_timeout: Option<Duration>,
    listener: Option<Arc<std::net::TcpListener>>,
}

/// The TLS settings of a [`HubBuilder`] (see [`HubBuilder::tls`]).
#[derive(Debug, Clone, Default)]
pub struct HubTls {
    /// TLS on the native and HTTP listeners.
    pub server: Option<switchboard_hub::TlsServer>,
    /// TLS for the standby's link to its primary.
    pub client: Option<switchboard_hub::ClientTls>,
    /// Allow plaintext listeners on non-loopback addresses (each start
    /// warns).
    pub insecure_plaintext: bool,
}

impl HubBuilder {
    /// Service name clients discover the hub by.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = name.into();
        self
    }

    /// Listen on `addr` (`ip:port`; port 0 lets the OS choose) instead of
    /// a random free loopback port. Parsed when the hub starts.
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = Some(addr.into());
        self
    }

    /// The secret clients must prove (default: the per-user secret file).
    pub fn secret(mut self, secret: Secret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// Shorthand for [`secret`](Self::secret) with a shared token.
    pub fn token(self, token: &str) -> Self {
        self.secret(Secret::from_token(token))
    }

    /// The hub's Unix domain socket (default: on Unix, one in the runtime
    /// directory, mode 0600; [`UnixSocket::disabled`] for none).
    pub fn unix(mut self, unix: UnixSocket) -> Self {
        self.unix = Some(unix);
        self
    }

    /// Whether to write the rendezvous hint file (default: yes). Without
    /// it, clients find the hub only through the socket table or a scan, or
    /// by address.
    pub fn write_hint(mut self, on: bool) -> Self {
        self.write_hint = on;
        self
    }

    /// Replaces the hub's limits (queue sizes, frame sizes, timeouts).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Asks clients to send traffic or a ping at least every `interval`,
    /// and disconnects clients silent for three intervals (default 30 s).
    pub fn keepalive(mut self, interval: Duration) -> Self {
        self.keepalive = Some(Some(interval));
        self
    }

    /// Turns the keepalive off: clients are not asked to send pings, and
    /// a silent client stays connected.
    pub fn no_keepalive(mut self) -> Self {
        self.keepalive = Some(None);
        self
    }

    /// Also serve the HTTP long-poll gateway, WebSocket clients (`/v1/ws`),
    /// metrics and the dashboard on `addr` (`ip:port`, port 0 for a free
    /// one); see `HubHandle::http_addr` and `HubHandle::http_token`.
    pub fn http(mut self, addr: impl Into<String>) -> Self {
        self.http = Some(addr.into());
        self
    }

    /// Serve the HTTP/WebSocket gateway with all of these settings (its
    /// address, poll and idle timeouts, body and mailbox bounds); replaces
    /// an earlier [`http`](Self::http), and a later one changes only the
    /// address.
    pub fn http_config(mut self, http: HttpConfig) -> Self {
        self.http = None;
        self.http_config = Some(http);
        self
    }

    /// Serve the HTTP/WebSocket gateway on this listening TCP socket
    /// instead of binding one (e.g. a socket passed by systemd's socket
    /// activation); keeps the other settings of
    /// [`http_config`](Self::http_config) and replaces any address given.
    pub fn http_listener(mut self, listener: std::net::TcpListener) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let mut http = self
            .http_config
            .take()
            .unwrap_or_else(|| HttpConfig::new(addr));
        http.addr = addr;
        http.listener = Some(Arc::new(listener));
        self.http = None;
        self.http_config = Some(http);
        self
    }

    /// Serve on this listening TCP socket instead of binding one (the
    /// listen address is then ignored): e.g. a socket passed by systemd's
    /// socket activation. Only [`start`](Self::start) uses it.
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// Time a new connection has to complete the whole handshake (default
    /// 5 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = Some(timeout);
        self
    }

    /// TLS: on the listeners (`server`), on the standby's link
    /// (`client`), and whether a plaintext listener on a non-loopback
    /// address is allowed (`insecure_plaintext`; without TLS such a hub
    /// refuses to start otherwise).
    pub fn tls(mut self, tls: HubTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Heartbeats on the replication link between a primary and its
    /// standby: one every `interval`, and the peer is taken as dead after
    /// `misses` silent intervals (default 50 ms × 4). A killed peer's
    /// socket closes at once, which is noticed sooner.
    pub fn heartbeat(mut self, interval: Duration, misses: u32) -> Self {
        self.heartbeat = Some((interval, misses));
        self
    }

    /// Who may connect as whom and do what: a permission policy
    /// ([`switchboard_hub::Policy`]) or another [`Admission`] (default:
    /// none, the single-user mode where whoever proves the secret may do
    /// everything).
    pub fn admission(mut self, admission: Arc<dyn Admission>) -> Self {
        self.admission = Some(admission);
        self
    }

    /// Hands messages for clients of other hubs to `remote` and asks it
    /// before each registration (the remote seam): a federation of hubs,
    /// such as `switchboard_federation::Federation::remote` (re-exported
    /// as [`federation`](crate::federation) with the `federation` feature).
    pub fn remote(mut self, remote: Arc<dyn Remote>) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Binds, writes the hint and starts serving; returns a handle with the
    /// bound address and a `shutdown` method. A hot standby may attach to
    /// it at any time (see [`start_standby`](Self::start_standby)).
    pub async fn start(self) -> Result<HubHandle, HubError> {
        switchboard_hub::Hub::start(self.config()?).await
    }

    /// Starts a hot standby of this builder's service instead of a hub: it
    /// finds the primary (at `primary`, else by discovery, waiting until
    /// one appears), mirrors its state, and when the primary dies takes
    /// over its address with a higher epoch. Clients reconnect and resume
    /// with nothing acknowledged lost. The listen address applies only if
    /// the primary's port cannot be bound at takeover.
    pub async fn start_standby(
        self,
        primary: Option<SocketAddr>,
    ) -> Result<switchboard_hub::StandbyHandle, HubError> {
        switchboard_hub::Hub::standby(self.config()?, primary).await
    }

    /// Starts the hub reached in memory only (see [`Hub::in_memory`]):
    /// the listen address and hint settings are ignored.
    pub async fn start_in_memory(self) -> Result<HubHandle, HubError> {
        switchboard_hub::Hub::start_in_memory(self.config()?).await
    }

    /// The hub configuration this builder describes.
    pub fn config(self) -> Result<HubConfig, HubError> {
        let secret = match self.secret {
            Some(s) => s,
            None => Secret::load_default()?,
        };
        let mut config = HubConfig::with_secret(&self.service, secret);
        if let Some(listen) = &self.listen {
            let addr: SocketAddr = listen.parse().map_err(|e| {
                HubError::Config(format!(
                    "invalid listen address {listen:?}: {e}; use IP:PORT such as 127.0.0.1:0"
                ))
            })?;
            config.bind = BindOptions {
                ip: addr.ip(),
                port: if addr.port() == 0 {
                    PortChoice::Os
                } else {
                    PortChoice::Fixed(addr.port())
                },
                ..BindOptions::default()
            };
        }
        if let Some(http) = &self.http {
            let addr: SocketAddr = http.parse().map_err(|e| {
                HubError::Config(format!(
                    "invalid http address {http:?}: {e}; use IP:PORT such as 127.0.0.1:0"
                ))
            })?;
            let mut http = self.http_config.unwrap_or_else(|| HttpConfig::new(addr));
            http.addr = addr;
            config.http = Some(http);
        } else if let Some(http) = self.http_config {
            config.http = Some(http);
        }
        if let Some(timeout) = self.handshake_timeout {
            config.handshake_timeout = timeout;
        }
        config.write_hint = self.write_hint;
        if let Some(unix) = self.unix {
            config.unix = unix;
        }
        if let Some(keepalive) = self.keepalive {
            config.keepalive = keepalive;
        }
        if let Some(limits) = self.limits {
            config.limits = limits;
        }
        if let Some((interval, misses)) = self.heartbeat {
            config.heartbeat_interval = interval;
            config.heartbeat_misses = misses;
        }
        if let Some(tls) = self.tls {
            config.tls = tls.server;
            config.tls_client = tls.client;
            config.insecure_plaintext = tls.insecure_plaintext;
        }
        config.admission = self.admission;
        config.remote = self.remote;
        config.listener = self.listener;
        Ok(config)
    }
}
