//! Reading a policy file: what is checked is what is read (the opened
//! file's metadata), and a file others could change, or read when it
//! lists tokens, is refused.

use std::io::Read;
use std::path::Path;

use super::{Policy, PolicyError};

/// Largest policy file read.
const MAX_FILE: u64 = 4 * 1024 * 1024;

pub(super) fn load(path: &Path) -> Result<Policy, PolicyError> {
    let io = |source| PolicyError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::other("not a regular file")));
    }
    let mut text = String::new();
    file.take(MAX_FILE).read_to_string(&mut text).map_err(io)?;
    let policy = Policy::parse(&text).map_err(|e| match e {
        PolicyError::Invalid { line, message, .. } => PolicyError::Invalid {
            path: Some(path.to_owned()),
            line,
            message,
        },
        other => other,
    })?;
    check_private(path, &meta, policy.has_tokens())?;
    Ok(policy)
}

#[cfg(unix)]
fn check_private(path: &Path, meta: &std::fs::Metadata, tokens: bool) -> Result<(), PolicyError> {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(PolicyError::Permissions {
            path: path.to_owned(),
            mode,
            why: "so group or others may change who may do what",
        });
    }
    if !tokens {
        return Ok(());
    }
    let uid = switchboard_discovery::current_uid();
    if meta.uid() != uid {
        return Err(PolicyError::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    if mode & 0o077 != 0 {
        return Err(PolicyError::Permissions {
            path: path.to_owned(),
            mode,
            why:
                "and its token digests (which are the keys themselves) are open to group or others",
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(
    _path: &Path,
    _meta: &std::fs::Metadata,
    _tokens: bool,
) -> Result<(), PolicyError> {
    Ok(())
}
