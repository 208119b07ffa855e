//! The SQLite store, the embedded default: Diesel's synchronous `SqliteConnection` wrapped in
//! diesel-async's `SyncConnectionWrapper` and pooled by deadpool.
//!
//! Each call runs its Diesel code in one go on Tokio's blocking pool (the wrapper's
//! `spawn_blocking`). Writes run in `BEGIN IMMEDIATE` transactions, which take SQLite's write
//! lock up front (a deferred transaction that upgrades from read to write can fail with
//! `SQLITE_BUSY` when another writer got there first), and this process queues its writers on
//! an async mutex instead of letting them spin in SQLite's busy handler. Readers run in
//! parallel with the writer (WAL). Connections are set up with `foreign_keys=ON`,
//! `journal_mode=WAL`, `synchronous=FULL` and the configured `busy_timeout`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_domain::{Members, NewMessage, Timestamp};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use diesel_async::AsyncConnection;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use tokio::sync::Mutex;

use crate::append::{dedupe_keys, plan_batch, sorted_room_ids};
use crate::config::{Backend, StoreConfig};
use crate::error::StoreError;
use crate::events::{EventBus, StoreEvent};
use crate::models::{MessageRow, RoomRow};
use crate::raw_sql::{message_columns, new_message_columns};
use crate::repository::{Appended, RoomOpened};
use crate::schema::rooms;
use crate::statements::{self, new_room_row, room_opened};
use crate::store_calls::{StoreCalls, repository_via_calls};
use crate::support::{TxError, connection_error, db_error, migration_error, pool_error};

/// The SQLite migrations, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");

/// Rows per multi-row INSERT (6 binds each, far below SQLite's 32 766 variables).
const INSERT_CHUNK: usize = 500;
/// Ids per `IN (...)` list.
const IN_CHUNK: usize = 10_000;
/// Keys per de-duplication lookup: three parameters each, well under SQLite's limit.
const DEDUPE_CHUNK: usize = 500;

type Conn = SyncConnectionWrapper<SqliteConnection>;
type SqlitePool = Pool<Conn>;

/// A store in one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) inner: Arc<Inner>,
    /// The runtime it was opened on: every call runs there (`support::detached`).
    pub(crate) runtime: tokio::runtime::Handle,
}

pub(crate) struct Inner {
    pool: SqlitePool,
    events: EventBus,
    /// This process's writers queue here, so at most one holds SQLite's write lock at a time
    /// and the order events are published in is the commit order.
    write_lock: Mutex<()>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("pool", &self.inner.pool.status())
            .finish_non_exhaustive()
    }
}

/// The settings every new connection gets. `busy_timeout` comes first so the others wait
/// for a lock instead of failing.
///
/// `temp_store = MEMORY` keeps statement journals (written for every multi-row INSERT, since a
/// trigger could abort it half-way) in memory instead of a temporary file: a profile of the
/// group-commit path showed those file writes as its largest single cost. `cache_size` (in
/// KiB when negative) keeps the hot B-tree pages of a busy database in memory.
/// `wal_autocheckpoint` is raised (16,384 pages, 64 MiB) because checkpoints normally run on
/// a background task ([`spawn_checkpointer`]), off the writer's commit path; the writer only
/// checkpoints itself if that task falls far behind.
fn connection_pragmas(busy_timeout: Duration) -> String {
    let busy_ms = busy_timeout.as_millis().min(i32::MAX as u128);
    format!(
        "PRAGMA busy_timeout = {busy_ms}; PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -32768; PRAGMA wal_autocheckpoint = 16384;"
    )
}

impl SqliteStore {
    /// Creates the file (and its folder) if missing, runs pending migrations and builds the
    /// pool. `config.backend` must be [`Backend::Sqlite`].
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let Backend::Sqlite { path } = &config.backend else {
            return Err(StoreError::Config(
                "SqliteStore needs a SQLite file path".into(),
            ));
        };
        if config.pool_size == 0 {
            return Err(StoreError::Config("pool_size must be at least 1".into()));
        }
        let url = path
            .to_str()
            .ok_or_else(|| {
                StoreError::Config(format!("SQLite path {} is not valid UTF-8", path.display()))
            })?
            .to_owned();
        create_parent(path)?;
        let pragmas = connection_pragmas(config.sqlite_busy_timeout);

        let (migrate_url, migrate_pragmas) = (url.clone(), pragmas.clone());
        let applied = tokio::task::spawn_blocking(move || -> Result<Vec<String>, StoreError> {
            let mut conn = SqliteConnection::establish(&migrate_url).map_err(connection_error)?;
            conn.batch_execute(&migrate_pragmas).map_err(db_error)?;
            conn.run_pending_migrations(MIGRATIONS)
                .map(|versions| versions.iter().map(ToString::to_string).collect())
                .map_err(migration_error)
        })
        .await
        .map_err(|e| StoreError::Database(format!("migration task failed: {e}")))??;
        if !applied.is_empty() {
            tracing::info!(backend = "sqlite", migrations = ?applied, "applied migrations");
        }

        let mut manager_config = ManagerConfig::<Conn>::default();
        // A SQLite connection cannot be lost the way a network connection can: the pool
        // only drops connections left in a broken transaction state.
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
            .max_size(config.pool_size)
            .wait_timeout(Some(config.wait_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Config(format!("database pool: {e}")))?;
        drop(pool.get().await.map_err(pool_error)?);
        tracing::info!(backend = "sqlite", path = %path.display(), pool_size = config.pool_size, "store ready");
        let inner = Arc::new(Inner {
            pool,
            events: EventBus::new(config.event_capacity),
            write_lock: Mutex::new(()),
            path: path.clone(),
        });
        spawn_checkpointer(Arc::downgrade(&inner));
        Ok(Self {
            inner,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

/// How often the background task copies committed WAL frames into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Checkpoints the WAL from a pooled connection every [`CHECKPOINT_EVERY`], so the writer's
/// commits do not pay for it (a profile of the group-commit path had the checkpoint at 14 %).
/// `PASSIVE` never waits for readers or the writer. The task ends with the store.
fn spawn_checkpointer(store: std::sync::Weak<Inner>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = store.upgrade() else { break };
            let result = inner
                .read(|c| Ok(c.batch_execute("PRAGMA wal_checkpoint(PASSIVE)")?))
                .await;
            if let Err(error) = result {
                tracing::warn!(%error, "background WAL checkpoint failed; the writer will checkpoint");
            }
        }
    });
}

fn create_parent(path: &Path) -> Result<(), StoreError> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() && !parent.exists() => {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Config(format!(
                    "cannot create the database folder {}: {e}",
                    parent.display()
                ))
            })?;
            tracing::info!(folder = %parent.display(), "created the database folder");
            Ok(())
        }
        _ => Ok(()),
    }
}

impl Inner {
    /// Runs read-only Diesel code on a pooled connection.
    pub(crate) async fn read<R, F>(&self, work: F) -> Result<R, StoreError>
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

    /// Runs Diesel code in a `BEGIN IMMEDIATE` transaction, then publishes the events it
    /// returned (only if it committed, and before the next writer of this process starts).
    pub(crate) async fn write<R, E, F>(&self, work: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        E: IntoIterator<Item = StoreEvent> + Send + 'static,
        F: FnOnce(&mut SqliteConnection) -> Result<(R, E), TxError> + Send + 'static,
    {
        let _writer = self.write_lock.lock().await;
        let mut conn = self.pool.get().await.map_err(pool_error)?;
        let result = conn
            .spawn_blocking(move |c| Ok(c.immediate_transaction(work)))
            .await
            .map_err(db_error)?;
        let (value, events) = result.map_err(StoreError::from)?;
        for event in events {
            self.events.publish(event);
        }
        Ok(value)
    }
}

fn open_room(
    c: &mut SqliteConnection,
    members: &Members,
    now: Timestamp,
) -> Result<(RoomOpened, Option<StoreEvent>), TxError> {
    if let Some(row) = statements::sqlite::find_open_room(c, members)? {
        return Ok(room_opened(&row, false, Vec::new())?);
    }
    // The IMMEDIATE transaction holds the write lock: nobody can insert the pair's room
    // between the read above and this insert.
    let row = new_room_row(members, now);
    diesel::insert_into(rooms::table).values(&row).execute(c)?;
    let presence = statements::sqlite::presence_of(c, members.as_slice(), now)?;
    Ok(room_opened(&row, true, presence)?)
}

type BatchResults = Vec<Result<Appended, StoreError>>;

fn append_batch(
    c: &mut SqliteConnection,
    batch: Vec<NewMessage>,
    now: Timestamp,
) -> Result<(BatchResults, Vec<StoreEvent>), TxError> {
    // The IMMEDIATE transaction already holds the database's write lock: the rooms read
    // here cannot change until the commit.
    let room_ids = sorted_room_ids(&batch);
    let mut locked: Vec<RoomRow> = Vec::with_capacity(room_ids.len());
    for ids in room_ids.chunks(IN_CHUNK) {
        locked.extend(
            rooms::table
                .filter(rooms::id.eq_any(ids))
                .select(RoomRow::as_select())
                .load::<RoomRow>(c)?,
        );
    }
    // One lookup per chunk of keys, not one per message: each statement is prepared once
    // and walks the (room_id, sender_id, client_msg_id) unique index for every key.
    let keys = dedupe_keys(&batch);
    let mut stored: Vec<MessageRow> = Vec::new();
    for chunk in keys.chunks(DEDUPE_CHUNK) {
        let tuples = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let mut query = diesel::sql_query(format!(
            concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE (room_id, sender_id, client_msg_id) IN (VALUES {})"
            ),
            tuples
        ))
        .into_boxed::<diesel::sqlite::Sqlite>();
        for (room_id, sender_id, client_msg_id) in chunk {
            query = query
                .bind::<diesel::sql_types::Text, _>(room_id.as_str())
                .bind::<diesel::sql_types::Text, _>(sender_id.as_str())
                .bind::<diesel::sql_types::Text, _>(client_msg_id.as_str());
        }
        stored.extend(query.load::<MessageRow>(c)?);
    }
    let plan = plan_batch(batch, locked, stored, now)?;
    // Multi-row INSERTs written out: diesel's SQLite batch insert falls back to one INSERT
    // per row for derived `Insertable` structs, which profiled as the writer's largest cost.
    for chunk in plan.inserts.chunks(INSERT_CHUNK) {
        let rows = vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let mut query = diesel::sql_query(format!(
            concat!(
                "INSERT INTO messages (",
                new_message_columns!(),
                ") VALUES {}"
            ),
            rows
        ))
        .into_boxed::<diesel::sqlite::Sqlite>();
        for row in chunk {
            query = query
                .bind::<diesel::sql_types::Text, _>(row.room_id.as_str())
                .bind::<diesel::sql_types::BigInt, _>(row.seq)
                .bind::<diesel::sql_types::Text, _>(row.sender_id.as_str())
                .bind::<diesel::sql_types::Text, _>(row.client_msg_id.as_str())
                .bind::<diesel::sql_types::Text, _>(row.body.as_str())
                .bind::<diesel::sql_types::BigInt, _>(row.sent_at);
        }
        query.execute(c)?;
    }
    // Every touched room's last_seq in one statement per chunk (UPDATE ... FROM, SQLite 3.33+).
    for chunk in plan.room_updates.chunks(DEDUPE_CHUNK) {
        let pairs = vec!["(?, ?)"; chunk.len()].join(", ");
        let mut query = diesel::sql_query(format!(
            "UPDATE rooms SET last_seq = v.column2, last_activity_at = ? FROM (VALUES {pairs}) AS v WHERE rooms.id = v.column1"
        ))
        .into_boxed::<diesel::sqlite::Sqlite>()
        .bind::<diesel::sql_types::BigInt, _>(now.unix_micros());
        for (id, last_seq) in chunk {
            query = query
                .bind::<diesel::sql_types::Text, _>(id.as_str())
                .bind::<diesel::sql_types::BigInt, _>(*last_seq);
        }
        query.execute(c)?;
    }
    Ok((plan.results, plan.events))
}

#[async_trait]
impl StoreCalls for Inner {
    fn events(&self) -> &EventBus {
        &self.events
    }

    fn pool_status(&self) -> crate::repository::PoolStatus {
        self.pool.status().into()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| {
            diesel::sql_query("SELECT 1").execute(c)?;
            Ok(())
        })
        .await
    }

    async fn open_room(&self, members: Members, now: Timestamp) -> Result<RoomOpened, StoreError> {
        self.write(move |c| open_room(c, &members, now)).await
    }

    async fn append_batch(
        &self,
        batch: Vec<NewMessage>,
        now: Timestamp,
    ) -> Result<BatchResults, StoreError> {
        self.write(move |c| append_batch(c, batch, now)).await
    }
}

/// Runs a shared read statement on a pooled connection, in parallel with the writer (WAL).
macro_rules! sqlite_read {
    ($inner:expr, $statement:ident($($arg:expr),*)) => {
        $inner.read(move |c| statements::sqlite::$statement(c, $($arg),*)).await
    };
}

/// Runs a shared statement that writes to one room as this process's one writer, in a
/// `BEGIN IMMEDIATE` transaction (which already serialises every write: the room id is not
/// needed), publishing its event before the next writer starts.
macro_rules! sqlite_write_room {
    ($inner:expr, $room:expr, $statement:ident($($arg:expr),*)) => {
        $inner.write(move |c| statements::sqlite::$statement(c, $($arg),*)).await
    };
}

repository_via_calls!(SqliteStore, read: sqlite_read, write_room: sqlite_write_room);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pragmas_carry_the_busy_timeout() {
        let p = connection_pragmas(Duration::from_millis(2500));
        assert!(p.starts_with("PRAGMA busy_timeout = 2500;"));
        assert!(
            p.contains("foreign_keys = ON")
                && p.contains("journal_mode = WAL")
                && p.contains("synchronous = FULL")
        );
    }
}
