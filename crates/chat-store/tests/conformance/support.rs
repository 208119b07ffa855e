//! Helpers for the conformance cases: domain values, raw SQL on a test database, and a TCP
//! proxy that can cut a store off its PostgreSQL server.

// Test code that is not a `#[test]` function (clippy.toml exempts only those): a failed
// unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use chat_domain::{
    Body, ClientMsgId, Members, Message, NewMessage, Room, RoomId, Seq, Timestamp, UserId,
};
use chat_store::{Appended, Backend, Repository, StoreError, StoreEvent};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

pub fn user(s: &str) -> UserId {
    UserId::new(s).unwrap_or_else(|e| panic!("user {s:?}: {e}"))
}

pub fn room_id(s: &str) -> RoomId {
    RoomId::new(s).unwrap_or_else(|e| panic!("room id {s:?}: {e}"))
}

pub fn pair(a: &str, b: &str) -> Members {
    Members::new(user(a), user(b)).unwrap()
}

pub fn seq(n: u64) -> Seq {
    Seq::new(n).unwrap_or_else(|e| panic!("seq {n}: {e}"))
}

/// A fixed instant plus `n` seconds, with a microsecond part so precision is checked.
pub fn t(n: i64) -> Timestamp {
    Timestamp::from_unix_micros(1_795_000_000_123_456 + n * 1_000_000).unwrap()
}

pub fn new_msg(room: &RoomId, sender: &str, cmid: &str, body: &str) -> NewMessage {
    NewMessage {
        room_id: room.clone(),
        sender_id: user(sender),
        client_msg_id: ClientMsgId::new(cmid).unwrap(),
        body: Body::new(body).unwrap(),
    }
}

pub async fn open(repo: &dyn Repository, a: &str, b: &str, now: Timestamp) -> Room {
    repo.open_room(&pair(a, b), now)
        .await
        .expect("open_room")
        .room
}

/// Appends one message that must be new, and returns it.
pub async fn send(
    repo: &dyn Repository,
    room: &RoomId,
    sender: &str,
    cmid: &str,
    now: Timestamp,
) -> Message {
    match repo
        .append(new_msg(room, sender, cmid, &format!("message {cmid}")), now)
        .await
    {
        Ok(Appended::New(m)) => m,
        other => panic!("append {cmid}: expected a new message, got {other:?}"),
    }
}

pub async fn all_history(repo: &dyn Repository, room: &RoomId, reader: &str) -> Vec<Message> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = repo
            .history(
                room,
                &user(reader),
                chat_domain::HistoryPage::After { after, limit: 300 },
            )
            .await
            .expect("history");
        let Some(last) = page.last() else { return out };
        after = last.seq.get();
        out.extend(page);
    }
}

pub fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq.get()).collect()
}

/// Every event published so far (the store publishes before its call returns).
pub fn drain(rx: &mut Receiver<Arc<StoreEvent>>) -> Vec<StoreEvent> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(event) => out.push((*event).clone()),
            Err(TryRecvError::Empty | TryRecvError::Closed) => return out,
            Err(TryRecvError::Lagged(n)) => panic!("the test subscriber lagged by {n} events"),
        }
    }
}

pub fn expect_err<T: std::fmt::Debug>(result: Result<T, StoreError>, expected: StoreError) {
    match result {
        Err(e) => assert_eq!(e, expected),
        Ok(v) => panic!("expected {expected:?}, got Ok({v:?})"),
    }
}

/// Runs SQL on the store's database behind the store's back.
pub async fn exec_raw(url: &str, sql: &str) -> Result<(), String> {
    match Backend::from_url(url).map_err(|e| e.to_string())? {
        Backend::Postgres { url } => {
            use diesel_async::{AsyncConnection, SimpleAsyncConnection};
            let mut conn = diesel_async::AsyncPgConnection::establish(&url)
                .await
                .map_err(|e| e.to_string())?;
            conn.batch_execute(sql).await.map_err(|e| e.to_string())
        }
        Backend::Sqlite { path } => {
            let sql = sql.to_owned();
            tokio::task::spawn_blocking(move || {
                use diesel::Connection;
                use diesel::connection::SimpleConnection;
                let path = path.to_str().ok_or("non-UTF-8 path")?.to_owned();
                let mut conn =
                    diesel::SqliteConnection::establish(&path).map_err(|e| e.to_string())?;
                conn.batch_execute(&format!("PRAGMA foreign_keys = ON; {sql}"))
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?
        }
    }
}

/// `url` with its `host:port` replaced.
pub fn with_host_port(url: &str, host_port: &str) -> String {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("no scheme in {url}"));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let user = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    format!("{scheme}://{user}{host_port}{tail}")
}

/// The server address of a postgres URL.
pub async fn server_addr(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    tokio::net::lookup_host(host_port.as_str())
        .await
        .unwrap_or_else(|e| panic!("resolve {host_port}: {e}"))
        .next()
        .unwrap_or_else(|| panic!("{host_port} resolves to nothing"))
}

/// A loopback TCP proxy to `upstream`. Stopping it closes its listener and every connection
/// through it, as a network failure or a server restart would.
pub struct Proxy {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub fn start(listener: TcpListener, upstream: SocketAddr) -> Self {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { break };
                        connections.spawn(async move {
                            if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                }
            }
            drop(listener);
            connections.shutdown().await;
        });
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Stops the proxy and waits until every proxied connection is closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("proxy task");
    }
}
