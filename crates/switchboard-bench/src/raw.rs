//! The raw TCP baseline: a length-prefixed (`u32` big-endian) stream and an
//! echo (the framing and the frame limit of the switchboard wire), with the server in a separate process (`switchboard-bench
//! raw-server`), so every figure pays the same cross-process wake-ups a hub
//! does.
//!
//! The first byte of a connection picks the mode: `S` (sink: count frames,
//! and after the client half-closes answer `count: u64, nanos: u64`, the time
//! from the first to the last frame) or `E` (echo every complete frame).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BytesMut};
use switchboard::wire::{DEFAULT_MAX_FRAME, LENGTH_PREFIX_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::workload::{Latencies, Throughput};

/// Serves sink and echo connections on `listener` forever.
pub async fn serve(listener: TcpListener) -> Result<()> {
    loop {
        let (sock, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = serve_one(sock).await {
                eprintln!("raw-server: connection closed: {e}");
            }
        });
    }
}

async fn serve_one(mut sock: TcpStream) -> Result<()> {
    sock.set_nodelay(true)?;
    let mode = sock.read_u8().await?;
    let mut buf = BytesMut::with_capacity(256 << 10);
    match mode {
        b'S' => {
            let mut count = 0u64;
            let (mut first, mut last) = (None, None);
            let mut need: usize = 0; // body bytes of the current frame still to skip
            let mut prefix = [0u8; LENGTH_PREFIX_LEN];
            let mut have_prefix = 0usize;
            loop {
                buf.clear();
                if sock.read_buf(&mut buf).await? == 0 {
                    break;
                }
                let mut data = &buf[..];
                let mut got = false;
                while !data.is_empty() {
                    if need > 0 {
                        let take = need.min(data.len());
                        data = &data[take..];
                        need -= take;
                        if need == 0 {
                            count += 1;
                            got = true;
                        }
                        continue;
                    }
                    let take = (LENGTH_PREFIX_LEN - have_prefix).min(data.len());
                    prefix[have_prefix..have_prefix + take].copy_from_slice(&data[..take]);
                    have_prefix += take;
                    data = &data[take..];
                    if have_prefix == LENGTH_PREFIX_LEN {
                        have_prefix = 0;
                        let len = u32::from_be_bytes(prefix) as usize;
                        if len > DEFAULT_MAX_FRAME {
                            bail!(
                                "frame of {len} bytes exceeds the {DEFAULT_MAX_FRAME}-byte limit"
                            );
                        }
                        if len == 0 {
                            count += 1;
                            got = true;
                        }
                        need = len;
                    }
                }
                if got {
                    let now = Instant::now();
                    first.get_or_insert(now);
                    last = Some(now);
                }
            }
            if need > 0 || have_prefix > 0 {
                bail!("stream ended inside a frame");
            }
            let nanos = match (first, last) {
                (Some(f), Some(l)) => (l - f).as_nanos() as u64,
                _ => 0,
            };
            let mut answer = [0u8; 16];
            answer[..8].copy_from_slice(&count.to_be_bytes());
            answer[8..].copy_from_slice(&nanos.to_be_bytes());
            sock.write_all(&answer).await?;
        }
        b'E' => loop {
            if sock.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
            let mut complete = 0;
            while buf.len() - complete >= LENGTH_PREFIX_LEN {
                let p = &buf[complete..];
                let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
                if len > DEFAULT_MAX_FRAME {
                    bail!("frame of {len} bytes exceeds the {DEFAULT_MAX_FRAME}-byte limit");
                }
                if p.len() < LENGTH_PREFIX_LEN + len {
                    break;
                }
                complete += LENGTH_PREFIX_LEN + len;
            }
            if complete > 0 {
                sock.write_all(&buf[..complete]).await?;
                buf.advance(complete);
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(64 << 10);
            }
        },
        // Not the benchmark: a hub's discovery scan of loopback ports (the
        // failover row's standbys look for their primary) probes this
        // port too. Closed without a word.
        _ => return Ok(()),
    }
    Ok(())
}

fn frame(payload: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(LENGTH_PREFIX_LEN + payload);
    f.extend_from_slice(&(payload as u32).to_be_bytes());
    f.extend((0..payload).map(|i| (i % 251) as u8));
    f
}

/// Streams `count` frames of `payload` bytes; the server counts them.
pub async fn stream(
    addr: std::net::SocketAddr,
    payload: usize,
    count: u64,
    limit: Duration,
) -> Result<Throughput> {
    let mut sock = TcpStream::connect(addr)
        .await
        .context("connecting to raw-server")?;
    sock.set_nodelay(true)?;
    sock.write_all(b"S").await?;
    let one = frame(payload);
    let per_chunk = ((64 << 10) / one.len()).max(1) as u64;
    let chunk: Vec<u8> = one.repeat(per_chunk as usize);
    let run = async {
        let mut left = count;
        while left >= per_chunk {
            sock.write_all(&chunk).await?;
            left -= per_chunk;
        }
        sock.write_all(&chunk[..one.len() * left as usize]).await?;
        sock.shutdown().await?;
        let mut answer = [0u8; 16];
        sock.read_exact(&mut answer).await?;
        Ok::<_, anyhow::Error>(answer)
    };
    let answer = tokio::time::timeout(limit, run)
        .await
        .map_err(|_| anyhow!("raw stream exceeded {limit:?}"))??;
    let delivered = u64::from_be_bytes(answer[..8].try_into()?);
    let nanos = u64::from_be_bytes(answer[8..].try_into()?);
    Ok(Throughput {
        sent: count,
        expected: count,
        delivered,
        secs: nanos as f64 / 1e9,
        reported_drops: 0,
    })
}

/// Echo round trips of 64-byte frames with `window` outstanding.
pub async fn echo(
    addr: std::net::SocketAddr,
    count: u64,
    window: usize,
    limit: Duration,
) -> Result<Latencies> {
    let sock = TcpStream::connect(addr)
        .await
        .context("connecting to raw-server")?;
    sock.set_nodelay(true)?;
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::with_capacity(64 << 10, r);
    w.write_all(b"E").await?;
    let one = frame(64);
    let mut reply = vec![0u8; one.len()];
    // warm-up
    w.write_all(&one).await?;
    r.read_exact(&mut reply).await?;
    let window = window.max(1) as u64;
    let run = async {
        let started = Instant::now();
        let mut outstanding = std::collections::VecDeque::new();
        let mut samples = Vec::with_capacity(count as usize);
        let mut sent = 0u64;
        while sent < count.min(window) {
            outstanding.push_back(Instant::now());
            w.write_all(&one).await?;
            sent += 1;
        }
        let mut batch = Vec::with_capacity(one.len() * window as usize);
        while !outstanding.is_empty() {
            // take every reply that has arrived, then send their successors
            // in one write, as a batching client would
            loop {
                r.read_exact(&mut reply).await?;
                if let Some(t) = outstanding.pop_front() {
                    samples.push(t.elapsed());
                }
                if sent < count {
                    outstanding.push_back(Instant::now());
                    batch.extend_from_slice(&one);
                    sent += 1;
                }
                if r.buffer().len() < one.len() {
                    break;
                }
            }
            if !batch.is_empty() {
                w.write_all(&batch).await?;
                batch.clear();
            }
        }
        if reply != one {
            bail!("echo returned different bytes");
        }
        Ok::<_, anyhow::Error>(Latencies {
            throughput: Throughput {
                sent,
                expected: count,
                delivered: samples.len() as u64,
                secs: started.elapsed().as_secs_f64(),
                reported_drops: 0,
            },
            samples,
        })
    };
    tokio::time::timeout(limit, run)
        .await
        .map_err(|_| anyhow!("raw echo exceeded {limit:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn server() -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l));
        addr
    }

    #[tokio::test]
    async fn sink_counts_every_frame_across_partial_reads() {
        let addr = server().await;
        for (payload, count) in [(0, 10), (64, 10_001), (1000, 777), (70_000, 5)] {
            let t = stream(addr, payload, count, Duration::from_secs(20))
                .await
                .unwrap();
            assert_eq!(t.delivered, count, "payload {payload}");
        }
    }

    #[tokio::test]
    async fn echo_answers_every_request_in_order() {
        let addr = server().await;
        let l = echo(addr, 500, 16, Duration::from_secs(20)).await.unwrap();
        assert_eq!(l.samples.len(), 500);
        assert_eq!(l.throughput.delivered, 500);
    }

    #[tokio::test]
    async fn oversized_frames_close_only_that_connection() {
        let addr = server().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"E").await.unwrap();
        s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)));
        let l = echo(addr, 10, 1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(l.samples.len(), 10);
    }
}
