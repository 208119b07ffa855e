//! Finds the bursts that became due and puts their deliveries in the outbox.
//!
//! Every [`TICK`] (and, when `CHAT_NOTIFY_AFTER_SECS=0`, at most [`MIN_GAP`] after a local
//! commit) a pass:
//! 1. reads which rooms and senders have unseen messages sent since the last pass and at
//!    least N ago (a range of the partial index `messages_unseen_by_time`, aggregated in the
//!    database: one row per room, not per message), as candidates. A message can become
//!    visible a little after its `sent_at` (the group commit's time, taken before its
//!    transaction), so a pass also reads again what was sent in the last [`MARGIN`] (which
//!    with N >= 2 s is nothing more); a deep pass, every [`DEEP_EVERY`], reads
//!    [`DEEP_MARGIN`] further back for commits later than that, and the first pass after a
//!    start [`START_MARGIN`] behind the saved cursor. Reading again is harmless: a burst
//!    makes one delivery however often it is found. So each unseen message is read about
//!    twice per node. A long span (a catch-up after a stop) is read [`SLICE`] at a time, at
//!    most [`MAX_SLICES`] per pass;
//! 2. adds the rooms a recipient marked seen [`Rule`'s `notify_after`] ago (from this node's
//!    store events: a burst seen only in part starts a new burst at the mark) and, every
//!    [`SWEEP_EVERY`] and at start, every stored burst whose recipient still has unseen
//!    messages (the safety net for marks made on another node or before a crash; it also
//!    prunes the rows of bursts seen to the end);
//! 3. asks the store which candidates are due, and opens the due bursts (a transaction of
//!    five statements per 100 bursts, that re-checks them under their rows' locks: two nodes
//!    scanning at once make one delivery per burst), then wakes the sender.
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
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{Notify, broadcast, watch};

use super::{after, before};
use crate::metrics;

/// How often a pass runs.
pub const TICK: Duration = Duration::from_secs(1);
/// The least time between two passes woken by commits (`CHAT_NOTIFY_AFTER_SECS=0`).
pub const MIN_GAP: Duration = Duration::from_millis(100);
/// How long after its `sent_at` a message may become visible, for an ordinary pass: it
/// reads from its cursor or from `now - MARGIN`, whichever is older.
pub const MARGIN: Duration = Duration::from_secs(2);
/// How far behind its cursor a deep pass, every [`DEEP_EVERY`], reads again.
pub const DEEP_MARGIN: Duration = Duration::from_secs(30);
pub const DEEP_EVERY: Duration = Duration::from_secs(30);
/// How far behind the saved cursor the first pass after a start reads.
pub const START_MARGIN: Duration = Duration::from_secs(120);
/// The longest span of `sent_at` one scan statement reads, and how many a pass reads.
pub const SLICE: Duration = Duration::from_secs(60);
pub const MAX_SLICES: usize = 10;
/// How often every stored burst is looked at again (and seen ones pruned).
pub const SWEEP_EVERY: Duration = Duration::from_secs(300);
/// How often the cursor is saved.
pub const SAVE_EVERY: Duration = Duration::from_secs(30);
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
                    // Take what else is there in one go: one wake-up per burst of commits,
                    // not per message.
                    loop {
                        match events.try_recv() {
                            Ok(event) => woken |= self.on_event(&event),
                            Err(TryRecvError::Lagged(_)) => {}
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Closed) => {
                                events_open = false;
                                break;
                            }
                        }
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
        let first = self.cursor.is_none();
        let deep = self.last_deep.is_none_or(|at| at.elapsed() >= DEEP_EVERY);
        let cursor = match self.cursor {
            Some(cursor) => cursor,
            None => self.store.scan_cursor().await?.unwrap_or(up_to),
        };
        let mut from = match (first, deep) {
            (true, _) => before(cursor, START_MARGIN),
            (false, true) => before(cursor, DEEP_MARGIN),
            (false, false) => cursor.min(before(now, MARGIN)),
        }
        .min(up_to);
        let mut candidates = BTreeSet::new();
        // Where the next pass reads from (minus its margin): `up_to`, or the point a long
        // catch-up reached.
        let mut next_cursor = up_to.max(cursor);
        let mut slices = 0;
        while from < up_to {
            let to = after(from, SLICE).min(up_to);
            candidates.extend(self.store.unseen_between(from, to).await?);
            from = to;
            slices += 1;
            if slices >= MAX_SLICES && from < up_to {
                next_cursor = from;
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
        let made = self.store.open_bursts(&due, now, self.rule).await?;
        let opened = made.len();
        ::metrics::counter!(metrics::WEBHOOK_DELIVERIES_CREATED).increment(opened as u64);
        for delivery in &made {
            tracing::debug!(
                delivery = %delivery.delivery_id,
                room = %delivery.room_id,
                unseen = delivery.unseen_count,
                "webhook delivery created"
            );
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
