//! Sends the outbox: claims due deliveries (leased for [`LEASE`], so in a cluster one node
//! sends each and a node that dies mid-send releases them when the lease ends), POSTs each
//! signed payload with a [`REQUEST_TIMEOUT`], at most [`CONCURRENCY`] at once, from threads
//! of its own ([`HttpPool`]: the client blocks, and Tokio's blocking pool is SQLite's), then
//! records the outcome: 2xx deletes the delivery (the deletes of POSTs that end together go
//! in one statement); anything else schedules a retry after
//! [`backoff`] (exponential, with jitter, the first within 5 s), until
//! `CHAT_WEBHOOK_GIVE_UP_SECS` after the delivery was made, when it is kept as failed.
//!
//! The loop claims when the scheduler made deliveries, when a POST finished (a slot is
//! free), and every [`TICK`] (retries coming due, other nodes' deliveries).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_domain::{Clock, Timestamp};
use chat_store::webhooks::{Delivery, WebhookStore};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::{Payload, Settings, after, signature};
use crate::metrics;

/// POSTs in flight at most, per node (and threads of the [`HttpPool`]).
pub const CONCURRENCY: usize = 8;
/// One POST, connection and answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claim holds a delivery: longer than a POST and the writes around it.
pub const LEASE: Duration = Duration::from_secs(60);
/// How often the sender looks for due deliveries without being woken.
pub const TICK: Duration = Duration::from_secs(1);
/// How often the outbox gauges are read.
const COUNT_EVERY: Duration = Duration::from_secs(10);
/// How long shutdown waits for the POSTs in flight.
const DRAIN: Duration = Duration::from_secs(5);
/// The first retry's nominal delay (then doubling), and the longest.
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(600);

/// The delay before the retry that follows `attempts` failed attempts: 2 s, 4 s, 8 s, ...
/// up to 10 min, each drawn uniformly from half to one and a half of that (jitter, so a
/// receiver that comes back is not hit by every node's retries at once). The first retry
/// comes after 1 to 3 s.
pub fn backoff(attempts: u64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20) as u32;
    let nominal = FIRST_RETRY.saturating_mul(1u32 << doublings).min(MAX_RETRY);
    let jitter = random_unit();
    nominal.mul_f64(0.5 + jitter)
}

/// A number in `[0, 1)`, from the process's randomly seeded hasher (no RNG crate for this).
fn random_unit() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

pub struct Sender {
    store: Arc<dyn WebhookStore>,
    clock: Arc<dyn Clock>,
    settings: Arc<Settings>,
    wake: Arc<Notify>,
    http: HttpPool,
    /// Deliveries in flight: id -> lease.
    in_flight: Arc<Mutex<HashMap<String, Timestamp>>>,
}

impl Sender {
    pub fn new(
        store: Arc<dyn WebhookStore>,
        clock: Arc<dyn Clock>,
        settings: Settings,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            clock,
            http: HttpPool::new(CONCURRENCY, REQUEST_TIMEOUT),
            settings: Arc::new(settings),
            wake,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Runs until `stop` turns true; then waits up to [`DRAIN`] for the POSTs in flight and
    /// hands back the leases of the others, so another node (or this one, restarted) sends
    /// them at once instead of after their lease.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        let mut tasks = JoinSet::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_count: Option<Instant> = None;
        let mut failures = 0u64;
        let (delivered, mut delivered_ids) = mpsc::unbounded_channel::<String>();
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(id) = delivered_ids.recv() => {
                    self.record_delivered(id, &mut delivered_ids).await;
                }
                _ = self.wake.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = tick.tick() => {}
            }
            while tasks.try_join_next().is_some() {}
            match self.claim_and_send(&slots, &mut tasks, &delivered).await {
                Ok(()) => failures = 0,
                Err(error) => {
                    if failures.is_multiple_of(60) {
                        tracing::warn!(%error, "webhooks: claiming deliveries failed; retrying");
                    }
                    failures += 1;
                }
            }
            if last_count.is_none_or(|at| at.elapsed() >= COUNT_EVERY) {
                last_count = Some(Instant::now());
                if let Ok(counts) = self.store.counts().await {
                    ::metrics::gauge!(metrics::WEBHOOK_OUTBOX_PENDING).set(counts.pending as f64);
                    ::metrics::gauge!(metrics::WEBHOOK_OUTBOX_FAILED).set(counts.failed as f64);
                }
            }
        }
        // Shutdown: what is in flight may finish; the rest goes back to the outbox.
        let drained =
            tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
        if let Ok(id) = delivered_ids.try_recv() {
            self.record_delivered(id, &mut delivered_ids).await;
        }
        if drained.is_err() {
            tasks.abort_all();
            let left: Vec<(String, Timestamp)> = self
                .in_flight
                .lock()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
                .unwrap_or_default();
            let now = self.clock.now();
            for (id, lease) in &left {
                let _ = self
                    .store
                    .retry_at(id, *lease, now, "interrupted by a shutdown")
                    .await;
            }
            if !left.is_empty() {
                tracing::warn!(
                    deliveries = left.len(),
                    "webhooks: POSTs cut by the shutdown go back to the outbox"
                );
            }
        }
    }

    /// Deletes `first` and every other delivered delivery waiting in `more`, in one go.
    async fn record_delivered(&self, first: String, more: &mut mpsc::UnboundedReceiver<String>) {
        let mut ids = vec![first];
        while let Ok(id) = more.try_recv() {
            ids.push(id);
        }
        if let Err(error) = self.store.delivered(&ids).await {
            // They will be sent again when their leases end: at least once.
            tracing::warn!(%error, deliveries = ids.len(), "webhooks: delivered, but not recorded; they will be sent again");
        }
    }

    /// Claims as many due deliveries as there are free slots, and starts their POSTs.
    async fn claim_and_send(
        &self,
        slots: &Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
        delivered: &mpsc::UnboundedSender<String>,
    ) -> Result<(), chat_store::StoreError> {
        loop {
            let free = slots.available_permits();
            if free == 0 {
                return Ok(());
            }
            let now = self.clock.now();
            let lease = after(now, LEASE);
            let claimed = self.store.claim(now, lease, free as u32).await?;
            let got = claimed.len();
            for delivery in claimed {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    // Cannot happen (this loop is the only taker); the lease will end.
                    break;
                };
                let attempt = Attempt {
                    store: self.store.clone(),
                    clock: self.clock.clone(),
                    settings: self.settings.clone(),
                    http: self.http.clone(),
                    in_flight: self.in_flight.clone(),
                    delivered: delivered.clone(),
                    lease,
                };
                if let Ok(mut in_flight) = self.in_flight.lock() {
                    in_flight.insert(delivery.delivery_id.clone(), lease);
                }
                tasks.spawn(async move {
                    attempt.run(delivery).await;
                    drop(slot);
                });
            }
            if got < free {
                return Ok(());
            }
        }
    }
}

/// One attempt at one delivery.
struct Attempt {
    store: Arc<dyn WebhookStore>,
    clock: Arc<dyn Clock>,
    settings: Arc<Settings>,
    http: HttpPool,
    in_flight: Arc<Mutex<HashMap<String, Timestamp>>>,
    /// Where a 2xx sends the delivery's id, for the sender to delete.
    delivered: mpsc::UnboundedSender<String>,
    lease: Timestamp,
}

/// How an attempt ended, for `matchchat_webhook_attempts_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// The receiver answered, but not 2xx.
    Refused,
    Timeout,
    /// No answer: connection refused, DNS, TLS, a cut connection.
    Network,
    /// Not sent: the database did not give the message's body.
    Store,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Network => "network",
            Self::Store => "store_error",
        }
    }
}

impl Attempt {
    async fn run(self, delivery: Delivery) {
        let body = if self.settings.include_body {
            match self
                .store
                .message_body(&delivery.room_id, delivery.last_seq)
                .await
            {
                Ok(body) => body,
                Err(error) => {
                    // Without the body it cannot be sent as configured: try again later.
                    self.failed(
                        &delivery,
                        Outcome::Store,
                        &format!("reading the body: {error}"),
                    )
                    .await;
                    return self.done(&delivery);
                }
            }
        } else {
            None
        };
        let payload = match serde_json::to_string(&Payload::of(&delivery, body)) {
            Ok(json) => json,
            Err(error) => {
                tracing::error!(%error, "webhooks: payload did not serialise");
                return self.done(&delivery);
            }
        };
        let signature = signature::sign(
            &self.settings.secret,
            self.clock.now().unix_seconds(),
            &payload,
        );
        let started = Instant::now();
        let answer = self
            .http
            .post(
                self.settings.url.clone(),
                payload,
                signature,
                delivery.delivery_id.clone(),
            )
            .await;
        ::metrics::histogram!(metrics::WEBHOOK_REQUEST_SECONDS).record(started.elapsed());
        match answer {
            Ok(status) if (200..300).contains(&status) => {
                ::metrics::counter!(metrics::WEBHOOK_ATTEMPTS, "outcome" => Outcome::Delivered.label())
                    .increment(1);
                ::metrics::histogram!(metrics::WEBHOOK_DELIVERY_SECONDS).record(
                    metrics::seconds_since(delivery.created_at, self.clock.now()),
                );
                let _ = self.delivered.send(delivery.delivery_id.clone());
            }
            Ok(status) => {
                self.failed(&delivery, Outcome::Refused, &format!("HTTP {status}"))
                    .await;
            }
            Err(PostError::Timeout) => {
                let error = format!("no answer within {} s", REQUEST_TIMEOUT.as_secs());
                self.failed(&delivery, Outcome::Timeout, &error).await;
            }
            Err(PostError::Network(error)) => {
                self.failed(&delivery, Outcome::Network, &error).await;
            }
        }
        self.done(&delivery);
    }

    fn done(&self, delivery: &Delivery) {
        if let Ok(mut in_flight) = self.in_flight.lock() {
            in_flight.remove(&delivery.delivery_id);
        }
    }

    /// Schedules a retry, or gives the delivery up when it is too old for one.
    async fn failed(&self, delivery: &Delivery, outcome: Outcome, error: &str) {
        ::metrics::counter!(metrics::WEBHOOK_ATTEMPTS, "outcome" => outcome.label()).increment(1);
        let now = self.clock.now();
        let deadline = after(delivery.created_at, self.settings.give_up_after);
        let recorded = if now >= deadline {
            ::metrics::counter!(metrics::WEBHOOK_GIVEN_UP).increment(1);
            tracing::warn!(
                delivery = %delivery.delivery_id,
                attempts = delivery.attempts,
                error,
                "webhooks: delivery given up"
            );
            self.store
                .give_up(&delivery.delivery_id, self.lease, now, error)
                .await
        } else {
            // The last try is at the deadline itself.
            let at = after(now, backoff(delivery.attempts)).min(deadline);
            tracing::debug!(delivery = %delivery.delivery_id, attempts = delivery.attempts, error, "webhook attempt failed");
            self.store
                .retry_at(&delivery.delivery_id, self.lease, at, error)
                .await
        };
        if let Err(store_error) = recorded {
            tracing::warn!(error = %store_error, delivery = %delivery.delivery_id, "webhooks: could not record a failed attempt; its lease will end");
        }
    }
}

/// Why a POST got no answer.
#[derive(Debug)]
enum PostError {
    Timeout,
    Network(String),
}

/// One POST for a worker thread.
struct Job {
    url: String,
    body: String,
    signature: String,
    delivery_id: String,
    reply: oneshot::Sender<Result<u16, PostError>>,
}

/// A few threads that run the blocking HTTP client (ureq), fed through a channel. Threads of
/// their own, not Tokio's blocking pool: that pool runs SQLite's statements, and a dead
/// receiver holding its threads for the time-out must not make the chat wait.
#[derive(Clone)]
struct HttpPool {
    jobs: std::sync::mpsc::SyncSender<Job>,
    timeout: Duration,
}

impl HttpPool {
    fn new(threads: usize, timeout: Duration) -> Self {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(threads);
        let queue = Arc::new(Mutex::new(queue));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("matchchat-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        for i in 0..threads {
            let (queue, agent) = (queue.clone(), agent.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("chat-webhook-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => break,
                        };
                        let Ok(job) = job else { break };
                        let answer = post(&agent, &job);
                        let _ = job.reply.send(answer);
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "webhooks: could not start an HTTP thread");
            }
        }
        Self { jobs, timeout }
    }

    async fn post(
        &self,
        url: String,
        body: String,
        signature: String,
        delivery_id: String,
    ) -> Result<u16, PostError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            url,
            body,
            signature,
            delivery_id,
            reply,
        };
        if self.jobs.try_send(job).is_err() {
            return Err(PostError::Network("no free HTTP thread".into()));
        }
        // The client's own time-out ends the call; this one only guards against a lost reply.
        match tokio::time::timeout(self.timeout + Duration::from_secs(5), answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(PostError::Network("the HTTP thread stopped".into())),
            Err(_) => Err(PostError::Timeout),
        }
    }
}

/// The POST itself, on a worker thread. Reads (and drops) up to 64 KiB of the answer, so
/// the connection can be reused.
fn post(agent: &ureq::Agent, job: &Job) -> Result<u16, PostError> {
    let response = agent
        .post(&job.url)
        .header("Content-Type", "application/json")
        .header(signature::HEADER, &job.signature)
        .header("X-Matchchat-Delivery", &job.delivery_id)
        .send(job.body.as_str());
    match response {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let _ = response
                .body_mut()
                .with_config()
                .limit(64 * 1024)
                .read_to_vec();
            Ok(status)
        }
        Err(ureq::Error::Timeout(_)) => Err(PostError::Timeout),
        Err(error) => Err(PostError::Network(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for _ in 0..200 {
            let first = backoff(1);
            assert!(
                first >= Duration::from_secs(1) && first < Duration::from_secs(3),
                "{first:?}"
            );
            let fourth = backoff(4);
            assert!(
                fourth >= Duration::from_secs(8) && fourth < Duration::from_secs(24),
                "{fourth:?}"
            );
            let late = backoff(40);
            assert!(
                late >= Duration::from_secs(300) && late < Duration::from_secs(900),
                "{late:?}"
            );
        }
        let draws: std::collections::HashSet<u128> =
            (0..50).map(|_| backoff(1).as_nanos()).collect();
        assert!(draws.len() > 40, "jittered: {draws:?}");
    }
}
