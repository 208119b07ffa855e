//! matchchat's durable store: one [`Repository`] trait, two Diesel implementations
//! (PostgreSQL through diesel-async + deadpool, and SQLite, the embedded default, through
//! diesel-async's `SyncConnectionWrapper`), and the [`StoreEvent`]s a store publishes after
//! every commit.
//!
//! Fan-out is driven by those events, never by the code path of the writer: a node learns
//! about a committed message the same way whether it wrote it or (later, through PostgreSQL
//! LISTEN/NOTIFY or NATS) another node did. Nothing here knows about HTTP or WebSockets.
//!
//! Open a store with [`open`]; `docs/storage.md` describes the schema and how each rule is
//! enforced.

pub mod config;
pub mod error;
pub mod events;
pub mod postgres;
pub mod repository;
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;
pub mod webhooks;

mod append;
mod db_run;
mod models;
mod page;
mod queries;
mod raw_sql;
mod schema;
mod statements;
mod store_calls;
mod support;

use std::sync::Arc;

pub use config::{Backend, StoreConfig};
pub use error::StoreError;
pub use events::{EventBus, StoreEvent};
pub use postgres::PgStore;
pub use repository::{Appended, DeleteOutcome, PoolStatus, Repository, RoomOpened};
pub use sqlite::SqliteStore;
pub use support::redact_url;
pub use webhooks::{WebhookStore, open_with_webhooks, open_with_webhooks_on};

/// Opens the store `config` names on `runtime`, from any runtime: the store's pool,
/// background tasks and every later call run on `runtime` (a multi-threaded one), whatever
/// runtime awaits them. That is the store's one runtime rule; see `support::detached`.
pub async fn open_on(
    config: &StoreConfig,
    runtime: tokio::runtime::Handle,
) -> Result<Arc<dyn Repository>, StoreError> {
    let config = config.clone();
    runtime
        .spawn(async move { open(&config).await })
        .await
        .map_err(|e| StoreError::Unavailable(format!("opening the store was cancelled: {e}")))?
}

/// Opens the store `config` names on the current runtime (see [`open_on`]): PostgreSQL for a
/// `postgres://` URL, SQLite for a file (created, with its folder, if missing). Runs pending
/// migrations first, so a new database is ready to use. Errors are `Config` for unusable
/// settings and `Unavailable` when the database cannot be reached (retryable).
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Repository>, StoreError> {
    match &config.backend {
        Backend::Postgres { url } => {
            tracing::info!(backend = "postgres", url = %redact_url(url), "opening store");
            Ok(Arc::new(PgStore::open(config).await?))
        }
        Backend::Sqlite { path } => {
            tracing::info!(backend = "sqlite", path = %path.display(), "opening store");
            Ok(Arc::new(SqliteStore::open(config).await?))
        }
    }
}
