//! The zero-logic relay: the floor a hub is measured against. A separate
//! process (`switchboard-bench relay-server`) that reads length-prefixed
//! frames (`u32` big-endian, the switchboard wire's framing and frame
//! limit) and writes each to every subscriber of the connection's channel,
//! with no routing, no parsing beyond the length prefix, no
//! acknowledgements and no per-message state: every readable burst of
//! complete frames is forwarded as one buffer, and each subscriber's
//! writer drains everything queued for it in one write.
//!
//! A connection opens with `C`, then two `u16`-length-prefixed names: the
//! channel it subscribes to (empty: none) and the channel its frames go
//! to (empty: nowhere). The relay answers `K` once the subscription is in
//! place. Request/reply is two channels: the requester publishes on
//! `S.req` and subscribes to `S.rep`, the responder the other way round,
//! so a request goes requester → relay → responder → relay → requester.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use switchboard::wire::{DEFAULT_MAX_FRAME, LENGTH_PREFIX_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::drivers::{AbortOnDrop, Driver, ReqRep};

type Subscribers = Arc<Mutex<HashMap<String, Vec<(u64, mpsc::UnboundedSender<Bytes>)>>>>;

/// Serves relay connections on `listener` forever.
pub async fn serve(listener: TcpListener) -> Result<()> {
    let subs: Subscribers = Arc::default();
    let ids = Arc::new(AtomicU64::new(0));
    loop {
        let (sock, _) = listener.accept().await?;
        let (subs, id) = (subs.clone(), ids.fetch_add(1, Ordering::Relaxed));
        tokio::spawn(async move {
            let _ = serve_one(sock, subs, id).await;
        });
    }
}

async fn read_name(sock: &mut TcpStream) -> Result<String> {
    let len = sock.read_u16().await? as usize;
    let mut name = vec![0u8; len];
    sock.read_exact(&mut name).await?;
    Ok(String::from_utf8(name)?)
}

/// Length of the complete frames at the start of `buf`.
fn complete_frames(buf: &[u8]) -> Result<usize> {
    let mut at = 0;
    while buf.len() - at >= LENGTH_PREFIX_LEN {
        let p = &buf[at..];
        let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        if len > DEFAULT_MAX_FRAME {
            bail!("frame of {len} bytes exceeds the {DEFAULT_MAX_FRAME}-byte limit");
        }
        if p.len() < LENGTH_PREFIX_LEN + len {
            break;
        }
        at += LENGTH_PREFIX_LEN + len;
    }
    Ok(at)
}

async fn serve_one(mut sock: TcpStream, subs: Subscribers, id: u64) -> Result<()> {
    sock.set_nodelay(true)?;
    if sock.read_u8().await? != b'C' {
        // a discovery probe or a stray client: closed without a word
        return Ok(());
    }
    let sub = read_name(&mut sock).await?;
    let publish = read_name(&mut sock).await?;
    let rx = (!sub.is_empty()).then(|| {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        subs.lock()
            .expect("relay table")
            .entry(sub.clone())
            .or_default()
            .push((id, tx));
        rx
    });
    // the subscription is in place: tell the client (frames queued
    // meanwhile follow this byte)
    sock.write_all(b"K").await?;
    let (mut r, mut w) = sock.into_split();
    let _writer = rx.map(|mut rx| {
        AbortOnDrop(tokio::spawn(async move {
            let mut out = BytesMut::with_capacity(256 << 10);
            while let Some(first) = rx.recv().await {
                // everything queued so far goes out in one write
                let mut one = Some(first);
                while let Ok(more) = rx.try_recv() {
                    if let Some(b) = one.take() {
                        out.extend_from_slice(&b);
                    }
                    out.extend_from_slice(&more);
                }
                let res = match one {
                    Some(b) => w.write_all(&b).await,
                    None => {
                        let r = w.write_all(&out).await;
                        out.clear();
                        r
                    }
                };
                if res.is_err() {
                    return;
                }
            }
        }))
    });
    let mut buf = BytesMut::with_capacity(256 << 10);
    let result = async {
        loop {
            if r.read_buf(&mut buf).await? == 0 {
                return Ok::<_, anyhow::Error>(());
            }
            let n = complete_frames(&buf)?;
            if n > 0 {
                let burst = buf.split_to(n).freeze();
                if !publish.is_empty() {
                    let table = subs.lock().expect("relay table");
                    if let Some(list) = table.get(&publish) {
                        for (_, tx) in list {
                            let _ = tx.send(burst.clone());
                        }
                    }
                }
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(256 << 10);
            }
        }
    }
    .await;
    if !sub.is_empty() {
        let mut table = subs.lock().expect("relay table");
        if let Some(list) = table.get_mut(&sub) {
            list.retain(|(i, _)| *i != id);
        }
    }
    result
}

// ---------------------------------------------------------------- clients

/// Clients of the relay at one address.
#[derive(Clone)]
pub struct Relay {
    addr: SocketAddr,
}

impl Relay {
    /// A driver for the relay at `addr`.
    pub fn new(addr: SocketAddr) -> Relay {
        Relay { addr }
    }

    /// A connection subscribed to `sub` whose frames go to `publish`.
    async fn connect(&self, sub: &str, publish: &str) -> Result<(OwnedReadHalf, OwnedWriteHalf)> {
        let mut sock = TcpStream::connect(self.addr)
            .await
            .context("connecting to relay-server")?;
        sock.set_nodelay(true)?;
        let mut hello = vec![b'C'];
        for name in [sub, publish] {
            hello.put_u16(name.len() as u16);
            hello.extend_from_slice(name.as_bytes());
        }
        sock.write_all(&hello).await?;
        let ok = tokio::time::timeout(std::time::Duration::from_secs(10), sock.read_u8())
            .await
            .map_err(|_| anyhow!("relay-server did not confirm the connection"))??;
        if ok != b'K' {
            bail!("relay-server answered {ok:#x}");
        }
        Ok(sock.into_split())
    }
}

/// Appends one frame of `payload` to `out`.
fn put_frame(out: &mut BytesMut, payload: &[u8]) {
    out.put_u32(payload.len() as u32);
    out.extend_from_slice(payload);
}

/// A subscribed connection and its read buffer.
pub struct RelaySub {
    r: OwnedReadHalf,
    _w: OwnedWriteHalf,
    buf: BytesMut,
}

impl RelaySub {
    async fn next_frame(&mut self) -> Result<Option<Bytes>> {
        loop {
            if self.buf.len() >= LENGTH_PREFIX_LEN {
                let len = u32::from_be_bytes(self.buf[..4].try_into()?) as usize;
                if self.buf.len() >= LENGTH_PREFIX_LEN + len {
                    self.buf.advance(LENGTH_PREFIX_LEN);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(256 << 10);
            }
            if self.r.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// A publishing connection, opened on the first publish (the relay binds
/// a connection to one channel).
pub struct RelayPub {
    relay: Relay,
    conn: Option<(String, OwnedReadHalf, OwnedWriteHalf)>,
    out: BytesMut,
}

impl RelayPub {
    async fn writer(&mut self, topic: &str) -> Result<&mut OwnedWriteHalf> {
        if self.conn.as_ref().is_none_or(|(t, _, _)| t != topic) {
            let (r, w) = self.relay.connect("", topic).await?;
            self.conn = Some((topic.to_string(), r, w));
        }
        Ok(&mut self.conn.as_mut().expect("connected above").2)
    }

    /// Writes every payload of `batch` to `topic` in one write.
    pub async fn publish_batch(&mut self, topic: &str, batch: &[Bytes]) -> Result<()> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        for p in batch {
            put_frame(&mut out, p);
        }
        let r = self.writer(topic).await?.write_all(&out).await;
        self.out = out;
        Ok(r?)
    }
}

impl Driver for Relay {
    type Sub = RelaySub;
    type Pub = RelayPub;

    async fn subscribe(&self, topic: String, _expected: u64) -> Result<Self::Sub> {
        let (r, w) = self.connect(&topic, "").await?;
        Ok(RelaySub {
            r,
            _w: w,
            buf: BytesMut::with_capacity(256 << 10),
        })
    }

    async fn next(sub: &mut Self::Sub) -> Result<Option<Bytes>> {
        sub.next_frame().await
    }

    async fn publisher(&self) -> Result<Self::Pub> {
        Ok(RelayPub {
            relay: self.clone(),
            conn: None,
            out: BytesMut::new(),
        })
    }

    async fn publish_many(
        p: &mut Self::Pub,
        topic: &str,
        payload: Bytes,
        count: u64,
    ) -> Result<()> {
        let mut out = std::mem::take(&mut p.out);
        out.clear();
        for _ in 0..count {
            put_frame(&mut out, &payload);
        }
        let r = p.writer(topic).await?.write_all(&out).await;
        p.out = out;
        Ok(r?)
    }

    async fn publish_one(p: &mut Self::Pub, topic: &str, payload: Bytes) -> Result<()> {
        Self::publish_many(p, topic, payload, 1).await
    }

    async fn publish_batch(p: &mut Self::Pub, topic: &str, batch: Vec<Bytes>) -> Result<()> {
        p.publish_batch(topic, &batch).await
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>>;

/// One requesting connection: a writer task that sends everything queued
/// in one write, a reader task that matches replies by the request id in
/// the first 8 payload bytes.
pub struct RelayConn {
    tx: mpsc::UnboundedSender<Bytes>,
    pending: Pending,
    ids: AtomicU64,
    _tasks: (AbortOnDrop, AbortOnDrop),
}

/// A requester; clones share one connection, opened on the first request.
#[derive(Clone)]
pub struct RelayRequester {
    relay: Relay,
    conn: Arc<tokio::sync::OnceCell<RelayConn>>,
}

impl RelayRequester {
    async fn open(&self, service: &str) -> Result<RelayConn> {
        let (mut r, mut w) = self
            .relay
            .connect(&format!("{service}.rep"), &format!("{service}.req"))
            .await?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let writer = tokio::spawn(async move {
            let mut out = BytesMut::with_capacity(64 << 10);
            while let Some(first) = rx.recv().await {
                out.clear();
                out.extend_from_slice(&first);
                while let Ok(more) = rx.try_recv() {
                    out.extend_from_slice(&more);
                }
                if w.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
        let pending: Pending = Arc::default();
        let p = pending.clone();
        let reader = tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 << 10);
            while matches!(r.read_buf(&mut buf).await, Ok(n) if n > 0) {
                while buf.len() >= LENGTH_PREFIX_LEN {
                    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    if buf.len() < LENGTH_PREFIX_LEN + len {
                        break;
                    }
                    buf.advance(LENGTH_PREFIX_LEN);
                    let body = buf.split_to(len).freeze();
                    if body.len() >= 8 {
                        let id = u64::from_be_bytes(body[..8].try_into().unwrap_or_default());
                        if let Some(tx) = p.lock().expect("pending").remove(&id) {
                            let _ = tx.send(body);
                        }
                    }
                }
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(64 << 10);
                }
            }
            // the connection ended: every waiting request fails
            p.lock().expect("pending").clear();
        });
        Ok(RelayConn {
            tx,
            pending,
            ids: AtomicU64::new(0),
            _tasks: (AbortOnDrop(writer), AbortOnDrop(reader)),
        })
    }
}

impl ReqRep for Relay {
    type Responder = AbortOnDrop;
    type Requester = RelayRequester;

    async fn responder(&self, service: String) -> Result<Self::Responder> {
        let (mut r, mut w) = self
            .connect(&format!("{service}.req"), &format!("{service}.rep"))
            .await?;
        // the application: echo every burst of complete requests in one write
        Ok(AbortOnDrop(tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 << 10);
            while matches!(r.read_buf(&mut buf).await, Ok(n) if n > 0) {
                let Ok(n) = complete_frames(&buf) else { return };
                if n > 0 && w.write_all(&buf.split_to(n)).await.is_err() {
                    return;
                }
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(64 << 10);
                }
            }
        })))
    }

    async fn requester(&self) -> Result<Self::Requester> {
        Ok(RelayRequester {
            relay: self.clone(),
            conn: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    async fn request(r: &Self::Requester, service: &str, payload: Bytes) -> Result<Bytes> {
        if payload.len() < 8 {
            bail!(
                "relay requests carry an 8-byte id: payload of {} bytes",
                payload.len()
            );
        }
        let conn = r.conn.get_or_try_init(|| r.open(service)).await?;
        let id = conn.ids.fetch_add(1, Ordering::Relaxed);
        let mut frame = BytesMut::with_capacity(LENGTH_PREFIX_LEN + payload.len());
        frame.put_u32(payload.len() as u32);
        frame.put_u64(id);
        frame.extend_from_slice(&payload[8..]);
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().expect("pending").insert(id, tx);
        conn.tx
            .send(frame.freeze())
            .map_err(|_| anyhow!("relay requester connection closed"))?;
        rx.await
            .map_err(|_| anyhow!("relay connection ended before the reply"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{pubsub, reqrep_native, Limits, PubSubSpec};
    use std::time::Duration;

    async fn relay() -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l));
        Relay::new(addr)
    }

    fn limits() -> Limits {
        Limits {
            first: Duration::from_secs(5),
            idle: Duration::from_secs(2),
            total: Duration::from_secs(20),
        }
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_frame_in_order() {
        let d = relay().await;
        let mut a = d.subscribe("t".into(), 0).await.unwrap();
        let mut b = d.subscribe("t".into(), 0).await.unwrap();
        let mut other = d.subscribe("u".into(), 0).await.unwrap();
        let mut p = d.publisher().await.unwrap();
        let batch: Vec<Bytes> = (0..1000u32)
            .map(|i| Bytes::from(i.to_be_bytes().to_vec()))
            .collect();
        p.publish_batch("t", &batch).await.unwrap();
        for sub in [&mut a, &mut b] {
            for i in 0..1000u32 {
                let m = Relay::next(sub).await.unwrap().unwrap();
                assert_eq!(&m[..], &i.to_be_bytes());
            }
        }
        let nothing = tokio::time::timeout(Duration::from_millis(100), Relay::next(&mut other));
        assert!(nothing.await.is_err(), "another channel got a frame");
    }

    #[tokio::test]
    async fn pubsub_and_fan_out_workloads_lose_nothing() {
        let d = relay().await;
        for (subs, per_pub, payload) in [(1, 20_000, 64), (10, 2_000, 64), (1, 50, 70_000)] {
            let spec = PubSubSpec {
                pubs: 1,
                subs_per_topic: subs,
                payload,
                per_pub,
            };
            let t = pubsub(&d, spec, &format!("f{subs}"), limits())
                .await
                .unwrap();
            assert_eq!(t.delivered, spec.expected(), "{subs} subscribers");
        }
    }

    #[tokio::test]
    async fn request_reply_matches_replies_with_many_in_flight() {
        let d = relay().await;
        let l = reqrep_native(&d, 2_000, 16, "rr", limits()).await.unwrap();
        assert_eq!(l.samples.len(), 2_000);
    }

    #[tokio::test]
    async fn oversized_frames_close_only_that_connection() {
        let d = relay().await;
        let mut s = TcpStream::connect(d.addr).await.unwrap();
        s.write_all(b"C\0\0\0\x01x").await.unwrap();
        assert_eq!(s.read_u8().await.unwrap(), b'K');
        s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)));
        let l = reqrep_native(&d, 10, 1, "after", limits()).await.unwrap();
        assert_eq!(l.samples.len(), 10);
    }
}
