//! The server's background services, started together and stopped in one documented order.
//!
//! Started on the core runtime: the registry (fans committed events out to connections), the
//! group-commit writers, the rate limiters' housekeeping, the presence service (unless
//! `CHAT_PRESENCE=off`; `presence.rs`), retention (with `CHAT_RETENTION_DAYS`; `privacy.rs`),
//! the webhook scheduler and sender (with `CHAT_WEBHOOK_URL`; `webhooks/`), and on a cluster
//! node the publisher of this node's notices (`cluster/`).
//!
//! Shutdown order (after SIGTERM or SIGINT), and why:
//! 1. The registry refuses new connections and closes every socket with 1001
//!    `server_shutdown` ([`Services::close_connections`]); we wait up to 5 s for them to go,
//!    so clients move to another node at once.
//! 2. HTTP stops (actix finishes requests in flight within its grace period).
//! 3. [`Services::finish`]: every `WriterHandle` clone is dropped by then, so each writer
//!    commits what is already queued and stops (within 10 s): a send that was queued is
//!    committed even if its socket is gone, and the client finds it on catch-up.
//! 4. The webhook tasks stop, when webhooks are on (`webhooks/`): the scheduler saves its
//!    scan cursor, the sender claims nothing more, lets the POSTs in flight finish (up to
//!    5 s) and hands the leases of the others back to the outbox, so another node (or this
//!    one, restarted) sends them at once. They come after the writers only because the
//!    writers' last commits are the more urgent work; nothing they hold is lost either way
//!    (the outbox and the bursts are in the database).
//! 5. On a cluster node, the publisher announces the last commits (up to 2 s). Housekeeping,
//!    presence, retention and the registry task are stopped last (presence rows stay; they
//!    are reaped once this node's heartbeat is stale, see `presence.rs`).

use std::sync::Arc;
use std::time::Duration;

use chat_domain::Clock;
use chat_store::Repository;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cluster::Engine;
use crate::cluster::publisher::Publisher;
use crate::config::Config;
use crate::ratelimit::{self, KeyFailures, RequestLimiter, SendLimiter, TypingLimiter};
use crate::registry::{ClusterInputs, RegistryConfig, RegistryHandle};
use crate::writer::WriterHandle;

/// Frames a connection's mailbox holds before the connection counts as too slow.
const MAILBOX_CAPACITY: usize = 256;
/// Jobs a writer queue holds before senders wait.
const WRITER_QUEUE: usize = 8192;
/// How long shutdown waits for writes to finish.
const WRITERS_GRACE: Duration = Duration::from_secs(10);
/// Ephemeral frames (typing, presence) waiting for the cluster publisher; beyond, they
/// stay local (they are hints, and late ones are useless).
const EPHEMERAL_QUEUE: usize = 4096;
/// How often a retention pass runs (`CHAT_RETENTION_DAYS`).
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// How long shutdown waits for sockets to close.
const SOCKETS_GRACE: Duration = Duration::from_secs(5);

/// Handles to the running services, cloned into the application state.
pub struct Handles {
    pub registry: RegistryHandle,
    pub writer: WriterHandle,
    pub limiter: SendLimiter,
    pub requests: RequestLimiter,
    pub typing: TypingLimiter,
    pub key_failures: Arc<KeyFailures>,
}

/// The services' tasks, kept to stop them in order.
pub struct Services {
    registry: RegistryHandle,
    registry_task: JoinHandle<()>,
    writer_tasks: Vec<JoinHandle<()>>,
    housekeeping: JoinHandle<()>,
    publisher: Option<Publisher>,
    presence: Option<JoinHandle<()>>,
    retention: Option<JoinHandle<()>>,
    webhooks: Option<crate::webhooks::Webhooks>,
}

impl Services {
    /// Starts every service on `core`; `engine` is the cluster bus (none on a single node).
    pub fn start(
        core: &tokio::runtime::Handle,
        config: &Config,
        store: Arc<dyn Repository>,
        clock: Arc<dyn Clock>,
        writers: usize,
        node: &str,
        engine: Option<(String, Engine)>,
    ) -> (Self, Handles) {
        let _enter = core.enter();
        let (cluster_inputs, publisher) = match engine {
            Some((node, engine)) => {
                let (ephemeral_out, ephemeral_in) = mpsc::channel(EPHEMERAL_QUEUE);
                (
                    Some(ClusterInputs {
                        incoming: engine.incoming,
                        store: store.clone(),
                        sweep_every: Duration::from_millis(config.bus_sweep_ms),
                        ephemeral_out,
                    }),
                    Some(Publisher::spawn(
                        node,
                        engine.bus,
                        store.events().subscribe(),
                        ephemeral_in,
                    )),
                )
            }
            None => (None, None),
        };
        let (presence_tx, presence_rx) = if config.presence_enabled() {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let (registry, registry_task) = RegistryHandle::spawn(
            RegistryConfig {
                max_connections_per_user: config.max_connections_per_user,
                mailbox_capacity: MAILBOX_CAPACITY,
                clock: clock.clone(),
                presence: presence_tx,
            },
            store.events().subscribe(),
            cluster_inputs,
        );
        let presence = presence_rx.map(|changes| {
            crate::presence::spawn(
                node.to_owned(),
                store.clone(),
                registry.clone(),
                clock.clone(),
                changes,
            )
        });
        let retention = config.retention_days.map(|days| {
            tracing::info!(days, "retention on: older bodies are erased hourly");
            crate::privacy::spawn_retention(store.clone(), clock.clone(), days, RETENTION_EVERY)
        });
        let (writer, writer_tasks) =
            WriterHandle::spawn(store, clock, writers, config.max_batch, WRITER_QUEUE);
        let limiter = SendLimiter::new(config.rate_per_sec, config.rate_burst);
        let requests = RequestLimiter::new(config.request_rate_per_sec, config.request_rate_burst);
        let typing = TypingLimiter::new(1, 1);
        let key_failures = Arc::new(KeyFailures::default());
        let housekeeping =
            ratelimit::spawn_housekeeping(&limiter, &requests, &typing, &key_failures);
        let services = Self {
            registry: registry.clone(),
            registry_task,
            writer_tasks,
            housekeeping,
            publisher,
            presence,
            retention,
            webhooks: None,
        };
        let handles = Handles {
            registry,
            writer,
            limiter,
            requests,
            typing,
            key_failures,
        };
        (services, handles)
    }

    /// Starts the webhook scheduler and sender on `core` (`CHAT_WEBHOOK_URL` is set).
    pub fn start_webhooks(
        &mut self,
        core: &tokio::runtime::Handle,
        settings: crate::webhooks::Settings,
        hooks: Arc<dyn chat_store::WebhookStore>,
        store: &dyn Repository,
        clock: Arc<dyn Clock>,
    ) {
        let _enter = core.enter();
        self.webhooks = Some(crate::webhooks::Webhooks::start(
            settings,
            hooks,
            store.events().subscribe(),
            clock,
        ));
    }

    /// Step 1: closes every socket with 1001 and refuses new ones; waits for them to go.
    pub async fn close_connections(registry: &RegistryHandle) {
        registry.shutdown().await;
        let left = registry.drained(SOCKETS_GRACE).await;
        if left > 0 {
            tracing::warn!(left, "connections still open at shutdown");
        }
    }

    /// Steps 3 to 5, once HTTP has stopped and every writer handle is dropped.
    pub async fn finish(self) {
        for task in self.writer_tasks {
            if tokio::time::timeout(WRITERS_GRACE, task).await.is_err() {
                tracing::warn!("a writer did not finish in time");
            }
        }
        self.housekeeping.abort();
        if let Some(webhooks) = self.webhooks {
            webhooks.stop().await;
        }
        // Presence rows stay: the node stops beating, and the other nodes (or this one's
        // successor) reap them after NODE_STALE, so users who reconnect elsewhere never flap.
        if let Some(presence) = self.presence {
            presence.abort();
        }
        // A retention pass stops between transactions; the next start begins a new one.
        if let Some(retention) = self.retention {
            retention.abort();
        }
        if let Some(publisher) = self.publisher {
            // The writers are done, so every commit's event is on the bus: announce them.
            publisher.finish(Duration::from_secs(2)).await;
        }
        self.registry_task.abort();
        drop(self.registry);
    }
}
