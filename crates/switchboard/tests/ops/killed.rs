//! A federated `switchboard hub` process killed with SIGKILL: no goodbye,
//! no release. The other hub frees its ids once its lease runs out
//! unseen, tells requesters at once from then on, and admits the id for
//! one of its own clients.

use std::time::{Duration, Instant};

use super::{nats_server, solo_nats, text, Env, Proc, WAIT};

#[test]
fn a_killed_federated_hub_process_frees_its_ids_after_its_lease() {
    let Some(bin) = nats_server() else {
        return;
    };
    let env = Env::new();
    let (mut nats, port) = solo_nats(&bin, &env, "");
    let url = format!("nats://127.0.0.1:{port}");
    let hub = |name: &str| {
        let hub = Proc::spawn(env.cmd(&[
            "hub",
            "--json",
            "--no-unix",
            "--listen",
            "127.0.0.1:0",
            "--federate",
            &url,
            "--federate-name",
            name,
        ]));
        let addr = hub.ready()["addr"].as_str().expect("addr").to_string();
        (hub, addr)
    };
    let (a, a_addr) = hub("a");
    let (_b, b_addr) = hub("b");
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
    let deadline = Instant::now() + WAIT;
    loop {
        let o = request("before");
        if o.status.success() {
            assert_eq!(text(&o.stdout).trim_end(), "before");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dev never answered: {}",
            text(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

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
    let deadline = Instant::now() + WAIT;
    loop {
        let o = request("on b");
        if o.status.success() {
            assert_eq!(text(&o.stdout).trim_end(), "on b");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dev on b never answered: {}",
            text(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = nats.kill();
    let _ = nats.wait();
}
