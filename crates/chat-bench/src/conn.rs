//! One client WebSocket: TCP connect (optionally from a chosen loopback source address), the
//! upgrade, `auth`, and waiting for `ready`; then a writer task that owns the sending half.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Instant;

use chat_domain::RoomSummary;
use chat_domain::protocol::{ClientFrame, ServerFrame};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Ws = WebSocketStream<TcpStream>;
pub type WsSink = SplitSink<Ws, Message>;
pub type WsStream = SplitStream<Ws>;

/// Where the server is.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port`, for the service API.
    pub http_base: String,
    /// `ws://host:port/ws`.
    pub ws_url: String,
    pub addr: SocketAddr,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("--url must look like http://HOST:PORT (TLS is not supported), not {url:?}")
        })?;
        let host_port = rest.split('/').next().unwrap_or_default();
        if host_port.is_empty() {
            return Err(format!("--url has no host: {url:?}"));
        }
        let with_port = if host_port.contains(':') && !host_port.ends_with(']') {
            host_port.to_owned()
        } else {
            format!("{host_port}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {with_port}: {e}"))?
            .next()
            .ok_or_else(|| format!("{with_port} resolves to no address"))?;
        Ok(Self {
            http_base: format!("http://{host_port}"),
            ws_url: format!("ws://{host_port}/ws"),
            addr,
        })
    }

    /// The loopback source address for connection number `n`, when connections are spread
    /// over several (only for a server on 127.x.x.x).
    pub fn source_for(&self, n: usize, per_source_ip: usize) -> Option<IpAddr> {
        match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() && per_source_ip > 0 => {
                let k = n / per_source_ip;
                // 127.0.0.1 .. 127.0.255.254 is plenty.
                let k = u32::try_from(k).unwrap_or(0).min(65_533);
                Some(IpAddr::V4(Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(127, 0, 0, 1)) + k,
                )))
            }
            _ => None,
        }
    }
}

/// A small read buffer: a `connections` run holds tens of thousands of sockets and the
/// frames are small; tungstenite reserves its read buffer up front (128 KiB by default). The
/// write buffer only grows as needed; frames queued together go out in one flush.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(64 * 1024)
}

/// An authenticated connection and what `ready` said.
pub struct Authed {
    pub ws: Ws,
    pub rooms: Vec<RoomSummary>,
    pub user_id: String,
}

/// Connects, upgrades, authenticates and waits for `ready`.
pub async fn open(target: &Target, source: Option<IpAddr>, token: &str) -> Result<Authed, String> {
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = socket
        .connect(target.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", target.addr))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let (mut ws, _response) = tokio_tungstenite::client_async_with_config(
        target.ws_url.as_str(),
        stream,
        Some(ws_config()),
    )
    .await
    .map_err(|e| format!("upgrade: {e}"))?;
    let auth = serde_json::to_string(&ClientFrame::Auth {
        token: token.to_owned(),
    })
    .map_err(|e| e.to_string())?;
    ws.send(Message::text(auth))
        .await
        .map_err(|e| format!("send auth: {e}"))?;
    loop {
        let message = ws
            .next()
            .await
            .ok_or("closed before ready")?
            .map_err(|e| format!("before ready: {e}"))?;
        match message {
            Message::Text(text) => match serde_json::from_str::<ServerFrame>(&text) {
                Ok(ServerFrame::Ready { user_id, rooms, .. }) => {
                    return Ok(Authed {
                        ws,
                        rooms,
                        user_id: user_id.to_string(),
                    });
                }
                Ok(ServerFrame::Error { code, message, .. }) => {
                    return Err(format!("auth refused: {} {message}", code.as_str()));
                }
                Ok(_) => continue,
                Err(e) => return Err(format!("unreadable frame before ready: {e}: {text}")),
            },
            Message::Close(frame) => return Err(format!("closed before ready: {frame:?}")),
            _ => continue,
        }
    }
}

/// A frame for the writer task.
pub struct Out {
    pub text: String,
    /// A history request: written only once the previous one was answered (see [`Gate`]).
    pub gated: Option<Instant>,
    /// Index into a [`Stamps`] table to note the moment the frame was written.
    pub stamp: Option<usize>,
}

impl Out {
    pub fn plain(text: String) -> Self {
        Self {
            text,
            gated: None,
            stamp: None,
        }
    }
}

/// When each scheduled frame was actually handed to the socket, in nanoseconds after `t0`
/// (0 = not yet). Lets a receiver split latency into client lag and server time.
pub struct Stamps {
    pub t0: Instant,
    slots: Vec<std::sync::atomic::AtomicU64>,
}

impl Stamps {
    pub fn new(t0: Instant, n: usize) -> Self {
        Self {
            t0,
            slots: (0..n)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        }
    }

    pub fn mark(&self, i: usize) {
        if let Some(slot) = self.slots.get(i) {
            let nanos = u64::try_from(self.t0.elapsed().as_nanos())
                .unwrap_or(u64::MAX)
                .max(1);
            slot.store(nanos, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn written_at(&self, i: usize) -> Option<Instant> {
        let nanos = self
            .slots
            .get(i)?
            .load(std::sync::atomic::Ordering::Relaxed);
        (nanos > 0).then(|| self.t0 + std::time::Duration::from_nanos(nanos))
    }
}

/// One history request in flight per connection: responses carry no request id, so they are
/// matched to requests in order, one at a time.
pub struct Gate {
    pub permits: Semaphore,
    /// (scheduled time, written time, last seq the reader had seen when it was written)
    pub inflight: std::sync::Mutex<std::collections::VecDeque<(Instant, Instant, u64)>>,
    /// The last seq the reader has seen in this connection's room.
    pub last_seq: std::sync::atomic::AtomicU64,
}

impl Gate {
    pub fn new() -> Self {
        Self {
            permits: Semaphore::new(1),
            inflight: std::sync::Mutex::new(std::collections::VecDeque::new()),
            last_seq: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// Writes frames from `rx` in order, batching whatever is queued into one flush; closes the
/// socket when every sender is gone.
pub fn spawn_writer(
    mut sink: WsSink,
    mut rx: mpsc::UnboundedReceiver<Out>,
    stamps: Option<Arc<Stamps>>,
    gate: Option<Arc<Gate>>,
) -> tokio::task::JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(out) = next.take() {
                if let (Some(scheduled), Some(gate)) = (out.gated, gate.as_ref()) {
                    // Wait for the previous answer; flush first so it can come.
                    sink.flush().await.map_err(|e| format!("flush: {e}"))?;
                    gate.permits
                        .acquire()
                        .await
                        .map_err(|e| e.to_string())?
                        .forget();
                    let seen = gate.last_seq.load(std::sync::atomic::Ordering::Acquire);
                    if let Ok(mut inflight) = gate.inflight.lock() {
                        inflight.push_back((scheduled, Instant::now(), seen));
                    }
                }
                if let (Some(i), Some(stamps)) = (out.stamp, stamps.as_ref()) {
                    stamps.mark(i);
                }
                sink.feed(Message::text(out.text))
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                next = rx.try_recv().ok();
            }
            sink.flush().await.map_err(|e| format!("flush: {e}"))?;
        }
        let _ = sink.close().await;
        Ok(())
    })
}
