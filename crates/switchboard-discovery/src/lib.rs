//! Port discovery for switchboard: a hub binds a random free port, and
//! clients find it by service name, fast and safely.
//!
//! # Hub side
//!
//! * [`bind`] a listener on a free port ([`PortChoice::Random`] from a
//!   range with retry on conflict, the OS's port 0, or a fixed port) on
//!   `127.0.0.1` by default (`::1`, `0.0.0.0`, `::` on request).
//! * Write a rendezvous [`Hint`] into the per-user [`runtime_dir`]; the
//!   returned [`HintGuard`] removes it on shutdown.
//! * Answer probes on the normal listener (no second port): when the first
//!   frame of a connection is a `Probe` rather than a `Hello`, reply with
//!   [`answer_probe`], or close silently when it returns `None`.
//!
//! # Client side
//!
//! [`discover`] returns the verified hubs of a service, fastest path first:
//!
//! 1. the hint files `<runtime dir>/<service>.*.hint`;
//! 2. the operating system's table of listening sockets (Linux: netlink
//!    `sock_diag`, or `/proc/net/tcp{,6}`), LISTEN entries of the current
//!    user reachable on the asked address, probed all at once;
//! 3. a bounded-concurrency connect scan over 1025-65535 (configurable),
//!    driven by a few threads on non-blocking sockets, with a `bind` test
//!    that skips free loopback ports without sending them anything (see
//!    the `scan` module source for the technique).
//!
//! A hint is only believed after its hub verifies, and only read at all if
//! it is a regular file of the current user that group and others cannot
//! write, at most 4 KiB, with an `addr` matching its `port`; it is only
//! dialled on a loopback address, an address of this machine, or one of
//! the asked addresses, so a planted hint cannot send probes to another
//! host. A hub the scan verifies on a loopback address is dropped (Linux)
//! when the listening table shows only other users' listeners there: that
//! is a relay, for example from `::1` to `127.0.0.1` on the same port.
//!
//! Each candidate gets exactly one probe, and is accepted only if its
//! reply's proof verifies; in "first" mode (the default) discovery stops at
//! the first verified hub. [`probe`] checks a single address.
//!
//! # Probe handshake
//!
//! ```text
//! client                                         candidate
//!   │ ── u32 len ‖ Frame{Probe{magic "SBD1", version,  │
//!   │          service, 16-byte nonce}}  (≤ 128 bytes) ▶│
//!   │ ◀─ u32 len ‖ Frame{ProbeReply{identity, hub_nonce,│
//!   │          proof}}  (read with a 1 KiB limit)       │
//!   │  check: a ProbeReply, 16-byte hub nonce, proof    │
//!   │  verifies (constant time), identity.service and   │
//!   │  identity.port match what was asked and dialled   │
//! ```
//!
//! A dead port is refused at connect; a silent peer times out
//! ([`DEFAULT_PROBE_TIMEOUT`]); junk or an oversized length prefix fails
//! framing at once; an echo arrives as a `Probe`, not a `ProbeReply`; an
//! impostor's proof does not verify. The same hub proof appears in the
//! connection handshake's `Challenge`.
//!
//! # Connection handshake
//!
//! [`handshake::ClientHandshake`] is the client side of the connection
//! handshake (`Hello`, `Challenge`, `Auth`, `Welcome`) without I/O: the
//! client library and a standby hub drive it over their own connections.
//!
//! # The secret
//!
//! Every proof is keyed by a [`Secret`]: the 32 bytes of the per-user file
//! `<runtime dir>/secret` (mode 0600, created race-free by whichever side
//! needs it first, refused if group or others can read it or another user
//! owns it), or the SHA-256 of a token given by the user (for hubs reached
//! from other machines).
//!
//! # Proofs
//!
//! See [`proof`] for the exact layout of the HMAC-SHA256 hub and client
//! proofs, and [`Hint`] for the hint file format.
//!
//! # Example
//!
//! A hub binds a random port, answers probes and writes its hint; a client
//! discovers it by name.
//!
//! ```
//! use futures::{SinkExt, StreamExt};
//! use switchboard_discovery::{
//!     answer_probe, bind, discover, new_instance_id, proto, BindOptions, DiscoverOptions,
//!     Hint, Secret, Via,
//! };
//! use switchboard_wire::{Frame, FrameCodec, Kind};
//! use tokio_util::codec::Framed;
//!
//! # #[tokio::main]
//! # async fn main() -> anyhow::Result<()> {
//! let runtime_dir = tempfile::tempdir()?; // normally `runtime_dir()`
//! let secret = Secret::from_token("example"); // normally `Secret::load_default()?`
//!
//! // Hub side.
//! let listener = bind(&BindOptions::default()).await?;
//! let addr = listener.local_addr()?;
//! let identity = proto::HubIdentity {
//!     service: "demo".into(),
//!     instance_id: new_instance_id(),
//!     pid: std::process::id(),
//!     port: addr.port().into(),
//!     ..Default::default()
//! };
//! let _hint = Hint::new("demo", addr, &identity.instance_id).write_in(runtime_dir.path())?;
//! let (id, key) = (identity.clone(), secret.clone());
//! tokio::spawn(async move {
//!     while let Ok((stream, _)) = listener.accept().await {
//!         let mut frames = Framed::new(stream, FrameCodec::with_max_frame(4096));
//!         if let Some(Ok(Frame { kind: Some(Kind::Probe(p)), .. })) = frames.next().await {
//!             if let Some(reply) = answer_probe(&p, &id, &key) {
//!                 let _ = frames.send(Frame::from(reply)).await;
//!             }
//!         }
//!     }
//! });
//!
//! // Client side.
//! let opts = DiscoverOptions {
//!     hint_dirs: vec![runtime_dir.path().to_owned()],
//!     secret: Some(secret),
//!     ..Default::default()
//! };
//! let hubs = discover("demo", &opts).await?;
//! assert_eq!(hubs[0].addr, addr);
//! assert_eq!(hubs[0].via, Via::Hint);
//! assert_eq!(hubs[0].identity, identity);
//! # Ok(())
//! # }
//! ```

mod bind;
mod discover;
pub mod handshake;
mod hint;
mod probe;
pub mod proof;
mod scan;
mod secret;
pub mod table;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use bind::{
    bind, bind_std, BindOptions, PortChoice, DEFAULT_BIND_ATTEMPTS, DEFAULT_BIND_RANGE,
};
pub use discover::{
    discover, DiscoverError, DiscoverOptions, Tried, DEFAULT_CONCURRENCY, DEFAULT_DEADLINE,
    DEFAULT_PROBE_TIMEOUT, DEFAULT_SCAN_RANGE,
};
pub use hint::{
    new_instance_id, now_ms, validate_service, Hint, HintGuard, DEFAULT_SERVICE, HINT_SUFFIX,
    MAX_HINT_FILE, MAX_NAME_LEN,
};
pub use probe::{
    answer_probe, check_reply, encode_probe, probe, ProbeError, MAX_PROBE_LEN, MAX_REPLY_LEN,
};
pub use proof::{client_proof, hub_proof, nonce, verify_client_proof, verify_hub_proof};
pub use secret::{
    current_uid, ensure_private_dir, runtime_dir, Secret, SecretError, KEY_ID_LEN, RUNTIME_DIR_ENV,
    SECRET_FILE_NAME, SECRET_LEN,
};
pub use switchboard_wire::proto;

/// Errors of hint files and names.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// A service name or instance id cannot be used.
    #[error(
        "invalid {what} {name:?}: {reason}; use 1 to 64 ASCII letters, digits, '.', '_' or '-'"
    )]
    InvalidName {
        /// "service name" or "instance id".
        what: &'static str,
        /// The offending name (cut to 80 characters).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The runtime directory or the secret is unusable.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Reading or writing a hint file failed.
    #[error("cannot access hint file {path}: {source}; check the runtime directory")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A hint file is not a valid hint.
    #[error("hint file {path} is malformed ({reason}); remove it, a running hub rewrites its hint on restart")]
    BadHint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// How a hub was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// From a rendezvous hint file.
    Hint,
    /// From the operating system's table of listening sockets.
    Table,
    /// By the connect scan over a port range.
    Scan,
    /// Probed directly at an address given by the caller ([`probe`]).
    Direct,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Via::Hint => "hint",
            Via::Table => "listening table",
            Via::Scan => "scan",
            Via::Direct => "direct probe",
        })
    }
}

/// A verified hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundHub {
    /// Address the hub answered on.
    pub addr: SocketAddr,
    /// The hub's identity, covered by its verified proof.
    pub identity: proto::HubIdentity,
    /// How it was found.
    pub via: Via,
    /// The hub's Unix domain socket, named by the hint of the same
    /// instance (found by hint only). Not verified: a client checks the
    /// socket file's owner before it trusts it.
    pub unix: Option<std::path::PathBuf>,
}
