//! The connect scan: which of many addresses accept a TCP connection.
//!
//! On Unix, a few plain threads drive non-blocking sockets directly: each
//! port costs two `connect` calls on one socket (the first starts the
//! connection, the second reports the result, which on loopback is already
//! known), and a socket refused by one port is reused for the next, so no
//! socket is created or closed per closed port and no task is spawned per
//! port. Connections still in progress wait in a bounded set polled with
//! `poll(2)`. Connected sockets go to the async side, which probes them.
//!
//! Elsewhere a bounded set of tokio connects does the same job, more
//! slowly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// What to scan and how hard.
#[derive(Debug, Clone)]
pub(crate) struct ScanJob {
    /// Addresses to try, in order.
    pub targets: Arc<Vec<SocketAddr>>,
    /// Worker threads (Unix).
    pub threads: usize,
    /// Connections in progress at once, over all workers.
    pub max_pending: usize,
    /// How long one connect may take.
    pub connect_timeout: Duration,
    /// When to give up.
    pub deadline: Instant,
}

/// A running scan; dropping it stops the workers.
pub(crate) struct ScanHandle {
    /// Connected sockets, with the address they reached.
    pub rx: mpsc::Receiver<(SocketAddr, std::net::TcpStream)>,
    stop: Arc<AtomicBool>,
    /// Addresses tried so far.
    pub tried: Arc<AtomicUsize>,
}

impl ScanHandle {
    /// Stops the workers.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for ScanHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts scanning `job.targets`.
pub(crate) fn start(job: ScanJob, channel: usize) -> ScanHandle {
    let (tx, rx) = mpsc::channel(channel.max(1));
    let stop = Arc::new(AtomicBool::new(false));
    let tried = Arc::new(AtomicUsize::new(0));
    imp::spawn(job, tx, stop.clone(), tried.clone());
    ScanHandle { rx, stop, tried }
}

#[cfg(unix)]
mod imp {
    use super::*;
    use socket2::{Domain, Protocol, Socket, Type};
    use std::io;
    use std::os::fd::AsRawFd;

    type Tx = mpsc::Sender<(SocketAddr, std::net::TcpStream)>;

    pub(super) fn spawn(job: ScanJob, tx: Tx, stop: Arc<AtomicBool>, tried: Arc<AtomicUsize>) {
        let threads = job.threads.clamp(1, 16).min(job.targets.len().max(1));
        let per_thread_pending = (job.max_pending / threads).max(1);
        for idx in 0..threads {
            let job = job.clone();
            let (tx, stop, tried) = (tx.clone(), stop.clone(), tried.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("switchboard-scan-{idx}"))
                .spawn(move || {
                    let mut w = Worker {
                        job: &job,
                        tx,
                        stop: &stop,
                        pending: Vec::new(),
                        max_pending: per_thread_pending,
                        reuse: true,
                        spare_v4: None,
                        spare_v6: None,
                    };
                    let n = w.run(idx, threads);
                    tried.fetch_add(n, Ordering::Relaxed);
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a scan thread");
            }
        }
    }

    struct Pending {
        sock: Socket,
        addr: SocketAddr,
        since: Instant,
    }

    enum Outcome {
        Open(Socket),
        Refused(Socket),
        Pending(Socket),
        Failed,
    }

    struct Worker<'a> {
        job: &'a ScanJob,
        tx: Tx,
        stop: &'a AtomicBool,
        pending: Vec<Pending>,
        max_pending: usize,
        reuse: bool,
        spare_v4: Option<Socket>,
        spare_v6: Option<Socket>,
    }

    /// The receiver is gone or the scan was stopped.
    struct Stopped;

    impl Worker<'_> {
        fn run(&mut self, first: usize, stride: usize) -> usize {
            let mut done = 0usize;
            let mut i = first;
            while i < self.job.targets.len() {
                if done % 32 == 0
                    && (self.stop.load(Ordering::Relaxed) || Instant::now() >= self.job.deadline)
                {
                    return done;
                }
                let addr = self.job.targets[i];
                i += stride;
                done += 1;
                if self.try_addr(addr).is_err() {
                    return done;
                }
                if self.pending.len() >= self.max_pending && self.poll_pending(true).is_err() {
                    return done;
                }
            }
            while !self.pending.is_empty() {
                if self.stop.load(Ordering::Relaxed) || Instant::now() >= self.job.deadline {
                    break;
                }
                if self.poll_pending(true).is_err() {
                    break;
                }
            }
            done
        }

        fn spare(&mut self, addr: SocketAddr) -> &mut Option<Socket> {
            if addr.is_ipv4() {
                &mut self.spare_v4
            } else {
                &mut self.spare_v6
            }
        }

        fn try_addr(&mut self, addr: SocketAddr) -> Result<(), Stopped> {
            let mut retried = false;
            loop {
                let reused = self.spare(addr).take();
                let was_reused = reused.is_some();
                let sock = match reused {
                    Some(s) => s,
                    None => match new_socket(addr) {
                        Ok(s) => s,
                        Err(e) => return self.resource_error(addr, e, &mut retried),
                    },
                };
                match connect(sock, addr) {
                    Ok(Outcome::Open(s)) => return self.deliver(addr, s),
                    Ok(Outcome::Failed) => return Ok(()),
                    Ok(Outcome::Refused(s)) => {
                        if self.reuse {
                            *self.spare(addr) = Some(s);
                        }
                        return Ok(());
                    }
                    Ok(Outcome::Pending(s)) => {
                        self.pending.push(Pending {
                            sock: s,
                            addr,
                            since: Instant::now(),
                        });
                        return Ok(());
                    }
                    Err(e) if was_reused && !is_transient(&e) => {
                        // This system does not allow connecting a socket
                        // again after a refusal: use fresh sockets.
                        self.reuse = false;
                        continue;
                    }
                    Err(e) => return self.resource_error(addr, e, &mut retried),
                }
            }
        }

        /// Out of sockets or local ports: let pending connects finish and
        /// try once more; otherwise the address is skipped.
        fn resource_error(
            &mut self,
            addr: SocketAddr,
            e: io::Error,
            retried: &mut bool,
        ) -> Result<(), Stopped> {
            if is_transient(&e) && !*retried {
                *retried = true;
                while !self.pending.is_empty() {
                    self.poll_pending(true)?;
                    if Instant::now() >= self.job.deadline {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
                return self.try_addr_once(addr);
            }
            tracing::debug!(%addr, error = %e, "scan skipped an address");
            Ok(())
        }

        fn try_addr_once(&mut self, addr: SocketAddr) -> Result<(), Stopped> {
            let Ok(sock) = new_socket(addr) else {
                return Ok(());
            };
            match connect(sock, addr) {
                Ok(Outcome::Open(s)) => self.deliver(addr, s),
                Ok(Outcome::Pending(s)) => {
                    self.pending.push(Pending {
                        sock: s,
                        addr,
                        since: Instant::now(),
                    });
                    Ok(())
                }
                _ => Ok(()),
            }
        }

        fn deliver(&mut self, addr: SocketAddr, sock: Socket) -> Result<(), Stopped> {
            let stream: std::net::TcpStream = sock.into();
            self.tx.blocking_send((addr, stream)).map_err(|_| Stopped)
        }

        /// Waits (up to 5 ms when `block`) for pending connects, delivers
        /// the ones that connected and drops the refused and the expired.
        fn poll_pending(&mut self, block: bool) -> Result<(), Stopped> {
            let now = Instant::now();
            let timeout = self.job.connect_timeout;
            self.pending
                .retain(|p| now.duration_since(p.since) < timeout);
            if self.pending.is_empty() {
                return Ok(());
            }
            let mut fds: Vec<libc::pollfd> = self
                .pending
                .iter()
                .map(|p| libc::pollfd {
                    fd: p.sock.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                })
                .collect();
            let wait_ms = if block { 5 } else { 0 };
            // SAFETY: `fds` is a valid, initialised array of `fds.len()`
            // pollfd structures that lives across the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
            if n <= 0 {
                return Ok(());
            }
            let mut ready = Vec::new();
            for (i, fd) in fds.iter().enumerate().rev() {
                if fd.revents != 0 {
                    ready.push(self.pending.swap_remove(i));
                }
            }
            for p in ready {
                let connected =
                    matches!(p.sock.take_error(), Ok(None)) && p.sock.peer_addr().is_ok();
                if connected {
                    self.deliver(p.addr, p.sock)?;
                }
            }
            Ok(())
        }
    }

    fn is_transient(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::EADDRNOTAVAIL)
        )
    }

    fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        sock.set_nonblocking(true)?;
        Ok(sock)
    }

    fn connect(sock: Socket, addr: SocketAddr) -> io::Result<Outcome> {
        let sa = socket2::SockAddr::from(addr);
        match sock.connect(&sa) {
            Ok(()) => return Ok(Outcome::Open(sock)),
            Err(e) => match e.raw_os_error() {
                Some(libc::ECONNREFUSED) => return Ok(Outcome::Refused(sock)),
                Some(libc::EINPROGRESS) => {}
                _ => return Err(e),
            },
        }
        // On loopback the answer to the SYN has usually been processed by
        // now; asking again reports it without waiting.
        match sock.connect(&sa) {
            Ok(()) => Ok(Outcome::Open(sock)),
            Err(e) => match e.raw_os_error() {
                Some(libc::EISCONN) => Ok(Outcome::Open(sock)),
                Some(libc::ECONNREFUSED) => Ok(Outcome::Refused(sock)),
                Some(libc::EALREADY | libc::EINPROGRESS) => Ok(Outcome::Pending(sock)),
                // Unreachable, reset, ...: nothing to probe at this address.
                _ => Ok(Outcome::Failed),
            },
        }
    }
}

#[cfg(not(unix))]
mod imp {
    use super::*;
    use futures::StreamExt;

    type Tx = mpsc::Sender<(SocketAddr, std::net::TcpStream)>;

    pub(super) fn spawn(job: ScanJob, tx: Tx, stop: Arc<AtomicBool>, tried: Arc<AtomicUsize>) {
        tokio::spawn(async move {
            let timeout = job.connect_timeout;
            let targets = job.targets.clone();
            let mut conns = futures::stream::iter(targets.iter().copied())
                .map(|addr| async move {
                    let r =
                        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await;
                    (addr, r)
                })
                .buffer_unordered(job.max_pending.max(1));
            let deadline = tokio::time::Instant::from_std(job.deadline);
            while let Ok(Some((addr, r))) = tokio::time::timeout_at(deadline, conns.next()).await {
                tried.fetch_add(1, Ordering::Relaxed);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(Ok(s)) = r {
                    if let Ok(std) = s.into_std() {
                        if tx.send((addr, std)).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
}
