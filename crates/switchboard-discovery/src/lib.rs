//! Port discovery for switchboard: a hub binds a random free port, and
//! clients find it by service name, fast and safely.
//!
//! # Hub side
//!
//! * [`bind`] a listener on a free port ([`PortChoice::Random`] from a
//!   range with retry on conflict, the OS's port 0, or a fixed port).
//! * Write a rendezvous [`Hint`] into the per-user [`runtime_dir`]; the
//!   returned [`HintGuard`] removes it on shutdown.
//! * Answer probes on the normal listener: when the first frame of a
//!   connection is a `Probe`, reply with [`answer_probe`] (or close
//!   silently when it returns `None`).
//!
//! # The secret
//!
//! Every proof is keyed by a [`Secret`]: the 32 bytes of the per-user file
//! `<runtime dir>/secret` (mode 0600, created race-free by whichever side
//! needs it first, refused if group or others can read it or another user
//! owns it), or the SHA-256 of a token given by the user.
//!
//! # Proofs
//!
//! See [`proof`] for the exact layout of the HMAC-SHA256 hub and client
//! proofs.
//!
//! # Example
//!
//! ```
//! use switchboard_discovery::{answer_probe, bind, BindOptions, Secret};
//! use switchboard_wire::proto;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let listener = bind(&BindOptions::default()).await?;
//! let port = listener.local_addr()?.port();
//! let secret = Secret::from_token("example");
//! let identity = proto::HubIdentity {
//!     service: "demo".into(),
//!     port: port.into(),
//!     ..Default::default()
//! };
//! let probe = proto::Probe {
//!     magic: switchboard_wire::PROBE_MAGIC,
//!     version: switchboard_wire::PROTOCOL_VERSION,
//!     service: "demo".into(),
//!     nonce: switchboard_discovery::nonce().to_vec().into(),
//! };
//! let reply = answer_probe(&probe, &identity, &secret).expect("a probe for this hub");
//! assert_eq!(reply.identity.unwrap().port, u32::from(port));
//! # Ok(())
//! # }
//! ```

mod bind;
mod discover;
mod hint;
mod probe;
pub mod proof;
mod scan;
mod secret;
pub mod table;

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
    new_instance_id, now_ms, validate_service, Hint, HintGuard, HINT_SUFFIX, MAX_HINT_FILE,
    MAX_NAME_LEN,
};
pub use probe::{
    answer_probe, check_reply, encode_probe, probe, ProbeError, MAX_PROBE_LEN, MAX_REPLY_LEN,
};
pub use proof::{client_proof, hub_proof, nonce, verify_client_proof, verify_hub_proof};
pub use secret::{
    current_uid, ensure_private_dir, runtime_dir, Secret, SecretError, RUNTIME_DIR_ENV,
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
}
