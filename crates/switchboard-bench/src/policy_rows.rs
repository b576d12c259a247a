//! The policy row: what a permission policy of 100 rules costs per
//! publish, as the ratio of 1→1 pub/sub throughput through a hub started
//! with `--policy` to the same workload through the plain hub, measured
//! back to back in the same run (goal: the policy keeps ≥ 95 %).
//!
//! The policy has one token principal whose publish and subscribe rules
//! number 100 (literals, `*` and `>` patterns and a deny rule), with the
//! subject the workload uses matched by the last allow rule, so each
//! publish walks the whole rule set.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::procs::{self, ProcGuard};
use crate::ratios::{paired, pubsub, Via};

/// Rules in the policy.
pub const RULES: usize = 100;

/// The text of the policy: one principal of [`RULES`] subject rules,
/// recognised by `token`.
pub fn policy_text(token: &str) -> String {
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    let mut publish = Vec::new();
    let mut subscribe = Vec::new();
    // 100 rules: 48 + 1 deny + 1 for publishing, 49 + 1 for subscribing.
    for i in 0..24 {
        publish.push(format!("\"bench.lit{i}.x\""));
        publish.push(format!("\"bench.p{i}.*.y\""));
        subscribe.push(format!("\"bench.s{i}.>\""));
        subscribe.push(format!("\"bench.s{i}.*.z\""));
    }
    subscribe.push("\"bench.t.*\"".into());
    publish.push("\"bench.unix.>\"".into());
    subscribe.push("\"bench.unix.>\"".into());
    let deny = "\"bench.unix.forbidden\"";
    let rules = publish.len() + subscribe.len() + 1;
    debug_assert_eq!(rules, RULES);
    let mut text = String::from("owner = \"none\"\n\n[[principal]]\nname = \"bench\"\n");
    let _ = writeln!(text, "token_sha256 = [\"{digest}\"]");
    text.push_str("ids = [\"*\"]\n");
    let _ = writeln!(
        text,
        "publish = {{ allow = [{}], deny = [{deny}] }}",
        publish.join(", ")
    );
    let _ = writeln!(text, "subscribe = {{ allow = [{}] }}", subscribe.join(", "));
    text
}

/// A hub process with the policy, reached over TCP.
pub struct PolicyHub {
    _guard: ProcGuard,
    addr: SocketAddr,
}

/// Starts a hub with the 100-rule policy (its file in `dir`, mode 0600).
pub fn start(bin: &Path, token: &str, dir: &Path) -> Result<PolicyHub> {
    std::fs::create_dir_all(dir)?;
    let file = dir.join("policy.toml");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&file)?;
    std::io::Write::write_all(&mut f, policy_text(token).as_bytes())?;
    let mut cmd = Command::new(bin);
    cmd.args(["--service", "switchboard-bench-policy", "--json", "hub"])
        .args(["--listen", "127.0.0.1:0", "--no-unix", "--policy"])
        .arg(&file)
        .env("SWITCHBOARD_TOKEN", token);
    let (guard, rest) = procs::spawn_with_ready_line(
        "switchboard hub (policy)",
        cmd,
        "{",
        Duration::from_secs(10),
    )?;
    let ready: serde_json::Value =
        serde_json::from_str(&format!("{{{rest}")).context("the policy hub's ready line")?;
    let addr = ready["addr"]
        .as_str()
        .context("no `addr` in the policy hub's ready line")?
        .parse()?;
    Ok(PolicyHub {
        _guard: guard,
        addr,
    })
}

/// Pub/sub throughput with the policy over throughput without, and a note
/// with both.
pub async fn ratio(
    policy: &PolicyHub,
    plain: SocketAddr,
    token: &str,
    n: usize,
    run: usize,
) -> Result<(f64, String)> {
    let (p, q) = paired(
        |r| pubsub(Via::Tcp(plain), token, n, 64, format!("plain-{run}-{r}")),
        |r| {
            pubsub(
                Via::Tcp(policy.addr),
                token,
                n,
                64,
                format!("policy-{run}-{r}"),
            )
        },
        true,
    )
    .await?;
    Ok((
        q / p,
        format!("with a {RULES}-rule policy {q:.0} msgs/s, without {p:.0} msgs/s"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_policy_is_valid_and_admits_the_workload() {
        use switchboard::hub::router::admission::Admission;
        use switchboard::wire::{proto, Frame};

        let text = policy_text("bench-token");
        assert!(
            !text.contains("bench-token"),
            "the token itself is never written"
        );
        let policy = switchboard::hub::Policy::parse(&text).expect("a valid policy");
        let secret = switchboard::Secret::from_token("bench-token");
        let key = policy.token(&secret.key_id()).expect("the token is known");
        assert_eq!(key.principal, "bench");
        let info = proto::ClientInfo {
            client_id: "bench-pub-plain-0-0".into(),
            transport: "tcp".into(),
            principal: "bench".into(),
            ..Default::default()
        };
        policy.admit_client(&info).expect("any id");
        let publish = |subject: &str| {
            Frame::from(proto::Publish {
                topic: subject.into(),
                ..Default::default()
            })
        };
        policy
            .admit((&info).into(), &publish("bench.unix.plain-0-0"))
            .expect("the workload's subject, matched by the last rule");
        assert!(policy
            .admit((&info).into(), &publish("bench.unix.forbidden"))
            .is_err());
        assert!(policy
            .admit((&info).into(), &publish("bench.other"))
            .is_err());
    }
}
