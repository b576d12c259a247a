//! A federated `switchboard hub` process killed with SIGKILL: no goodbye,
//! no release. The other hub frees its ids once its lease runs out
//! unseen, tells requesters at once from then on, and admits the id for
//! one of its own clients.

use std::time::{Duration, Instant};

use std::convert::identity;

use super::{federated_hub, nats_server, solo_nats, text, until_ok, Env, Proc, WAIT};

#[test]
fn a_killed_federated_hub_process_frees_its_ids_after_its_lease() {
    let Some(bin) = nats_server() else {
        return;
    };
    let env = Env::new();
    let (mut nats, port) = solo_nats(&bin, &env, "");
    let url = format!("nats://127.0.0.1:{port}");
    let (a, a_addr) = federated_hub(&env, &url, "a", identity);
    let (_b, b_addr) = federated_hub(&env, &url, "b", identity);
    let _dev = Proc::spawn(env.cmd(&["--addr", &a_addr, "serve", "--id", "dev", "--echo"]));
    let request = |payload: &str| {
        env.run(&[
            "--addr",
            &b_addr,
            "request",
            "--timeout",
            "3",
            "--to",
            "dev",
            payload,
        ])
    };
    let answer = until_ok("a request to dev", WAIT, || request("before"));
    assert_eq!(answer.trim_end(), "before");

    // SIGKILL (Proc's drop), then the lease (10 s) runs out unseen.
    let killed = Instant::now();
    drop(a);
    loop {
        let asked = Instant::now();
        let o = request("after");
        assert!(!o.status.success(), "a killed hub's client answered");
        let err = text(&o.stderr);
        if err.contains("no client named 'dev'") {
            assert!(asked.elapsed() < Duration::from_secs(2), "{err}");
            assert!(
                killed.elapsed() >= Duration::from_secs(5),
                "released before half the lease: {:?}",
                killed.elapsed()
            );
            eprintln!("dev released {:?} after the kill", killed.elapsed());
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "dev was never released: {err}"
        );
    }
    // The id is free for a client of b.
    let _dev_b = Proc::spawn(env.cmd(&["--addr", &b_addr, "serve", "--id", "dev", "--echo"]));
    let answer = until_ok("a request to dev on b", WAIT, || request("on b"));
    assert_eq!(answer.trim_end(), "on b");
    let _ = nats.kill();
    let _ = nats.wait();
}
