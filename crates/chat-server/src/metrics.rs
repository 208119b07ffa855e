//! Prometheus metrics: every name is here, once (`docs/host-app.md` lists them), recorded
//! through the `metrics` facade and rendered by `metrics-exporter-prometheus` (a well-kept
//! crate of the field: the text format, histograms with real buckets, no hand-written
//! exposition). `GET /metrics` serves them: on `CHAT_METRICS_BIND` when set, else on the
//! public port behind the service key.

use std::time::Duration;

use chat_store::PoolStatus;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Open WebSocket connections (gauge).
pub const CONNECTIONS: &str = "matchchat_connections";
/// Client frames received, by `type` (`invalid` for those that did not parse).
pub const FRAMES_IN: &str = "matchchat_frames_in_total";
/// Server frames queued for connections, by `type`.
pub const FRAMES_OUT: &str = "matchchat_frames_out_total";
/// Messages committed (new rows, not de-duplicated retries).
pub const MESSAGES_COMMITTED: &str = "matchchat_messages_committed_total";
/// Messages per group-commit transaction (histogram).
pub const BATCH_SIZE: &str = "matchchat_batch_size";
/// One group commit's duration (histogram).
pub const COMMIT_SECONDS: &str = "matchchat_commit_seconds";
/// Per hop of a message, the time spent (histograms), in path order: a send waiting in its
/// writer's queue for a batch; the group commit ([`COMMIT_SECONDS`]); from the batch's start
/// (`sent_at`) to the frame in the mailboxes ([`COMMIT_TO_MAILBOX_SECONDS`]); a frame waiting
/// in a connection's mailbox; a frame waiting in its outbox for the socket. Together they
/// are the server's part of a message's latency (`docs/benchmarks.md`, "Where the time
/// goes, per hop").
pub const WRITER_QUEUE_SECONDS: &str = "matchchat_writer_queue_seconds";
pub const MAILBOX_WAIT_SECONDS: &str = "matchchat_mailbox_wait_seconds";
pub const OUTBOX_WAIT_SECONDS: &str = "matchchat_outbox_wait_seconds";
/// From a message's `sent_at` (the batch's start) to its frame in the mailboxes (histogram).
pub const COMMIT_TO_MAILBOX_SECONDS: &str = "matchchat_commit_to_mailbox_seconds";
/// Connections closed as `slow_consumer`, by `cause` (`mailbox` full or `write` stalled).
pub const SLOW_CONSUMER_CLOSES: &str = "matchchat_slow_consumer_closes_total";
/// Requests refused as `rate_limited`, by `request` (`send`, `history`, `seen`,
/// `service_key`).
pub const RATE_LIMITED: &str = "matchchat_rate_limited_total";
/// Database pool: connections by `state` (`in_use`, `idle`), its `max`, and callers waiting.
pub const DB_POOL_CONNECTIONS: &str = "matchchat_db_pool_connections";
pub const DB_POOL_MAX: &str = "matchchat_db_pool_max_connections";
pub const DB_POOL_WAITING: &str = "matchchat_db_pool_waiting";
/// Cluster bus: notices received from other nodes, reconnects, failed publishes, and the
/// lag from a remote message's `sent_at` to its arrival here (histogram).
pub const BUS_NOTICES_RECEIVED: &str = "matchchat_bus_notices_received_total";
pub const BUS_RECONNECTS: &str = "matchchat_bus_reconnects_total";
pub const BUS_PUBLISH_FAILURES: &str = "matchchat_bus_publish_failures_total";
pub const BUS_LAG_SECONDS: &str = "matchchat_bus_lag_seconds";
/// Webhooks (`webhooks/`): deliveries waiting in the outbox (pending: due, retrying or in
/// flight) and kept as failed, read from the database every 10 s (the same on every node of a
/// cluster: do not sum them); deliveries made (bursts found); POST attempts by `outcome`
/// (`delivered`, `refused` (a non-2xx answer), `timeout`, `network`, `store_error`);
/// deliveries given up; one POST's duration, a delivery's time from being made to its 2xx,
/// and one scheduler pass (histograms).
pub const WEBHOOK_OUTBOX_PENDING: &str = "matchchat_webhook_outbox_pending";
pub const WEBHOOK_OUTBOX_FAILED: &str = "matchchat_webhook_outbox_failed";
pub const WEBHOOK_DELIVERIES_CREATED: &str = "matchchat_webhook_deliveries_created_total";
pub const WEBHOOK_ATTEMPTS: &str = "matchchat_webhook_attempts_total";
pub const WEBHOOK_GIVEN_UP: &str = "matchchat_webhook_given_up_total";
pub const WEBHOOK_REQUEST_SECONDS: &str = "matchchat_webhook_request_seconds";
pub const WEBHOOK_DELIVERY_SECONDS: &str = "matchchat_webhook_delivery_seconds";
pub const WEBHOOK_SCAN_SECONDS: &str = "matchchat_webhook_scan_seconds";

/// Buckets of every `_seconds` histogram: 10 µs to 5 s, fine below 2.5 ms, where a message's
/// hops sit on an idle server (an end-to-end latency of ~1 ms split over five hops: the
/// quantiles `chat-bench latency --breakdown` estimates from them are only as good as the
/// bucket a quantile falls in), coarser above, where a tail is only told apart in steps.
const SECONDS_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_15, 0.000_25, 0.000_35, 0.000_5, 0.000_75, 0.001,
    0.001_5, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Buckets of [`WEBHOOK_DELIVERY_SECONDS`]: a delivery can take from milliseconds to the
/// give-up time (a day by default), retries included.
const DELIVERY_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
    86400.0,
];
/// Buckets of the batch size: powers of two up to the largest batch (512).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Installs the process's recorder. Returns the handle that renders the text format.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS)?
        // A full name wins over the `_seconds` suffix (the exporter checks `Full` first).
        .set_buckets_for_metric(
            Matcher::Full(WEBHOOK_DELIVERY_SECONDS.into()),
            DELIVERY_BUCKETS,
        )?
        .install_recorder()
}

/// Keeps the histograms' buffers drained (the exporter asks for it when it serves no HTTP
/// itself). Runs until aborted.
pub fn spawn_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}

/// Records the pool's state (read at scrape time: it is a gauge of now).
pub fn record_pool(status: PoolStatus) {
    let in_use = status.size.saturating_sub(status.available);
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "in_use").set(in_use as f64);
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "idle").set(status.available as f64);
    metrics::gauge!(DB_POOL_MAX).set(status.max_size as f64);
    metrics::gauge!(DB_POOL_WAITING).set(status.waiting as f64);
}

/// Seconds from a timestamp to now, for the latency histograms (0 when the clock moved back).
pub fn seconds_since(then: chat_domain::Timestamp, now: chat_domain::Timestamp) -> f64 {
    let micros = now.unix_micros().saturating_sub(then.unix_micros()).max(0);
    micros as f64 / 1_000_000.0
}
