//! The open-loop schedule of the `latency` and `history` modes: when each send or request is
//! due, and a plain thread that dispatches them at those times whatever the server does.
//!
//! Latency is measured from the due time, not from when the client got around to writing,
//! so a server that falls behind cannot hide its queueing behind a slower client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The open-loop clock of a scheduled run: message `i` is due at `t0 + i / rate`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub t0: Instant,
    pub rate: f64,
    /// Only what was scheduled at or after this is measured.
    pub measure_from: Instant,
}

impl Clock {
    pub fn at(&self, i: u64) -> Instant {
        if self.rate > 0.0 && self.rate.is_finite() {
            self.t0 + Duration::from_secs_f64(i as f64 / self.rate)
        } else {
            self.t0
        }
    }
}

/// Runs `dispatch(i, due)` for i = 0.. at `clock`'s times on the calling thread (a plain
/// thread sleeps with microsecond precision; tokio's timer has 1 ms granularity) until
/// `count` or `stop`. A late dispatch is not skipped or re-timed: its lateness counts in the
/// measured latency. Returns how many were dispatched.
pub fn run_schedule(
    clock: Clock,
    count: u64,
    stop: &AtomicBool,
    mut dispatch: impl FnMut(u64, Instant),
) -> u64 {
    for i in 0..count {
        let due = clock.at(i);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if stop.load(Ordering::Relaxed) {
            return i;
        }
        dispatch(i, due);
    }
    count
}
