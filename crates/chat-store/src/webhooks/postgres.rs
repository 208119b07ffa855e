//! The store of webhooks on PostgreSQL: its own small deadpool pool of diesel-async
//! connections. Burst transactions lock the burst row (an upsert), claims skip rows another
//! node has locked (`FOR UPDATE SKIP LOCKED`), so every node may scan and send at once.

use std::sync::Arc;

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};

use super::POOL_SIZE;
use super::statements;
use super::via::webhook_store_via;
use crate::config::{Backend, StoreConfig};
use crate::error::StoreError;
use crate::support::pool_error;

/// A store of webhooks on PostgreSQL.
#[derive(Clone)]
pub struct PgWebhooks {
    inner: Arc<Inner>,
    /// The runtime it was opened on: every call runs there (`support::detached`).
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for PgWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgWebhooks")
            .field("pool", &self.inner.pool.status())
            .finish_non_exhaustive()
    }
}

struct Inner {
    pool: Pool<AsyncPgConnection>,
}

impl Inner {
    async fn conn(&self) -> Result<Object<AsyncPgConnection>, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }
}

impl PgWebhooks {
    /// Runs pending migrations (a no-op after the repository's own run) and builds a pool of
    /// [`POOL_SIZE`] connections. `config.backend` must be [`Backend::Postgres`].
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let Backend::Postgres { url } = &config.backend else {
            return Err(StoreError::Config(
                "PgWebhooks needs a postgres:// URL".into(),
            ));
        };
        crate::postgres::run_migrations(url, config.connect_timeout).await?;
        let mut manager_config = ManagerConfig::default();
        manager_config.recycling_method = RecyclingMethod::Verified;
        let manager =
            AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, manager_config);
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
            inner: Arc::new(Inner { pool }),
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

/// Runs a statement on a pooled connection.
macro_rules! pg_read {
    ($inner:expr, $statement:ident($($arg:expr),*)) => {{
        let mut conn = $inner.conn().await?;
        Ok::<_, StoreError>(statements::pg::$statement(&mut conn, $($arg),*).await?)
    }};
}

/// Runs a statement in a transaction.
macro_rules! pg_write {
    ($inner:expr, $statement:ident($($arg:expr),*)) => {{
        use diesel_async::AsyncConnection;
        let mut conn = $inner.conn().await?;
        Ok::<_, StoreError>(
            conn.transaction(async |conn| statements::pg::$statement(conn, $($arg),*).await)
                .await?,
        )
    }};
}

webhook_store_via!(PgWebhooks, read: pg_read, write: pg_write);
