//! The options every command accepts ([`Global`]) and what they make: the
//! secret, the service, a client builder with the CLI's connection policy,
//! and the connection itself.

use std::time::Duration;

use clap::Args;
use switchboard::{Client, ClientBuilder, ClientError, Secret};

use super::dial;

/// Options accepted before or after the subcommand.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Service name of the hub [default: switchboard, or the hub's
    /// configuration file].
    #[arg(long, global = true, env = "SWITCHBOARD_SERVICE", value_name = "NAME")]
    service: Option<String>,
    /// Connect to this hub address instead of discovering it: HOST:PORT,
    /// or unix:/PATH for a hub's Unix socket.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_ADDR",
        value_name = "HOST:PORT"
    )]
    pub addr: Option<String>,
    /// Seconds to wait for a hub that does not answer (0: try once).
    ///
    /// A standby taking over, or a hub starting: the --addr address, or the
    /// addresses of the service's hint files, are tried again with short
    /// pauses for up to this long before a full discovery or giving up; a
    /// one-shot command whose connection drops waits as long for its
    /// session to be resumed.
    #[arg(long, global = true, default_value_t = 5.0, value_name = "SECS")]
    pub wait: f64,
    /// Output one JSON object per line.
    #[arg(long, global = true)]
    pub json: bool,
    /// Shared token instead of the per-user secret file.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    #[command(flatten)]
    pub tls: super::tls_args::TlsGlobal,
    /// Log level (error, warn, info, debug, trace) or filter directives
    /// such as switchboard_hub=debug,warn [default: warn, or the hub's
    /// configuration file]. Logs go to standard error.
    #[arg(long, global = true, env = "SWITCHBOARD_LOG", value_name = "LEVEL",
          value_parser = parse_filter)]
    pub log_level: Option<String>,
    /// Log format: text, or json (one object per line, with the fields
    /// of the enclosing spans) [default: text, or the hub's configuration
    /// file].
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_LOG_FORMAT",
        value_name = "FORMAT"
    )]
    pub log_format: Option<super::config::LogFormat>,
}

/// `--log-level`: a level or filter `tracing` accepts.
fn parse_filter(s: &str) -> Result<String, String> {
    super::config::check_filter(s).map(|()| s.to_string())
}

impl Global {
    /// The secret: the token if given, else the per-user secret file.
    pub fn secret(&self) -> anyhow::Result<Secret> {
        match &self.token {
            Some(t) if t.is_empty() => Err(anyhow::anyhow!(
                "the token is empty; pass a non-empty --token, or unset SWITCHBOARD_TOKEN to use the per-user secret file"
            )),
            Some(t) => Ok(Secret::from_token(t)),
            None => Secret::load_default()
                .map_err(|e| anyhow::Error::new(ClientError::Secret(e.to_string()))),
        }
    }

    /// The service name: `--service`, else [`switchboard::DEFAULT_SERVICE`].
    pub fn service(&self) -> &str {
        self.service
            .as_deref()
            .unwrap_or(switchboard::DEFAULT_SERVICE)
    }

    /// Sets the service when neither `--service` nor `SWITCHBOARD_SERVICE`
    /// gave one (from the hub's configuration file).
    pub fn default_service(&mut self, service: &str) {
        if self.service.is_none() {
            self.service = Some(service.to_string());
        }
    }

    /// Whether `--service` was given.
    pub fn service_given(&self) -> bool {
        self.service.is_some()
    }

    /// `--wait` as a duration.
    pub fn wait(&self) -> anyhow::Result<Duration> {
        if !(self.wait.is_finite() && (0.0..=3600.0).contains(&self.wait)) {
            anyhow::bail!(
                "--wait must be between 0 and 3600 seconds, got {}",
                self.wait
            );
        }
        Ok(Duration::from_secs_f64(self.wait))
    }

    /// A client builder for `id` with the secret and the CLI's connection
    /// policy, without a target. Long-running commands reconnect for as
    /// long as they run. One-shot commands reconnect too when `--wait` is
    /// above 0, quickly (25 ms to 250 ms, the last address first), and
    /// their calls wait up to `--wait` for the session to be resumed, so a
    /// standby taking over in the middle of a command does not fail it.
    pub fn builder(&self, id: &str, long_running: bool) -> anyhow::Result<ClientBuilder> {
        let wait = self.wait()?;
        let b = Client::builder(id).agent(format!("switchboard-cli/{}", env!("CARGO_PKG_VERSION")));
        // Over a Unix socket without --token the client uses the secret
        // file if there is one, else its peer credentials (see
        // `ClientBuilder::unix`); it creates no secret file.
        let unix = self.addr.as_deref().is_some_and(|a| a.starts_with("unix:"));
        let mut b = if unix && self.token.is_none() {
            b
        } else {
            b.secret(self.secret()?)
        };
        if let Some(tls) = self.tls.client() {
            b = b.tls(tls);
        }
        Ok(if long_running {
            b.reconnect(true)
        } else if wait.is_zero() {
            b.reconnect(false)
        } else {
            b.reconnect(true)
                .backoff(Duration::from_millis(25), Duration::from_millis(250))
                .resume_wait(wait)
        })
    }

    /// Connects `builder` (from [`builder`](Self::builder), possibly with
    /// more options) to the hub of `--addr` or `--service`, trying again for
    /// up to `--wait` while the hub does not answer (see [`dial`]).
    pub async fn connect_with(&self, builder: ClientBuilder) -> anyhow::Result<Client> {
        let target = match &self.addr {
            Some(addr) => dial::Target::Addr(addr),
            None => dial::Target::Service(self.service()),
        };
        let secret = match &self.addr {
            Some(_) => None,
            None => Some(self.secret()?),
        };
        dial::connect(builder, target, secret.as_ref(), self.wait()?).await
    }

    /// Connects a client as `id`.
    pub async fn connect(&self, id: &str, long_running: bool) -> anyhow::Result<Client> {
        self.connect_with(self.builder(id, long_running)?).await
    }

    /// Runs a read that the client does not resend after a lost connection
    /// (key/value get, client list, status) and, when the connection was
    /// lost under it, runs it again once the client has reconnected, within
    /// `--wait`.
    pub async fn read<T, F, Fut>(&self, client: &Client, read: F) -> Result<T, ClientError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let deadline = tokio::time::Instant::now() + self.wait().unwrap_or_default();
        loop {
            match read().await {
                Err(ClientError::Disconnected) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() || client.wait_connected(left).await.is_err() {
                        return Err(ClientError::Disconnected);
                    }
                }
                r => return r,
            }
        }
    }
}
