//! The NATS engine: core NATS publish/subscribe on one subject, through `async-nats`.
//!
//! `async-nats` earns its place over a hand-written client: it speaks the protocol (INFO,
//! CONNECT, PING/PONG, SUB replay), reconnects by itself with our back-off, resubscribes after
//! a reconnect, and bounds what it buffers. It is built without TLS providers, JetStream,
//! nkeys or websockets (`default-features = false`): the cluster bus is plain `nats://` on a
//! private network, and core NATS is all it uses.
//!
//! Core NATS is at-most-once: a notice published while a node is disconnected is lost to it.
//! That is the contract of the seam anyway (the database is the truth): after each
//! (re)connection the engine sends [`Incoming::Reconnected`] and the node sweeps its rooms.
//!
//! Payloads: each notice goes out as the payloads of [`Notice::to_payloads`], the same split
//! the PostgreSQL engine uses. NATS would take one payload of up to 1 MB, but one code path
//! for both engines (and one receiving side, which already joins the parts) is simpler than
//! a second size rule.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event};
use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc};

use super::{Bus, BusError, Engine, Incoming, Notice};

/// The subject every node publishes on and subscribes to.
/// The subject's prefix; [`subject_for`] adds the cluster's own part.
pub const SUBJECT_PREFIX: &str = "matchchat.notices";

/// How long start-up waits for the first connection before going on without it (notices
/// are then retried by the publisher, and the node sweeps once connected).
const FIRST_CONNECT: Duration = Duration::from_secs(10);

/// The subject of the cluster on this database: one subject per cluster, so clusters (or
/// tests) sharing a NATS server never see each other's notices. Derived from the database
/// the nodes share (host, port and database name of `DATABASE_URL`; not the user or
/// password), unless `CHAT_NATS_SUBJECT` names one.
pub fn subject_for(database_url: &str, configured: Option<&str>) -> String {
    if let Some(subject) = configured.filter(|s| !s.trim().is_empty()) {
        return subject.trim().to_owned();
    }
    let rest = database_url
        .split_once("://")
        .map_or(database_url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let place = rest.split(['?', '#']).next().unwrap_or(rest);
    // FNV-1a: stable across builds and processes, unlike std's hasher.
    let hash = place.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{SUBJECT_PREFIX}.{hash:016x}")
}

/// Notices waiting for the node. Bounded so a node that falls behind slows its subscriber
/// (then NATS drops for it as a slow consumer, which we turn into a sweep) instead of
/// growing without limit.
const INCOMING_CAPACITY: usize = 16_384;

/// Longest wait for the handshake of a connection, for a publish to be taken by the client
/// and for the flush that confirms a (re)subscription.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Reconnect back-off: first wait, doubled after each failed attempt up to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Starts the engine on the NATS server(s) of `nats_url` (`nats://host:port`, several
/// comma-separated) for node `node`.
///
/// The connection is made in the background (`retry_on_initial_connect`), so a node can start
/// while NATS is still coming up. Every connection, the first included, is announced with
/// [`Incoming::Reconnected`] once the subscription is live on the server: the node may have
/// taken users before NATS answered.
pub async fn start(nats_url: &str, subject: String, node: String) -> Result<Engine, BusError> {
    let pending = Arc::new(Pending::default());
    let events = pending.clone();
    let client = ConnectOptions::new()
        .name(format!("matchchat-{node}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(TIMEOUT)
        // The server does not send our own messages back; the node check below stays for
        // any other path that could (two connections of one node, a test).
        .no_echo()
        .reconnect_delay_callback(reconnect_delay)
        // The callback runs on async-nats' event task, whose queue drops events when full:
        // note the event and return at once, whatever the node is doing.
        .event_callback(move |event| {
            events.note(event);
            async {}
        })
        .connect(nats_url)
        .await
        // Not the URL itself in the message: it may carry a password.
        .map_err(|e| BusError::Config(format!("CHAT_NATS_URL is not usable: {e}")))?;

    // A node that serves before the bus is up announces nothing (its publisher retries), so
    // wait a bounded while for the first connection.
    let deadline = tokio::time::Instant::now() + FIRST_CONNECT;
    while client.connection_state() != State::Connected {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("NATS not reachable yet; starting anyway, notices wait until it is");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let subscriber = client
        .subscribe(subject.clone())
        .await
        .map_err(|e| BusError::Unavailable(format!("subscribing to {subject}: {e}")))?;

    let (tx, rx) = mpsc::channel(INCOMING_CAPACITY);
    tokio::spawn(forward(subscriber, node.clone(), tx.clone()));
    tokio::spawn(announce(pending, client.clone(), node.clone(), tx));

    Ok(Engine {
        bus: Arc::new(NatsBus { client, subject }),
        incoming: rx,
    })
}

/// 100 ms doubling up to 1 s: a restarted server is back within a second of answering.
fn reconnect_delay(attempts: usize) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
    BACKOFF_FIRST
        .checked_mul(2u32.saturating_pow(doublings.min(16)))
        .map_or(BACKOFF_MAX, |delay| delay.min(BACKOFF_MAX))
}

struct NatsBus {
    client: Client,
    subject: String,
}

#[async_trait]
impl Bus for NatsBus {
    /// Publishes each payload of [`Notice::to_payloads`]. While disconnected it fails at once
    /// rather than queueing in the client: what it carried would be stale by the reconnect,
    /// and the node sweeps then anyway. The wait for the client to take a payload is bounded
    /// so a stuck connection never holds up the committing writer.
    async fn publish(&self, notice: &Notice) -> Result<(), BusError> {
        for payload in notice.to_payloads() {
            if self.client.connection_state() != State::Connected {
                return Err(BusError::Unavailable("not connected to NATS".into()));
            }
            let publish = self.client.publish(self.subject.clone(), payload.into());
            match tokio::time::timeout(TIMEOUT, publish).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(BusError::Unavailable(format!("NATS publish: {e}"))),
                Err(_) => {
                    return Err(BusError::Unavailable(format!(
                        "NATS publish not taken within {TIMEOUT:?}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Forwards the notices of other nodes until the node drops its receiver.
async fn forward(mut subscriber: async_nats::Subscriber, node: String, tx: mpsc::Sender<Incoming>) {
    loop {
        let message = tokio::select! {
            message = subscriber.next() => message,
            () = tx.closed() => return,
        };
        // The stream ends only when the client is closed for good.
        let Some(message) = message else {
            tracing::warn!("cluster bus: the NATS subscription ended");
            return;
        };
        let notice = match std::str::from_utf8(&message.payload)
            .map_err(|e| e.to_string())
            .and_then(|text| Notice::parse(text).map_err(|e| e.to_string()))
        {
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
            return;
        }
    }
}

/// What the client's events left for [`announce`]: flags, not a queue, so a burst of events
/// (async-nats reports a slow consumer once per dropped message) costs one sweep, and the
/// memory they take is bounded whatever the node is doing.
#[derive(Default)]
struct Pending {
    connected: AtomicBool,
    dropped: AtomicU64,
    wake: Notify,
}

impl Pending {
    fn note(&self, event: Event) {
        match event {
            Event::Connected => self.connected.store(true, Ordering::SeqCst),
            Event::SlowConsumer(_) => {
                self.dropped.fetch_add(1, Ordering::SeqCst);
            }
            Event::Disconnected => {
                tracing::warn!("cluster bus: disconnected from NATS; reconnecting");
                return;
            }
            other => {
                tracing::debug!(event = %other, "cluster bus: NATS event");
                return;
            }
        }
        // Stores a permit if `announce` is not waiting: no wake-up is lost.
        self.wake.notify_one();
    }
}

/// Tells the node, with one [`Incoming::Reconnected`] per wake-up, when it must sweep:
///
/// - after a connection: async-nats reports it before it has replayed our subscription to
///   the new server, so a flush (a PING answered after the SUB) comes first; only then is a
///   sweep sure to cover everything this node missed;
/// - after the client dropped messages for us (slow consumer): a sweep recovers them too.
async fn announce(pending: Arc<Pending>, client: Client, node: String, tx: mpsc::Sender<Incoming>) {
    loop {
        tokio::select! {
            () = pending.wake.notified() => {}
            () = tx.closed() => return,
        }
        let connected = pending.connected.swap(false, Ordering::SeqCst);
        let dropped = pending.dropped.swap(0, Ordering::SeqCst);
        if connected {
            // A round trip through the server, after our SUB: a request to a subject nobody
            // serves comes back at once as "no responders", and only after the server has
            // processed everything this connection sent before it. `flush` only empties our
            // write buffer: a notice published right after it could still beat the SUB (seen
            // in the engine's own test, about one run in two).
            let probe = client.request(format!("_matchchat.probe.{node}"), "".into());
            match tokio::time::timeout(TIMEOUT, probe).await {
                Ok(_) => tracing::info!("cluster bus: connected to NATS"),
                // Announced all the same: a sweep too many costs little, one too few leaves
                // rooms stale until the periodic sweep.
                Err(_) => tracing::warn!("cluster bus: NATS round trip after connecting timed out"),
            }
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "cluster bus: NATS dropped notices for this slow node; sweeping"
            );
        }
        if (connected || dropped > 0) && tx.send(Incoming::Reconnected).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against a real nats-server: `NATS_URL` (`eval "$(scripts/nats-tmp.sh start)"`) for the
    //! delivery tests; the restart test starts a private server of its own with the same
    //! script (so restarting it disturbs no other test) and stops it at the end.

    use super::*;
    use crate::cluster::test_support::*;

    fn nats_url() -> String {
        std::env::var("NATS_URL").unwrap_or_else(|_| {
            panic!(
                "these tests need a nats-server in NATS_URL; start one with \
                 eval \"$(scripts/nats-tmp.sh start)\""
            )
        })
    }

    #[test]
    fn subjects_differ_by_database_not_by_credentials() {
        let one = subject_for("postgres://a:pw@db:5432/chat", None);
        assert_eq!(
            one,
            subject_for("postgres://b:other@db:5432/chat?sslmode=require", None)
        );
        assert_ne!(one, subject_for("postgres://a:pw@db:5432/chat2", None));
        assert!(one.starts_with("matchchat.notices."));
        assert_eq!(subject_for("x", Some("mine")), "mine");
    }

    /// Two engines, each connected with its subscription live (their first `Reconnected`).
    async fn pair(url: &str) -> (String, Engine, String, Engine) {
        let (a, b) = (node("nats-a"), node("nats-b"));
        // A subject of this test's own: tests share the NATS server.
        let subject = format!("{SUBJECT_PREFIX}.test{}", a.len());
        let mut engine_a = start(url, subject.clone(), a.clone()).await.unwrap();
        let mut engine_b = start(url, subject, b.clone()).await.unwrap();
        reconnected(&mut engine_a.incoming).await;
        reconnected(&mut engine_b.incoming).await;
        (a, engine_a, b, engine_b)
    }

    #[tokio::test]
    async fn a_notice_reaches_the_other_node_and_not_its_own() {
        let (a, mut engine_a, b, mut engine_b) = pair(&nats_url()).await;

        // The first notice right after both announced Reconnected must arrive: the round
        // trip in `announce` makes sure B's subscription is live on the server.
        routes_to_the_other_node_only(&a, &mut engine_a, &b, &mut engine_b).await;
    }

    #[tokio::test]
    async fn a_notice_over_one_payload_arrives_whole_and_in_order() {
        let (a, engine_a, _b, mut engine_b) = pair(&nats_url()).await;
        a_large_notice_arrives_whole(&a, &engine_a, &mut engine_b).await;
    }

    /// A nats-server of this test's own, through `scripts/nats-tmp.sh`; stopped on drop.
    struct PrivateServer {
        url: String,
        dir: String,
    }

    fn script(args: &[&str]) -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/nats-tmp.sh");
        let output = std::process::Command::new("bash")
            .arg(path)
            .args(args)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {path}: {e}"));
        assert!(
            output.status.success(),
            "scripts/nats-tmp.sh {args:?} failed (is nats-server installed? \
             apt-get install -y nats-server)"
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn export(lines: &str, name: &str) -> String {
        lines
            .lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .unwrap_or_else(|| panic!("no {name} in {lines:?}"))
            .to_string()
    }

    impl PrivateServer {
        async fn start() -> Self {
            let lines = tokio::task::spawn_blocking(|| script(&["start"]))
                .await
                .unwrap();
            Self {
                url: export(&lines, "NATS_URL"),
                dir: export(&lines, "MATCHCHAT_NATS_DIR"),
            }
        }

        /// Runs `scripts/nats-tmp.sh COMMAND DIR`: `down` stops the server (by its PID) and
        /// keeps its port, `up` starts it again on that port.
        async fn run(&self, command: &'static str) {
            let dir = self.dir.clone();
            tokio::task::spawn_blocking(move || script(&[command, &dir]))
                .await
                .unwrap();
        }
    }

    impl Drop for PrivateServer {
        fn drop(&mut self) {
            let _ = std::process::Command::new("bash")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../scripts/nats-tmp.sh"
                ))
                .args(["stop", &self.dir])
                .status();
        }
    }

    #[tokio::test]
    async fn after_a_server_restart_both_nodes_say_reconnected_and_deliver_again() {
        let server = PrivateServer::start().await;
        let (a, mut engine_a, _b, mut engine_b) = pair(&server.url).await;

        server.run("down").await;
        // While the server is down a publish fails (no queueing of stale notices); the
        // client notices the closed socket within moments: a bounded poll on that.
        let unavailable = async {
            loop {
                match engine_a.bus.publish(&notice(&a, 9..=9)).await {
                    Err(BusError::Unavailable(_)) => break,
                    Err(e) => panic!("expected Unavailable, got {e:?}"),
                    Ok(()) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        };
        tokio::time::timeout(WAIT, unavailable)
            .await
            .expect("publishing kept succeeding with the server down");
        server.run("up").await;

        // Both: A's publish needs A connected, B's delivery needs B resubscribed.
        reconnected(&mut engine_a.incoming).await;
        reconnected(&mut engine_b.incoming).await;

        let sent = notice(&a, 1..=2);
        engine_a.bus.publish(&sent).await.unwrap();
        assert_eq!(next_notice(&mut engine_b.incoming, &[&a]).await, sent);
    }

    #[test]
    fn reconnect_delays_double_from_100_ms_up_to_1_s() {
        let delays: Vec<u64> = (1..=6)
            .map(|n| reconnect_delay(n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(reconnect_delay(0), BACKOFF_FIRST);
        assert_eq!(reconnect_delay(usize::MAX), BACKOFF_MAX);
    }
}
