//! Fake hubs and foreign services on loopback for the discovery tests.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use switchboard_discovery::{
    answer_probe, bind, hub_proof, new_instance_id, nonce, proto, BindOptions, Hint, HintGuard,
    PortChoice, Secret,
};
use switchboard_wire::{Frame, FrameCodec, Kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

pub const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A hub that answers probes the way the real one does.
pub struct FakeHub {
    pub addr: SocketAddr,
    pub identity: proto::HubIdentity,
    pub probes: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeHub {
    /// Writes a hint for this hub into `dir`.
    pub fn hint(&self, dir: &std::path::Path) -> HintGuard {
        Hint::new(
            &self.identity.service,
            self.addr,
            &self.identity.instance_id,
        )
        .write_in(dir)
        .unwrap()
    }
}

pub async fn listener(ip: IpAddr, port: PortChoice) -> std::io::Result<TcpListener> {
    bind(&BindOptions {
        ip,
        port,
        ..Default::default()
    })
    .await
}

/// Starts a hub of `service` on `ip` answering with `secret`.
pub async fn hub(service: &str, secret: &Secret, ip: IpAddr) -> FakeHub {
    hub_on(
        service,
        secret,
        listener(ip, PortChoice::default()).await.unwrap(),
    )
}

/// Starts a hub on an existing listener.
pub fn hub_on(service: &str, secret: &Secret, l: TcpListener) -> FakeHub {
    let addr = l.local_addr().unwrap();
    let identity = proto::HubIdentity {
        service: service.into(),
        instance_id: new_instance_id(),
        pid: std::process::id(),
        port: addr.port().into(),
        epoch: 1,
        started_at_ms: 1,
        role: proto::Role::Primary as i32,
    };
    let probes = Arc::new(AtomicUsize::new(0));
    let (id, sec, count) = (identity.clone(), secret.clone(), probes.clone());
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (id, sec, count) = (id.clone(), sec.clone(), count.clone());
            tokio::spawn(async move {
                let mut f = Framed::new(s, FrameCodec::with_max_frame(4096));
                if let Some(Ok(Frame {
                    kind: Some(Kind::Probe(p)),
                    ..
                })) = f.next().await
                {
                    // Count only probes for this hub's service: tests in
                    // the same binary scan nearby ports for other services.
                    if p.service == id.service {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(reply) = answer_probe(&p, &id, &sec) {
                        let _ = f.send(Frame::from(reply)).await;
                    }
                }
            });
        }
    });
    FakeHub {
        addr,
        identity,
        probes,
        task,
    }
}

/// How a foreign (non-hub) listener behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    /// Accepts, reads, never answers, keeps the connection open.
    Silent,
    /// Never accepts (the kernel completes the handshake; nobody reads).
    NoAccept,
    /// Accepts and closes at once.
    Closes,
    /// Answers with text junk.
    Junk,
    /// Sends data without end.
    Endless,
    /// Sends back whatever it receives.
    Echo,
    /// Answers in the probe format with a proof made with another secret.
    Impostor,
}

/// A foreign listener; `log` holds what each connection sent (for the
/// kinds that read), so a test can pick out its own probes among those of
/// other discoveries running on the machine at the same time.
pub struct ForeignService {
    pub addr: SocketAddr,
    pub log: Log,
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
    _listener: Option<TcpListener>,
}

impl Drop for ForeignService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bytes received, one entry per connection.
pub type Log = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

impl ForeignService {
    /// Connections whose bytes mention `service`, with their lengths.
    pub fn probes_for(&self, service: &str) -> Vec<usize> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b.windows(service.len()).any(|w| w == service.as_bytes()))
            .map(Vec::len)
            .collect()
    }
}

pub async fn foreign(kind: Foreign, l: TcpListener) -> ForeignService {
    let addr = l.local_addr().unwrap();
    let received: Log = Arc::default();
    let connections = Arc::new(AtomicUsize::new(0));
    if kind == Foreign::NoAccept {
        return ForeignService {
            addr,
            log: received,
            connections,
            task: tokio::spawn(async {}),
            _listener: Some(l),
        };
    }
    let (rx, conns) = (received.clone(), connections.clone());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            conns.fetch_add(1, Ordering::Relaxed);
            let log = rx.clone();
            let t = tokio::spawn(async move {
                let slot = {
                    let mut l = log.lock().unwrap();
                    l.push(Vec::new());
                    l.len() - 1
                };
                let record = |b: &[u8]| {
                    let mut l = log.lock().unwrap();
                    if l[slot].len() < 4096 {
                        l[slot].extend_from_slice(b);
                    }
                };
                let mut buf = vec![0u8; 4096];
                match kind {
                    Foreign::Closes => {}
                    Foreign::Silent => loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => record(&buf[..n]),
                        };
                    },
                    Foreign::Junk => {
                        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                        if let Ok(n) = s.read(&mut buf).await {
                            record(&buf[..n]);
                        }
                    }
                    Foreign::Endless => {
                        let chunk = vec![0x41u8; 16 * 1024];
                        for _ in 0..100_000 {
                            if s.write_all(&chunk).await.is_err() {
                                break;
                            }
                        }
                    }
                    Foreign::Echo => loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                record(&buf[..n]);
                                if s.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    },
                    Foreign::Impostor => {
                        let mut f = Framed::new(s, FrameCodec::with_max_frame(4096));
                        if let Some(Ok(Frame {
                            kind: Some(Kind::Probe(p)),
                            ..
                        })) = f.next().await
                        {
                            record(
                                &switchboard_discovery::encode_probe(&p.service, &[0; 16]).unwrap(),
                            );
                            let identity = proto::HubIdentity {
                                service: p.service.clone(),
                                instance_id: "impostor".into(),
                                port: addr.port().into(),
                                ..Default::default()
                            };
                            let hub_nonce = nonce();
                            let proof = hub_proof(
                                &Secret::from_token("not the secret"),
                                &p.nonce,
                                &hub_nonce,
                                &identity,
                            );
                            let reply = proto::ProbeReply {
                                identity: Some(identity),
                                hub_nonce: Bytes::copy_from_slice(&hub_nonce),
                                proof: Bytes::copy_from_slice(&proof),
                            };
                            let _ = f.send(Frame::from(reply)).await;
                            // Stay open, as if waiting for more.
                            let _ = f.next().await;
                        }
                    }
                    Foreign::NoAccept => unreachable!(),
                }
            });
            held.push(t);
        }
    });
    ForeignService {
        addr,
        log: received,
        connections,
        task,
        _listener: None,
    }
}

/// A port that nothing listens on (bound, then released).
pub fn dead_port() -> SocketAddr {
    let l = std::net::TcpListener::bind((V4, 0)).unwrap();
    l.local_addr().unwrap()
}

/// Listeners on consecutive ports `base..base+n` (as many as can be bound).
pub async fn cluster(n: usize) -> (u16, Vec<TcpListener>) {
    for _ in 0..50 {
        let base: u16 = rand_port();
        let mut ls = Vec::new();
        for p in base..base + n as u16 {
            match listener(V4, PortChoice::Fixed(p)).await {
                Ok(l) => ls.push(l),
                Err(_) => break,
            }
        }
        if ls.len() == n {
            return (base, ls);
        }
    }
    panic!("no run of {n} free ports found");
}

fn rand_port() -> u16 {
    use std::time::SystemTime;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    // 20000..30000: below the ephemeral range, so outgoing connections of
    // other tests do not take these ports.
    20000 + (nanos % 10000) as u16
}
