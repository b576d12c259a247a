//! Tests of the permission policy: each right allowed and denied through
//! the [`Admission`] methods with real frames (`rights.rs`), who a
//! connection is (`identify.rs`), the pattern algebra against a naive
//! model (`pattern.rs`), and parse and file errors (`parse.rs`).

use switchboard_discovery::current_uid;
use switchboard_wire::proto;
use switchboard_wire::{ErrorCode, Frame};

use super::{Policy, OWNER};
use crate::router::admission::{Admission, CertIdentity, Identity, Peer, Proof, UnixCred};

mod identify;
mod parse;
mod pattern;
mod rights;

/// A token of the test policy and its digest.
const APP_TOKEN: &str = "app token";

fn policy(text: &str) -> Policy {
    match Policy::parse(text) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// The policy of the module docs' example, with every right somewhere.
fn example() -> Policy {
    policy(&format!(
        r#"
owner = "all"

[[principal]]
name = "app"
token_sha256 = ["{}"]
unix_uid = [1000]
ids = ["app-{{uid}}-*", "app"]
publish = {{ allow = ["orders.>"], deny = ["orders.secret.>"] }}
subscribe = {{ allow = ["orders.>"], deny = ["orders.secret.>"] }}
kv = {{ read = ["config/"], write = ["app/"] }}
send = ["worker-*", "billing.*"]

[[principal]]
name = "ops"
unix_gid = [100]
cert_cn = ["ops.example"]
ids = ["ops-{{cn}}", "{{principal}}"]
sessions = true
standby = true
http = true
clients = true
broadcast = true
send = ["*"]
"#,
        Policy::hash_token(APP_TOKEN)
    ))
}

fn info(id: &str, principal: &str) -> proto::ClientInfo {
    proto::ClientInfo {
        client_id: id.into(),
        transport: "tcp".into(),
        addr: "127.0.0.1:5000".into(),
        principal: principal.into(),
        ..Default::default()
    }
}

fn unix_peer(uid: u32, gid: u32) -> Peer {
    Peer {
        transport: "unix",
        addr: "unix".into(),
        unix: Some(UnixCred {
            uid,
            gid,
            pid: None,
        }),
        cert: None,
    }
}

fn tcp_peer() -> Peer {
    Peer::tcp("127.0.0.1:5000")
}

/// The refusal's code and message, or a panic.
fn refused<T: std::fmt::Debug>(
    r: Result<T, crate::router::admission::Refusal>,
) -> (ErrorCode, String) {
    match r {
        Ok(v) => panic!("allowed: {v:?}"),
        Err(e) => (e.code, e.message),
    }
}
