//! What the rooms' tasks count while a run goes on, and the questions asked of those counts.
//!
//! Reader tasks (and, in the scheduled modes, the scheduler threads) update these counters
//! and histograms as frames come and go; the progress lines, the drain and the end of a run
//! read them from other threads, so everything here is an atomic or behind a mutex.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Not published yet.
const UNSET: u64 = u64::MAX;

/// Live counters of one member, read by the progress line and the drain.
#[derive(Debug)]
pub struct MemberStats {
    /// Messages handed to the writer.
    pub sent: AtomicU64,
    /// Own messages come back (distinct).
    pub confirmed: AtomicU64,
    /// The other member's messages received (distinct).
    pub delivered: AtomicU64,
    /// What `sent` ends at, once this member sends no more.
    pub final_sent: AtomicU64,
    pub history_sent: AtomicU64,
    pub history_answered: AtomicU64,
    pub history_final: AtomicU64,
    pub errors: AtomicU64,
    pub pings: AtomicU64,
    pub closed: AtomicBool,
}

impl MemberStats {
    pub fn new() -> Self {
        Self {
            sent: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            final_sent: AtomicU64::new(UNSET),
            history_sent: AtomicU64::new(0),
            history_answered: AtomicU64::new(0),
            history_final: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            pings: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    pub fn publish_final(&self) {
        self.final_sent
            .store(self.sent.load(Ordering::Acquire), Ordering::Release);
    }
}

/// An HDR histogram of microseconds, shared by the reader tasks.
pub struct Hist(Mutex<Histogram<u64>>);

impl Hist {
    pub fn new() -> Self {
        // Auto-resizing, 3 significant digits: 1 µs .. whatever is seen.
        Self(Mutex::new(
            Histogram::new(3).unwrap_or_else(|e| panic!("histogram: {e}")),
        ))
    }

    pub fn record(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        if let Ok(mut h) = self.0.lock() {
            let _ = h.record(micros);
        }
    }

    pub fn snapshot(&self) -> Histogram<u64> {
        self.0
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Takes the contents, leaving it empty (for per-second progress figures).
    pub fn take(&self) -> Histogram<u64> {
        match self.0.lock() {
            Ok(mut h) => {
                let out = h.clone();
                h.reset();
                out
            }
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Latency histograms of a run.
pub struct Hists {
    /// Scheduled send time -> arrival at the other member (open loop).
    pub from_schedule: Hist,
    /// Actual write -> arrival at the other member.
    pub from_write: Hist,
    /// Write -> own copy back (commit + fan-out), closed loop.
    pub confirm: Hist,
    /// History request: scheduled time -> response.
    pub history: Hist,
    /// History request: actual write -> response.
    pub history_from_write: Hist,
    /// The last second of `from_schedule`, for progress lines.
    pub recent: Hist,
    /// The last second of `history`, for progress lines.
    pub recent_history: Hist,
}

impl Hists {
    pub fn new() -> Self {
        Self {
            from_schedule: Hist::new(),
            from_write: Hist::new(),
            confirm: Hist::new(),
            history: Hist::new(),
            history_from_write: Hist::new(),
            recent: Hist::new(),
            recent_history: Hist::new(),
        }
    }
}

/// Has every member all of its messages back and at the other member, and every history
/// request an answer?
pub fn drained(stats: &[[Arc<MemberStats>; 2]]) -> bool {
    stats.iter().all(|pair| {
        (0..2).all(|side| {
            let me = &pair[side];
            let peer = &pair[1 - side];
            let fin = me.final_sent.load(Ordering::Acquire);
            fin != UNSET
                && me.confirmed.load(Ordering::Relaxed) >= fin
                && peer.delivered.load(Ordering::Relaxed) >= fin
                && me.history_answered.load(Ordering::Relaxed)
                    >= me.history_final.load(Ordering::Acquire)
        })
    })
}

/// Has every member published what its sent count ends at (it sends no more)?
pub fn all_final(stats: &[[Arc<MemberStats>; 2]]) -> bool {
    stats
        .iter()
        .flatten()
        .all(|m| m.final_sent.load(Ordering::Acquire) != UNSET)
}

pub fn any_closed(stats: &[[Arc<MemberStats>; 2]]) -> bool {
    stats
        .iter()
        .flatten()
        .any(|m| m.closed.load(Ordering::Acquire))
}

/// Sums of the live counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub sent: u64,
    pub confirmed: u64,
    pub delivered: u64,
    pub errors: u64,
    pub history_sent: u64,
    pub history_answered: u64,
    pub pings: u64,
}

pub fn totals(stats: &[[Arc<MemberStats>; 2]]) -> Totals {
    let mut t = Totals::default();
    for m in stats.iter().flatten() {
        t.sent += m.sent.load(Ordering::Relaxed);
        t.confirmed += m.confirmed.load(Ordering::Relaxed);
        t.delivered += m.delivered.load(Ordering::Relaxed);
        t.errors += m.errors.load(Ordering::Relaxed);
        t.history_sent += m.history_sent.load(Ordering::Relaxed);
        t.history_answered += m.history_answered.load(Ordering::Relaxed);
        t.pings += m.pings.load(Ordering::Relaxed);
    }
    t
}
