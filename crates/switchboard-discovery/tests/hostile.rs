//! Hostile peers and hostile hint files, on loopback: none may be
//! accepted, hang discovery past its limits, or get more than one probe.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use futures::{SinkExt, StreamExt};
use switchboard_discovery::{
    discover, nonce, probe, proto, DiscoverError, DiscoverOptions, Hint, PortChoice, ProbeError,
    Secret, Via,
};
use switchboard_wire::{Frame, FrameCodec, Kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, Framed};

/// A listener that runs `behave` on every accepted connection.
struct Peer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn peer<F, Fut>(l: TcpListener, behave: F) -> Peer
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            conns.push(tokio::spawn(behave(s)));
        }
    });
    Peer { addr, task }
}

async fn os_listener() -> TcpListener {
    listener(V4, PortChoice::Os).await.unwrap()
}

/// Reads the client's probe frame from `s` (bounded by the probe limit).
async fn read_probe(s: &mut TcpStream) -> Option<proto::Probe> {
    let mut codec = FrameCodec::with_max_frame(128);
    let mut buf = BytesMut::new();
    loop {
        if let Ok(Some(Frame {
            kind: Some(Kind::Probe(p)),
            ..
        })) = codec.decode(&mut buf)
        {
            return Some(p);
        }
        if buf.len() > 256 || s.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// Sends one probe for `service` to `addr` and returns the raw reply frame.
async fn capture_reply(addr: SocketAddr, service: &str) -> proto::ProbeReply {
    let s = TcpStream::connect(addr).await.unwrap();
    let mut f = Framed::new(s, FrameCodec::with_max_frame(4096));
    let probe = proto::Probe {
        magic: switchboard_wire::PROBE_MAGIC,
        version: switchboard_wire::PROTOCOL_VERSION,
        service: service.into(),
        nonce: Bytes::copy_from_slice(&nonce()),
    };
    f.send(Frame::from(probe)).await.unwrap();
    match f.next().await {
        Some(Ok(Frame {
            kind: Some(Kind::ProbeReply(r)),
            ..
        })) => r,
        other => panic!("{other:?}"),
    }
}

fn scan_only(secret: &Secret, ports: &[u16]) -> DiscoverOptions {
    let lo = *ports.iter().min().unwrap();
    let hi = *ports.iter().max().unwrap();
    DiscoverOptions {
        use_hints: false,
        use_table: false,
        range: lo..=hi,
        secret: Some(secret.clone()),
        ..Default::default()
    }
}

#[tokio::test]
async fn replayed_reply_is_rejected() {
    let secret = Secret::random();
    let hub = hub("svc-replay", &secret, V4).await;
    // A valid reply captured from an earlier probe of the real hub, played
    // back to every later probe (with the port rewritten would break the
    // proof; unchanged it names the hub's port).
    let captured = capture_reply(hub.addr, "svc-replay").await;
    let replay = captured.clone();
    let replayer = peer(os_listener().await, move |mut s| {
        let reply = replay.clone();
        async move {
            let _ = read_probe(&mut s).await;
            let bytes = switchboard_wire::encode_frame(&Frame::from(reply), 4096).unwrap();
            let _ = s.write_all(&bytes).await;
            let _ = s.read(&mut [0u8; 16]).await;
        }
    });
    let err = probe(replayer.addr, "svc-replay", &secret, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(err.is_unverified(), "{err}");
    // The same reply replayed with the identity's port set to the
    // replayer's own port fails the proof as well.
    let mut moved = captured;
    moved.identity.as_mut().unwrap().port = replayer.addr.port().into();
    let moved_peer = peer(os_listener().await, move |mut s| {
        let reply = moved.clone();
        async move {
            let _ = read_probe(&mut s).await;
            let bytes = switchboard_wire::encode_frame(&Frame::from(reply), 4096).unwrap();
            let _ = s.write_all(&bytes).await;
        }
    });
    let err = probe(
        moved_peer.addr,
        "svc-replay",
        &secret,
        Duration::from_secs(2),
    )
    .await
    .unwrap_err();
    assert!(err.is_unverified(), "{err}");
    // Through discovery (scan engine) neither is accepted.
    let mut ports = vec![replayer.addr.port(), moved_peer.addr.port()];
    ports.sort();
    let err = discover("svc-replay", &scan_only(&secret, &ports))
        .await
        .unwrap_err();
    let DiscoverError::NotFound { tried, .. } = err else {
        panic!("{err}")
    };
    assert!(tried.unverified.contains(&replayer.addr), "{tried}");
    assert!(tried.unverified.contains(&moved_peer.addr), "{tried}");
}

/// A relay forwards our probe (optionally rewritten) to the real hub of a
/// service and passes its genuine reply back.
fn relay(l: TcpListener, to: SocketAddr, rewrite_service: Option<&'static str>) -> Peer {
    peer(l, move |mut s| async move {
        let Some(mut p) = read_probe(&mut s).await else {
            return;
        };
        if let Some(svc) = rewrite_service {
            p.service = svc.into();
        }
        let Ok(up) = TcpStream::connect(to).await else {
            return;
        };
        let mut up = Framed::new(up, FrameCodec::with_max_frame(4096));
        if up.send(Frame::from(p)).await.is_err() {
            return;
        }
        if let Some(Ok(frame)) = up.next().await {
            let bytes = switchboard_wire::encode_frame(&frame, 4096).unwrap();
            let _ = s.write_all(&bytes).await;
        }
    })
}

#[tokio::test]
async fn relays_to_another_port_or_service_are_rejected() {
    let secret = Secret::random();
    let hub_a = hub("svc-relay", &secret, V4).await;
    let hub_b = hub("svc-other", &secret, V4).await;
    let same = relay(os_listener().await, hub_a.addr, None);
    let other = relay(os_listener().await, hub_b.addr, Some("svc-other"));
    let t = Duration::from_secs(2);
    let err = probe(same.addr, "svc-relay", &secret, t).await.unwrap_err();
    assert!(
        matches!(&err, ProbeError::Mismatch { reason, .. } if reason.contains("port")),
        "{err}"
    );
    let err = probe(other.addr, "svc-relay", &secret, t)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProbeError::Mismatch { reason, .. } if reason.contains("svc-other")),
        "{err}"
    );
    // Through the scan engine too: only the real hub is listed.
    let mut ports = vec![same.addr.port(), other.addr.port(), hub_a.addr.port()];
    ports.sort();
    let o = DiscoverOptions {
        all: true,
        ..scan_only(&secret, &ports)
    };
    let found = discover("svc-relay", &o).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].addr, hub_a.addr);
}

/// Sends a length prefix announcing a full-size frame, then one byte per
/// `every`, forever.
fn trickler(l: TcpListener, every: Duration) -> Peer {
    peer(l, move |mut s| async move {
        let _ = read_probe(&mut s).await;
        if s.write_all(&[0, 0, 4, 0]).await.is_err() {
            return;
        }
        for _ in 0..100_000 {
            tokio::time::sleep(every).await;
            if s.write_all(&[0x0a]).await.is_err() {
                return;
            }
        }
    })
}

/// A trickler on a plain thread: a byte every millisecond, for at most
/// 3 s per connection and 8 connections.
fn fast_trickler() -> SocketAddr {
    let l = std::net::TcpListener::bind((V4, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(8) {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                use std::io::Write;
                let _ = s.write_all(&[0, 0, 4, 0]);
                let end = Instant::now() + Duration::from_secs(3);
                while Instant::now() < end && s.write_all(&[0x0a]).is_ok() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn tricklers_are_cut_off_at_the_probe_timeout() {
    let secret = Secret::random();
    let slow = trickler(os_listener().await, Duration::from_millis(100));
    // Fast enough that the socket is readable at nearly every poll.
    let fast = fast_trickler();
    let timeout = Duration::from_millis(300);
    for p in [slow.addr, fast] {
        let t = Instant::now();
        let err = probe(p, "svc-trickle", &secret, timeout).await.unwrap_err();
        assert!(matches!(err, ProbeError::Timeout { .. }), "{err}");
        assert!(t.elapsed() < timeout + Duration::from_millis(700));
    }
    let mut ports = vec![slow.addr.port(), fast.port()];
    ports.sort();
    let o = DiscoverOptions {
        probe_timeout: timeout,
        ..scan_only(&secret, &ports)
    };
    let t = Instant::now();
    let err = discover("svc-trickle", &o).await.unwrap_err();
    let took = t.elapsed();
    eprintln!("tricklers: {took:?}");
    assert!(matches!(err, DiscoverError::NotFound { .. }), "{err}");
    assert!(took < timeout + Duration::from_millis(700), "{took:?}");
}

#[tokio::test]
async fn huge_length_prefix_fails_at_once() {
    let secret = Secret::random();
    let p = peer(os_listener().await, |mut s| async move {
        let _ = read_probe(&mut s).await;
        let _ = s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await;
        // Keep the connection open: the client must not wait for the body.
        let _ = s.read(&mut [0u8; 16]).await;
    });
    let t = Instant::now();
    let err = probe(p.addr, "svc-huge", &secret, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeError::Wire { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let o = DiscoverOptions {
        probe_timeout: Duration::from_secs(5),
        ..scan_only(&secret, &[p.addr.port()])
    };
    let t = Instant::now();
    assert!(discover("svc-huge", &o).await.is_err());
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

#[tokio::test]
async fn deadline_holds_with_many_slow_hints() {
    // More silent candidates than the concurrency limit: without a
    // deadline on every probe, waves of probe timeouts would add up.
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::random();
    let mut peers = Vec::new();
    let mut guards = Vec::new();
    for i in 0..6 {
        let f = foreign(Foreign::Silent, os_listener().await).await;
        guards.push(
            Hint::new("svc-slow", f.addr, &format!("{i:016x}"))
                .write_in(dir.path())
                .unwrap(),
        );
        peers.push(f);
    }
    let o = DiscoverOptions {
        hint_dirs: vec![dir.path().to_owned()],
        use_table: false,
        use_scan: false,
        concurrency: 2,
        probe_timeout: Duration::from_millis(400),
        deadline: Duration::from_millis(500),
        secret: Some(secret),
        ..Default::default()
    };
    let t = Instant::now();
    let err = discover("svc-slow", &o).await.unwrap_err();
    let took = t.elapsed();
    eprintln!("many slow hints: {took:?}");
    assert!(took < Duration::from_millis(500 + 150), "{took:?}");
    assert!(err.to_string().contains("deadline reached"), "{err}");
}

#[tokio::test]
async fn deadline_holds_with_many_slow_scan_candidates() {
    let secret = Secret::random();
    let (base, ls) = cluster(40).await;
    let mut peers = Vec::new();
    for l in ls {
        peers.push(foreign(Foreign::Silent, l).await);
    }
    let o = DiscoverOptions {
        use_hints: false,
        use_table: false,
        range: base..=base + 39,
        concurrency: 4,
        probe_timeout: Duration::from_secs(2),
        deadline: Duration::from_millis(400),
        secret: Some(secret),
        ..Default::default()
    };
    let t = Instant::now();
    let err = discover("svc-slow-scan", &o).await.unwrap_err();
    let took = t.elapsed();
    assert!(took < Duration::from_millis(400 + 500), "{took:?}");
    assert!(err.to_string().contains("deadline reached"), "{err}");
    // Nobody got more than one probe.
    for p in &peers {
        assert!(p.probes_for("svc-slow-scan").len() <= 1);
    }
}

#[tokio::test]
async fn first_mode_does_not_wait_for_slow_candidates() {
    let secret = Secret::random();
    let (base, mut ls) = cluster(21).await;
    let hub_l = ls.pop().unwrap();
    let mut peers = Vec::new();
    for l in ls {
        peers.push(foreign(Foreign::Silent, l).await);
    }
    let hub = hub_on("svc-first", &secret, hub_l);
    let o = DiscoverOptions {
        use_hints: false,
        use_table: false,
        range: base..=base + 20,
        probe_timeout: Duration::from_secs(3),
        deadline: Duration::from_secs(10),
        secret: Some(secret),
        ..Default::default()
    };
    let t = Instant::now();
    let found = discover("svc-first", &o).await.unwrap();
    assert_eq!(found[0].addr, hub.addr);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

// ---- hint files ----

fn hints_only(dir: &std::path::Path, secret: &Secret) -> DiscoverOptions {
    DiscoverOptions {
        hint_dirs: vec![dir.to_owned()],
        use_table: false,
        use_scan: false,
        secret: Some(secret.clone()),
        ..Default::default()
    }
}

fn bad_hints(err: DiscoverError) -> usize {
    match err {
        DiscoverError::NotFound { tried, .. } => tried.bad_hints,
        other => panic!("{other}"),
    }
}

#[cfg(unix)]
#[tokio::test]
async fn symlinked_hint_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let secret = Secret::random();
    let hub = hub("svc-link", &secret, V4).await;
    let g = hub.hint(elsewhere.path());
    std::os::unix::fs::symlink(g.path(), dir.path().join("svc-link.0123456789abcdef.hint"))
        .unwrap();
    let err = discover("svc-link", &hints_only(dir.path(), &secret))
        .await
        .unwrap_err();
    assert_eq!(bad_hints(err), 1);
    assert_eq!(hub.probes.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn huge_and_malformed_hints_are_refused_without_reading_them_whole() {
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::random();
    // A sparse 8 GiB file: reading it whole would take seconds and memory.
    let f = std::fs::File::create(dir.path().join("svc-big.0000000000000001.hint")).unwrap();
    f.set_len(8 << 30).unwrap();
    drop(f);
    std::fs::write(
        dir.path().join("svc-big.0000000000000002.hint"),
        b"{\"service\":\"svc-big\",",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("svc-big.0000000000000003.hint"),
        b"{\"service\":\"svc-big\",\"addr\":\"127.0.0.1:1\",\"port\":99999,\"pid\":1,\"instance_id\":\"x\",\"started_at_ms\":0}",
    )
    .unwrap();
    let t = Instant::now();
    let err = discover("svc-big", &hints_only(dir.path(), &secret))
        .await
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(bad_hints(err), 3);
}

#[tokio::test]
async fn inconsistent_hint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::random();
    let hub = hub("svc-odd", &secret, V4).await;
    // addr and port disagree; an unparsable address is not a hint either.
    for (i, addr) in [
        format!("127.0.0.1:{}", hub.addr.port()),
        "not an address".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let json = serde_json::json!({
            "service": "svc-odd", "addr": addr, "port": 1,
            "pid": 1, "instance_id": format!("{i:016x}"), "started_at_ms": 0,
        });
        std::fs::write(
            dir.path().join(format!("svc-odd.{i:016x}.hint")),
            json.to_string(),
        )
        .unwrap();
    }
    let err = discover("svc-odd", &hints_only(dir.path(), &secret))
        .await
        .unwrap_err();
    assert_eq!(bad_hints(err), 2);
    assert_eq!(hub.probes.load(Ordering::Relaxed), 0);
}

#[cfg(unix)]
#[tokio::test]
async fn writable_or_foreign_hint_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::random();
    let hub = hub("svc-perm", &secret, V4).await;
    let g = hub.hint(dir.path());
    std::fs::set_permissions(g.path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = discover("svc-perm", &hints_only(dir.path(), &secret))
        .await
        .unwrap_err();
    assert_eq!(bad_hints(err), 1);
    assert_eq!(hub.probes.load(Ordering::Relaxed), 0);
    let msg = Hint::read(g.path()).unwrap_err().to_string();
    assert!(msg.contains("group or others"), "{msg}");
    // Owned by another user: only root can arrange that.
    if switchboard_discovery::current_uid() == 0 {
        std::fs::set_permissions(g.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(g.path(), Some(4242), None).unwrap();
        let msg = Hint::read(g.path()).unwrap_err().to_string();
        assert!(msg.contains("uid 4242"), "{msg}");
        let err = discover("svc-perm", &hints_only(dir.path(), &secret))
            .await
            .unwrap_err();
        assert_eq!(bad_hints(err), 1);
        assert_eq!(hub.probes.load(Ordering::Relaxed), 0);
    }
}

#[tokio::test]
async fn scan_finds_the_hub_despite_hostile_hints() {
    // Hostile hints cost nothing beyond themselves: the scan still finds
    // the hub, and via the scan.
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::random();
    let hub = hub("svc-after", &secret, V4).await;
    std::fs::write(
        dir.path().join("svc-after.0000000000000001.hint"),
        b"\0\0junk",
    )
    .unwrap();
    let o = DiscoverOptions {
        hint_dirs: vec![dir.path().to_owned()],
        use_table: false,
        range: hub.addr.port()..=hub.addr.port(),
        secret: Some(secret),
        ..Default::default()
    };
    let found = discover("svc-after", &o).await.unwrap();
    assert_eq!(found[0].via, Via::Scan);
}

#[tokio::test]
async fn bind_check_finds_what_connecting_finds() {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let secret = Secret::random();
    let (base, mut ls) = cluster(5).await;
    // Rebind two of the ports on wildcard addresses (dual-stack `::` where
    // the host has IPv6), which also serve 127.0.0.1.
    let wild_v6 = ls.pop().unwrap();
    let wild_v4 = ls.pop().unwrap();
    let (p6, p4) = (
        wild_v6.local_addr().unwrap().port(),
        wild_v4.local_addr().unwrap().port(),
    );
    drop((wild_v6, wild_v4));
    let mut hubs = vec![
        hub_on(
            "svc-bindcheck",
            &secret,
            listener(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PortChoice::Fixed(p4))
                .await
                .unwrap(),
        ),
        hub_on("svc-bindcheck", &secret, ls.pop().unwrap()),
    ];
    if let Ok(l) = listener(IpAddr::V6(Ipv6Addr::UNSPECIFIED), PortChoice::Fixed(p6)).await {
        hubs.push(hub_on("svc-bindcheck", &secret, l));
    }
    let _silent = foreign(Foreign::Silent, ls.pop().unwrap()).await;
    let _closes = foreign(Foreign::Closes, ls.pop().unwrap()).await;
    let mut expected: Vec<u16> = hubs.iter().map(|h| h.addr.port()).collect();
    expected.sort();
    for bind_check in [true, false] {
        let o = DiscoverOptions {
            all: true,
            bind_check,
            probe_timeout: Duration::from_millis(300),
            ..scan_only(&secret, &[base.saturating_sub(20), base + 25])
        };
        let found = discover("svc-bindcheck", &o).await.unwrap();
        let mut ports: Vec<u16> = found.iter().map(|f| f.addr.port()).collect();
        ports.sort();
        assert_eq!(ports, expected, "bind_check {bind_check}");
        assert!(found
            .iter()
            .all(|f| f.addr.ip() == V4 && f.via == Via::Scan));
    }
}

#[tokio::test]
async fn an_address_listed_twice_is_probed_once() {
    let secret = Secret::random();
    let silent = foreign(Foreign::Silent, os_listener().await).await;
    let port = silent.addr.port();
    let o = DiscoverOptions {
        ips: vec![V4, V4],
        probe_timeout: Duration::from_millis(200),
        all: true,
        ..scan_only(&secret, &[port])
    };
    assert!(discover("svc-twice-a", &o).await.is_err());
    // Table and scan together, with the address listed twice.
    let o = DiscoverOptions {
        use_table: true,
        ..o
    };
    assert!(discover("svc-twice-b", &o).await.is_err());
    // The listener's tasks log what they read a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ["svc-twice-a", "svc-twice-b"]
        .iter()
        .any(|s| silent.probes_for(s).is_empty())
    {
        assert!(Instant::now() < deadline, "the probes were never logged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(silent.probes_for("svc-twice-a").len(), 1);
    assert_eq!(silent.probes_for("svc-twice-b").len(), 1);
}

/// A listener owned by another user, made by creating the socket in a
/// thread whose filesystem uid is `uid` (Linux, needs root).
#[cfg(target_os = "linux")]
fn listener_of_uid(addr: SocketAddr, uid: u32) -> std::io::Result<TcpListener> {
    let l = std::thread::spawn(move || {
        // SAFETY: setfsuid only changes this thread's filesystem uid.
        let before = unsafe { libc::setfsuid(uid) };
        let l = std::net::TcpListener::bind(addr);
        // SAFETY: as above, restoring the previous value.
        unsafe { libc::setfsuid(before as libc::uid_t) };
        l
    })
    .join()
    .unwrap()?;
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn relay_of_another_user_on_the_other_loopback_is_rejected() {
    use std::net::Ipv6Addr;
    if switchboard_discovery::current_uid() != 0 {
        eprintln!("skipped: needs root to own a socket as another user");
        return;
    }
    let secret = Secret::random();
    let hub = hub("svc-xrelay", &secret, V4).await;
    let port = hub.addr.port();
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let Ok(l) = listener_of_uid(v6, 4242) else {
        eprintln!("skipped: no IPv6 loopback");
        return;
    };
    let table = switchboard_discovery::table::listening().unwrap();
    assert!(
        table
            .listeners
            .iter()
            .any(|x| x.addr == v6 && x.uid == 4242),
        "the relay's listener is not owned by uid 4242"
    );
    let _relay = relay(l, hub.addr, None);
    // The relay passes the probe's own checks: same port number, genuine
    // proof...
    let direct = probe(v6, "svc-xrelay", &secret, Duration::from_secs(2)).await;
    assert!(direct.is_ok(), "{direct:?}");
    // ...but the scan sees whose listener it is.
    let o = DiscoverOptions {
        ips: vec![IpAddr::V6(Ipv6Addr::LOCALHOST)],
        all: true,
        ..scan_only(&secret, &[port])
    };
    let err = discover("svc-xrelay", &o).await.unwrap_err();
    assert!(matches!(err, DiscoverError::NotFound { .. }), "{err}");
    // The real hub is still found on its own address.
    let o = DiscoverOptions {
        ips: vec![V4, IpAddr::V6(Ipv6Addr::LOCALHOST)],
        ..o
    };
    let found = discover("svc-xrelay", &o).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].addr, hub.addr);
}
