//! Test harness: starts the real `chat-server` binary on 127.0.0.1 and a free port, against a
//! real SQLite file or a fresh PostgreSQL database, and talks to it over real HTTP and
//! WebSockets. The server is stopped by PID when the handle drops.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SERVICE_KEY: &str = "test-service-key-0123456789abcdef0123";
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123";
/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Where the server keeps its data; survives server restarts within one test. A PostgreSQL
/// database comes from `chat_store::testing` (copied from the migrated template, so the
/// server's own migration run finds nothing to do) and is dropped with this.
pub struct Database {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<chat_store::testing::TestDatabase>,
}

impl Database {
    pub fn new(db: Db) -> Self {
        match db {
            Db::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("chat.db").display());
                Self {
                    url,
                    _dir: Some(dir),
                    _pg: None,
                }
            }
            Db::Postgres => {
                let pg = chat_store::testing::TestDatabase::new();
                Self {
                    url: pg.url().to_owned(),
                    _dir: None,
                    _pg: Some(pg),
                }
            }
        }
    }

    /// Runs SQL against this (PostgreSQL) database.
    pub fn psql(&self, sql: &str) -> String {
        psql(&self.url, sql)
    }
}

pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-t", "-A", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A running chat-server process.
pub struct Server {
    child: Child,
    pub addr: String,
    pub db_url: String,
    /// Every line the server wrote to stderr (its logs), as they come.
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The URL of the separate metrics listener, once printed (`CHAT_METRICS_BIND`).
    metrics: std::sync::Mutex<std::sync::mpsc::Receiver<String>>,
    env: Vec<(String, String)>,
}

impl Server {
    pub fn start(db: &Database) -> Self {
        Self::start_with(db, &[])
    }

    pub fn start_with(db: &Database, env: &[(&str, &str)]) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::spawn(&db.url, env, "127.0.0.1:0")
    }

    fn spawn(db_url: &str, env: Vec<(String, String)>, bind: &str) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-server"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CHAT_BIND", bind)
            .env("DATABASE_URL", db_url)
            .env("CHAT_SERVICE_KEY", SERVICE_KEY)
            .env("CHAT_JWT_SECRET", JWT_SECRET)
            .env(
                "RUST_LOG",
                std::env::var("TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("chat-server starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let (metrics_tx, metrics_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && let Some(addr) = line.strip_prefix("chat-server listening on http://") {
                    let _ = tx.send(addr.trim().to_owned());
                    sent = true;
                }
                if let Some(url) = line.strip_prefix("chat-server metrics on ") {
                    let _ = metrics_tx.send(url.trim().to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(WAIT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("chat-server did not report its address in time");
            }
        };
        Self {
            child,
            addr,
            db_url: db_url.to_owned(),
            logs,
            metrics: std::sync::Mutex::new(metrics_rx),
            env,
        }
    }

    /// The separate metrics listener's URL (waits, bounded, for the line that names it).
    pub fn metrics_url(&self) -> String {
        self.metrics
            .lock()
            .unwrap()
            .recv_timeout(WAIT)
            .expect("the server printed its metrics address")
    }

    /// Waits (bounded by [`WAIT`]) until a log line contains `text`: the server writes its
    /// logs from another thread, which the harness reads from a pipe.
    pub fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        while self.log_lines_with(text) == 0 {
            assert!(
                Instant::now() < deadline,
                "no log line with {text:?} in {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every log line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// How many log lines so far contain `text`.
    pub fn log_lines_with(&self, text: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(text))
            .count()
    }

    /// The server's resident memory in KiB (Linux `/proc`).
    pub fn rss_kib(&self) -> u64 {
        self.proc_status("VmRSS:")
    }

    /// The server's thread count (Linux `/proc`).
    pub fn threads(&self) -> u64 {
        self.proc_status("Threads:")
    }

    fn proc_status(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} line"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_exit()
    }

    /// SIGKILL: a crash, nothing flushed by the server itself.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// Starts the server again on the same port and database (after `kill`/`terminate`).
    pub fn restart(&mut self) {
        let next = Self::spawn(&self.db_url, self.env.clone(), &self.addr);
        // The old process has exited; dropping its handle does nothing more.
        drop(std::mem::replace(self, next));
    }

    pub fn http(&self) -> Http {
        Http {
            base: format!("http://{}", self.addr),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// A GET of the service API with the service key, its body as JSON (panics, naming the
    /// path, when the body is not JSON).
    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, text) = self.http().get_text(path, Some(SERVICE_KEY));
        let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
        (status, value)
    }

    /// Opens a room for two users through the service API.
    pub fn room(&self, a: &str, b: &str) -> String {
        let (status, body) =
            self.http()
                .post("/api/rooms", json!({"members": [a, b]}), Some(SERVICE_KEY));
        assert_eq!(status, 200, "{body}");
        body["room_id"].as_str().expect("room_id").to_owned()
    }

    pub fn token(&self, user: &str) -> String {
        let (status, body) = self.http().post(
            "/api/tokens",
            json!({"user_id": user, "ttl_seconds": 3600}),
            Some(SERVICE_KEY),
        );
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().expect("token").to_owned()
    }

    /// Connects and authenticates `user`; returns the client and its `ready` frame.
    pub async fn connect(&self, user: &str) -> (Client, Value) {
        let mut client = Client::connect(&self.ws_url(), None)
            .await
            .expect("websocket connects");
        client
            .send(json!({"type": "auth", "token": self.token(user)}))
            .await;
        let ready = client.recv().await;
        assert_eq!(ready["type"], "ready", "{ready}");
        (client, ready)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let _ = self.wait_exit();
        }
    }
}

/// The service API over real HTTP.
pub struct Http {
    pub base: String,
}

impl Http {
    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into()
    }

    fn finish(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
        let mut response = response.expect("HTTP request completes");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn post(&self, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
        let mut req = Self::agent().post(format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        Self::finish(req.send_json(body))
    }

    pub fn post_raw(&self, path: &str, body: &str, key: Option<&str>) -> (u16, Value) {
        let mut req = Self::agent()
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        if let Some(key) = key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        Self::finish(req.send(body))
    }

    pub fn delete(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut req = Self::agent().delete(format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        Self::finish(req.call())
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        Self::finish(Self::agent().get(format!("{}{path}", self.base)).call())
    }

    /// A GET with the service key, answering the raw body text.
    pub fn get_text(&self, path: &str, key: Option<&str>) -> (u16, String) {
        let mut req = Self::agent().get(format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = req.call().expect("HTTP request completes");
        let status = response.status().as_u16();
        (
            status,
            response.body_mut().read_to_string().unwrap_or_default(),
        )
    }
}

/// A WebSocket client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What [`Client::next_within`] found.
#[derive(Debug)]
pub enum Next {
    /// A text frame, as JSON.
    Frame(Value),
    /// Nothing within the time given (the connection is still open).
    Timeout,
    /// The connection ended: a close frame, an error, or the end of the stream.
    Ended(String),
}

/// How the server ended a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl Client {
    pub async fn connect(
        url: &str,
        origin: Option<&str>,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request()?;
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("Origin", origin.parse().expect("valid header"));
        }
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect in time")?;
        Ok(Self { ws })
    }

    /// Connects with a 4 KiB receive buffer: a client that will stop reading, and whose
    /// kernel then stops taking data after a few KiB instead of megabytes.
    pub async fn connect_slow_reader(server: &Server) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket
            .connect(server.addr.parse().expect("server address"))
            .await
            .expect("TCP connect");
        let (ws, _) =
            tokio_tungstenite::client_async(server.ws_url(), MaybeTlsStream::Plain(stream))
                .await
                .expect("WebSocket handshake");
        Self { ws }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(WsMessage::text(frame.to_string()))
            .await
            .expect("send frame");
    }

    /// Sends a frame; `false` when the connection is gone (a server that was killed).
    pub async fn try_send(&mut self, frame: Value) -> bool {
        self.ws
            .send(WsMessage::text(frame.to_string()))
            .await
            .is_ok()
    }

    /// The next text frame within `within`, without panicking on a timeout or a closed
    /// connection. Cancel-safe (usable in `select!`).
    pub async fn next_within(&mut self, within: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Next::Timeout,
                Ok(Some(Ok(WsMessage::Text(text)))) => {
                    return Next::Frame(serde_json::from_str(&text).expect("JSON frame"));
                }
                Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
                Ok(Some(Ok(WsMessage::Close(frame)))) => {
                    return Next::Ended(format!("closed by the server: {frame:?}"));
                }
                Ok(Some(Ok(other))) => return Next::Ended(format!("unexpected frame {other:?}")),
                Ok(Some(Err(e))) => return Next::Ended(format!("connection failed: {e}")),
                Ok(None) => return Next::Ended("stream ended".into()),
            }
        }
    }

    pub async fn send_raw(&mut self, message: WsMessage) {
        self.ws.send(message).await.expect("send raw frame");
    }

    /// The next text frame as JSON. Panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        // One deadline for the whole wait: the server's pings (every 15 s) must not restart
        // it, or a frame that never comes would be waited for for ever.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("a frame in time");
            match next {
                Some(Ok(WsMessage::Text(text))) => {
                    return serde_json::from_str(&text).expect("JSON frame");
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Skips frames until one matches.
    pub async fn recv_until(&mut self, mut matches: impl FnMut(&Value) -> bool) -> Value {
        for _ in 0..10_000 {
            let frame = self.recv().await;
            if matches(&frame) {
                return frame;
            }
        }
        panic!("no matching frame in 10000 frames");
    }

    /// The next frame of a type.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        self.recv_until(|f| f["type"] == kind).await
    }

    /// Waits for the server to close the connection; returns the close frame.
    pub async fn closed(&mut self) -> Closed {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("close in time");
            match next {
                Some(Ok(WsMessage::Close(Some(CloseFrame { code, reason })))) => {
                    return Closed {
                        code: code.into(),
                        reason: reason.to_string(),
                    };
                }
                Some(Ok(WsMessage::Close(None))) => {
                    return Closed {
                        code: 1005,
                        reason: String::new(),
                    };
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed instead of closing: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }

    /// A round trip proving the connection is still open and served.
    pub async fn assert_alive(&mut self, room: &str) {
        self.send(json!({"type": "history", "room_id": room, "limit": 1}))
            .await;
        let reply = self
            .recv_until(|f| f["type"] == "history" || f["type"] == "error")
            .await;
        assert_eq!(
            reply["type"], "history",
            "connection still serves requests: {reply}"
        );
    }

    pub async fn send_message(&mut self, room: &str, client_msg_id: &str, body: &str) {
        self.send(
            json!({"type": "send", "room_id": room, "client_msg_id": client_msg_id, "body": body}),
        )
        .await;
    }

    pub async fn history(&mut self, request: Value) -> Vec<Value> {
        self.send(request).await;
        let reply = self
            .recv_until(|f| f["type"] == "history" || f["type"] == "error")
            .await;
        assert_eq!(reply["type"], "history", "{reply}");
        reply["messages"].as_array().expect("messages").clone()
    }
}

/// Runs each test body against both backends: `both_backends!(name, |db| async move { ... })`
/// makes `sqlite_name` and `postgres_name` tests, so the output shows both.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)($crate::common::Db::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)($crate::common::Db::Postgres).await;
            }
        }
    };
}
