//! The PostgreSQL engine: `LISTEN`/`NOTIFY` on the database the nodes already share.
//!
//! Two dedicated connections per node, outside the store's pool (a pooled connection cannot
//! hold a `LISTEN`, and the publisher must never queue behind the store's work):
//!
//! - the publisher (`matchchat-notify-<node>`) runs one `SELECT pg_notify(...)` over all of a
//!   notice's payloads in autocommit, i.e. in its own short transaction *after* the batch
//!   committed. A `NOTIFY`
//!   inside the insert transaction would take PostgreSQL's cluster-wide notify lock until that
//!   commit, which was measured to cap notifying commits at ~600/s.
//! - the listener (`matchchat-listen-<node>`) runs `LISTEN` and forwards what arrives. It
//!   reconnects by itself, for as long as the process runs, and then tells the node
//!   ([`Incoming::Reconnected`]) so it sweeps its rooms at once: notifications sent while it
//!   was away are gone for good (PostgreSQL queues them only for listening sessions).
//!
//! The `application_name`s let an operator (and the tests) find these connections in
//! `pg_stat_activity`; PostgreSQL cuts them at 63 bytes.
//!
//! `tokio-postgres` directly rather than diesel-async's connection: it is the client
//! diesel-async itself runs on (already built), and its `Connection::poll_message` hands out
//! notifications and the connection's end as one stream, which is all the listener needs.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::{Mutex, mpsc};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Statement};

use super::{Bus, BusError, Engine, Incoming, Notice};

/// The channel every node listens on (one per database).
pub const CHANNEL: &str = "matchchat_notices";

/// Notices waiting for the node. Bounded so a node that falls behind slows its listener
/// (PostgreSQL then queues for it) instead of growing without limit; large enough that a
/// burst never waits on a healthy node.
const INCOMING_CAPACITY: usize = 16_384;

/// Longest wait for a connection (TCP, start-up, authentication) or for one statement. A
/// publish that takes longer fails: the receivers' sweep recovers what it carried, and the
/// committing writer is not held up by a database that stopped answering.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The listener's reconnect back-off: first wait, doubled after each failure up to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Starts the engine on the database of `database_url` for node `node`.
///
/// Both connections are made (and `LISTEN` has run) before this returns, so a wrong URL or an
/// unreachable database fails the start-up instead of leaving a node that hears nothing; a
/// notice published by another node after this returns reaches this one.
pub async fn start(database_url: &str, node: String) -> Result<Engine, BusError> {
    let base = Config::from_str(database_url)
        .map_err(|e| BusError::Config(format!("DATABASE_URL is not a PostgreSQL URL: {e}")))?;
    let notify_config = with_name(&base, &format!("matchchat-notify-{node}"));
    let listen_config = with_name(&base, &format!("matchchat-listen-{node}"));

    let publisher = Publisher::connect(&notify_config)
        .await
        .map_err(|e| BusError::Unavailable(format!("publisher connection: {e}")))?;

    let (tx, rx) = mpsc::channel(INCOMING_CAPACITY);
    let listener = Listener {
        config: listen_config,
        node: node.clone(),
        tx,
    };
    let first = listener
        .listen()
        .await
        .map_err(|e| BusError::Unavailable(format!("listener connection: {e}")))?;
    tokio::spawn(listener.run(first));

    Ok(Engine {
        bus: Arc::new(PgBus {
            config: notify_config,
            publisher: Mutex::new(Some(publisher)),
        }),
        incoming: rx,
    })
}

/// `base` with our `application_name` and timeouts. TCP keepalives (seconds, not the OS's two
/// hours) make a listener whose database vanished without a word notice it and reconnect.
fn with_name(base: &Config, name: &str) -> Config {
    let mut config = base.clone();
    config
        .application_name(name)
        .connect_timeout(STATEMENT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3);
    config
}

/// Connects with `config`, driving the connection in a task of its own that ends when the
/// returned client is dropped or the connection breaks. (The publisher never `LISTEN`s, so
/// nothing but errors ever arrives on it.)
async fn connect(config: &Config) -> Result<Client, String> {
    let connecting = tokio::time::timeout(STATEMENT_TIMEOUT, config.connect(NoTls));
    let (client, connection) = connecting
        .await
        .map_err(|_| format!("no connection within {STATEMENT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "cluster bus: publisher connection ended");
        }
    });
    Ok(client)
}

/// The publishing connection and its prepared `pg_notify` call.
struct Publisher {
    client: Client,
    notify: Statement,
}

impl Publisher {
    async fn connect(config: &Config) -> Result<Self, String> {
        let client = connect(config).await?;
        let notify = tokio::time::timeout(
            STATEMENT_TIMEOUT,
            client.prepare(&format!(
                "SELECT pg_notify('{CHANNEL}', p) FROM unnest($1::text[]) AS p"
            )),
        )
        .await
        .map_err(|_| "prepare timed out".to_string())?
        .map_err(|e| e.to_string())?;
        Ok(Self { client, notify })
    }
}

/// Publishes through one connection behind a mutex: notices are small and a `pg_notify`
/// round trip is short, so serialising them costs little, keeps one node's notices in order,
/// and holds one connection per node rather than one per writer.
struct PgBus {
    config: Config,
    /// `None` after a failure: the next publish connects again.
    publisher: Mutex<Option<Publisher>>,
}

impl PgBus {
    /// Sends `payloads[*sent..]`, connecting first if there is no usable connection, and
    /// counts in `sent` what went out. On failure the connection is dropped.
    async fn send(
        &self,
        slot: &mut Option<Publisher>,
        payloads: &[String],
        sent: &mut usize,
    ) -> Result<(), String> {
        if slot.as_ref().is_none_or(|p| p.client.is_closed()) {
            *slot = None;
            *slot = Some(Publisher::connect(&self.config).await?);
        }
        let Some(publisher) = slot.as_ref() else {
            return Err("no publisher connection".into());
        };
        // Every payload of the notice in one statement, so one transaction: each commit that
        // NOTIFYs flushes the WAL, so one per payload made the publisher the bottleneck
        // (3 nodes at 2,000 msg/s: p50 33 ms across nodes, measured).
        let rest: Vec<&str> = payloads[*sent..].iter().map(String::as_str).collect();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&rest];
        let notify = publisher.client.execute(&publisher.notify, &params);
        let result = match tokio::time::timeout(STATEMENT_TIMEOUT, notify).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("pg_notify took over {STATEMENT_TIMEOUT:?}")),
        };
        if let Err(e) = result {
            *slot = None;
            return Err(e);
        }
        *sent = payloads.len();
        Ok(())
    }
}

#[async_trait]
impl Bus for PgBus {
    /// Sends every payload of [`Notice::to_payloads`] with one autocommit `pg_notify`
    /// statement (one transaction). A failed send reconnects once and sends the notice again
    /// (if the first reached the database before its reply was lost, it arrives twice:
    /// receivers go by seq, so a repeat costs a read, not a duplicate); a second failure
    /// gives up.
    async fn publish(&self, notice: &Notice) -> Result<(), BusError> {
        let payloads = notice.to_payloads();
        if payloads.is_empty() {
            return Ok(());
        }
        let mut slot = self.publisher.lock().await;
        let mut sent = 0;
        if let Err(first) = self.send(&mut slot, &payloads, &mut sent).await {
            tracing::warn!(error = %first, "cluster bus: NOTIFY failed; reconnecting once");
            self.send(&mut slot, &payloads, &mut sent)
                .await
                .map_err(|e| BusError::Unavailable(format!("NOTIFY failed twice: {e}")))?;
        }
        Ok(())
    }
}

/// Why a listening connection stopped.
enum Ended {
    /// The connection broke (or the database went away): reconnect.
    Broken(String),
    /// The node dropped its receiver: the engine is done.
    ReceiverGone,
}

struct Listener {
    config: Config,
    node: String,
    tx: mpsc::Sender<Incoming>,
}

/// A listening connection: its client (kept so the connection stays open) and the task that
/// forwards what arrives on it.
struct Listening {
    _client: Client,
    forwarder: tokio::task::JoinHandle<Ended>,
}

impl Listener {
    /// Connects and runs `LISTEN`. The forwarder starts before `LISTEN` does: the connection
    /// must be driven for the statement to complete, and nothing that arrives is lost.
    async fn listen(&self) -> Result<Listening, String> {
        let connecting = tokio::time::timeout(STATEMENT_TIMEOUT, self.config.connect(NoTls));
        let (client, mut connection) = connecting
            .await
            .map_err(|_| format!("no connection within {STATEMENT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        let messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let forwarder = tokio::spawn(forward(messages, self.node.clone(), self.tx.clone()));
        let statement = format!("LISTEN {CHANNEL}");
        let listen = client.batch_execute(&statement);
        let result = match tokio::time::timeout(STATEMENT_TIMEOUT, listen).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("LISTEN took over {STATEMENT_TIMEOUT:?}")),
        };
        if let Err(e) = result {
            forwarder.abort();
            return Err(e);
        }
        Ok(Listening {
            _client: client,
            forwarder,
        })
    }

    /// Forwards until the node drops its receiver, reconnecting whenever the connection is
    /// lost: with back-off (so a database that is restarting is not hammered), and never
    /// giving up (a node without its listener would serve stale rooms until restarted).
    async fn run(self, first: Listening) {
        let mut listening = first;
        loop {
            let ended = match (&mut listening.forwarder).await {
                Ok(ended) => ended,
                Err(e) => Ended::Broken(format!("forwarder task failed: {e}")),
            };
            match ended {
                Ended::ReceiverGone => return,
                Ended::Broken(reason) => tracing::warn!(
                    %reason,
                    "cluster bus: the LISTEN connection was lost; reconnecting"
                ),
            }
            let mut backoff = BACKOFF_FIRST;
            listening = loop {
                tokio::select! {
                    () = tokio::time::sleep(jitter(backoff)) => {}
                    () = self.tx.closed() => return,
                }
                match self.listen().await {
                    Ok(listening) => break listening,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "cluster bus: LISTEN reconnect failed");
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            };
            tracing::info!("cluster bus: listening again");
            // After LISTEN, so the sweep this starts covers everything missed meanwhile.
            if self.tx.send(Incoming::Reconnected).await.is_err() {
                return;
            }
        }
    }
}

/// Forwards the notifications of one connection (parsed, other nodes' only) until the
/// connection ends or the node drops its receiver.
async fn forward<S>(mut messages: S, node: String, tx: mpsc::Sender<Incoming>) -> Ended
where
    S: futures_util::Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Unpin,
{
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            () = tx.closed() => return Ended::ReceiverGone,
        };
        let notification = match message {
            Some(Ok(AsyncMessage::Notification(n))) => n,
            Some(Ok(AsyncMessage::Notice(notice))) => {
                tracing::debug!(notice = %notice, "cluster bus: server notice on the LISTEN connection");
                continue;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Ended::Broken(e.to_string()),
            None => return Ended::Broken("connection closed".into()),
        };
        if notification.channel() != CHANNEL {
            continue;
        }
        let notice = match Notice::parse(notification.payload()) {
            Ok(notice) => notice,
            Err(e) => {
                tracing::warn!(error = %e, "cluster bus: dropped an unreadable notice");
                continue;
            }
        };
        if notice.node == node {
            continue;
        }
        if tx.send(Incoming::Notice(notice)).await.is_err() {
            return Ended::ReceiverGone;
        }
    }
}

/// `base` scaled by a random factor in [0.5, 1.0), so nodes that lost their connections at
/// the same moment (a database restart) do not all come back at the same moment.
fn jitter(base: Duration) -> Duration {
    let random = RandomState::new().build_hasher().finish();
    let fraction = 0.5 + (random % 1_000) as f64 / 2_000.0;
    base.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    //! Against a real PostgreSQL (`DATABASE_URL`; `eval "$(scripts/pg-tmp.sh start)"`). Other
    //! tests may share the database and its channel, so receivers skip the notices of nodes
    //! that are not theirs.

    use super::*;
    use crate::cluster::test_support::*;

    fn database_url() -> String {
        match std::env::var("DATABASE_URL") {
            Ok(url) if url.starts_with("postgres") => url,
            other => panic!(
                "these tests need a PostgreSQL in DATABASE_URL (got {other:?}); start one with \
                 eval \"$(scripts/pg-tmp.sh start)\""
            ),
        }
    }

    /// Terminates the backends named `application_name`; returns how many there were.
    async fn terminate(application_name: &str) -> usize {
        let admin = connect(&Config::from_str(&database_url()).unwrap())
            .await
            .unwrap();
        let rows = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1",
                &[&application_name],
            )
            .await
            .unwrap();
        assert!(rows.iter().all(|r| r.get::<_, bool>(0)));
        rows.len()
    }

    #[tokio::test]
    async fn a_notice_reaches_the_other_node_and_not_its_own() {
        let (a, b) = (node("pg-a"), node("pg-b"));
        let mut engine_a = start(&database_url(), a.clone()).await.unwrap();
        let mut engine_b = start(&database_url(), b.clone()).await.unwrap();

        // PostgreSQL delivers in commit order, so A sees B's notice next.
        routes_to_the_other_node_only(&a, &mut engine_a, &b, &mut engine_b).await;
    }

    #[tokio::test]
    async fn a_notice_over_one_payload_arrives_whole_and_in_order() {
        let (a, b) = (node("pg-a"), node("pg-b"));
        let engine_a = start(&database_url(), a.clone()).await.unwrap();
        let mut engine_b = start(&database_url(), b.clone()).await.unwrap();

        a_large_notice_arrives_whole(&a, &engine_a, &mut engine_b).await;
    }

    #[tokio::test]
    async fn the_listener_reconnects_by_itself_and_says_so() {
        let (a, b) = (node("pg-a"), node("pg-b"));
        let engine_a = start(&database_url(), a.clone()).await.unwrap();
        let mut engine_b = start(&database_url(), b.clone()).await.unwrap();

        assert_eq!(terminate(&format!("matchchat-listen-{b}")).await, 1);
        match next(&mut engine_b.incoming, &[&a]).await {
            Incoming::Reconnected => {}
            Incoming::Notice(n) => panic!("expected Reconnected, got {n:?}"),
        }
        let sent = notice(&a, 1..=2);
        engine_a.bus.publish(&sent).await.unwrap();
        assert_eq!(next_notice(&mut engine_b.incoming, &[&a]).await, sent);
    }

    #[tokio::test]
    async fn the_publisher_reconnects_once_when_its_connection_was_killed() {
        let (a, b) = (node("pg-a"), node("pg-b"));
        let engine_a = start(&database_url(), a.clone()).await.unwrap();
        let mut engine_b = start(&database_url(), b.clone()).await.unwrap();

        assert_eq!(terminate(&format!("matchchat-notify-{a}")).await, 1);
        let sent = notice(&a, 1..=2);
        engine_a.bus.publish(&sent).await.unwrap();
        assert_eq!(next_notice(&mut engine_b.incoming, &[&a]).await, sent);
    }

    #[tokio::test]
    async fn dropping_the_receiver_closes_the_listen_connection() {
        let b = node("pg-b");
        let engine_b = start(&database_url(), b.clone()).await.unwrap();
        let name = format!("matchchat-listen-{b}");
        let admin = connect(&Config::from_str(&database_url()).unwrap())
            .await
            .unwrap();
        let count = async || -> i64 {
            admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    &[&name],
                )
                .await
                .unwrap()
                .get(0)
        };
        assert_eq!(count().await, 1);

        drop(engine_b.incoming);
        // The backend goes away once the server has seen the socket close: a bounded poll.
        let gone = async {
            while count().await != 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(WAIT, gone)
            .await
            .expect("the LISTEN connection outlived its receiver");
    }

    #[tokio::test]
    async fn a_url_that_is_not_postgres_is_a_config_error() {
        let result = start("sqlite://./data/chat.db", node("pg-x")).await;
        assert!(matches!(result, Err(BusError::Config(_))));
    }
}
