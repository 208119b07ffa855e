//! Per-user send rate limit (governor's GCRA, keyed by user): a burst, then a steady rate.
//! Shared by all connections of a user, so opening more tabs does not raise the limit.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chat_domain::UserId;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

#[derive(Clone)]
pub struct SendLimiter {
    limiter: Arc<DefaultKeyedRateLimiter<UserId>>,
}

impl SendLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: Arc::new(RateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            )),
        }
    }

    /// True when `user` may send one more message now.
    pub fn check(&self, user: &UserId) -> bool {
        self.limiter.check_key(user).is_ok()
    }

    /// Forgets users whose bucket is full again, so the map does not grow with every user ever
    /// seen. Runs every minute until the process ends.
    pub fn spawn_housekeeping(&self) -> tokio::task::JoinHandle<()> {
        let limiter = self.limiter.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_per_user() {
        let limiter = SendLimiter::new(1, 3);
        let alice = UserId::new("alice").unwrap_or_else(|e| panic!("{e}"));
        let bob = UserId::new("bob").unwrap_or_else(|e| panic!("{e}"));
        assert!((0..3).all(|_| limiter.check(&alice)));
        assert!(!limiter.check(&alice));
        assert!(
            limiter.check(&bob),
            "another user has a bucket of their own"
        );
    }
}
