//! Helpers the permission tests share (`permissions*.rs`).

use std::time::Duration;

use switchboard::ClientError;

/// The longest any single step of a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// `f`, which must finish within [`WAIT`].
pub async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("in time")
}

/// Asserts that `r` is `Forbidden` with a message naming each of `names`.
#[track_caller]
pub fn forbidden<T: std::fmt::Debug>(r: Result<T, ClientError>, names: &[&str]) {
    match r {
        Err(ClientError::Forbidden(message)) => {
            for name in names {
                assert!(message.contains(name), "{message:?} names no {name:?}");
            }
        }
        other => panic!("expected Forbidden naming {names:?}, got {other:?}"),
    }
}
