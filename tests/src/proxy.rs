//! A loopback TCP relay that a test can cut, to break connections while
//! the hub behind it stays up.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

struct Relay {
    task: JoinHandle<()>,
    /// Set by [`Proxy::cut_client_side`]: the hub's side of the relay,
    /// kept open so the hub sees nothing.
    hub_side: Arc<Mutex<Option<Arc<TcpStream>>>>,
}

/// Relays every connection accepted on [`addr`](Proxy::addr) to a target
/// address (changeable with [`set_target`](Proxy::set_target)).
pub struct Proxy {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    relays: Arc<Mutex<Vec<Relay>>>,
    accept: JoinHandle<()>,
    /// Hub-side sockets of relays cut on the client side only.
    held: Arc<Mutex<Vec<Arc<TcpStream>>>>,
}

impl Proxy {
    /// Starts a relay on a free loopback port towards `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let target = Arc::new(Mutex::new(target));
        let relays: Arc<Mutex<Vec<Relay>>> = Arc::default();
        let accept = {
            let target = target.clone();
            let relays = relays.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let to = *lock(&target);
                    let hub_side = Arc::new(Mutex::new(None));
                    let slot = hub_side.clone();
                    let task = tokio::spawn(async move {
                        let Ok(hub) = TcpStream::connect(to).await else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = hub.set_nodelay(true);
                        relay(client, hub, slot).await;
                    });
                    let mut relays = lock(&relays);
                    relays.retain(|r| !r.task.is_finished());
                    relays.push(Relay { task, hub_side });
                }
            })
        };
        Ok(Proxy {
            addr,
            target,
            relays,
            accept,
            held: Arc::default(),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections are relayed to.
    pub fn set_target(&self, target: SocketAddr) {
        *lock(&self.target) = target;
    }

    /// Cuts every relayed connection: both sides see it close, and bytes in
    /// transit in the relay are lost.
    pub fn cut(&self) {
        for r in lock(&self.relays).drain(..) {
            r.task.abort();
        }
    }

    /// Cuts every relayed connection on the client's side only: the client
    /// sees its connection close, while the hub's side stays open and
    /// silent (what the hub sent meanwhile is lost), as after a network
    /// failure the hub has not noticed yet.
    pub fn cut_client_side(&self) {
        for r in lock(&self.relays).drain(..) {
            r.task.abort();
            if let Some(hub) = lock(&r.hub_side).take() {
                lock(&self.held).push(hub);
            }
        }
    }

    /// Closes the hub sides kept open by [`cut_client_side`](Self::cut_client_side).
    pub fn release_hub_sides(&self) {
        lock(&self.held).clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copies both ways until either side closes. The hub side is shared
/// with `slot`, so a client-side cut can keep it open.
async fn relay(client: TcpStream, hub: TcpStream, slot: Arc<Mutex<Option<Arc<TcpStream>>>>) {
    let hub = Arc::new(hub);
    *lock(&slot) = Some(hub.clone());
    let (mut cr, mut cw) = client.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if write_all(&hub, &buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match read(&hub, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    lock(&slot).take();
}

async fn read(s: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        s.readable().await?;
        match s.try_read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

async fn write_all(s: &TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        s.writable().await?;
        match s.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
