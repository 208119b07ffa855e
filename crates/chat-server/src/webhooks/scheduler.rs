//! Finds the bursts that became due and puts their deliveries in the outbox.
//!
//! Every [`TICK`] (and, when `CHAT_NOTIFY_AFTER_SECS=0`, at most [`MIN_GAP`] after a local
//! commit) a pass:
//! 1. reads the unseen messages sent in `(cursor - margin, now - N]` (the partial index
//!    `messages_unseen_by_time`) and takes their rooms and senders as candidates. The
//!    margin ([`MARGIN`], and [`DEEP_MARGIN`] every [`DEEP_EVERY`] and at start) covers
//!    messages committed late (a long transaction, clocks of other nodes): re-reading is
//!    harmless, since a burst makes one delivery however often it is found;
//! 2. adds the rooms a recipient marked seen [`Rule`'s `notify_after`] ago (from this node's
//!    store events: a burst seen only in part starts a new burst at the mark) and, every
//!    [`SWEEP_EVERY`] and at start, every stored burst whose recipient still has unseen
//!    messages (the safety net for marks made on another node or before a crash; it also
//!    prunes the rows of bursts seen to the end);
//! 3. asks the store which candidates are due, and opens each due burst (one transaction
//!    that re-checks it under the burst row's lock: two nodes scanning at once make one
//!    delivery), then wakes the sender.
//!
//! The cursor is saved every [`SAVE_EVERY`] and at shutdown; after a restart the scan goes
//! back [`DEEP_MARGIN`] behind the saved cursor, so a crash loses no burst. On a first start
//! (no saved cursor) it starts [`DEEP_MARGIN`] before now: messages older than that, from
//! before webhooks were on, are never notified.
//!
//! [`Rule`'s `notify_after`]: chat_store::webhooks::DueRule

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_domain::{Clock, Timestamp};
use chat_store::StoreEvent;
use chat_store::webhooks::{BurstKey, Candidate, DueRule, WebhookStore};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, broadcast, watch};

use super::{after, before};
use crate::metrics;

/// How often a pass runs.
pub const TICK: Duration = Duration::from_secs(1);
/// The least time between two passes woken by commits (`CHAT_NOTIFY_AFTER_SECS=0`).
pub const MIN_GAP: Duration = Duration::from_millis(100);
/// How far behind its cursor an ordinary pass reads again.
pub const MARGIN: Duration = Duration::from_secs(5);
/// How far behind its cursor a deep pass (at start, then every [`DEEP_EVERY`]) reads.
pub const DEEP_MARGIN: Duration = Duration::from_secs(120);
pub const DEEP_EVERY: Duration = Duration::from_secs(60);
/// How often every stored burst is looked at again (and seen ones pruned).
pub const SWEEP_EVERY: Duration = Duration::from_secs(300);
/// How often the cursor is saved.
pub const SAVE_EVERY: Duration = Duration::from_secs(30);
/// Messages one page of the scan reads.
const PAGE: u32 = 2_000;
/// Pages one pass reads at most (a catch-up after a long stop goes on in the next pass).
const MAX_PAGES: usize = 50;
/// Burst rows one page of the sweep reads.
const SWEEP_PAGE: u32 = 500;
/// Rooms marked seen, remembered to look at again, at most.
const MAX_HINTS: usize = 100_000;

pub struct Scheduler {
    store: Arc<dyn WebhookStore>,
    clock: Arc<dyn Clock>,
    rule: DueRule,
    wake_sender: Arc<Notify>,
    /// The `sent_at` up to which passes have read (`None` until the first pass knows).
    cursor: Option<Timestamp>,
    /// Rooms whose recipient marked something seen, with when to look at them.
    hints: HashMap<Candidate, Timestamp>,
    last_deep: Option<Instant>,
    last_sweep: Option<Instant>,
    last_save: Instant,
    /// The cursor as last saved.
    saved: Option<Timestamp>,
    /// Store failures in a row (logged on the first, then every 60th).
    failures: u64,
}

impl Scheduler {
    pub fn new(
        store: Arc<dyn WebhookStore>,
        clock: Arc<dyn Clock>,
        rule: DueRule,
        wake_sender: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            clock,
            rule,
            wake_sender,
            cursor: None,
            hints: HashMap::new(),
            last_deep: None,
            last_sweep: None,
            last_save: Instant::now(),
            saved: None,
            failures: 0,
        }
    }

    /// Runs passes until `stop` turns true, then saves the cursor.
    pub async fn run(
        mut self,
        mut events: broadcast::Receiver<Arc<StoreEvent>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut events_open = true;
        // A commit asked for a pass (delay 0): run it at `last_pass + MIN_GAP`.
        let mut woken = false;
        let mut last_pass = Instant::now();
        loop {
            let wake_at = tokio::time::Instant::from_std(last_pass + MIN_GAP);
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                _ = tokio::time::sleep_until(wake_at), if woken => {}
                _ = tick.tick() => {}
                event = events.recv(), if events_open => {
                    match event {
                        Ok(event) => woken |= self.on_event(&event),
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => events_open = false,
                    }
                    continue;
                }
            }
            woken = false;
            self.pass().await;
            last_pass = Instant::now();
            if *stop.borrow() {
                break;
            }
        }
        if let Some(cursor) = self.cursor
            && self.saved != Some(cursor)
            && let Err(error) = self.store.save_scan_cursor(cursor).await
        {
            tracing::warn!(%error, "webhooks: could not save the scan cursor at shutdown");
        }
    }

    /// Takes note of a committed event; true when it asks for a pass now.
    fn on_event(&mut self, event: &StoreEvent) -> bool {
        match event {
            StoreEvent::MessageCommitted { .. } => self.rule.offline_only,
            StoreEvent::SeenMarked {
                room_id,
                members,
                reader,
                ..
            } => {
                if let Ok(sender) = members.other(reader)
                    && self.hints.len() < MAX_HINTS
                {
                    let at = after(self.clock.now(), self.rule.notify_after);
                    self.hints.insert(
                        Candidate {
                            room_id: room_id.clone(),
                            sender_id: sender.clone(),
                        },
                        at,
                    );
                }
                false
            }
            _ => false,
        }
    }

    /// One pass (see the module docs). A failure leaves the cursor where it was.
    pub async fn pass(&mut self) {
        let started = Instant::now();
        match self.try_pass().await {
            Ok(opened) => {
                if self.failures > 0 {
                    tracing::info!("webhooks: the scheduler works again");
                }
                self.failures = 0;
                if opened > 0 {
                    self.wake_sender.notify_one();
                }
            }
            Err(error) => {
                if self.failures.is_multiple_of(60) {
                    tracing::warn!(%error, failures = self.failures + 1, "webhooks: a scheduler pass failed; retrying");
                }
                self.failures += 1;
            }
        }
        ::metrics::histogram!(metrics::WEBHOOK_SCAN_SECONDS).record(started.elapsed());
    }

    async fn try_pass(&mut self) -> Result<usize, chat_store::StoreError> {
        let now = self.clock.now();
        let up_to = before(now, self.rule.notify_after);
        let deep = self.last_deep.is_none_or(|at| at.elapsed() >= DEEP_EVERY);
        let cursor = match self.cursor {
            Some(cursor) => cursor,
            None => self.store.scan_cursor().await?.unwrap_or(up_to),
        };
        let margin = if deep { DEEP_MARGIN } else { MARGIN };
        let mut from = before(cursor.min(up_to), margin);
        let mut candidates = BTreeSet::new();
        // Where the next pass reads from (minus its margin): `up_to`, or the point a long
        // catch-up reached.
        let mut next_cursor = up_to.max(cursor);
        for page_number in 0.. {
            let page = self.store.unseen_between(from, up_to, PAGE).await?;
            candidates.extend(page.candidates);
            let Some(last) = page.more_from else {
                break;
            };
            // Read again from the last message's microsecond: a group commit gives every
            // message of its batch one `sent_at`.
            let next = before(last, Duration::from_micros(1));
            from = if next > from { next } else { last };
            if page_number + 1 >= MAX_PAGES {
                next_cursor = after(from, MARGIN);
                break;
            }
        }
        let due_hints: Vec<Candidate> = self
            .hints
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(c, _)| c.clone())
            .collect();
        for hint in &due_hints {
            self.hints.remove(hint);
        }
        candidates.extend(due_hints);
        if self.last_sweep.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
            candidates.extend(self.sweep().await?);
            self.last_sweep = Some(Instant::now());
        }
        let candidates: Vec<Candidate> = candidates.into_iter().collect();
        let due = self.store.due(&candidates, now, self.rule).await?;
        let mut opened = 0;
        for burst in &due {
            if let Some(delivery) = self.store.open_burst(burst, now, self.rule).await? {
                opened += 1;
                ::metrics::counter!(metrics::WEBHOOK_DELIVERIES_CREATED).increment(1);
                tracing::debug!(
                    delivery = %delivery.delivery_id,
                    room = %delivery.room_id,
                    unseen = delivery.unseen_count,
                    "webhook delivery created"
                );
            }
        }
        self.cursor = Some(next_cursor);
        if deep {
            self.last_deep = Some(Instant::now());
        }
        if self.last_save.elapsed() >= SAVE_EVERY
            && let Some(cursor) = self.cursor
        {
            self.store.save_scan_cursor(cursor).await?;
            self.saved = Some(cursor);
            self.last_save = Instant::now();
        }
        Ok(opened)
    }

    /// Every stored burst whose recipient still has unseen messages; prunes the others.
    async fn sweep(&self) -> Result<Vec<Candidate>, chat_store::StoreError> {
        let mut open = Vec::new();
        let mut after_key: Option<BurstKey> = None;
        loop {
            let page = self.store.burst_page(after_key, SWEEP_PAGE).await?;
            open.extend(page.open);
            self.store.prune_bursts(&page.seen).await?;
            match page.next {
                Some(next) => after_key = Some(next),
                None => break,
            }
        }
        Ok(open)
    }
}
