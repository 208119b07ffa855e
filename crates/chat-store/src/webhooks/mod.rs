//! Storage for webhooks on unseen messages (issue 12): the burst state, the delivery outbox
//! and the scan cursor (migration `2026-11-30-000002_webhooks`), behind [`WebhookStore`].
//!
//! The server's scheduler (`chat-server/src/webhooks`) asks which rooms may hold a due burst
//! ([`WebhookStore::unseen_between`], [`WebhookStore::burst_page`]), which of them are due
//! ([`WebhookStore::due`]), and turns each due one into a delivery
//! ([`WebhookStore::open_burst`]: one transaction that re-checks the burst under its row's
//! lock, so two nodes scanning at once make one delivery). Its sender claims due deliveries
//! ([`WebhookStore::claim`]: `FOR UPDATE SKIP LOCKED` on PostgreSQL, plus a lease) and records
//! each outcome. Nothing here runs on the message path: the message tables are only read.
//!
//! **The rules, in SQL** (`statements.rs`). The recipient of a message is the other member
//! of its room. A *burst* of room R for recipient U is due when, with `notified` the seq U was
//! last notified about in R (`webhook_bursts`, 0 without a row):
//! - R is open;
//! - every message of the other member up to `notified` is seen (or deleted): the previous
//!   burst was marked seen;
//! - some message of the other member after `notified` is unseen (and not deleted) and was
//!   sent at least `notify_after` ago;
//! - the message at `notified` was seen at least `notify_after` ago (a burst that was marked
//!   seen only in part waits `notify_after` from that mark, not from its oldest message);
//! - with `offline_only` (`CHAT_NOTIFY_AFTER_SECS=0`), U has no connection on any node: no
//!   `presence_connections` row of U under a node whose heartbeat is under
//!   [`PRESENCE_FRESH`] old.
//!
//! Open both with [`open_with_webhooks_on`]. On PostgreSQL the store of webhooks has a small
//! connection pool of its own ([`PgWebhooks`]): a slow scan or a burst of outbox writes never
//! takes a connection the chat needs. On SQLite it is the [`SqliteStore`](crate::SqliteStore)
//! itself, so its writes queue with the chat's on the one writer (`sqlite.rs` here says why).

mod postgres;
mod sqlite;
mod statements;
mod via;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_domain::{RoomId, Seq, Timestamp, UserId};

use crate::config::{Backend, StoreConfig};
use crate::error::StoreError;
use crate::repository::Repository;

pub use postgres::PgWebhooks;

/// How recent a node's heartbeat must be for its connections to count (`presence_nodes`):
/// presence's own rule (`chat_domain::presence::NODE_STALE`, 15 s), so a recipient counts
/// as connected for webhooks exactly when presence counts the node alive. Hidden
/// connections (`visible = false`) count too: they are connections.
pub const PRESENCE_FRESH: Duration = chat_domain::presence::NODE_STALE;

/// Connections of a store of webhooks on PostgreSQL: the scheduler's and the sender's calls,
/// which are few and short. Its own pool, so the chat's is never waited on by webhooks.
pub const POOL_SIZE: usize = 3;

/// Bursts opened per transaction ([`WebhookStore::open_bursts`]).
pub const OPEN_CHUNK: usize = 100;

/// A room and the member whose messages there may be waiting for the other member.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Candidate {
    pub room_id: RoomId,
    pub sender_id: UserId,
}

/// A burst that is due: `recipient_id` has not seen `sender_id`'s messages in `room_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DueBurst {
    pub room_id: RoomId,
    pub sender_id: UserId,
    pub recipient_id: UserId,
}

impl DueBurst {
    pub fn candidate(&self) -> Candidate {
        Candidate {
            room_id: self.room_id.clone(),
            sender_id: self.sender_id.clone(),
        }
    }
}

/// When a burst is due (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueRule {
    /// How long a message must stay unseen (`CHAT_NOTIFY_AFTER_SECS`).
    pub notify_after: Duration,
    /// Only when the recipient has no connection on any node (`CHAT_NOTIFY_AFTER_SECS=0`).
    pub offline_only: bool,
}

impl DueRule {
    /// The rule of `CHAT_NOTIFY_AFTER_SECS`: 0 means at commit, for recipients with no
    /// connection on any node.
    pub fn after_secs(secs: u64) -> Self {
        Self {
            notify_after: Duration::from_secs(secs),
            offline_only: secs == 0,
        }
    }

    /// The newest `sent_at` (and mark time) that is due at `now`.
    pub fn cutoff(&self, now: Timestamp) -> i64 {
        now.unix_micros().saturating_sub(micros(self.notify_after))
    }
}

/// A row of `webhook_bursts`: a room and a recipient notified before.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BurstKey {
    pub room_id: RoomId,
    pub recipient_id: UserId,
}

/// One page of the burst rows, for the scheduler's sweep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BurstPage {
    /// Rows whose recipient still has unseen messages in the room: candidates.
    pub open: Vec<Candidate>,
    /// Rows whose recipient has seen everything in the room: to prune.
    pub seen: Vec<BurstKey>,
    /// The last row read, when the page was full.
    pub next: Option<BurstKey>,
}

/// A delivery of the outbox, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The idempotency key the receiver sees (`delivery_id`).
    pub delivery_id: String,
    pub room_id: RoomId,
    pub recipient_id: UserId,
    pub sender_id: UserId,
    /// The recipient's unseen messages in the room when the burst was found.
    pub unseen_count: u64,
    /// The newest of them.
    pub last_seq: Seq,
    pub last_sent_at: Timestamp,
    pub created_at: Timestamp,
    /// Attempts started (a claim counts one).
    pub attempts: u64,
    pub next_attempt_at: Timestamp,
    /// The lease of the sender that claimed it; also the token that sender records the
    /// outcome with.
    pub locked_until: Option<Timestamp>,
    pub last_error: Option<String>,
    /// Set when it was given up.
    pub failed_at: Option<Timestamp>,
}

/// How many deliveries the outbox holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Waiting for a first attempt, a retry, or in flight.
    pub pending: u64,
    /// Given up, kept for `GET /api/webhooks/failed`.
    pub failed: u64,
}

/// What the webhook scheduler and sender need from the database. Every call runs on the
/// store's runtime (the same runtime rule as [`Repository`](crate::Repository)).
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// The `sent_at` the schedulers have scanned up to, if any scan was saved.
    async fn scan_cursor(&self) -> Result<Option<Timestamp>, StoreError>;

    /// Erasure: removes the user's bursts and every delivery about them (as recipient or
    /// sender), pending or failed; returns how many deliveries went.
    async fn forget_user(&self, user: &UserId) -> Result<u64, StoreError>;

    /// Saves the scan cursor; it only moves forward (the newest of all nodes' saves wins).
    async fn save_scan_cursor(&self, at: Timestamp) -> Result<(), StoreError>;

    /// The rooms and senders of the unseen messages sent after `after` and up to `up_to`,
    /// each once (a range of the partial index `messages_unseen_by_time`, aggregated in the
    /// database). Deleted messages may be among them: [`WebhookStore::due`] leaves them out.
    async fn unseen_between(
        &self,
        after: Timestamp,
        up_to: Timestamp,
    ) -> Result<Vec<Candidate>, StoreError>;

    /// A page of `webhook_bursts` rows after `after`, in key order, told apart by whether
    /// their recipient still has unseen messages in the room.
    async fn burst_page(
        &self,
        after: Option<BurstKey>,
        limit: u32,
    ) -> Result<BurstPage, StoreError>;

    /// Deletes these burst rows whose recipient (still) has nothing unseen in the room
    /// (no row means "notified up to 0", which is then the same). Returns how many.
    async fn prune_bursts(&self, keys: &[BurstKey]) -> Result<u64, StoreError>;

    /// Which of these candidates hold a due burst at `now` (read only; see the module docs).
    async fn due(
        &self,
        candidates: &[Candidate],
        now: Timestamp,
        rule: DueRule,
    ) -> Result<Vec<DueBurst>, StoreError>;

    /// Holding the burst rows' locks (taken in key order): checks which of `bursts` are
    /// still due, and for each inserts its delivery (due now) and moves `notified_up_to_seq`
    /// to its newest unseen message. One transaction per [`OPEN_CHUNK`] bursts. Returns the
    /// deliveries made; a burst that is not due (any more) makes none: another node made it,
    /// or the recipient saw the messages meanwhile.
    async fn open_bursts(
        &self,
        bursts: &[DueBurst],
        now: Timestamp,
        rule: DueRule,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// [`WebhookStore::open_bursts`] for one burst.
    async fn open_burst(
        &self,
        burst: &DueBurst,
        now: Timestamp,
        rule: DueRule,
    ) -> Result<Option<Delivery>, StoreError> {
        Ok(self
            .open_bursts(std::slice::from_ref(burst), now, rule)
            .await?
            .pop())
    }

    /// Claims up to `limit` deliveries due at `now` for this sender until `lease_until`:
    /// no other sender gets them before that (`FOR UPDATE SKIP LOCKED` on PostgreSQL), and a
    /// sender that dies releases them when the lease ends. Each claim counts an attempt.
    async fn claim(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// The body of a message, `None` when it is deleted (or unknown).
    async fn message_body(&self, room: &RoomId, seq: Seq) -> Result<Option<String>, StoreError>;

    /// The receiver took these deliveries: they leave the outbox (one statement per 500).
    async fn delivered(&self, delivery_ids: &[String]) -> Result<(), StoreError>;

    /// The attempt failed: try again at `at`. Only while `lease` is still the delivery's
    /// (false: another sender has it now).
    async fn retry_at(
        &self,
        delivery_id: &str,
        lease: Timestamp,
        at: Timestamp,
        error: &str,
    ) -> Result<bool, StoreError>;

    /// The attempt failed and the delivery is too old to try again: kept as failed.
    async fn give_up(
        &self,
        delivery_id: &str,
        lease: Timestamp,
        now: Timestamp,
        error: &str,
    ) -> Result<bool, StoreError>;

    /// How many deliveries are pending and failed.
    async fn counts(&self) -> Result<OutboxCounts, StoreError>;

    /// Failed deliveries, the most recently failed first.
    async fn failed(&self, limit: u32) -> Result<Vec<Delivery>, StoreError>;
}

/// Opens the store `config` names on `runtime` (see [`crate::open_on`]), with its store of
/// webhooks: on PostgreSQL a pool of [`POOL_SIZE`] connections of its own beside the
/// repository's, on SQLite the same store.
pub async fn open_with_webhooks_on(
    config: &StoreConfig,
    runtime: tokio::runtime::Handle,
) -> Result<(Arc<dyn Repository>, Arc<dyn WebhookStore>), StoreError> {
    let config = config.clone();
    runtime
        .spawn(async move { open_with_webhooks(&config).await })
        .await
        .map_err(|e| StoreError::Unavailable(format!("opening the store was cancelled: {e}")))?
}

/// [`open_with_webhooks_on`] on the current runtime.
pub async fn open_with_webhooks(
    config: &StoreConfig,
) -> Result<(Arc<dyn Repository>, Arc<dyn WebhookStore>), StoreError> {
    match &config.backend {
        Backend::Postgres { .. } => {
            let repo = crate::open(config).await?;
            Ok((repo, Arc::new(PgWebhooks::open(config).await?)))
        }
        Backend::Sqlite { path } => {
            tracing::info!(backend = "sqlite", path = %path.display(), "opening store");
            let store = Arc::new(crate::SqliteStore::open(config).await?);
            Ok((store.clone(), store))
        }
    }
}

/// A duration in whole microseconds (saturating).
pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
