//! Rendezvous hint files: where a hub says it listens.
//!
//! A hub writes `<runtime dir>/<service>.<instance_id>.hint`, a small JSON
//! object, atomically (a private temporary file in the same directory,
//! then `rename`) with mode 0600:
//!
//! ```json
//! {"service":"switchboard","addr":"127.0.0.1:53211","port":53211,
//!  "pid":4242,"instance_id":"9f3c51d0a2b4e6f8","started_at_ms":1700000000000}
//! ```
//!
//! A hub that listens on a Unix domain socket adds its path,
//! `"unix":"/run/user/1000/switchboard/switchboard.9f3c51d0a2b4e6f8.sock"`;
//! a hint without it is read as before.
//!
//! Several instances of a service coexist (one file each); discovery reads
//! every `<service>.*.hint`. A hint is only a candidate address: it is
//! believed only after the hub at that address answers a probe with a valid
//! proof, so a stale hint (the hub died, or its port was reused) costs at
//! most one failed probe.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::secret::{hex_lower, open_nofollow, private_create_new};
use crate::{runtime_dir, DiscoveryError};

/// Suffix of hint file names.
pub const HINT_SUFFIX: &str = ".hint";

/// Largest hint file read; anything bigger is not a hint.
pub const MAX_HINT_FILE: u64 = 4096;

/// Longest service name or instance id, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Service name used when none is given.
pub const DEFAULT_SERVICE: &str = "switchboard";

/// A hub's rendezvous hint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hint {
    /// Service name the hub serves.
    pub service: String,
    /// Listening address, `host:port` (`[v6]:port` for IPv6).
    pub addr: String,
    /// Listening port.
    pub port: u16,
    /// Process id of the hub.
    pub pid: u32,
    /// Instance id of the hub (see [`new_instance_id`]).
    pub instance_id: String,
    /// Start time of the hub, ms since the Unix epoch.
    pub started_at_ms: u64,
    /// The hub's Unix domain socket, an absolute path, when it listens on
    /// one (absent in hints of older hubs, and of hubs without a socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix: Option<PathBuf>,
}

/// A fresh random instance id: 16 lowercase hex digits.
pub fn new_instance_id() -> String {
    let mut b = [0u8; 8];
    rand::rng().fill_bytes(&mut b);
    hex_lower(&b)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Checks a service name: 1 to 64 bytes of ASCII letters, digits, `.`,
/// `_` or `-`, so that it is safe inside file names.
pub fn validate_service(name: &str) -> Result<(), DiscoveryError> {
    validate_name("service name", name, true)
}

fn validate_name(what: &'static str, name: &str, dots: bool) -> Result<(), DiscoveryError> {
    let bad = |reason: &'static str| DiscoveryError::InvalidName {
        what,
        name: name.chars().take(80).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad("it is longer than 64 bytes"));
    }
    if name.starts_with('.') {
        return Err(bad("it starts with '.'"));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || (dots && c == '.');
    if !name.chars().all(ok) {
        return Err(bad(if dots {
            "only letters, digits, '.', '_' and '-' are allowed"
        } else {
            "only letters, digits, '_' and '-' are allowed"
        }));
    }
    Ok(())
}

impl Hint {
    /// A hint for a hub of `service` listening on `local_addr`, with this
    /// process's pid and the current time.
    pub fn new(service: &str, local_addr: SocketAddr, instance_id: &str) -> Hint {
        Hint {
            service: service.to_owned(),
            addr: local_addr.to_string(),
            port: local_addr.port(),
            pid: std::process::id(),
            instance_id: instance_id.to_owned(),
            started_at_ms: now_ms(),
            unix: None,
        }
    }

    /// The file name of this hint: `<service>.<instance_id>.hint`.
    pub fn file_name(&self) -> String {
        format!("{}.{}{HINT_SUFFIX}", self.service, self.instance_id)
    }

    /// The address a client should connect to. An unspecified listening
    /// address (`0.0.0.0`, `::`) becomes the loopback address of its
    /// family; an unparsable one becomes `127.0.0.1:<port>`.
    pub fn connect_addr(&self) -> SocketAddr {
        match self.addr.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_unspecified() => {
                let ip = match a.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                };
                SocketAddr::new(ip, a.port())
            }
            Ok(a) => a,
            Err(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port),
        }
    }

    /// Writes the hint into the runtime directory (see [`runtime_dir`]).
    pub fn write(&self) -> Result<HintGuard, DiscoveryError> {
        let dir = runtime_dir()?;
        self.write_in(&dir)
    }

    /// Writes the hint into `dir`: a private temporary file in `dir`
    /// (mode 0600), then renamed over `<service>.<instance_id>.hint`, so
    /// readers see the old file or the new one, never a partial one.
    pub fn write_in(&self, dir: &Path) -> Result<HintGuard, DiscoveryError> {
        validate_service(&self.service)?;
        validate_name("instance id", &self.instance_id, false)?;
        let path = dir.join(self.file_name());
        let mut suffix = [0u8; 8];
        rand::rng().fill_bytes(&mut suffix);
        let tmp = dir.join(format!(".{}.{}.tmp", self.file_name(), hex_lower(&suffix)));
        let json = serde_json::to_vec(self).map_err(|e| DiscoveryError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let written = (|| {
            let mut f = private_create_new(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(source) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(DiscoveryError::Io { path, source });
        }
        Ok(HintGuard {
            path,
            instance_id: self.instance_id.clone(),
            armed: true,
        })
    }

    /// Reads one hint file (at most [`MAX_HINT_FILE`] bytes of JSON).
    ///
    /// Refused as [`DiscoveryError::BadHint`]: anything but a regular file
    /// (a symbolic link is not followed, a FIFO does not block), a file of
    /// another user or one that group or others may write (Unix), a file
    /// over the size limit (never read whole), malformed JSON, an invalid
    /// service name or instance id, and an `addr` that is not `ip:port`
    /// or disagrees with `port`.
    pub fn read(path: &Path) -> Result<Hint, DiscoveryError> {
        let io = |source| DiscoveryError::Io {
            path: path.to_owned(),
            source,
        };
        let bad = |reason: String| DiscoveryError::BadHint {
            path: path.to_owned(),
            reason,
        };
        let file = open_nofollow(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        // Only a hint of this user's, that nobody else may have rewritten,
        // is a candidate at all.
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let uid = crate::current_uid();
            if meta.uid() != uid {
                return Err(bad(format!(
                    "owned by uid {}, not by you (uid {uid})",
                    meta.uid()
                )));
            }
            if meta.mode() & 0o022 != 0 {
                return Err(bad(format!(
                    "mode {:03o} lets group or others write it",
                    meta.mode() & 0o777
                )));
            }
        }
        let mut buf = Vec::new();
        file.take(MAX_HINT_FILE + 1)
            .read_to_end(&mut buf)
            .map_err(io)?;
        if buf.len() as u64 > MAX_HINT_FILE {
            return Err(DiscoveryError::BadHint {
                path: path.to_owned(),
                reason: "larger than 4 KiB".into(),
            });
        }
        let hint: Hint = serde_json::from_slice(&buf).map_err(|e| DiscoveryError::BadHint {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        validate_service(&hint.service).map_err(|e| bad(e.to_string()))?;
        validate_name("instance id", &hint.instance_id, false).map_err(|e| bad(e.to_string()))?;
        match hint.addr.parse::<SocketAddr>() {
            Ok(a) if a.port() == hint.port && a.port() != 0 => {}
            Ok(a) => {
                return Err(bad(format!(
                    "address {a} does not match port {}",
                    hint.port
                )))
            }
            Err(_) => return Err(bad(format!("address {:?} is not ip:port", hint.addr))),
        }
        if let Some(unix) = &hint.unix {
            if !unix.is_absolute() {
                return Err(bad(format!("socket path {unix:?} is not absolute")));
            }
        }
        Ok(hint)
    }

    /// Reads every hint of `service` in `dir`: the files
    /// `<service>.*.hint` whose content names that service. Unreadable or
    /// malformed files are returned as errors beside the good hints; a
    /// missing directory yields nothing.
    pub fn read_all(dir: &Path, service: &str) -> Vec<Result<Hint, DiscoveryError>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
            Err(source) => {
                out.push(Err(DiscoveryError::Io {
                    path: dir.to_owned(),
                    source,
                }));
                return out;
            }
        };
        let prefix = format!("{service}.");
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let Some(instance) = rest.strip_suffix(HINT_SUFFIX) else {
                continue;
            };
            // Instance ids have no dots; this keeps service "a" from
            // picking up the hints of service "a.b".
            if instance.is_empty() || instance.contains('.') {
                continue;
            }
            match Hint::read(&entry.path()) {
                Ok(h) if h.service == service => out.push(Ok(h)),
                Ok(_) => {}
                Err(e) => out.push(Err(e)),
            }
        }
        out
    }
}

/// Removes a hint file when dropped (or on [`HintGuard::remove`]), but only
/// if the file still names this guard's instance, so a hub never removes
/// the hint of a successor that took its place.
#[derive(Debug)]
pub struct HintGuard {
    path: PathBuf,
    instance_id: String,
    armed: bool,
}

impl HintGuard {
    /// Path of the hint file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the hint now. Returns whether a file was removed (false if it
    /// was already gone or now belongs to another instance).
    pub fn remove(mut self) -> Result<bool, DiscoveryError> {
        self.armed = false;
        remove_if_ours(&self.path, &self.instance_id)
    }

    /// Leaves the file in place when the guard is dropped.
    pub fn keep(mut self) -> PathBuf {
        self.armed = false;
        std::mem::take(&mut self.path)
    }
}

fn remove_if_ours(path: &Path, instance_id: &str) -> Result<bool, DiscoveryError> {
    match Hint::read(path) {
        Ok(h) if h.instance_id == instance_id => match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(DiscoveryError::Io {
                path: path.to_owned(),
                source,
            }),
        },
        Ok(_) => Ok(false),
        Err(DiscoveryError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

impl Drop for HintGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = remove_if_ours(&self.path, &self.instance_id) {
                tracing::debug!(error = %e, "could not remove hint file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(service: &str, port: u16) -> Hint {
        Hint::new(
            service,
            SocketAddr::from(([127, 0, 0, 1], port)),
            &new_instance_id(),
        )
    }

    #[test]
    fn write_read_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let h = hint("svc", 50001);
        let guard = h.write_in(dir.path()).unwrap();
        assert_eq!(Hint::read(guard.path()).unwrap(), h);
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(
                std::fs::metadata(guard.path()).unwrap().mode() & 0o777,
                0o600
            );
        }
        let all = Hint::read_all(dir.path(), "svc");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].as_ref().unwrap(), &h);
        let path = guard.path().to_owned();
        drop(guard);
        assert!(!path.exists());
        // Only the hint itself was ever visible: no temporary files remain.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn guard_leaves_a_successors_hint_alone() {
        let dir = tempfile::tempdir().unwrap();
        let h = hint("svc", 50001);
        let guard = h.write_in(dir.path()).unwrap();
        // Another process rewrites the same file name with another instance.
        let mut other = h.clone();
        other.port = 50002;
        other.addr = "127.0.0.1:50002".into();
        let json = serde_json::to_vec(&Hint {
            instance_id: "ffff".into(),
            ..other
        })
        .unwrap();
        std::fs::write(guard.path(), json).unwrap();
        let path = guard.path().to_owned();
        assert!(!guard.remove().unwrap());
        assert!(path.exists());
    }

    #[test]
    fn read_all_separates_services_and_instances() {
        let dir = tempfile::tempdir().unwrap();
        let a1 = hint("a", 50001);
        let a2 = hint("a", 50002);
        let ab = hint("a.b", 50003);
        let _g = [
            a1.write_in(dir.path()).unwrap(),
            a2.write_in(dir.path()).unwrap(),
            ab.write_in(dir.path()).unwrap(),
        ];
        std::fs::write(dir.path().join("a.junk.hint"), b"\x00\xffnot json").unwrap();
        let mut ports: Vec<u16> = Hint::read_all(dir.path(), "a")
            .into_iter()
            .filter_map(Result::ok)
            .map(|h| h.port)
            .collect();
        ports.sort();
        assert_eq!(ports, vec![50001, 50002]);
        let errors = Hint::read_all(dir.path(), "a")
            .into_iter()
            .filter(Result::is_err)
            .count();
        assert_eq!(errors, 1);
        let ab_ports: Vec<u16> = Hint::read_all(dir.path(), "a.b")
            .into_iter()
            .filter_map(Result::ok)
            .map(|h| h.port)
            .collect();
        assert_eq!(ab_ports, vec![50003]);
    }

    #[test]
    fn oversized_hint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.x.hint");
        std::fs::write(&path, vec![b' '; 10_000]).unwrap();
        assert!(matches!(
            Hint::read(&path),
            Err(DiscoveryError::BadHint { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn fifo_hint_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.abc.hint");
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let all = Hint::read_all(dir.path(), "svc");
        assert_eq!(all.len(), 1);
        assert!(matches!(all[0], Err(DiscoveryError::BadHint { .. })));
    }

    #[test]
    fn names_are_validated() {
        for ok in ["switchboard", "a.b-c_d", "X9"] {
            validate_service(ok).unwrap();
        }
        let long = "x".repeat(65);
        for bad in ["", ".hidden", "a/b", "a b", "ü", long.as_str(), "../x"] {
            let err = validate_service(bad).unwrap_err();
            assert!(err.to_string().contains("service name"), "{err}");
        }
        let mut h = hint("svc", 1);
        h.instance_id = "a.b".into();
        let dir = tempfile::tempdir().unwrap();
        assert!(h.write_in(dir.path()).is_err());
    }

    #[test]
    fn the_socket_path_is_optional() {
        let old = br#"{"service":"svc","addr":"127.0.0.1:50001","port":50001,
            "pid":1,"instance_id":"abc","started_at_ms":5}"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.abc.hint");
        std::fs::write(&path, old).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let read = Hint::read(&path).unwrap();
        assert_eq!(read.unix, None);
        assert_eq!(read.port, 50001);
        // Written without the field when there is no socket, with it when
        // there is one.
        let mut h = hint("svc", 50001);
        assert!(!serde_json::to_string(&h).unwrap().contains("unix"));
        h.unix = Some(dir.path().join("svc.sock"));
        let guard = h.write_in(dir.path()).unwrap();
        assert_eq!(Hint::read(guard.path()).unwrap().unix, h.unix);
        // A relative socket path is not a usable hint.
        h.unix = Some("relative.sock".into());
        let guard = h.write_in(dir.path()).unwrap();
        assert!(matches!(
            Hint::read(guard.path()),
            Err(DiscoveryError::BadHint { .. })
        ));
    }

    #[test]
    fn unspecified_addresses_connect_via_loopback() {
        let mut h = hint("svc", 50001);
        h.addr = "0.0.0.0:50001".into();
        assert_eq!(h.connect_addr(), "127.0.0.1:50001".parse().unwrap());
        h.addr = "[::]:50001".into();
        assert_eq!(h.connect_addr(), "[::1]:50001".parse().unwrap());
        h.addr = "garbage".into();
        assert_eq!(h.connect_addr(), "127.0.0.1:50001".parse().unwrap());
    }
}
