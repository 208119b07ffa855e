//! Test helpers: a fresh, migrated database per test, on either backend. Enabled by the
//! `testing` feature; other crates use it from their `[dev-dependencies]`:
//!
//! ```toml
//! chat-store = { workspace = true, features = ["testing"] }
//! ```
//!
//! PostgreSQL tests need `DATABASE_URL` to name a PostgreSQL server where the user may
//! `CREATE DATABASE` (`scripts/test.sh` starts a throwaway one and sets it). Without it the
//! helpers panic with [`PG_HELP`]: a PostgreSQL test never passes by skipping.
//!
//! A PostgreSQL test gets a [`TestDatabase`] of its own, so tests never see each other's rows
//! and run in parallel:
//!
//! - The migrations run once per server and migration set, into a template database named
//!   after that set (`chat_template_<hash of the migrations>`). The first test process to need
//!   it builds it while holding an advisory lock, so test processes started together build it
//!   once; the others wait, then find it ready. A template is marked `IS_TEMPLATE` only once
//!   it is complete, so one left half-built by a process that died is dropped and built again.
//! - Each test's database, `chat_test_<uuid>`, is a copy of the template
//!   (`CREATE DATABASE ... TEMPLATE ...`): migrated already, so a store or server opened on it
//!   finds no pending migration.
//! - It is dropped (`DROP DATABASE ... WITH (FORCE)`) when its handle is dropped, at the end of
//!   the test, passed or failed. Templates stay (one per migration set) for the next run.
//!
//! ```no_run
//! # async fn example() {
//! use chat_store::testing::TestStore;
//! let pg = TestStore::postgres().await;      // panics with PG_HELP without DATABASE_URL
//! let lite = TestStore::sqlite().await;      // a file in a temporary folder
//! pg.repo.ping().await.expect("the database answers");
//! # let _ = lite;
//! # }
//! ```

// Test support: failing loudly is what a helper that cannot set a test up should do.
#![allow(clippy::expect_used)]

use std::future::Future;
use std::hash::Hasher;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use diesel::QueryableByName;
use diesel::migration::MigrationSource;
use diesel::sql_types::{BigInt, Bool, Text};
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

/// Serialises building the template database across test processes.
const TEMPLATE_LOCK_KEY: i64 = 0x6d61_7463_6874_706c; // "matchtpl"

/// How long the helpers wait for the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A migrated PostgreSQL database of one test's own on the `DATABASE_URL` server, dropped
/// (`WITH (FORCE)`, so even with connections still open) when this handle is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    server: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// A new database copied from the migrated template; panics (with [`PG_HELP`] when
    /// `DATABASE_URL` is missing) if it cannot be made. Blocks the calling thread: from async
    /// code, prefer [`TestDatabase::create`].
    pub fn new() -> Self {
        match Self::try_new() {
            Ok(db) => db,
            Err(StoreError::Config(msg)) => panic!("{msg}"),
            Err(e) => {
                panic!("could not create a test database on {DATABASE_URL_VAR}: {e}. {PG_HELP}")
            }
        }
    }

    /// [`TestDatabase::new`] on Tokio's blocking pool, for async tests.
    pub async fn create() -> Self {
        match tokio::task::spawn_blocking(Self::new).await {
            Ok(db) => db,
            // Keep the helper's own message (PG_HELP, the database error).
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("the test database task was cancelled: {e}"),
        }
    }

    /// Like [`TestDatabase::new`], returning the error instead of panicking.
    pub fn try_new() -> Result<Self, StoreError> {
        let server = pg_server_url().map_err(StoreError::Config)?;
        let template = template_for(&server)?;
        let name = format!("chat_test_{}", uuid::Uuid::new_v4().simple());
        // Both names are ours (a fixed prefix and hex digits): nothing to escape.
        let create = format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\"");
        on_own_runtime(async {
            let mut conn = connect(&server).await?;
            diesel::sql_query(create)
                .execute(&mut conn)
                .await
                .map_err(db_error)
        })?;
        let url = with_database(&server, &name);
        Ok(Self { server, name, url })
    }

    /// The database's URL (the `DATABASE_URL` server, this database).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name (`chat_test_<uuid>`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Default for TestDatabase {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let drop_sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let dropped = on_own_runtime(async {
            let mut conn = connect(&self.server).await?;
            diesel::sql_query(drop_sql)
                .execute(&mut conn)
                .await
                .map_err(db_error)
        });
        if let Err(e) = dropped {
            // Never panic in drop (the test may be unwinding already): say what is left over.
            eprintln!("could not drop the test database {}: {e}", self.name);
        }
    }
}

/// The migrated template database on `server`, built by the first caller of this process
/// (see the module docs); later callers reuse its name.
fn template_for(server: &str) -> Result<&'static str, StoreError> {
    static TEMPLATE: OnceLock<Result<String, StoreError>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| on_own_runtime(build_template(server)))
        .as_deref()
        .map_err(Clone::clone)
}

#[derive(QueryableByName)]
struct Template {
    #[diesel(sql_type = Bool)]
    datistemplate: bool,
}

/// Makes sure the template of the current migration set exists on `server`, complete.
async fn build_template(server: &str) -> Result<String, StoreError> {
    let name = format!("chat_template_{:016x}", migration_set_hash());
    let mut conn = connect(server).await?;
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(&mut conn)
        .await
        .map_err(db_error)?;
    let built = build_template_locked(&mut conn, server, &name).await;
    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(&mut conn)
        .await
        .map_err(db_error);
    built?;
    unlocked?;
    Ok(name)
}

async fn build_template_locked(
    conn: &mut AsyncPgConnection,
    server: &str,
    name: &str,
) -> Result<(), StoreError> {
    let existing: Vec<Template> =
        diesel::sql_query("SELECT datistemplate FROM pg_database WHERE datname = $1")
            .bind::<Text, _>(name)
            .load(conn)
            .await
            .map_err(db_error)?;
    match existing.iter().map(|t| t.datistemplate).next() {
        Some(true) => return Ok(()),
        // Left half-built by a process that died: build it again.
        Some(false) => {
            diesel::sql_query(format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
                .execute(conn)
                .await
                .map_err(db_error)?;
        }
        None => {}
    }
    diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
        .execute(conn)
        .await
        .map_err(db_error)?;
    // The server's own migration path, so a copy has nothing left to migrate.
    crate::postgres::run_migrations(&with_database(server, name), CONNECT_TIMEOUT).await?;
    diesel::sql_query(format!("ALTER DATABASE \"{name}\" IS_TEMPLATE true"))
        .execute(conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// A stable hash (FNV-1a) of the PostgreSQL migration set: every migration's name and, where
/// the source tree is at hand, its SQL, so editing a migration in place makes a new template.
fn migration_set_hash() -> u64 {
    let mut hash = Fnv1a::default();
    let migrations = MigrationSource::<diesel::pg::Pg>::migrations(&crate::postgres::MIGRATIONS)
        .unwrap_or_default();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations/postgres");
    for migration in migrations {
        let name = migration.name().to_string();
        hash.write(name.as_bytes());
        for file in ["up.sql", "down.sql"] {
            if let Ok(sql) = std::fs::read(dir.join(&name).join(file)) {
                hash.write(&sql);
            }
        }
    }
    hash.finish()
}

/// FNV-1a, 64 bits: unlike std's hasher, the same on every Rust version and every run.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

async fn connect(url: &str) -> Result<AsyncPgConnection, StoreError> {
    tokio::time::timeout(CONNECT_TIMEOUT, AsyncPgConnection::establish(url))
        .await
        .map_err(|_| {
            StoreError::Unavailable(format!(
                "connecting to {} timed out",
                crate::redact_url(url)
            ))
        })?
        .map_err(connection_error)
}

/// Runs `work` to the end on a thread of its own with a runtime of its own, and waits: the
/// helpers work the same from synchronous code, from any async runtime, and from `Drop`.
fn on_own_runtime<T: Send>(
    work: impl Future<Output = Result<T, StoreError>> + Send,
) -> Result<T, StoreError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| StoreError::Config(format!("test runtime: {e}")))?
                    .block_on(work)
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
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
    /// The PostgreSQL database of a PostgreSQL store, dropped when this is dropped (after
    /// `repo`, declared first).
    pub pg: Option<TestDatabase>,
}

impl TestStore {
    /// A store on a fresh PostgreSQL database (see the module docs); panics without one.
    pub async fn postgres() -> Self {
        let db = TestDatabase::create().await;
        let mut store = Self::open_url(db.url().to_owned(), None).await;
        store.pg = Some(db);
        store
    }

    /// A store on a fresh SQLite file in a new temporary folder.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder for the test database");
        let url = fresh_sqlite_url(dir.path());
        Self::open_url(url, Some(dir)).await
    }

    /// The config the store was opened with (defaults for its URL).
    pub fn config(&self) -> StoreConfig {
        StoreConfig::new(&self.url).expect("the test store's URL is a valid config")
    }

    async fn open_url(url: String, dir: Option<tempfile::TempDir>) -> Self {
        let config = StoreConfig::new(&url).expect("the test store's URL is a valid config");
        let repo = crate::open(&config).await.unwrap_or_else(|e| {
            panic!(
                "cannot open the test store at {}: {e}",
                crate::redact_url(&url)
            )
        });
        Self {
            repo,
            url,
            dir,
            pg: None,
        }
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

    #[test]
    fn the_migration_set_hash_is_stable() {
        assert_eq!(migration_set_hash(), migration_set_hash());
        let mut empty = Fnv1a::default();
        empty.write(b"");
        assert_eq!(empty.finish(), 0xcbf2_9ce4_8422_2325);
    }
}
