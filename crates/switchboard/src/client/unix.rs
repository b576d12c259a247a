//! Connecting over a hub's Unix domain socket: the `unix:` address syntax,
//! the checks a socket must pass before the client trusts it, and opening
//! it.
//!
//! Over the socket a client without a secret authenticates by its peer
//! credentials alone and does not check the hub's proof; what stands in for
//! that proof is the socket file itself. So before connecting the client
//! refuses ([`ClientError::UnsafeSocket`]) a socket that is not owned by
//! the client's own user, root, or an owner allowed with
//! [`ClientBuilder::unix_owner`](crate::ClientBuilder::unix_owner), and a
//! socket in a directory that group or others may write without the sticky
//! bit (anyone could have replaced it). The check and the connect are two
//! steps; a directory that passes the check cannot be changed in between
//! by another user.

use std::path::{Path, PathBuf};

use crate::ClientError;

/// The path of a `unix:/path` or `unix:///path` address, or `None` when
/// `addr` is not a `unix:` address.
pub(crate) fn parse_addr(addr: &str) -> Option<PathBuf> {
    let rest = addr.strip_prefix("unix:")?;
    let path = rest.strip_prefix("//").unwrap_or(rest);
    Some(PathBuf::from(path))
}

/// Checks that the socket at `path` may be trusted (see the module docs).
#[cfg(unix)]
pub(crate) fn check_socket(path: &Path, owners: &[u32]) -> Result<(), ClientError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let unsafe_socket = |reason: String| ClientError::UnsafeSocket {
        path: path.to_owned(),
        reason,
    };
    if !path.is_absolute() {
        return Err(unsafe_socket(
            "the path is not absolute; give the socket as unix:/absolute/path".into(),
        ));
    }
    let meta = std::fs::metadata(path).map_err(|source| ClientError::Connect {
        addr: format!("unix:{}", path.display()),
        source,
    })?;
    if !meta.file_type().is_socket() {
        return Err(unsafe_socket(
            "it is not a socket; check the path of the hub's socket".into(),
        ));
    }
    let me = switchboard_discovery::current_uid();
    let owner = meta.uid();
    if owner != me && owner != 0 && !owners.contains(&owner) {
        return Err(unsafe_socket(format!(
            "it is owned by uid {owner}, not by you (uid {me}) or root; if that user runs the hub, allow it with ClientBuilder::unix_owner({owner})"
        )));
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let dir_meta = std::fs::metadata(dir).map_err(|source| ClientError::Connect {
        addr: format!("unix:{}", path.display()),
        source,
    })?;
    let mode = dir_meta.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(unsafe_socket(format!(
            "its directory {} (mode {:03o}) may be written by group or others without the sticky bit, so anyone could have replaced the socket; put the socket in a private directory (chmod go-w) or set the sticky bit",
            dir.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

/// Connects to the socket at `path` after [`check_socket`]; reports
/// `addr` as the hub's address.
#[cfg(unix)]
pub(crate) async fn open(
    path: &Path,
    owners: &[u32],
    addr: std::net::SocketAddr,
) -> Result<super::transport::Opened, ClientError> {
    use super::transport::{Rd, Wr};
    check_socket(path, owners)?;
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|source| ClientError::Connect {
            addr: format!("unix:{}", path.display()),
            source,
        })?;
    let (r, w) = stream.into_split();
    Ok((Box::new(r) as Rd, Box::new(w) as Wr, addr))
}

/// Unix sockets exist on Unix only.
#[cfg(not(unix))]
pub(crate) async fn open(
    path: &Path,
    _owners: &[u32],
    _addr: std::net::SocketAddr,
) -> Result<super::transport::Opened, ClientError> {
    Err(ClientError::Connect {
        addr: format!("unix:{}", path.display()),
        source: std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "unix sockets are not supported on this platform",
        ),
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn unix_addresses_are_recognised() {
        assert_eq!(
            parse_addr("unix:/run/hub.sock"),
            Some("/run/hub.sock".into())
        );
        assert_eq!(
            parse_addr("unix:///run/hub.sock"),
            Some("/run/hub.sock".into())
        );
        assert_eq!(parse_addr("127.0.0.1:5000"), None);
        assert_eq!(parse_addr("unix:rel.sock"), Some("rel.sock".into()));
    }

    #[test]
    fn only_sockets_in_safe_directories_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mode = |m: u32| {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(m)).unwrap()
        };
        mode(0o700);
        check_socket(&path, &[]).unwrap();
        mode(0o1777);
        check_socket(&path, &[]).unwrap();
        mode(0o777);
        let err = check_socket(&path, &[]).unwrap_err();
        assert!(matches!(err, ClientError::UnsafeSocket { .. }), "{err}");
        assert!(err.to_string().contains("sticky"), "{err}");
        mode(0o700);
        // Not a socket, not absolute, missing.
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            check_socket(&file, &[]),
            Err(ClientError::UnsafeSocket { .. })
        ));
        assert!(matches!(
            check_socket(Path::new("hub.sock"), &[]),
            Err(ClientError::UnsafeSocket { .. })
        ));
        assert!(matches!(
            check_socket(&dir.path().join("gone.sock"), &[]),
            Err(ClientError::Connect { .. })
        ));
    }
}
