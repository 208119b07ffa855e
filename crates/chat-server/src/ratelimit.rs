//! Rate limits. Per user (governor's GCRA, keyed by user): sends, and every other request
//! type with a budget of its own. Shared by all connections of a user, so opening more tabs
//! does not raise a limit. Per client address: failed service-key attempts.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_domain::UserId;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A GCRA limiter keyed by `K`: a burst, then a steady rate per key.
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    limiter: Arc<DefaultKeyedRateLimiter<K>>,
}

impl<K: Hash + Eq + Clone> Clone for KeyedLimiter<K> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: Arc::new(RateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            )),
        }
    }

    /// True when `key` may do one more now (and uses up that one).
    pub fn check(&self, key: &K) -> bool {
        self.limiter.check_key(key).is_ok()
    }

    /// Forgets keys whose bucket is full again.
    fn housekeeping(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// Sends per user: `CHAT_RATE_BURST`, then `CHAT_RATE_PER_SEC`.
pub type SendLimiter = KeyedLimiter<UserId>;

/// Request types that are not sends, each with a budget of its own per user (issue 8, D3:
/// one connection pulled 1,000 history pages, 244 MB, in a second).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    History,
    Seen,
    Received,
    Delete,
    Rooms,
    Typing,
}

impl RequestKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::History => "history",
            Self::Seen => "seen",
            Self::Received => "received",
            Self::Delete => "delete",
            Self::Rooms => "rooms",
            Self::Typing => "typing",
        }
    }
}

/// Typing notices forwarded: one per second per user and room (protocol 1.1); the rest are
/// dropped silently. Kept per node: a user typing through two nodes at once may get two.
pub type TypingLimiter = KeyedLimiter<(UserId, chat_domain::RoomId)>;

/// Per user and request type: `CHAT_REQUEST_RATE_BURST` at once, then
/// `CHAT_REQUEST_RATE_PER_SEC`. The defaults (200, 20/s) sit far above what the page asks
/// for: at most 50 one-message history reads for the room list after connecting, then one
/// page per room opened or scrolled, and a seen mark per batch of messages shown.
pub type RequestLimiter = KeyedLimiter<(UserId, RequestKind)>;

/// Failed service-key attempts allowed per client address in one window.
pub const KEY_FAILURES_PER_WINDOW: u32 = 20;
/// The window of [`KEY_FAILURES_PER_WINDOW`], and the longest an address stays refused.
pub const KEY_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Refused attempts are logged as one summary line at most this often.
const KEY_FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Throttles guessing of the service key (issue 8, D6): an address with
/// [`KEY_FAILURES_PER_WINDOW`] failures in [`KEY_FAILURE_WINDOW`] is refused (`429`) without
/// its key being checked until the window ends, so guesses are bounded whatever the key.
/// Refusals are logged as a summary line at most every 10 s, never one line each.
///
/// Hand-written rather than governor: it must *look* before it counts (a blocked address
/// must not have its key checked at all), which governor's keyed limiters do not offer.
#[derive(Default)]
pub struct KeyFailures {
    inner: Mutex<KeyFailuresInner>,
}

#[derive(Default)]
struct KeyFailuresInner {
    by_address: HashMap<IpAddr, (u32, Instant)>,
    unlogged: u64,
    last_address: Option<IpAddr>,
    last_log: Option<Instant>,
}

impl KeyFailures {
    /// True while `address` may not try a key.
    pub fn blocked(&self, address: IpAddr) -> bool {
        let Ok(inner) = self.inner.lock() else {
            return false;
        };
        inner.by_address.get(&address).is_some_and(|&(n, since)| {
            n >= KEY_FAILURES_PER_WINDOW && since.elapsed() < KEY_FAILURE_WINDOW
        })
    }

    /// Counts a failed (or refused) attempt from `address`.
    pub fn record(&self, address: IpAddr) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let entry = inner
            .by_address
            .entry(address)
            .or_insert((0, Instant::now()));
        if entry.1.elapsed() >= KEY_FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 = entry.0.saturating_add(1);
        inner.unlogged += 1;
        inner.last_address = Some(address);
        if inner
            .last_log
            .is_none_or(|at| at.elapsed() >= KEY_FAILURE_LOG_EVERY)
        {
            inner.log_summary();
        }
    }

    fn housekeeping(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner
                .by_address
                .retain(|_, (_, since)| since.elapsed() < KEY_FAILURE_WINDOW);
            if inner.unlogged > 0 {
                inner.log_summary();
            }
        }
    }
}

impl KeyFailuresInner {
    fn log_summary(&mut self) {
        tracing::warn!(
            refused = self.unlogged,
            last_from = ?self.last_address,
            addresses = self.by_address.len(),
            "service API calls with a missing or wrong key"
        );
        self.unlogged = 0;
        self.last_log = Some(Instant::now());
    }
}

/// Every limiter's map is pruned once a minute, so none grows with every user or address
/// ever seen. Runs until aborted.
pub fn spawn_housekeeping(
    sends: &SendLimiter,
    requests: &RequestLimiter,
    typing: &TypingLimiter,
    key_failures: &Arc<KeyFailures>,
) -> tokio::task::JoinHandle<()> {
    let (sends, requests, typing, key_failures) = (
        sends.clone(),
        requests.clone(),
        typing.clone(),
        key_failures.clone(),
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            sends.housekeeping();
            requests.housekeeping();
            typing.housekeeping();
            key_failures.housekeeping();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_kind_has_its_own_budget_per_user() {
        let limiter = RequestLimiter::new(1, 2);
        let alice = UserId::new("alice").unwrap();
        let bob = UserId::new("bob").unwrap();
        assert!((0..2).all(|_| limiter.check(&(alice.clone(), RequestKind::History))));
        assert!(!limiter.check(&(alice.clone(), RequestKind::History)));
        assert!(limiter.check(&(alice.clone(), RequestKind::Seen)));
        assert!(limiter.check(&(bob.clone(), RequestKind::History)));
    }

    #[test]
    fn an_address_is_blocked_after_its_failures() {
        let failures = KeyFailures::default();
        let guesser: IpAddr = [192, 0, 2, 1].into();
        let other: IpAddr = [192, 0, 2, 2].into();
        for _ in 0..KEY_FAILURES_PER_WINDOW {
            assert!(!failures.blocked(guesser));
            failures.record(guesser);
        }
        assert!(failures.blocked(guesser));
        assert!(!failures.blocked(other));
    }

    #[test]
    fn burst_then_refuse_per_user() {
        let limiter = SendLimiter::new(1, 3);
        let alice = UserId::new("alice").unwrap();
        let bob = UserId::new("bob").unwrap();
        assert!((0..3).all(|_| limiter.check(&alice)));
        assert!(!limiter.check(&alice));
        assert!(
            limiter.check(&bob),
            "another user has a bucket of their own"
        );
    }
}
