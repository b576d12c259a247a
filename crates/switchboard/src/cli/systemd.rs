//! systemd's notify protocol for `switchboard hub` under a `Type=notify`
//! unit: READY=1 (with STATUS=) once the hub listens, STOPPING=1 when it
//! shuts down, and WATCHDOG=1 every half `WATCHDOG_USEC` when the unit sets
//! `WatchdogSec`. Without `NOTIFY_SOCKET` every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

/// Sends the hub's state to the service manager.
pub struct Notifier {
    on: bool,
    watchdog: Option<tokio::task::JoinHandle<()>>,
}

impl Notifier {
    /// From the environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`,
    /// `WATCHDOG_PID`); starts the watchdog pings when asked for. Must be
    /// called within the runtime.
    pub fn from_env() -> Notifier {
        let on = std::env::var_os("NOTIFY_SOCKET").is_some();
        let watchdog = watchdog_usec().filter(|_| on).map(|usec| {
            let every = Duration::from_micros(usec / 2).max(Duration::from_millis(1));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    if let Err(e) = sd_notify::notify(false, &[NotifyState::Watchdog]) {
                        tracing::warn!("cannot send WATCHDOG=1 to the service manager: {e}");
                    }
                }
            })
        });
        Notifier { on, watchdog }
    }

    fn send(&self, state: &[NotifyState]) {
        if !self.on {
            return;
        }
        if let Err(e) = sd_notify::notify(false, state) {
            tracing::warn!("cannot notify the service manager: {e}");
        }
    }

    /// READY=1 with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// STOPPING=1: the hub is shutting down.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

/// `WATCHDOG_USEC` when the watchdog is asked of this process: set and
/// above 0, and `WATCHDOG_PID` unset or this process's id (as
/// `sd_watchdog_enabled(3)` reads them).
fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    match std::env::var("WATCHDOG_PID") {
        Ok(pid) if pid.parse::<u32>().ok() != Some(std::process::id()) => None,
        _ => (usec > 0).then_some(usec),
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
    }
}

/// The listening sockets systemd passed (socket activation).
#[derive(Debug, Default)]
pub struct Activated {
    /// The native listener (clients and discovery probes).
    pub native: Option<std::net::TcpListener>,
    /// The HTTP/WebSocket listener.
    pub http: Option<std::net::TcpListener>,
}

/// Takes the sockets of `LISTEN_FDS` (from fd 3) when `LISTEN_PID` is this
/// process, and unsets the variables so no child inherits them. With
/// `LISTEN_FDNAMES` naming one `native` or `http` (a socket unit's
/// `FileDescriptorName=`), the names decide; otherwise the first socket is
/// the native listener and the second the HTTP one.
pub fn activated() -> anyhow::Result<Activated> {
    use std::os::fd::FromRawFd;
    let fds: Vec<(i32, String)> = sd_notify::listen_fds_with_names(true)
        .map_err(|e| anyhow::anyhow!("cannot take the sockets systemd passed: {e}"))?
        .collect();
    if fds.len() > 2 {
        anyhow::bail!(
            "systemd passed {} sockets; the hub takes at most two (native, http)",
            fds.len()
        );
    }
    let by_name = fds.iter().any(|(_, n)| n == "native" || n == "http");
    let mut found = Activated::default();
    for (i, (fd, name)) in fds.into_iter().enumerate() {
        // SAFETY: systemd passed this descriptor for this process
        // (LISTEN_PID matched), and nothing else in it owns it.
        let socket = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        if socket.local_addr().is_err() {
            anyhow::bail!("socket {fd} ({name}) from systemd is not a TCP listener");
        }
        let http = if by_name { name == "http" } else { i == 1 };
        let slot = if http {
            &mut found.http
        } else {
            &mut found.native
        };
        if slot.replace(socket).is_some() {
            anyhow::bail!("systemd passed two sockets named {name:?}");
        }
    }
    Ok(found)
}
