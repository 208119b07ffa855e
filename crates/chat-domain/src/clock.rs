//! Where "now" comes from. The domain reads no clock itself (it does no I/O): whoever needs
//! the time is handed a [`Clock`]. The server passes the system clock; tests pass a fixed one.

use crate::timestamp::Timestamp;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// A clock that always says the same time (for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedClock(pub Timestamp);

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        self.0
    }
}
