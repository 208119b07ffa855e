//! The `soak` mode's machinery (the mode itself is `modes::soak`): one long-lived client per
//! member that connects, sends, reads history, marks seen, reconnects and catches up the way
//! a real client must (`docs/protocol.md`, "Reconnect after a drop"), and the counters the
//! per-minute lines are made of.
//!
//! Unlike the other modes, a soak member outlives its connections, so it cannot use the
//! engine's reader (one connection, one stream from `ready` on). It keeps its room's stream
//! across connections instead and checks it with the same [`crate::check::RoomCheck`].
//!
//! - [`member`]: one member's client and what it found.
//! - [`rules`]: durations, the per-interval figures and the verdict rules (pure).

pub mod member;
pub mod pool;
pub mod rules;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::Hist;

/// Counters shared by every member and read by the per-minute line (deltas between two
/// readings) and the end of the run.
pub struct Shared {
    pub sent: AtomicU64,
    pub resent: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    /// Latest-page reads asked and answered.
    pub history_sent: AtomicU64,
    pub history_answered: AtomicU64,
    /// History requests (latest page or catch-up) given up: an error or no answer.
    pub history_failed: AtomicU64,
    /// Catch-up requests (`after_seq`) and their answered pages.
    pub catch_ups: AtomicU64,
    pub catch_up_pages: AtomicU64,
    pub seen_sent: AtomicU64,
    pub seen_events: AtomicU64,
    /// Connections opened (the first one of each member included).
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Planned reconnects with a close frame (churn).
    pub planned_closes: AtomicU64,
    /// Planned drops of the TCP connection without a close frame.
    pub abrupt_drops: AtomicU64,
    /// Connections the server ended (close frame, reset or EOF), by reason.
    pub server_closes: Mutex<BTreeMap<String, u64>>,
    /// `error` frames by code.
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// First error texts, for the report.
    pub notes: Mutex<Vec<String>>,
    /// Members whose first connection is up.
    pub ready: AtomicU64,
    /// Send -> first copy at the other member, whole run.
    pub latency: Hist,
    /// The same, since the last per-minute line.
    pub recent: Hist,
}

impl Shared {
    pub fn new() -> Self {
        Self {
            sent: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            history_sent: AtomicU64::new(0),
            history_answered: AtomicU64::new(0),
            history_failed: AtomicU64::new(0),
            catch_ups: AtomicU64::new(0),
            catch_up_pages: AtomicU64::new(0),
            seen_sent: AtomicU64::new(0),
            seen_events: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            planned_closes: AtomicU64::new(0),
            abrupt_drops: AtomicU64::new(0),
            server_closes: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(BTreeMap::new()),
            notes: Mutex::new(Vec::new()),
            ready: AtomicU64::new(0),
            latency: Hist::new(),
            recent: Hist::new(),
        }
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_error(&self, code: &str) {
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(code.to_owned()).or_default() += 1;
        }
    }

    pub fn count_server_close(&self, why: &str) {
        if let Ok(mut m) = self.server_closes.lock() {
            *m.entry(why.to_owned()).or_default() += 1;
        }
    }

    /// Keeps the first few texts (with a time stamp relative to the run) for the report.
    pub fn note(&self, text: String) {
        if let Ok(mut n) = self.notes.lock()
            && n.len() < 20
        {
            n.push(text);
        }
    }

    pub fn errors_snapshot(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn server_closes_snapshot(&self) -> BTreeMap<String, u64> {
        self.server_closes
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }
}

/// A small xorshift generator: the soak only needs jitter (when each member reconnects), not
/// good randomness, and the workspace has no `rand`.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_the_unit_interval() {
        let mut j = Jitter::new(7);
        let xs: Vec<f64> = (0..1000).map(|_| j.unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }
}
