//! The store's one error type. Database errors are classified here, once, so callers can
//! tell a rule the caller broke from a database that is briefly unavailable.

use chat_domain::DomainError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The caller broke a domain rule (not a member, room closed, ...).
    #[error(transparent)]
    Rule(#[from] DomainError),
    /// No room has this id.
    #[error("unknown room")]
    UnknownRoom,
    /// The database could not be reached, the pool timed out, or the connection dropped.
    /// Nothing was committed; the caller may retry.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Any other database failure (a constraint the code should have prevented, a bug).
    #[error("database error: {0}")]
    Database(String),
    /// A stored row no longer satisfies a domain rule (hand-edited data, a bad migration).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The configuration (database URL, pool settings) is unusable.
    #[error("store configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}
