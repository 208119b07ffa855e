//! Test helpers: a fresh, migrated database per test, on either backend. Enabled by the
//! `testing` feature; other crates use it from their `[dev-dependencies]`:
//!
//! ```toml
//! chat-store = { workspace = true, features = ["testing"] }
//! ```
//!
//! PostgreSQL tests need `DATABASE_URL` to name a PostgreSQL server where the user may
//! `CREATE DATABASE` (`scripts/test.sh` starts a throwaway one and sets it). Each test gets a
//! database of its own, `chat_test_<uuid>`, so tests never see each other's rows and can run
//! in parallel. The databases are not dropped (the throwaway cluster is deleted whole); on a
//! long-lived server, drop `chat_test_%` databases now and then. Without `DATABASE_URL` the
//! helpers panic with [`PG_HELP`]: a PostgreSQL test never passes by skipping.
//!
//! ```no_run
//! # async fn example() {
//! use chat_store::testing::TestStore;
//! let pg = TestStore::postgres().await;      // panics with PG_HELP without DATABASE_URL
//! let lite = TestStore::sqlite().await;      // a file in a temporary folder
//! pg.repo.ping().await.unwrap_or_else(|e| panic!("{e}"));
//! # let _ = lite;
//! # }
//! ```

use std::path::Path;
use std::sync::Arc;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::config::StoreConfig;
use crate::error::StoreError;
use crate::repository::Repository;
use crate::support::{connection_error, db_error};

/// The variable naming the PostgreSQL server for tests.
pub const DATABASE_URL_VAR: &str = "DATABASE_URL";

/// What a PostgreSQL test says when it has no server.
pub const PG_HELP: &str = "PostgreSQL tests need DATABASE_URL=postgres://USER@HOST:PORT/DB naming a server where USER may \
     CREATE DATABASE: run scripts/test.sh, which starts a throwaway PostgreSQL, or set DATABASE_URL";

/// The server URL from `DATABASE_URL`, if it is a PostgreSQL URL.
pub fn pg_server_url() -> Result<String, String> {
    match std::env::var(DATABASE_URL_VAR) {
        Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => Ok(url),
        Ok(other) if !other.trim().is_empty() => Err(format!(
            "{DATABASE_URL_VAR} is {:?}, not a postgres:// URL. {PG_HELP}",
            crate::redact_url(&other)
        )),
        _ => Err(format!("{DATABASE_URL_VAR} is not set. {PG_HELP}")),
    }
}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or_default();
    let mut out = format!("{scheme}://{authority}/{database}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Creates a new, empty database on the `DATABASE_URL` server and returns its URL.
pub async fn try_fresh_pg_url() -> Result<String, StoreError> {
    let server = pg_server_url().map_err(StoreError::Config)?;
    let name = format!("chat_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = AsyncPgConnection::establish(&server)
        .await
        .map_err(connection_error)?;
    // The name is ours (hex digits): nothing to escape.
    diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .map_err(db_error)?;
    Ok(with_database(&server, &name))
}

/// Like [`try_fresh_pg_url`], for tests: panics (with [`PG_HELP`] when `DATABASE_URL` is
/// missing) instead of returning an error.
pub async fn fresh_pg_url() -> String {
    match try_fresh_pg_url().await {
        Ok(url) => url,
        Err(StoreError::Config(msg)) => panic!("{msg}"),
        Err(e) => panic!("could not create a test database on {DATABASE_URL_VAR}: {e}. {PG_HELP}"),
    }
}

/// A URL for a new SQLite file in `dir` (which must outlive the store).
pub fn fresh_sqlite_url(dir: &Path) -> String {
    format!(
        "sqlite://{}",
        dir.join(format!("chat-{}.db", uuid::Uuid::new_v4().simple()))
            .display()
    )
}

/// A migrated store on a database of its own, with what it needs kept alive.
pub struct TestStore {
    pub repo: Arc<dyn Repository>,
    /// The database URL (`postgres://.../chat_test_...` or `sqlite:///tmp/.../chat-....db`).
    pub url: String,
    /// The temporary folder of a SQLite store, deleted when this is dropped.
    pub dir: Option<tempfile::TempDir>,
}

impl TestStore {
    /// A store on a fresh PostgreSQL database (see the module docs); panics without one.
    pub async fn postgres() -> Self {
        let url = fresh_pg_url().await;
        Self::open_url(url, None).await
    }

    /// A store on a fresh SQLite file in a new temporary folder.
    pub async fn sqlite() -> Self {
        let dir =
            tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temporary folder: {e}"));
        let url = fresh_sqlite_url(dir.path());
        Self::open_url(url, Some(dir)).await
    }

    /// The config the store was opened with (defaults for its URL).
    pub fn config(&self) -> StoreConfig {
        StoreConfig::new(&self.url).unwrap_or_else(|e| panic!("{e}"))
    }

    async fn open_url(url: String, dir: Option<tempfile::TempDir>) -> Self {
        let config = StoreConfig::new(&url).unwrap_or_else(|e| panic!("{e}"));
        let repo = crate::open(&config).await.unwrap_or_else(|e| {
            panic!(
                "cannot open the test store at {}: {e}",
                crate::redact_url(&url)
            )
        });
        Self { repo, url, dir }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(
            with_database("postgresql://h/db?sslmode=disable", "x"),
            "postgresql://h/x?sslmode=disable"
        );
    }
}
