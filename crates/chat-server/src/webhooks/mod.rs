//! Webhooks for unseen messages (issue 12, section 1; `docs/host-app.md`, "Webhooks").
//!
//! When a recipient leaves a burst of messages unseen for `CHAT_NOTIFY_AFTER_SECS`, the host
//! app gets one signed `message.unseen` POST at `CHAT_WEBHOOK_URL`, at least once. Nothing of
//! it runs on the message path: two background tasks on the core runtime, per node,
//!
//! - the [`scheduler`] polls the database (every second, and at once after a local commit
//!   when the delay is 0) for bursts that became due and turns each into a row of the
//!   outbox, in the transaction that moves the burst's state (`chat_store::webhooks`);
//! - the [`sender`] claims due rows of the outbox (leased, so in a cluster one node sends
//!   each), POSTs them from a few threads of its own with a time-out, deletes them on 2xx
//!   and otherwise retries with exponential back-off and jitter until
//!   `CHAT_WEBHOOK_GIVE_UP_SECS`, then keeps them as failed (`GET /api/webhooks/failed`).
//!
//! A slow or dead receiver costs the chat nothing: its only effect is a growing outbox.

pub mod scheduler;
pub mod sender;
pub mod signature;

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use chat_domain::protocol::ApiErrorCode;
use chat_domain::{Clock, RoomId, Seq, Timestamp, UserId};
use chat_store::StoreEvent;
use chat_store::webhooks::{Delivery, DueRule, WebhookStore};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;

use crate::api::require_service_key;
use crate::config::Config;
use crate::error::ServerError;
use crate::state::AppState;

/// What the webhook tasks are told by the configuration.
#[derive(Clone)]
pub struct Settings {
    pub url: String,
    pub secret: Vec<u8>,
    pub rule: DueRule,
    pub include_body: bool,
    pub give_up_after: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("url", &chat_store::redact_url(&self.url))
            .field("rule", &self.rule)
            .field("include_body", &self.include_body)
            .field("give_up_after", &self.give_up_after)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// The webhook settings, when `CHAT_WEBHOOK_URL` is set (`Config::validate` made sure
    /// the secret is there too).
    pub fn from_config(config: &Config) -> Option<Self> {
        let url = config.webhook_url.as_deref()?.trim();
        let secret = config.webhook_secret.as_deref()?;
        if url.is_empty() {
            return None;
        }
        Some(Self {
            url: url.to_owned(),
            secret: secret.as_bytes().to_vec(),
            rule: DueRule::after_secs(config.notify_after_secs),
            include_body: config.webhook_include_body,
            give_up_after: Duration::from_secs(config.webhook_give_up_secs),
        })
    }
}

/// The body of a webhook POST.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    #[serde(rename = "type")]
    pub kind: String,
    pub delivery_id: String,
    pub room_id: RoomId,
    pub recipient_id: UserId,
    pub sender_id: UserId,
    /// Every message of the room the recipient has not seen (when the burst was found).
    pub unseen_count: u64,
    /// The newest of them.
    pub last_seq: Seq,
    pub last_sent_at: Timestamp,
    /// The newest message's body, with `CHAT_WEBHOOK_INCLUDE_BODY=true` (and unless it was
    /// deleted since).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// The event type of every webhook so far.
pub const MESSAGE_UNSEEN: &str = "message.unseen";

impl Payload {
    pub fn of(delivery: &Delivery, body: Option<String>) -> Self {
        Self {
            kind: MESSAGE_UNSEEN.to_owned(),
            delivery_id: delivery.delivery_id.clone(),
            room_id: delivery.room_id.clone(),
            recipient_id: delivery.recipient_id.clone(),
            sender_id: delivery.sender_id.clone(),
            unseen_count: delivery.unseen_count,
            last_seq: delivery.last_seq,
            last_sent_at: delivery.last_sent_at,
            body,
        }
    }
}

/// The running webhook tasks of this node.
pub struct Webhooks {
    stop: watch::Sender<bool>,
    scheduler: JoinHandle<()>,
    sender: JoinHandle<()>,
}

/// How long shutdown waits for the scheduler's last pass and the sender's POSTs in flight.
const STOP_GRACE: Duration = Duration::from_secs(6);

impl Webhooks {
    /// Starts the scheduler and the sender on the current runtime (the core runtime).
    pub fn start(
        settings: Settings,
        store: Arc<dyn WebhookStore>,
        events: broadcast::Receiver<Arc<StoreEvent>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        tracing::info!(
            url = %chat_store::redact_url(&settings.url),
            notify_after_secs = settings.rule.notify_after.as_secs(),
            offline_only = settings.rule.offline_only,
            include_body = settings.include_body,
            give_up_secs = settings.give_up_after.as_secs(),
            "webhooks on"
        );
        let (stop, stopped) = watch::channel(false);
        let wake_sender = Arc::new(Notify::new());
        let scheduler = tokio::spawn(
            scheduler::Scheduler::new(
                store.clone(),
                clock.clone(),
                settings.rule,
                wake_sender.clone(),
            )
            .run(events, stopped.clone()),
        );
        let sender =
            tokio::spawn(sender::Sender::new(store, clock, settings, wake_sender).run(stopped));
        Self {
            stop,
            scheduler,
            sender,
        }
    }

    /// Stops both tasks: the scheduler saves its cursor, the sender stops claiming, waits
    /// for the POSTs in flight and hands back the leases of those that did not finish.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for (name, task) in [("scheduler", self.scheduler), ("sender", self.sender)] {
            let abort = task.abort_handle();
            if tokio::time::timeout(STOP_GRACE, task).await.is_err() {
                tracing::warn!(task = name, "webhook task did not stop in time");
                abort.abort();
            }
        }
    }
}

/// `GET /api/webhooks/failed`, registered before the `/api` scope of `api.rs`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(crate::api::resource("/api/webhooks/failed").route(web::get().to(failed)));
}

#[derive(Debug, Deserialize)]
struct FailedQuery {
    limit: Option<u32>,
}

/// The most failed deliveries one call lists.
const MAX_FAILED_LIMIT: u32 = 1000;

/// One failed delivery, as `GET /api/webhooks/failed` lists it.
#[derive(Debug, Serialize)]
struct FailedDelivery {
    delivery_id: String,
    room_id: RoomId,
    recipient_id: UserId,
    sender_id: UserId,
    unseen_count: u64,
    last_seq: Seq,
    last_sent_at: Timestamp,
    created_at: Timestamp,
    attempts: u64,
    failed_at: Option<Timestamp>,
    last_error: Option<String>,
}

/// `GET /api/webhooks/failed?limit=`: deliveries given up, the most recently failed first
/// (`limit` 1..=1000, default 100). `404` when webhooks are off.
async fn failed(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ServerError> {
    require_service_key(&req, &state)?;
    let query = web::Query::<FailedQuery>::from_query(req.query_string()).map_err(|e| {
        ServerError::BadRequest {
            code: ApiErrorCode::InvalidQuery,
            message: e.to_string(),
        }
    })?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_FAILED_LIMIT).contains(&limit) {
        return Err(ServerError::BadRequest {
            code: ApiErrorCode::InvalidQuery,
            message: format!("limit must be between 1 and {MAX_FAILED_LIMIT}"),
        });
    }
    let store = state.webhooks.as_ref().ok_or(ServerError::NotFound)?;
    let failed: Vec<FailedDelivery> = store
        .failed(limit)
        .await?
        .into_iter()
        .map(|d| FailedDelivery {
            delivery_id: d.delivery_id,
            room_id: d.room_id,
            recipient_id: d.recipient_id,
            sender_id: d.sender_id,
            unseen_count: d.unseen_count,
            last_seq: d.last_seq,
            last_sent_at: d.last_sent_at,
            created_at: d.created_at,
            attempts: d.attempts,
            failed_at: d.failed_at,
            last_error: d.last_error,
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "failed": failed })))
}

/// `at` moved back by `by` (saturating at the epoch).
pub(crate) fn before(at: Timestamp, by: Duration) -> Timestamp {
    shift(at, -micros(by))
}

/// `at` moved forward by `by`.
pub(crate) fn after(at: Timestamp, by: Duration) -> Timestamp {
    shift(at, micros(by))
}

fn shift(at: Timestamp, micros: i64) -> Timestamp {
    Timestamp::from_unix_micros(at.unix_micros().saturating_add(micros).max(0)).unwrap_or(at)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
