//! Store configuration, passed in by the caller (no global settings). The server fills it
//! from its flags and environment (`DATABASE_URL`, `CHAT_DB_POOL_SIZE`, ...).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::StoreError;

/// Which database a URL selects. Its `Debug` output hides the password of a PostgreSQL URL,
/// so a logged config never leaks it.
#[derive(Clone, PartialEq, Eq)]
pub enum Backend {
    /// `postgres://...` or `postgresql://...`
    Postgres { url: String },
    /// `sqlite://PATH`, `sqlite:PATH` or a plain file path. The file and its folder are
    /// created on first start.
    Sqlite { path: PathBuf },
}

impl Backend {
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(StoreError::Config("DATABASE_URL is empty".into()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres {
                url: url.to_owned(),
            });
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if path.is_empty() || path == ":memory:" {
            return Err(StoreError::Config(
                "SQLite needs a file path (an in-memory database would lose every message on restart)".into(),
            ));
        }
        if path.contains("://") {
            return Err(StoreError::Config(format!(
                "unsupported database URL scheme in {path:?}: use postgres://... or sqlite://PATH"
            )));
        }
        Ok(Self::Sqlite {
            path: PathBuf::from(path),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Postgres { .. } => "postgres",
            Self::Sqlite { .. } => "sqlite",
        }
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Postgres { url } => f
                .debug_struct("Postgres")
                .field("url", &crate::redact_url(url))
                .finish(),
            Self::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
        }
    }
}

/// Everything needed to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: Backend,
    /// Connections in the pool. PostgreSQL: concurrent transactions. SQLite: concurrent readers
    /// (writes are serialised by SQLite itself).
    pub pool_size: usize,
    /// How long a caller waits for a free pooled connection before `Unavailable`.
    pub wait_timeout: Duration,
    /// How long opening a new connection may take before `Unavailable`.
    pub connect_timeout: Duration,
    /// How long a pooled connection lives before it is replaced (PostgreSQL), so server-side
    /// memory and failovers do not stick to old sessions.
    pub max_lifetime: Duration,
    /// SQLite's `busy_timeout`: how long a writer waits for the write lock.
    pub sqlite_busy_timeout: Duration,
    /// Capacity of the event bus (see [`crate::EventBus`]).
    pub event_capacity: usize,
}

impl StoreConfig {
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let backend = Backend::from_url(url)?;
        let pool_size = match backend {
            Backend::Postgres { .. } => 16,
            Backend::Sqlite { .. } => 8,
        };
        Ok(Self {
            backend,
            pool_size,
            wait_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_lifetime: Duration::from_secs(30 * 60),
            sqlite_busy_timeout: Duration::from_secs(5),
            event_capacity: crate::events::EventBus::DEFAULT_CAPACITY,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_select_a_backend() {
        assert!(matches!(
            Backend::from_url("postgres://u@h/db"),
            Ok(Backend::Postgres { .. })
        ));
        assert!(matches!(
            Backend::from_url("postgresql://u@h/db"),
            Ok(Backend::Postgres { .. })
        ));
        assert_eq!(
            Backend::from_url("sqlite://./data/chat.db"),
            Ok(Backend::Sqlite {
                path: PathBuf::from("./data/chat.db")
            })
        );
        assert_eq!(
            Backend::from_url("/var/lib/chat.db"),
            Ok(Backend::Sqlite {
                path: PathBuf::from("/var/lib/chat.db")
            })
        );
        assert!(Backend::from_url("").is_err());
        assert!(Backend::from_url("sqlite://:memory:").is_err());
        assert!(Backend::from_url("mysql://x").is_err());
    }

    #[test]
    fn debug_output_hides_the_password() {
        let config = StoreConfig::new("postgres://chat:hunter2@db:5432/chat");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("postgres://chat:***@db:5432/chat"),
            "{shown}"
        );
    }
}
