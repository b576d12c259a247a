//! The shared secret that keys every proof, and the per-user runtime
//! directory that holds it.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Length of a secret key in bytes.
pub const SECRET_LEN: usize = 32;

/// Length of a key's public name ([`Secret::key_id`], `Hello.key_id`).
pub const KEY_ID_LEN: usize = 8;

/// Name of the secret file inside the runtime directory.
pub const SECRET_FILE_NAME: &str = "secret";

/// Environment variable that overrides the runtime directory.
pub const RUNTIME_DIR_ENV: &str = "SWITCHBOARD_RUNTIME_DIR";

/// Errors loading or creating the secret, or preparing the runtime directory.
///
/// Every message names the path involved and says how to fix the problem.
/// The secret itself never appears in a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// Reading, creating or inspecting a file or directory failed.
    #[error("cannot access {path}: {source}; check that the directory exists and belongs to you")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The secret file can be read or written by group or others.
    #[error("secret file {path} has mode {mode:03o} and is open to group or others; run `chmod 600 {path}` or remove it so a new one is created")]
    Permissions {
        /// The secret file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The secret file belongs to another user.
    #[error("secret file {path} is owned by uid {owner}, not by you (uid {uid}); remove it or set SWITCHBOARD_RUNTIME_DIR to a directory of your own")]
    Owner {
        /// The secret file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The current effective uid.
        uid: u32,
    },
    /// The secret file does not hold exactly [`SECRET_LEN`] bytes.
    #[error("secret file {path} holds {len} bytes instead of 32; remove it so a new one is created (running hubs must then be restarted)")]
    BadLength {
        /// The secret file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The secret path exists but is not a regular file (a directory or a
    /// symbolic link, for example).
    #[error("secret file {path} is not a regular file; remove it so a new one is created")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The runtime directory is unsafe: open to group or others, owned by
    /// another user, or not a directory.
    #[error("runtime directory {path} is unsafe ({reason}); run `chmod 700 {path}`, remove it, or set SWITCHBOARD_RUNTIME_DIR to a private directory")]
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    File,
    Token,
    Bytes,
}

/// The secret that keys the HMAC proofs of hubs and clients.
///
/// It is either the 32 bytes of the per-user secret file, or the SHA-256
/// digest of a token given by the user (for hubs reached from other
/// machines); either way the HMAC key is 32 bytes. `Debug` never shows the
/// key.
#[derive(Clone)]
pub struct Secret {
    key: [u8; SECRET_LEN],
    origin: Origin,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = match self.origin {
            Origin::File => "file",
            Origin::Token => "token",
            Origin::Bytes => "bytes",
        };
        write!(f, "Secret({origin}, redacted)")
    }
}

impl Secret {
    /// Loads the secret file at `path`, creating it with 32 fresh random
    /// bytes and mode 0600 if it does not exist.
    ///
    /// Creation is race-free: the bytes are written to a private temporary
    /// file which is then hard-linked to `path`, so the file appears
    /// complete or not at all, and when several processes race, all of them
    /// end up with the bytes of the one whose link succeeded.
    ///
    /// On Unix a file readable or writable by group or others, or owned by
    /// another user, is refused with an error naming the path and the fix.
    pub fn load_or_create(path: &Path) -> Result<Secret, SecretError> {
        match Self::load(path) {
            Err(SecretError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
        create_file(path)?;
        Self::load(path)
    }

    /// Loads an existing secret file, with the same checks as
    /// [`Secret::load_or_create`].
    pub fn load(path: &Path) -> Result<Secret, SecretError> {
        let io = |source| SecretError::Io {
            path: path.to_owned(),
            source,
        };
        // Open first, then inspect the opened file, so that what is checked
        // is what is read. Symbolic links are not followed; a FIFO does not
        // block the open.
        let file = open_nofollow(path).map_err(|e| {
            if is_symlink_error(&e) {
                SecretError::NotAFile {
                    path: path.to_owned(),
                }
            } else {
                io(e)
            }
        })?;
        let meta = file.metadata().map_err(io)?;
        if !meta.file_type().is_file() {
            return Err(SecretError::NotAFile {
                path: path.to_owned(),
            });
        }
        check_private(path, &meta)?;
        if meta.len() != SECRET_LEN as u64 {
            return Err(SecretError::BadLength {
                path: path.to_owned(),
                len: meta.len(),
            });
        }
        let mut key = [0u8; SECRET_LEN];
        (&file).read_exact(&mut key).map_err(io)?;
        Ok(Secret {
            key,
            origin: Origin::File,
        })
    }

    /// Loads or creates `<runtime dir>/secret` (see [`runtime_dir`]).
    pub fn load_default() -> Result<Secret, SecretError> {
        let dir = runtime_dir()?;
        Self::load_or_create(&dir.join(SECRET_FILE_NAME))
    }

    /// A secret derived from a token shared by the user: the key is the
    /// SHA-256 digest of the token's UTF-8 bytes.
    pub fn from_token(token: &str) -> Secret {
        let key: [u8; SECRET_LEN] = Sha256::digest(token.as_bytes()).into();
        Secret {
            key,
            origin: Origin::Token,
        }
    }

    /// A secret from raw key bytes (tests, or keys kept elsewhere).
    pub fn from_bytes(key: [u8; SECRET_LEN]) -> Secret {
        Secret {
            key,
            origin: Origin::Bytes,
        }
    }

    /// A fresh random secret, not stored anywhere (tests, one-off hubs).
    pub fn random() -> Secret {
        let mut key = [0u8; SECRET_LEN];
        rand::rng().fill_bytes(&mut key);
        Secret::from_bytes(key)
    }

    /// The key's public name, sent in `Hello.key_id` so a hub that knows
    /// several keys (the tokens of a permission policy) picks the right
    /// one: the first [`KEY_ID_LEN`] bytes of SHA-256("switchboard key id"
    /// || key). It reveals nothing usable about the key.
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        let digest = Sha256::new()
            .chain_update(b"switchboard key id")
            .chain_update(self.key)
            .finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        id
    }

    /// Whether `self` and `other` hold the same key, compared in constant
    /// time.
    pub fn same_key(&self, other: &Secret) -> bool {
        use subtle::ConstantTimeEq;
        self.key.ct_eq(&other.key).into()
    }

    /// The secret of a token whose SHA-256 digest is `digest` (as a
    /// permission policy stores it): the same key as
    /// [`Secret::from_token`] of the token itself.
    pub fn from_token_digest(digest: [u8; SECRET_LEN]) -> Secret {
        Secret {
            key: digest,
            origin: Origin::Token,
        }
    }

    /// The 32-byte HMAC key.
    pub(crate) fn key(&self) -> &[u8; SECRET_LEN] {
        &self.key
    }
}

fn create_file(path: &Path) -> Result<(), SecretError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut suffix = [0u8; 8];
    rand::rng().fill_bytes(&mut suffix);
    let tmp = dir.join(format!(
        ".secret.{}.{}.tmp",
        std::process::id(),
        hex_lower(&suffix)
    ));
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| SecretError::Io { path: p, source }
    };
    let mut key = [0u8; SECRET_LEN];
    rand::rng().fill_bytes(&mut key);
    let written = (|| {
        let mut file = private_create_new(&tmp)?;
        file.write_all(&key)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        // Name the secret file the user asked for, not the temporary one.
        return Err(io(path)(e));
    }
    // `hard_link` never replaces an existing file: exactly one racing
    // process wins, the others read the winner's file.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

/// Opens `path` for reading without following a final symbolic link and
/// without blocking on a FIFO.
pub(crate) fn open_nofollow(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    opts.open(path)
}

fn is_symlink_error(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(libc::ELOOP)
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Creates `path` exclusively, readable and writable by the owner only.
pub(crate) fn private_create_new(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The current effective user id (0 on systems without one).
pub fn current_uid() -> u32 {
    #[cfg(unix)]
    {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() }
    }
    #[cfg(not(unix))]
    {
        0
    }
}

#[cfg(unix)]
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), SecretError> {
    use std::os::unix::fs::MetadataExt;
    let uid = current_uid();
    if meta.uid() != uid {
        return Err(SecretError::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), SecretError> {
    Ok(())
}

/// The per-user runtime directory, created (mode 0700) if missing.
///
/// In order of preference: `$SWITCHBOARD_RUNTIME_DIR`, then
/// `$XDG_RUNTIME_DIR/switchboard`, then `<temp dir>/switchboard-<uid>`. An
/// existing directory owned by another user, or open to group or others,
/// is refused.
pub fn runtime_dir() -> Result<PathBuf, SecretError> {
    let dir = if let Some(dir) = std::env::var_os(RUNTIME_DIR_ENV).filter(|v| !v.is_empty()) {
        PathBuf::from(dir)
    } else if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        PathBuf::from(xdg).join("switchboard")
    } else {
        std::env::temp_dir().join(format!("switchboard-{}", current_uid()))
    };
    ensure_private_dir(&dir)?;
    Ok(dir)
}

/// Creates `dir` with mode 0700 if it is missing, and checks that it is a
/// directory of the current user closed to group and others.
pub fn ensure_private_dir(dir: &Path) -> Result<(), SecretError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| SecretError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let meta = std::fs::symlink_metadata(dir).map_err(|source| SecretError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let unsafe_dir = |reason: String| SecretError::UnsafeDir {
        path: dir.to_owned(),
        reason,
    };
    if !meta.is_dir() {
        return Err(unsafe_dir("not a directory".into()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let uid = current_uid();
        if meta.uid() != uid {
            return Err(unsafe_dir(format!(
                "owned by uid {}, not by you (uid {uid})",
                meta.uid()
            )));
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(unsafe_dir(format!(
                "mode {mode:03o} is open to group or others"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_secret_is_sha256_of_token() {
        let a = Secret::from_token("hello");
        let b = Secret::from_token("hello");
        let c = Secret::from_token("hellO");
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), c.key());
        let expected: [u8; 32] = Sha256::digest(b"hello").into();
        assert_eq!(a.key(), &expected);
    }

    #[test]
    fn debug_never_shows_the_key() {
        let s = Secret::from_bytes([0xAB; 32]);
        let text = format!("{s:?}");
        assert!(!text.to_lowercase().contains("ab"), "{text}");
        assert!(text.contains("redacted"));
    }

    #[test]
    fn created_secret_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let a = Secret::load_or_create(&path).unwrap();
        let b = Secret::load_or_create(&path).unwrap();
        assert_eq!(a.key(), b.key());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        }
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_secret_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        Secret::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Secret::load_or_create(&path).unwrap_err();
        assert!(matches!(err, SecretError::Permissions { mode: 0o644, .. }));
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("chmod 600"), "{msg}");
        // The file was not replaced.
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        Secret::load_or_create(&real).unwrap();
        let link = dir.path().join("secret");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = Secret::load_or_create(&link).unwrap_err();
        assert!(matches!(err, SecretError::NotAFile { .. }), "{err}");
    }

    #[test]
    fn uncreatable_secret_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("secret");
        let err = Secret::load_or_create(&path).unwrap_err();
        assert!(matches!(err, SecretError::Io { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(!msg.contains(".secret."), "{msg}");
    }

    #[cfg(unix)]
    #[test]
    fn foreign_secret_and_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        Secret::load_or_create(&path).unwrap();
        // A directory where the file should be.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(matches!(
            Secret::load_or_create(&sub),
            Err(SecretError::NotAFile { .. })
        ));
        // Owned by another user: only root can arrange that.
        if current_uid() == 0 {
            std::os::unix::fs::chown(&path, Some(4242), None).unwrap();
            let err = Secret::load_or_create(&path).unwrap_err();
            assert!(
                matches!(err, SecretError::Owner { owner: 4242, .. }),
                "{err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("remove it"), "{msg}");
        }
    }

    #[test]
    fn short_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let mut f = private_create_new(&path).unwrap();
        f.write_all(b"short").unwrap();
        drop(f);
        let err = Secret::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, SecretError::BadLength { len: 5, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("remove it"));
    }

    #[test]
    fn concurrent_creation_yields_one_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let barrier = std::sync::Barrier::new(8);
        let keys: Vec<[u8; 32]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        *Secret::load_or_create(&path).unwrap().key()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk, keys[0]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn open_runtime_dir_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("rt");
        ensure_private_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = ensure_private_dir(&sub).unwrap_err();
        assert!(matches!(err, SecretError::UnsafeDir { .. }));
        assert!(err.to_string().contains("chmod 700"), "{err}");
    }
}
