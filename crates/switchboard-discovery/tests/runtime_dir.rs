//! The default runtime directory, secret and hint paths, driven by
//! `SWITCHBOARD_RUNTIME_DIR` (its own test binary, so setting the variable
//! races with no other test).

mod common;

use common::*;
use switchboard_discovery::{
    discover, runtime_dir, DiscoverOptions, Hint, Secret, Via, RUNTIME_DIR_ENV,
};

#[tokio::test]
async fn default_paths_work_end_to_end() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("rt");
    std::env::set_var(RUNTIME_DIR_ENV, &dir);

    // The directory is created private, the secret inside it.
    assert_eq!(runtime_dir().unwrap(), dir);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }
    let secret = Secret::load_default().unwrap();
    assert!(dir.join("secret").exists());

    let hub = hub("svc-default", &secret, V4).await;
    let guard = Hint::new("svc-default", hub.addr, &hub.identity.instance_id)
        .write()
        .unwrap();
    assert_eq!(guard.path().parent().unwrap(), dir);

    // Secret and hint directory both come from the defaults.
    let o = DiscoverOptions {
        use_table: false,
        use_scan: false,
        ..Default::default()
    };
    let found = discover("svc-default", &o).await.unwrap();
    assert_eq!(found[0].addr, hub.addr);
    assert_eq!(found[0].via, Via::Hint);

    drop(guard);
    let err = discover("svc-default", &o).await.unwrap_err();
    assert!(err.to_string().contains("no hint in"), "{err}");
}
