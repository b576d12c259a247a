//! Probing many addresses at once: the listening-table candidates and the
//! connect scan.
//!
//! On Unix a few plain threads drive non-blocking sockets directly, with no
//! task or future per address:
//!
//! * a loopback port is first tested with `bind` (Linux): a port that
//!   binds has no listener, so it gets no SYN at all; only ports in use
//!   are connected to. A bind costs a socket's creation and close (about
//!   4.6 µs here) against about 6.5 µs for a refused connect, and nothing
//!   crosses the loopback device;
//! * each address connected to costs two `connect` calls on one socket: the first
//!   starts the connection, the second reports the result, which on
//!   loopback is already known (refused, or connected);
//! * a socket refused by one port is reused for the next, so no socket is
//!   created or closed per closed port;
//! * a connected socket is sent the one probe at once and then waits, with
//!   the connections still in progress, in a bounded set polled with
//!   `poll(2)`; the probe timeout covers connect and reply, and a peer
//!   still trickling bytes when it expires is cut off like a silent one;
//!   replies are read into a buffer bounded by
//!   [`MAX_REPLY_LEN`](crate::MAX_REPLY_LEN) and checked with the sans-IO
//!   [`check_reply`](crate::check_reply).
//!
//! Elsewhere a bounded set of tokio probes does the same job, more slowly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_wire::proto;
use tokio::sync::mpsc;

use crate::{ProbeError, Secret};

/// What to probe and how hard.
#[derive(Debug, Clone)]
pub(crate) struct ProbeJob {
    /// Addresses to try, in order.
    pub targets: Arc<Vec<SocketAddr>>,
    /// Worker threads (Unix).
    pub threads: usize,
    /// Connections in progress or awaiting a reply, over all workers.
    pub max_inflight: usize,
    /// Time one probe may take, connect and reply included.
    pub timeout: Duration,
    /// When to give up.
    pub deadline: Instant,
    /// Service asked for.
    pub service: String,
    /// Secret the proof must verify with.
    pub secret: Secret,
    /// Skip loopback ports that nothing listens on without connecting
    /// (Linux; a `bind` test, see the worker).
    #[cfg_attr(not(unix), allow(dead_code))]
    pub prefilter: bool,
}

/// Result for one address that accepted a connection.
pub(crate) type Outcome = (SocketAddr, Result<proto::HubIdentity, ProbeError>);

/// A running job; dropping it stops the workers.
pub(crate) struct ProbeHandle {
    /// Results of the addresses that accepted a connection.
    pub rx: mpsc::UnboundedReceiver<Outcome>,
    stop: Arc<AtomicBool>,
    /// Addresses tried, added by each worker when it finishes.
    pub tried: Arc<AtomicUsize>,
}

impl ProbeHandle {
    /// Asks the workers to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for ProbeHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts probing `job.targets`.
pub(crate) fn start(job: ProbeJob) -> ProbeHandle {
    // Unbounded but small: one message per address that accepted a
    // connection, and workers stop when the receiver is gone.
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    let tried = Arc::new(AtomicUsize::new(0));
    imp::spawn(job, tx, stop.clone(), tried.clone());
    ProbeHandle { rx, stop, tried }
}

/// The soft limit on open files, if known.
pub(crate) fn fd_limit() -> Option<usize> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid, writable rlimit.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            return Some(usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX));
        }
        None
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(unix)]
mod imp {
    use super::*;
    use crate::probe::{check_reply, encode_probe, MAX_REPLY_LEN};
    use crate::proof::nonce;
    use bytes::BytesMut;
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    use std::io::{self, Read};
    use std::os::fd::AsRawFd;
    use switchboard_wire::{FrameCodec, NONCE_LEN};
    use tokio_util::codec::Decoder;

    type Tx = mpsc::UnboundedSender<Outcome>;

    pub(super) fn spawn(job: ProbeJob, tx: Tx, stop: Arc<AtomicBool>, tried: Arc<AtomicUsize>) {
        let threads = job.threads.clamp(1, 16).min(job.targets.len().max(1));
        let per_thread = (job.max_inflight / threads).max(1);
        let job = Arc::new(job);
        for idx in 0..threads {
            let job = job.clone();
            let (tx, stop, tried) = (tx.clone(), stop.clone(), tried.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("switchboard-probe-{idx}"))
                .spawn(move || {
                    let mut w = Worker {
                        job: &job,
                        tx,
                        stop: &stop,
                        conns: Vec::new(),
                        max_inflight: per_thread,
                        reuse: true,
                        spare_v4: None,
                        spare_v6: None,
                        prefilter: job.prefilter,
                        bind_v4: None,
                        bind_v6: None,
                    };
                    let n = w.run(idx, threads);
                    tried.fetch_add(n, Ordering::Relaxed);
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a probe thread");
            }
        }
    }

    enum State {
        Connecting,
        Awaiting {
            nonce: [u8; NONCE_LEN],
            buf: BytesMut,
            codec: FrameCodec,
        },
    }

    struct Conn {
        sock: Socket,
        addr: SocketAddr,
        since: Instant,
        state: State,
    }

    enum Connect {
        Open(Socket),
        Refused(Socket),
        Pending(Socket),
        Failed,
    }

    struct Worker<'a> {
        job: &'a ProbeJob,
        tx: Tx,
        stop: &'a AtomicBool,
        conns: Vec<Conn>,
        max_inflight: usize,
        reuse: bool,
        spare_v4: Option<Socket>,
        spare_v6: Option<Socket>,
        /// Skip loopback ports that can be bound (see `nothing_listens`).
        prefilter: bool,
        bind_v4: Option<Socket>,
        bind_v6: Option<Socket>,
    }

    /// The receiver is gone or the job was stopped.
    struct Stopped;

    impl Worker<'_> {
        fn run(&mut self, first: usize, stride: usize) -> usize {
            let targets = &self.job.targets;
            let mut done = 0usize;
            let mut next = first;
            loop {
                if self.stop.load(Ordering::Relaxed) || Instant::now() >= self.job.deadline {
                    break;
                }
                // Start up to 32 connects, then look at what is in flight.
                let mut started = 0;
                while next < targets.len() && self.conns.len() < self.max_inflight && started < 32 {
                    let addr = targets[next];
                    next += stride;
                    done += 1;
                    started += 1;
                    if self.start(addr).is_err() {
                        return done;
                    }
                }
                let more = next < targets.len();
                if !more && self.conns.is_empty() {
                    break;
                }
                if self.conns.is_empty() {
                    continue;
                }
                let block = !more || self.conns.len() >= self.max_inflight;
                if self.poll(block).is_err() {
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

        fn start(&mut self, addr: SocketAddr) -> Result<(), Stopped> {
            if self.nothing_listens(addr) {
                return Ok(());
            }
            let mut fresh_retry = false;
            loop {
                let reused = self.spare(addr).take();
                let was_reused = reused.is_some();
                let sock = match reused {
                    Some(s) => s,
                    None => match new_socket(addr) {
                        Ok(s) => s,
                        Err(e) => return self.out_of_resources(addr, e, &mut fresh_retry),
                    },
                };
                match connect(sock, addr) {
                    Ok(Connect::Open(s)) => return self.send_probe(s, addr, Instant::now()),
                    Ok(Connect::Refused(s)) => {
                        if self.reuse {
                            *self.spare(addr) = Some(s);
                        }
                        return Ok(());
                    }
                    Ok(Connect::Pending(s)) => {
                        self.conns.push(Conn {
                            sock: s,
                            addr,
                            since: Instant::now(),
                            state: State::Connecting,
                        });
                        return Ok(());
                    }
                    Ok(Connect::Failed) => return Ok(()),
                    Err(e) if was_reused && !is_transient(&e) => {
                        // This system does not let a socket connect again
                        // after a refusal: use fresh sockets from now on.
                        self.reuse = false;
                    }
                    Err(e) => return self.out_of_resources(addr, e, &mut fresh_retry),
                }
            }
        }

        /// True if `addr` is a loopback address that nothing can be
        /// listening on, because binding it succeeds (Linux).
        ///
        /// A socket listening on the address, or on the wildcard of a
        /// compatible family, always makes `bind` fail with `EADDRINUSE`,
        /// and so does any other socket holding the port; only then is a
        /// connect (and a probe) needed. A bind is a lookup in the kernel's
        /// port table, far cheaper than the SYN and RST of a refused
        /// connect. Any other outcome (no permission, no such address,
        /// out of sockets) falls back to the connect.
        fn nothing_listens(&mut self, addr: SocketAddr) -> bool {
            if !cfg!(target_os = "linux") || !self.prefilter || !addr.ip().is_loopback() {
                return false;
            }
            let spare = if addr.is_ipv4() {
                &mut self.bind_v4
            } else {
                &mut self.bind_v6
            };
            let sock = match spare.take() {
                Some(s) => s,
                // SO_REUSEADDR: a hub binding the same port at this very
                // moment (hubs set it too) is not disturbed; a listener
                // still conflicts.
                None => match Socket::new(Domain::for_address(addr), Type::STREAM, None)
                    .and_then(|s| s.set_reuse_address(true).map(|()| s))
                {
                    Ok(s) => s,
                    Err(_) => return false,
                },
            };
            match sock.bind(&SockAddr::from(addr)) {
                // Bound: the socket is spent, and the port is free.
                Ok(()) => true,
                Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                    // Still unbound: keep it for the next port.
                    *spare = Some(sock);
                    false
                }
                Err(_) => false,
            }
        }

        /// Out of sockets or local ports: let the connections in flight
        /// finish, then try the address once more; otherwise skip it.
        fn out_of_resources(
            &mut self,
            addr: SocketAddr,
            e: io::Error,
            retried: &mut bool,
        ) -> Result<(), Stopped> {
            if !is_transient(&e) || *retried {
                tracing::debug!(%addr, error = %e, "probe skipped an address");
                return Ok(());
            }
            *retried = true;
            while !self.conns.is_empty() && Instant::now() < self.job.deadline {
                self.poll(true)?;
            }
            let Ok(sock) = new_socket(addr) else {
                return Ok(());
            };
            match connect(sock, addr) {
                Ok(Connect::Open(s)) => self.send_probe(s, addr, Instant::now()),
                Ok(Connect::Pending(s)) => {
                    self.conns.push(Conn {
                        sock: s,
                        addr,
                        since: Instant::now(),
                        state: State::Connecting,
                    });
                    Ok(())
                }
                _ => Ok(()),
            }
        }

        fn report(
            &self,
            addr: SocketAddr,
            r: Result<proto::HubIdentity, ProbeError>,
        ) -> Result<(), Stopped> {
            self.tx.send((addr, r)).map_err(|_| Stopped)
        }

        /// Sends the one probe on a connected socket and waits for the reply.
        fn send_probe(
            &mut self,
            sock: Socket,
            addr: SocketAddr,
            since: Instant,
        ) -> Result<(), Stopped> {
            let n = nonce();
            let wire = match encode_probe(&self.job.service, &n) {
                Ok(w) => w,
                Err(e) => return self.report(addr, Err(e)),
            };
            // A fresh connection's send buffer always has room for 128
            // bytes; anything short of a full write is an error.
            match sock.send(&wire) {
                Ok(k) if k == wire.len() => {}
                Ok(_) => {
                    let source =
                        io::Error::new(io::ErrorKind::WriteZero, "short write of the probe");
                    return self.report(addr, Err(ProbeError::Io { addr, source }));
                }
                Err(source) => {
                    let e = match source.kind() {
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                            ProbeError::Closed { addr }
                        }
                        _ => ProbeError::Io { addr, source },
                    };
                    return self.report(addr, Err(e));
                }
            }
            self.conns.push(Conn {
                sock,
                addr,
                since,
                state: State::Awaiting {
                    nonce: n,
                    buf: BytesMut::new(),
                    codec: FrameCodec::new().max_inbound(MAX_REPLY_LEN),
                },
            });
            Ok(())
        }

        /// Polls the connections in flight (waiting up to 5 ms when
        /// `block`), advances the ready ones and expires the late ones.
        fn poll(&mut self, block: bool) -> Result<(), Stopped> {
            let mut fds: Vec<libc::pollfd> = self
                .conns
                .iter()
                .map(|c| libc::pollfd {
                    fd: c.sock.as_raw_fd(),
                    events: match c.state {
                        State::Connecting => libc::POLLOUT,
                        State::Awaiting { .. } => libc::POLLIN,
                    },
                    revents: 0,
                })
                .collect();
            let wait_ms = if block { 5 } else { 0 };
            // SAFETY: `fds` is a valid, initialised array of `fds.len()`
            // pollfd structures that outlives the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
            let now = Instant::now();
            let timeout = self.job.timeout;
            let late = |c: &Conn| now.duration_since(c.since) >= timeout;
            // Walk backwards so swap_remove keeps the indexes in `fds` valid.
            for i in (0..self.conns.len()).rev() {
                let ready = n > 0 && fds[i].revents != 0;
                let conn = if ready {
                    let conn = self.conns.swap_remove(i);
                    // A reply already here is still taken; a peer that is
                    // still trickling bytes at the timeout is cut off like
                    // a silent one.
                    match self.advance(conn)? {
                        Some(conn) if late(&conn) => conn,
                        Some(conn) => {
                            // Pushed to the end: it is not looked at again
                            // in this pass (indexes below `i` are
                            // unaffected).
                            self.conns.push(conn);
                            continue;
                        }
                        None => continue,
                    }
                } else if late(&self.conns[i]) {
                    self.conns.swap_remove(i)
                } else {
                    continue;
                };
                if let State::Awaiting { .. } = conn.state {
                    self.report(
                        conn.addr,
                        Err(ProbeError::Timeout {
                            addr: conn.addr,
                            after: timeout,
                        }),
                    )?;
                }
            }
            Ok(())
        }

        /// Moves a ready connection on; `Some` if it stays in flight.
        fn advance(&mut self, mut conn: Conn) -> Result<Option<Conn>, Stopped> {
            let addr = conn.addr;
            match &mut conn.state {
                State::Connecting => {
                    let connected =
                        matches!(conn.sock.take_error(), Ok(None)) && conn.sock.peer_addr().is_ok();
                    if connected {
                        // The probe timeout covers connect and reply.
                        self.send_probe(conn.sock, addr, conn.since)?;
                    }
                    Ok(None)
                }
                State::Awaiting { nonce, buf, codec } => {
                    let mut chunk = [0u8; 2048];
                    let n = match (&conn.sock).read(&mut chunk) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(conn)),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Some(conn)),
                        Err(source) => {
                            let e = match source.kind() {
                                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                                    ProbeError::Closed { addr }
                                }
                                _ => ProbeError::Io { addr, source },
                            };
                            self.report(addr, Err(e))?;
                            return Ok(None);
                        }
                    };
                    let wire = |source| ProbeError::Wire { addr, source };
                    let decoded = if n == 0 {
                        match codec.decode_eof(buf) {
                            Ok(Some(f)) => Ok(f),
                            Ok(None) => Err(ProbeError::Closed { addr }),
                            Err(e) => Err(wire(e)),
                        }
                    } else {
                        // At most one bounded frame is ever buffered: the
                        // codec checks the announced length first, and the
                        // connection is dropped as soon as a frame or an
                        // error comes out.
                        buf.extend_from_slice(&chunk[..n]);
                        match codec.decode(buf) {
                            Ok(Some(f)) => Ok(f),
                            Ok(None) if buf.len() <= MAX_REPLY_LEN + 4 => return Ok(Some(conn)),
                            Ok(None) => Err(ProbeError::Closed { addr }),
                            Err(e) => Err(wire(e)),
                        }
                    };
                    let r = decoded.and_then(|frame| {
                        check_reply(frame, addr, &self.job.service, &self.job.secret, nonce)
                    });
                    self.report(addr, r)?;
                    Ok(None)
                }
            }
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

    fn connect(sock: Socket, addr: SocketAddr) -> io::Result<Connect> {
        let sa = SockAddr::from(addr);
        match sock.connect(&sa) {
            Ok(()) => return Ok(Connect::Open(sock)),
            Err(e) => match e.raw_os_error() {
                Some(libc::ECONNREFUSED) => return Ok(Connect::Refused(sock)),
                Some(libc::EINPROGRESS) => {}
                _ => return Err(e),
            },
        }
        // On loopback the answer to the SYN has usually been processed by
        // now; asking again reports it without waiting.
        match sock.connect(&sa) {
            Ok(()) => Ok(Connect::Open(sock)),
            Err(e) => match e.raw_os_error() {
                Some(libc::EISCONN) => Ok(Connect::Open(sock)),
                Some(libc::ECONNREFUSED) => Ok(Connect::Refused(sock)),
                Some(libc::EALREADY | libc::EINPROGRESS) => Ok(Connect::Pending(sock)),
                // Unreachable, reset, ...: nothing to probe at this address.
                _ => Ok(Connect::Failed),
            },
        }
    }
}

#[cfg(not(unix))]
mod imp {
    use super::*;
    use crate::probe::probe_connected;
    use futures::StreamExt;

    type Tx = mpsc::UnboundedSender<Outcome>;

    pub(super) fn spawn(job: ProbeJob, tx: Tx, stop: Arc<AtomicBool>, tried: Arc<AtomicUsize>) {
        tokio::spawn(async move {
            let job = Arc::new(job);
            let targets = job.targets.clone();
            let mut probes = futures::stream::iter(targets.iter().copied())
                .map(|addr| {
                    let job = job.clone();
                    async move {
                        let r = tokio::time::timeout(job.timeout, async {
                            match tokio::net::TcpStream::connect(addr).await {
                                Ok(s) => {
                                    Some(probe_connected(s, addr, &job.service, &job.secret).await)
                                }
                                Err(_) => None,
                            }
                        })
                        .await
                        .unwrap_or(Some(Err(ProbeError::Timeout {
                            addr,
                            after: job.timeout,
                        })));
                        (addr, r)
                    }
                })
                .buffer_unordered(job.max_inflight.max(1));
            let deadline = tokio::time::Instant::from_std(job.deadline);
            let mut n = 0;
            while let Ok(Some((addr, r))) = tokio::time::timeout_at(deadline, probes.next()).await {
                n += 1;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(r) = r {
                    if tx.send((addr, r)).is_err() {
                        break;
                    }
                }
            }
            tried.fetch_add(n, Ordering::Relaxed);
        });
    }
}
