//! Client drivers for each system behind two small traits, so every workload
//! runs the same code against every system.
//!
//! Each subscriber and each publisher uses its own connection.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use tokio::task::JoinHandle;

/// Aborts the wrapped task when dropped.
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Publish/subscribe operations of one system.
pub trait Driver: Clone + Send + Sync + 'static {
    /// A subscription with its own connection.
    type Sub: Send + 'static;
    /// A publishing connection.
    type Pub: Send + 'static;

    /// Subscribes to `topic` on a new connection; returns once the server has
    /// confirmed the subscription. `expected` is how many messages will come.
    fn subscribe(
        &self,
        topic: String,
        expected: u64,
    ) -> impl Future<Output = Result<Self::Sub>> + Send;

    /// The next message payload; `None` when the connection has ended.
    fn next(sub: &mut Self::Sub) -> impl Future<Output = Result<Option<Bytes>>> + Send;

    /// Messages the client knows were dropped for this subscription
    /// (by the server's slow-consumer policy or a full client buffer).
    fn dropped(_sub: &Self::Sub) -> u64 {
        0
    }

    /// A new publishing connection.
    fn publisher(&self) -> impl Future<Output = Result<Self::Pub>> + Send;

    /// Publishes `payload` `count` times to `topic` as fast as the client allows.
    fn publish_many(
        p: &mut Self::Pub,
        topic: &str,
        payload: Bytes,
        count: u64,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Publishes one message and makes sure it is on its way (flushed).
    fn publish_one(
        p: &mut Self::Pub,
        topic: &str,
        payload: Bytes,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Publishes each payload of `batch` to `topic`, in order, and makes
    /// sure they are on their way (the open-loop rows' catch-up bursts).
    fn publish_batch(
        p: &mut Self::Pub,
        topic: &str,
        batch: Vec<Bytes>,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            for b in batch {
                Self::publish_one(p, topic, b).await?;
            }
            Ok(())
        }
    }
}

/// Native request/reply of one system.
pub trait ReqRep: Clone + Send + Sync + 'static {
    /// Keeps the responder running; dropping it stops the responder.
    type Responder: Send + 'static;
    /// A requesting connection; clones share it.
    type Requester: Clone + Send + Sync + 'static;

    /// Starts a responder that echoes every request on `service`; returns once
    /// it is ready to answer.
    fn responder(&self, service: String) -> impl Future<Output = Result<Self::Responder>> + Send;

    /// A new requesting connection.
    fn requester(&self) -> impl Future<Output = Result<Self::Requester>> + Send;

    /// One request, waiting for its reply.
    fn request(
        r: &Self::Requester,
        service: &str,
        payload: Bytes,
    ) -> impl Future<Output = Result<Bytes>> + Send;
}

/// Timeout for establishing a connection or a subscription.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

async fn bounded<T>(what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(SETUP_TIMEOUT, f)
        .await
        .map_err(|_| anyhow!("{what} took longer than {SETUP_TIMEOUT:?}"))?
}

// ---------------------------------------------------------------- NATS

/// nats-server through `async-nats`.
#[derive(Clone)]
pub struct Nats {
    url: String,
}

impl Nats {
    /// A driver for the server at `addr`.
    pub fn new(addr: std::net::SocketAddr) -> Nats {
        Nats {
            url: format!("nats://{addr}"),
        }
    }

    pub(crate) async fn connect(&self, sub_capacity: usize) -> Result<async_nats::Client> {
        let opts = async_nats::ConnectOptions::new()
            // the default (64Ki messages) silently drops at full speed
            .subscription_capacity(sub_capacity.max(1024))
            .client_capacity(65_536)
            .request_timeout(Some(Duration::from_secs(10)));
        bounded("connecting to nats-server", async {
            opts.connect(&self.url).await.map_err(anyhow::Error::from)
        })
        .await
    }
}

impl Driver for Nats {
    type Sub = (async_nats::Client, async_nats::Subscriber);
    type Pub = async_nats::Client;

    async fn subscribe(&self, topic: String, expected: u64) -> Result<Self::Sub> {
        let cap = usize::try_from(expected.saturating_add(1024))
            .unwrap_or(usize::MAX)
            .min(1 << 22);
        let client = self.connect(cap).await?;
        let sub = client.subscribe(topic).await?;
        bounded("flushing the nats subscription", async {
            client.flush().await.map_err(anyhow::Error::from)
        })
        .await?;
        Ok((client, sub))
    }

    async fn next(sub: &mut Self::Sub) -> Result<Option<Bytes>> {
        Ok(sub.1.next().await.map(|m| m.payload))
    }

    async fn publisher(&self) -> Result<Self::Pub> {
        self.connect(1024).await
    }

    async fn publish_many(
        p: &mut Self::Pub,
        topic: &str,
        payload: Bytes,
        count: u64,
    ) -> Result<()> {
        let subject = async_nats::Subject::from(topic);
        for _ in 0..count {
            p.publish(subject.clone(), payload.clone()).await?;
        }
        p.flush().await?;
        Ok(())
    }

    async fn publish_one(p: &mut Self::Pub, topic: &str, payload: Bytes) -> Result<()> {
        p.publish(async_nats::Subject::from(topic), payload).await?;
        p.flush().await?;
        Ok(())
    }

    async fn publish_batch(p: &mut Self::Pub, topic: &str, batch: Vec<Bytes>) -> Result<()> {
        let subject = async_nats::Subject::from(topic);
        for b in batch {
            p.publish(subject.clone(), b).await?;
        }
        p.flush().await?;
        Ok(())
    }
}

impl ReqRep for Nats {
    type Responder = (async_nats::Client, AbortOnDrop);
    type Requester = async_nats::Client;

    async fn responder(&self, service: String) -> Result<Self::Responder> {
        let client = self.connect(65_536).await?;
        let mut sub = client.subscribe(service).await?;
        client.flush().await?;
        let c = client.clone();
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if let Some(reply) = msg.reply {
                    if c.publish(reply, msg.payload).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok((client, AbortOnDrop(task)))
    }

    async fn requester(&self) -> Result<Self::Requester> {
        self.connect(1024).await
    }

    async fn request(r: &Self::Requester, service: &str, payload: Bytes) -> Result<Bytes> {
        let msg = r.request(service.to_string(), payload).await?;
        Ok(msg.payload)
    }
}

// ---------------------------------------------------------------- MQTT

/// mosquitto through `rumqttc`, QoS 0.
#[derive(Clone)]
pub struct Mqtt {
    host: String,
    port: u16,
    ids: Arc<AtomicU64>,
}

impl Mqtt {
    /// A driver for the broker at `addr`.
    pub fn new(addr: std::net::SocketAddr) -> Mqtt {
        Mqtt {
            host: addr.ip().to_string(),
            port: addr.port(),
            ids: Arc::new(AtomicU64::new(0)),
        }
    }

    fn client(&self) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
        let id = format!(
            "bench-{}-{}",
            std::process::id(),
            self.ids.fetch_add(1, Ordering::Relaxed)
        );
        let mut opts = rumqttc::MqttOptions::new(id, self.host.clone(), self.port);
        opts.set_keep_alive(Duration::from_secs(60));
        opts.set_clean_session(true);
        opts.set_max_packet_size(2 << 20, 2 << 20);
        let (client, mut el) = rumqttc::AsyncClient::new(opts, 4096);
        // like the other clients: no Nagle delay on small messages
        el.network_options.set_tcp_nodelay(true);
        (client, el)
    }
}

/// Polls `el` until `want` matches an incoming packet.
async fn mqtt_wait(
    el: &mut rumqttc::EventLoop,
    what: &str,
    want: impl Fn(&rumqttc::Packet) -> bool,
) -> Result<()> {
    bounded(what, async {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(p)) if want(&p) => return Ok(()),
                Ok(_) => {}
                Err(e) => bail!("{what}: {e}"),
            }
        }
    })
    .await
}

impl Driver for Mqtt {
    type Sub = (rumqttc::AsyncClient, rumqttc::EventLoop);
    type Pub = (rumqttc::AsyncClient, AbortOnDrop);

    async fn subscribe(&self, topic: String, _expected: u64) -> Result<Self::Sub> {
        let (client, mut el) = self.client();
        client
            .subscribe(topic, rumqttc::QoS::AtMostOnce)
            .await
            .context("queueing the mqtt subscription")?;
        mqtt_wait(&mut el, "waiting for the mqtt SUBACK", |p| {
            matches!(p, rumqttc::Packet::SubAck(_))
        })
        .await?;
        Ok((client, el))
    }

    async fn next(sub: &mut Self::Sub) -> Result<Option<Bytes>> {
        loop {
            match sub.1.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    return Ok(Some(p.payload))
                }
                Ok(_) => {}
                Err(e) => return Err(anyhow!("mqtt subscriber: {e}")),
            }
        }
    }

    async fn publisher(&self) -> Result<Self::Pub> {
        let (client, mut el) = self.client();
        mqtt_wait(&mut el, "waiting for the mqtt CONNACK", |p| {
            matches!(p, rumqttc::Packet::ConnAck(_))
        })
        .await?;
        let task = tokio::spawn(async move { while el.poll().await.is_ok() {} });
        Ok((client, AbortOnDrop(task)))
    }

    async fn publish_many(
        p: &mut Self::Pub,
        topic: &str,
        payload: Bytes,
        count: u64,
    ) -> Result<()> {
        for _ in 0..count {
            p.0.publish_bytes(topic, rumqttc::QoS::AtMostOnce, false, payload.clone())
                .await?;
        }
        Ok(())
    }

    async fn publish_one(p: &mut Self::Pub, topic: &str, payload: Bytes) -> Result<()> {
        p.0.publish_bytes(topic, rumqttc::QoS::AtMostOnce, false, payload)
            .await?;
        Ok(())
    }
}

// ---------------------------------------------------------------- Redis

/// redis-server pub/sub through the `redis` crate.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
}

/// PUBLISH commands per pipeline in [`Driver::publish_many`].
const REDIS_PIPELINE: u64 = 1000;

impl Redis {
    /// A driver for the server at `addr`.
    pub fn new(addr: std::net::SocketAddr) -> Result<Redis> {
        use redis::IntoConnectionInfo;
        let info = format!("redis://{addr}/")
            .into_connection_info()?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)?;
        Ok(Redis { client })
    }
}

impl Driver for Redis {
    type Sub = redis::aio::PubSubStream;
    type Pub = redis::aio::MultiplexedConnection;

    async fn subscribe(&self, topic: String, _expected: u64) -> Result<Self::Sub> {
        bounded("subscribing on redis", async {
            let mut ps = self.client.get_async_pubsub().await?;
            ps.subscribe(&topic).await?;
            Ok(ps.into_on_message())
        })
        .await
    }

    async fn next(sub: &mut Self::Sub) -> Result<Option<Bytes>> {
        Ok(sub
            .next()
            .await
            .map(|m| Bytes::copy_from_slice(m.get_payload_bytes())))
    }

    async fn publisher(&self) -> Result<Self::Pub> {
        let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        bounded("connecting to redis", async {
            Ok(self
                .client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await?)
        })
        .await
    }

    async fn publish_many(
        p: &mut Self::Pub,
        topic: &str,
        payload: Bytes,
        count: u64,
    ) -> Result<()> {
        let mut left = count;
        while left > 0 {
            let n = left.min(REDIS_PIPELINE);
            let mut pipe = redis::pipe();
            for _ in 0..n {
                pipe.cmd("PUBLISH").arg(topic).arg(&payload[..]).ignore();
            }
            pipe.query_async::<()>(p).await?;
            left -= n;
        }
        Ok(())
    }

    async fn publish_one(p: &mut Self::Pub, topic: &str, payload: Bytes) -> Result<()> {
        redis::cmd("PUBLISH")
            .arg(topic)
            .arg(&payload[..])
            .query_async::<i64>(p)
            .await?;
        Ok(())
    }
}

// ---------------------------------------------------------------- switchboard

/// A switchboard hub through the `switchboard` client.
#[derive(Clone)]
pub struct Switchboard {
    addr: String,
    token: String,
    ids: Arc<AtomicU64>,
    /// Reliable delivery (the client's default): every frame numbered and
    /// kept until acknowledged, both ways. Off: at most once, like the
    /// peers.
    reliable: bool,
}

impl Switchboard {
    /// A driver for the hub at `addr`, authenticating with `token`.
    pub fn new(addr: std::net::SocketAddr, token: &str) -> Switchboard {
        Switchboard {
            addr: addr.to_string(),
            token: token.to_string(),
            ids: Arc::new(AtomicU64::new(0)),
            reliable: true,
        }
    }

    /// A driver for another hub at `addr` that shares this one's id
    /// counter (federated hubs: ids are unique cluster-wide).
    pub fn at(&self, addr: std::net::SocketAddr) -> Switchboard {
        Switchboard {
            addr: addr.to_string(),
            ..self.clone()
        }
    }

    /// The same hub with clients that do not ask for reliable delivery.
    pub fn at_most_once(mut self) -> Switchboard {
        self.reliable = false;
        self
    }

    /// Whether clients ask for reliable delivery.
    pub fn is_reliable(&self) -> bool {
        self.reliable
    }

    /// A new client id unique within this run.
    pub fn fresh_id(&self, role: &str) -> String {
        format!(
            "bench-{role}-{}-{}",
            std::process::id(),
            self.ids.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Connects a client named `id` whose incoming streams hold `capacity` items.
    pub async fn connect_as(&self, id: &str, capacity: usize) -> Result<switchboard::Client> {
        let b = switchboard::Client::builder(id)
            .addr(&self.addr)
            .token(&self.token)
            .reconnect(false)
            .reliable(self.reliable)
            .stream_capacity(capacity)
            .request_timeout(Duration::from_secs(10))
            .connect_timeout(SETUP_TIMEOUT);
        bounded("connecting to the switchboard hub", async {
            b.connect().await.map_err(anyhow::Error::from)
        })
        .await
    }
}

impl Driver for Switchboard {
    type Sub = (switchboard::Client, switchboard::Subscription);
    type Pub = switchboard::Client;

    async fn subscribe(&self, topic: String, expected: u64) -> Result<Self::Sub> {
        // the default stream capacity drops at full speed, like async-nats
        let cap = usize::try_from(expected.saturating_add(1024))
            .unwrap_or(usize::MAX)
            .min(1 << 22);
        let client = self.connect_as(&self.fresh_id("sub"), cap).await?;
        let sub = bounded("subscribing on the switchboard hub", async {
            client.subscribe(&topic).await.map_err(anyhow::Error::from)
        })
        .await?;
        Ok((client, sub))
    }

    async fn next(sub: &mut Self::Sub) -> Result<Option<Bytes>> {
        Ok(sub.1.recv().await.map(|m| m.payload))
    }

    fn dropped(sub: &Self::Sub) -> u64 {
        sub.0.dropped()
    }

    async fn publisher(&self) -> Result<Self::Pub> {
        self.connect_as(&self.fresh_id("pub"), 1024).await
    }

    async fn publish_many(
        p: &mut Self::Pub,
        topic: &str,
        payload: Bytes,
        count: u64,
    ) -> Result<()> {
        for _ in 0..count {
            p.publish_nowait(topic, payload.clone()).await?;
        }
        Ok(())
    }

    async fn publish_one(p: &mut Self::Pub, topic: &str, payload: Bytes) -> Result<()> {
        p.publish_nowait(topic, payload).await?;
        Ok(())
    }

    async fn publish_batch(p: &mut Self::Pub, topic: &str, batch: Vec<Bytes>) -> Result<()> {
        for b in batch {
            p.publish_nowait(topic, b).await?;
        }
        Ok(())
    }
}

impl ReqRep for Switchboard {
    type Responder = (switchboard::Client, AbortOnDrop);
    type Requester = switchboard::Client;

    async fn responder(&self, service: String) -> Result<Self::Responder> {
        let client = self.connect_as(&service, 65_536).await?;
        let mut requests = client.requests().await?;
        let task = tokio::spawn(async move {
            while let Some(req) = requests.recv().await {
                let payload = req.payload().clone();
                if req.reply(payload).await.is_err() {
                    return;
                }
            }
        });
        Ok((client, AbortOnDrop(task)))
    }

    async fn requester(&self) -> Result<Self::Requester> {
        self.connect_as(&self.fresh_id("req"), 1024).await
    }

    async fn request(r: &Self::Requester, service: &str, payload: Bytes) -> Result<Bytes> {
        Ok(r.request(service, payload).await?)
    }
}
