//! The Unix domain socket transport: where the socket is ([`UnixSocket`]),
//! binding it safely, and its accept loop.
//!
//! The socket is a byte stream like TCP (the same frames, handshake and
//! limits); what it adds is the kernel's word on who connected: the peer
//! credentials (uid, gid, pid) go into [`Peer::unix`], and a client may then
//! skip the proof (`Proof::PeerOnly`, see `conn.rs`). By default the socket
//! is `<hint dir or runtime dir>/<service>.<instance_id>.sock`, mode 0600
//! inside the 0700 runtime directory.
//!
//! Binding: a file at the path that is a socket nobody answers on is stale
//! and removed; a live socket, or anything that is not a socket, is left
//! alone and the bind fails. The socket is bound under a temporary name in
//! the same directory, given its mode, then renamed into place, so it is
//! never reachable with the wrong mode. On shutdown the file is removed if
//! it is still ours (same device and inode).

use std::path::Path;

use crate::config::UnixSocket;

#[cfg(unix)]
pub(crate) use imp::bind;

/// Removes the default socket a failed hub left in `dir`, if nothing
/// answers on it (a standby taking over calls it, as it removes the failed
/// primary's hint).
pub(crate) fn remove_stale_default(dir: &Path, service: &str, instance_id: &str) {
    #[cfg(unix)]
    {
        let path = UnixSocket::default_path(dir, service, instance_id);
        if let Err(std::io::ErrorKind::ConnectionRefused) =
            std::os::unix::net::UnixStream::connect(&path).map_err(|e| e.kind())
        {
            let _ = std::fs::remove_file(&path);
        }
    }
    #[cfg(not(unix))]
    let _ = (dir, service, instance_id);
}

/// No socket where there are none.
#[cfg(not(unix))]
pub(crate) struct Listening(std::convert::Infallible);

#[cfg(not(unix))]
impl Listening {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        match self.0 {}
    }
}

/// No socket where there are none.
#[cfg(not(unix))]
pub(crate) async fn bind(
    _: &crate::HubConfig,
    _: &str,
) -> Result<Option<Listening>, crate::HubError> {
    Ok(None)
}

#[cfg(unix)]
mod imp {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::net::{UnixListener, UnixStream};
    use tokio::sync::Semaphore;

    use crate::config::{HubConfig, HubError, UnixSocket};
    use crate::conn::serve as serve_conn;
    use crate::router::admission::{Peer, UnixCred};
    use crate::shared::Shared;
    use crate::transport::ByteStream;

    /// How long a connect to an existing socket may take to tell a live one
    /// from a stale one.
    const LIVENESS_TIMEOUT: Duration = Duration::from_millis(500);

    impl ByteStream for UnixStream {
        type Read = OwnedReadHalf;
        type Write = OwnedWriteHalf;
        fn halves(self) -> (OwnedReadHalf, OwnedWriteHalf) {
            self.into_split()
        }
        fn try_write(w: &mut OwnedWriteHalf, buf: &[u8]) {
            let _ = w.try_write(buf);
        }
        fn readable(r: &OwnedReadHalf) -> impl std::future::Future<Output = ()> + Send {
            // The socket's reader slot, as for TCP (`transport::stream`).
            std::future::poll_fn(move |cx| r.as_ref().poll_read_ready(cx).map(|_| ()))
        }
        fn try_read_buf(
            r: &mut OwnedReadHalf,
            buf: &mut bytes::BytesMut,
        ) -> Option<std::io::Result<usize>> {
            Some(r.try_read_buf(buf))
        }
    }

    /// A bound socket, not yet accepting.
    #[derive(Debug)]
    pub(crate) struct Listening {
        listener: UnixListener,
        path: PathBuf,
        /// Device and inode of our socket file, to remove only ours.
        file: (u64, u64),
    }

    impl Listening {
        /// The socket's path.
        pub fn path(&self) -> &Path {
            &self.path
        }

        /// Accepts connections until the hub shuts down, then removes the
        /// socket file if it is still ours.
        pub async fn accept_loop(self, shared: Arc<Shared>, handshakes: Arc<Semaphore>) {
            let addr = self.path.display().to_string();
            loop {
                let accepted = tokio::select! {
                    r = self.listener.accept() => r,
                    _ = shared.shutdown.cancelled() => break,
                };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(error = %e, "accept on the unix socket failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let cred = match stream.peer_cred() {
                    Ok(c) => UnixCred {
                        uid: c.uid(),
                        gid: c.gid(),
                        pid: c.pid().and_then(|p| u32::try_from(p).ok()),
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "no peer credentials; closing the connection");
                        continue;
                    }
                };
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::warn!(
                        uid = cred.uid,
                        "too many connections in handshake; refusing one"
                    );
                    continue;
                };
                let conn = shared.alloc_conn();
                let span =
                    tracing::debug_span!("conn", id = conn.0, transport = "unix", uid = cred.uid);
                let peer = Peer {
                    transport: "unix",
                    addr: addr.clone(),
                    unix: Some(cred),
                    cert: None,
                };
                tokio::spawn(serve_conn(stream, peer, conn, shared.clone(), permit, span));
            }
            drop(self.listener);
            remove_if_ours(&self.path, self.file);
            tracing::debug!("unix socket closed");
        }
    }

    fn remove_if_ours(path: &Path, file: (u64, u64)) {
        match std::fs::symlink_metadata(path) {
            Ok(m) if (m.dev(), m.ino()) == file => {
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove the unix socket");
                }
            }
            _ => {}
        }
    }

    /// Binds the socket `config.unix` asks for (see the module docs), or
    /// `None` when it is disabled or the default path could not be bound.
    pub(crate) async fn bind(
        config: &HubConfig,
        instance_id: &str,
    ) -> Result<Option<Listening>, HubError> {
        let unix = &config.unix;
        if !unix.enabled {
            return Ok(None);
        }
        if unix.mode & !0o777 != 0 {
            return Err(HubError::Config(format!(
                "unix socket mode {:o} is not a permission mode; give at most 0777",
                unix.mode
            )));
        }
        let (path, given) = match &unix.path {
            Some(p) => (p.clone(), true),
            None => {
                let dir = match &config.hint_dir {
                    Some(d) => d.clone(),
                    None => match switchboard_discovery::runtime_dir() {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::warn!(error = %e, "no runtime directory; serving without a unix socket");
                            return Ok(None);
                        }
                    },
                };
                if let Err(e) = switchboard_discovery::ensure_private_dir(&dir) {
                    tracing::warn!(error = %e, "serving without a unix socket");
                    return Ok(None);
                }
                (
                    UnixSocket::default_path(&dir, &config.service, instance_id),
                    false,
                )
            }
        };
        match bind_at(&path, unix.mode).await {
            Ok(l) => Ok(Some(l)),
            Err(source) if !given => {
                tracing::warn!(path = %path.display(), error = %source, "serving without a unix socket");
                Ok(None)
            }
            Err(source) => Err(HubError::Bind {
                addr: format!("unix:{}", path.display()),
                source,
            }),
        }
    }

    async fn bind_at(path: &Path, mode: u32) -> std::io::Result<Listening> {
        if !path.is_absolute() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the socket path must be absolute",
            ));
        }
        clear_stale(path).await?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let suffix: String = switchboard_discovery::nonce()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let tmp = dir.join(format!(".{name}.{suffix}.tmp"));
        let listener = UnixListener::bind(&tmp)?;
        let placed = (|| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
            std::fs::rename(&tmp, path)?;
            std::fs::symlink_metadata(path)
        })();
        match placed {
            Ok(m) => Ok(Listening {
                listener,
                path: path.to_owned(),
                file: (m.dev(), m.ino()),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Removes a stale socket at `path`; fails if something answers there
    /// or it is not a socket.
    async fn clear_stale(path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::FileTypeExt;
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way; remove it or choose another path",
            ));
        }
        let live = tokio::time::timeout(LIVENESS_TIMEOUT, UnixStream::connect(path)).await;
        match live {
            Ok(Ok(_)) | Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process listens on this socket; stop it or choose another path",
            )),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing a stale unix socket");
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            }
            Ok(Err(e)) => Err(e),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[tokio::test]
        async fn binds_with_its_mode_and_clears_only_stale_sockets() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("hub.sock");
            let first = bind_at(&path, 0o600).await.unwrap();
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!(meta.mode() & 0o777, 0o600);
            // A live socket is not taken over.
            let err = bind_at(&path, 0o600).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
            // Closed without removing its file: stale, replaced.
            drop(first);
            let second = bind_at(&path, 0o666).await.unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o666);
            // Only ours is removed.
            let file = second.file;
            remove_if_ours(&path, (file.0, file.1 + 1));
            assert!(path.exists());
            remove_if_ours(&path, file);
            assert!(!path.exists());
            // Only the socket was ever visible: no temporary names remain.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }

        #[tokio::test]
        async fn a_regular_file_in_the_way_is_left_alone() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("hub.sock");
            std::fs::write(&path, b"data").unwrap();
            assert!(bind_at(&path, 0o600).await.is_err());
            assert_eq!(std::fs::read(&path).unwrap(), b"data");
            assert!(bind_at(Path::new("relative.sock"), 0o600).await.is_err());
        }
    }
}
