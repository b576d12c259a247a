//! The byte streams a client speaks its frames over: TCP, an in-process
//! pipe to an in-memory hub, or a WebSocket (one frame per binary message,
//! bridged to the length-prefixed stream the rest of the client reads).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use switchboard_discovery::tls::ClientTls;

use crate::ClientError;

/// Reading half of a connection.
pub(crate) type Rd = Box<dyn AsyncRead + Send + Unpin>;
/// Writing half of a connection.
pub(crate) type Wr = Box<dyn AsyncWrite + Send + Unpin>;

/// An opened connection: its halves and the address to report.
pub(crate) type Opened = (Rd, Wr, SocketAddr);

type DialFuture = Pin<Box<dyn Future<Output = Result<Opened, ClientError>> + Send>>;

/// Opens connections to a hub that is not reached by a TCP address.
#[derive(Clone)]
pub(crate) struct Dialer {
    what: &'static str,
    /// The largest frame the transport carries, when it has its own limit.
    max_frame: Option<usize>,
    dial: Arc<dyn Fn(Option<ClientTls>) -> DialFuture + Send + Sync>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer").field("what", &self.what).finish()
    }
}

impl Dialer {
    /// The largest frame the transport carries, when it has its own limit
    /// (the connection then never sends more, whatever the hub allows).
    pub fn max_frame(&self) -> Option<usize> {
        self.max_frame
    }

    /// The transport's name for logs: `memory` or `websocket`.
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// Opens one connection (with `tls` where the transport uses it).
    pub async fn dial(&self, tls: Option<&ClientTls>) -> Result<Opened, ClientError> {
        (self.dial)(tls.cloned()).await
    }

    /// Connections to an in-memory hub through `connect`.
    #[cfg(feature = "hub")]
    pub fn memory(connector: switchboard_hub::MemoryConnector) -> Dialer {
        Dialer {
            what: "memory",
            max_frame: None,
            dial: Arc::new(move |_| {
                let connector = connector.clone();
                Box::pin(async move {
                    let stream = connector.connect().map_err(|e| ClientError::Connect {
                        addr: "in-memory hub".to_string(),
                        source: std::io::Error::new(std::io::ErrorKind::NotConnected, e),
                    })?;
                    let (r, w) = tokio::io::split(stream);
                    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
                    Ok((Box::new(r) as Rd, Box::new(w) as Wr, addr))
                })
            }),
        }
    }

    /// Connections to the WebSocket endpoint `url` (`ws://host:port/v1/ws`,
    /// or `wss://` with the client's TLS setting).
    #[cfg(feature = "websocket")]
    pub fn websocket(url: String) -> Dialer {
        Dialer {
            what: "websocket",
            max_frame: Some(switchboard_wire::DEFAULT_MAX_FRAME),
            dial: Arc::new(move |tls| Box::pin(ws::open(url.clone(), tls))),
        }
    }
}

/// Opens a TCP connection to `addr`.
pub(crate) async fn tcp(addr: SocketAddr) -> Result<Opened, ClientError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    Ok((Box::new(r), Box::new(w), addr))
}

/// Opens a TLS connection to `addr`, checking the certificate against
/// `host` (or the configured server name, or the IP address).
pub(crate) async fn tls(
    addr: SocketAddr,
    tls: &switchboard_discovery::tls::ClientTls,
    host: Option<&str>,
) -> Result<Opened, ClientError> {
    let stream = tls.connect(addr, host).await?;
    let (r, w) = tokio::io::split(stream);
    Ok((Box::new(r), Box::new(w), addr))
}

#[cfg(feature = "websocket")]
mod ws {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::MaybeTlsStream;

    use super::{Opened, Rd, Wr};
    use crate::ClientError;
    use switchboard_wire::DEFAULT_MAX_FRAME;

    /// Buffer of the pipe between the socket and the client's reader and
    /// writer.
    const BRIDGE_BUFFER: usize = 256 * 1024;

    pub(super) async fn open(
        url: String,
        tls: Option<super::ClientTls>,
    ) -> Result<Opened, ClientError> {
        let connect_error = |e: &dyn std::fmt::Display| ClientError::Connect {
            addr: url.clone(),
            source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, e.to_string()),
        };
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(DEFAULT_MAX_FRAME))
            .max_frame_size(Some(DEFAULT_MAX_FRAME));
        if url.starts_with("wss://") {
            let Some(tls) = tls else {
                return Err(ClientError::InvalidArgument(format!(
                    "{url} asks for TLS but no CA to trust is set; give one with ClientBuilder::tls (--tls-ca)"
                )));
            };
            return open_tls(&url, config, &tls).await;
        }
        let (socket, _) =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true)
                .await
                .map_err(|e| connect_error(&e))?;
        let addr = match socket.get_ref() {
            MaybeTlsStream::Plain(tcp) => {
                let _ = tcp.set_nodelay(true);
                tcp.peer_addr().map_err(|e| connect_error(&e))?
            }
            _ => return Err(connect_error(&"unsupported stream")),
        };
        let (client_side, bridge_side) = tokio::io::duplex(BRIDGE_BUFFER);
        tokio::spawn(bridge(socket, bridge_side));
        let (r, w) = tokio::io::split(client_side);
        Ok((Box::new(r) as Rd, Box::new(w) as Wr, addr))
    }

    /// A `wss://` connection: TLS by the client's setting, then the
    /// WebSocket handshake over it.
    async fn open_tls(
        url: &str,
        config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
        tls: &super::ClientTls,
    ) -> Result<Opened, ClientError> {
        let connect_error = |e: &dyn std::fmt::Display| ClientError::Connect {
            addr: url.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, e.to_string()),
        };
        let uri: tokio_tungstenite::tungstenite::http::Uri =
            url.parse().map_err(|e| connect_error(&e))?;
        let host = uri.host().ok_or_else(|| connect_error(&"no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(443);
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| connect_error(&e))?
            .next()
            .ok_or_else(|| connect_error(&"the host resolved to nothing"))?;
        let stream = tls.connect(addr, Some(host)).await?;
        let (socket, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .map_err(|e| connect_error(&e))?;
        let (client_side, bridge_side) = tokio::io::duplex(BRIDGE_BUFFER);
        tokio::spawn(bridge(socket, bridge_side));
        let (r, w) = tokio::io::split(client_side);
        Ok((Box::new(r) as Rd, Box::new(w) as Wr, addr))
    }

    /// Moves frames between the socket (one per binary message) and the
    /// pipe (length-prefixed) until either side ends
    /// (`switchboard_wire::bridge`): pings and pongs are skipped; text, a
    /// close or an error end the connection.
    async fn bridge<S>(socket: S, io: tokio::io::DuplexStream)
    where
        S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
            + futures::Sink<Message>
            + Send
            + Unpin
            + 'static,
    {
        let (mut ws_tx, ws_rx) = socket.split();
        let incoming = ws_rx
            .take_while(|msg| {
                std::future::ready(matches!(
                    msg,
                    Ok(Message::Binary(_)
                        | Message::Ping(_)
                        | Message::Pong(_)
                        | Message::Frame(_))
                ))
            })
            .filter_map(|msg| {
                std::future::ready(match msg {
                    Ok(Message::Binary(data)) => Some(data),
                    _ => None,
                })
            });
        let mut outgoing = (&mut ws_tx).with(|frame: bytes::Bytes| {
            std::future::ready(Ok::<_, <S as futures::Sink<Message>>::Error>(
                Message::Binary(frame),
            ))
        });
        let (rd, wr) = tokio::io::split(io);
        switchboard_wire::bridge::bridge(
            Box::pin(incoming),
            &mut outgoing,
            rd,
            wr,
            DEFAULT_MAX_FRAME,
        )
        .await;
        let _ = ws_tx.send(Message::Close(None)).await;
        let _ = ws_tx.close().await;
    }
}
