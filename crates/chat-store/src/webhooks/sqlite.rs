//! The store of webhooks on SQLite: its own small pool of connections to the store's file.
//! Writes run in `BEGIN IMMEDIATE` transactions, queued on this store's own mutex; against the
//! chat's writer (another pool) they wait in SQLite's busy handler. They are rare (one per
//! burst, one or two per delivery attempt, the scan cursor every 30 s) and short.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::sqlite::SqliteConnection;
use diesel_async::AsyncConnection;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_migrations::MigrationHarness;
use tokio::sync::Mutex;

use super::POOL_SIZE;
use super::statements;
use super::via::webhook_store_via;
use crate::config::{Backend, StoreConfig};
use crate::error::StoreError;
use crate::support::{TxError, connection_error, db_error, migration_error, pool_error};

type Conn = SyncConnectionWrapper<SqliteConnection>;

/// A store of webhooks in the SQLite file of the chat's store.
#[derive(Clone)]
pub struct SqliteWebhooks {
    inner: Arc<Inner>,
    /// The runtime it was opened on: every call runs there (`support::detached`).
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for SqliteWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteWebhooks")
            .field("path", &self.inner.path)
            .field("pool", &self.inner.pool.status())
            .finish_non_exhaustive()
    }
}

struct Inner {
    pool: Pool<Conn>,
    /// This store's writers queue here (SQLite has one writer at a time).
    write_lock: Mutex<()>,
    path: PathBuf,
}

/// The chat store's connection settings that matter here: wait for the write lock instead of
/// failing, and the same durability.
fn connection_pragmas(busy_timeout: Duration) -> String {
    let busy_ms = busy_timeout.as_millis().min(i32::MAX as u128);
    format!(
        "PRAGMA busy_timeout = {busy_ms}; PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA temp_store = MEMORY;"
    )
}

impl SqliteWebhooks {
    /// Runs pending migrations (a no-op after the repository's own run) and builds a pool of
    /// [`POOL_SIZE`] connections. `config.backend` must be [`Backend::Sqlite`].
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let Backend::Sqlite { path } = &config.backend else {
            return Err(StoreError::Config(
                "SqliteWebhooks needs a SQLite file path".into(),
            ));
        };
        let url = path
            .to_str()
            .ok_or_else(|| {
                StoreError::Config(format!("SQLite path {} is not valid UTF-8", path.display()))
            })?
            .to_owned();
        let pragmas = connection_pragmas(config.sqlite_busy_timeout);
        let (migrate_url, migrate_pragmas) = (url.clone(), pragmas.clone());
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            let mut conn = <SqliteConnection as diesel::Connection>::establish(&migrate_url)
                .map_err(connection_error)?;
            conn.batch_execute(&migrate_pragmas).map_err(db_error)?;
            conn.run_pending_migrations(crate::sqlite::MIGRATIONS)
                .map(drop)
                .map_err(migration_error)
        })
        .await
        .map_err(|e| StoreError::Database(format!("migration task failed: {e}")))??;

        let mut manager_config = ManagerConfig::<Conn>::default();
        manager_config.recycling_method = RecyclingMethod::Fast;
        manager_config.custom_setup = Box::new(move |url| {
            let pragmas = pragmas.clone();
            Box::pin(async move {
                let mut conn = Conn::establish(url).await?;
                conn.spawn_blocking(move |c| c.batch_execute(&pragmas))
                    .await
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                Ok(conn)
            })
        });
        let manager = AsyncDieselConnectionManager::<Conn>::new_with_config(url, manager_config);
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(config.wait_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Config(format!("webhook database pool: {e}")))?;
        drop(pool.get().await.map_err(pool_error)?);
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                write_lock: Mutex::new(()),
                path: path.clone(),
            }),
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

impl Inner {
    /// Runs read-only Diesel code on a pooled connection.
    async fn read<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut SqliteConnection) -> Result<R, TxError> + Send + 'static,
    {
        let mut conn = self.pool.get().await.map_err(pool_error)?;
        let result = conn
            .spawn_blocking(move |c| Ok(work(c)))
            .await
            .map_err(db_error)?;
        result.map_err(StoreError::from)
    }

    /// Runs Diesel code in a `BEGIN IMMEDIATE` transaction.
    async fn write<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut SqliteConnection) -> Result<R, TxError> + Send + 'static,
    {
        let _writer = self.write_lock.lock().await;
        let mut conn = self.pool.get().await.map_err(pool_error)?;
        let result = conn
            .spawn_blocking(move |c| Ok(c.immediate_transaction(work)))
            .await
            .map_err(db_error)?;
        result.map_err(StoreError::from)
    }
}

macro_rules! sqlite_read {
    ($inner:expr, $statement:ident($($arg:expr),*)) => {
        $inner.read(move |c| statements::sqlite::$statement(c, $($arg),*)).await
    };
}

macro_rules! sqlite_write {
    ($inner:expr, $statement:ident($($arg:expr),*)) => {
        $inner.write(move |c| statements::sqlite::$statement(c, $($arg),*)).await
    };
}

webhook_store_via!(SqliteWebhooks, read: sqlite_read, write: sqlite_write);
