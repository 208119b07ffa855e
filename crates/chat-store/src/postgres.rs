//! The PostgreSQL store: diesel-async's `AsyncPgConnection` through a deadpool pool.
//!
//! Appends lock the rows of the rooms they touch (`SELECT ... FOR UPDATE`, in room id order
//! so concurrent batches cannot deadlock), then assign seqs, insert and bump `last_seq` in
//! the same transaction. Events are published after the commit; see [`OrderLocks`] for how
//! their order per room matches the commit order.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_domain::{Members, NewMessage, Timestamp};
use deadpool::managed::{Hook, HookError};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::append::{BatchPlan, plan_batch, sorted_room_ids};
use crate::config::{Backend, StoreConfig};
use crate::error::StoreError;
use crate::events::{EventBus, StoreEvent};
use crate::models::{MessageRow, RoomRow};
use crate::raw_sql::message_columns;
use crate::repository::{Appended, RoomOpened};
use crate::schema::{messages, rooms};
use crate::statements::{self, new_room_row, room_opened};
use crate::store_calls::{StoreCalls, repository_via_calls};
use crate::support::{
    TxError, connection_error, db_error, migration_error, pool_error, redact_url,
};

/// The PostgreSQL migrations, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");

/// Serialises concurrent `open` calls' migrations across processes.
const MIGRATION_LOCK_KEY: i64 = 0x6d61_7463_6863_6174; // "matchcat"

/// Rows per multi-row INSERT (7 binds each, far below PostgreSQL's 65 535).
const INSERT_CHUNK: usize = 1_000;

type PgPool = Pool<AsyncPgConnection>;

/// A store on PostgreSQL.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
    /// The runtime it was opened on: every call runs there (`support::detached`).
    runtime: tokio::runtime::Handle,
}

struct Inner {
    pool: PgPool,
    events: EventBus,
    order: OrderLocks,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.inner.pool.status())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, runs pending migrations and builds the pool. `config.backend` must be
    /// [`Backend::Postgres`].
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let Backend::Postgres { url } = &config.backend else {
            return Err(StoreError::Config("PgStore needs a postgres:// URL".into()));
        };
        if config.pool_size == 0 {
            return Err(StoreError::Config("pool_size must be at least 1".into()));
        }
        run_migrations(url, config.connect_timeout).await?;
        let pool = build_pool(url, config)?;
        // Fail now, not on the first request, when the pool cannot reach the server.
        drop(pool.get().await.map_err(pool_error)?);
        tracing::info!(
            backend = "postgres",
            url = %redact_url(url),
            pool_size = config.pool_size,
            "store ready"
        );
        Ok(Self {
            runtime: tokio::runtime::Handle::current(),
            inner: Arc::new(Inner {
                pool,
                events: EventBus::new(config.event_capacity),
                order: OrderLocks::new(),
            }),
        })
    }
}

fn build_pool(url: &str, config: &StoreConfig) -> Result<PgPool, StoreError> {
    let mut manager_config = ManagerConfig::default();
    // Every connection taken from the pool is checked with `SELECT 1` first: a connection
    // the server dropped is replaced instead of failing the caller's query.
    manager_config.recycling_method = RecyclingMethod::Verified;
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, manager_config);
    let max_lifetime = config.max_lifetime;
    Pool::builder(manager)
        .max_size(config.pool_size)
        .wait_timeout(Some(config.wait_timeout))
        .create_timeout(Some(config.connect_timeout))
        .recycle_timeout(Some(config.connect_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .pre_recycle(Hook::sync_fn(move |_, metrics| {
            if metrics.age() > max_lifetime {
                Err(HookError::message("connection reached its max lifetime"))
            } else {
                Ok(())
            }
        }))
        .build()
        .map_err(|e| StoreError::Config(format!("database pool: {e}")))
}

/// Runs pending migrations on one dedicated connection, under an advisory lock so several
/// servers starting at once migrate one after the other. Diesel's migration harness is
/// synchronous: it runs on the blocking pool through `AsyncConnectionWrapper`.
pub(crate) async fn run_migrations(url: &str, connect_timeout: Duration) -> Result<(), StoreError> {
    let conn = tokio::time::timeout(connect_timeout, AsyncPgConnection::establish(url))
        .await
        .map_err(|_| {
            StoreError::Unavailable(format!("connecting to {} timed out", redact_url(url)))
        })?
        .map_err(connection_error)?;
    let mut conn: AsyncConnectionWrapper<AsyncPgConnection> = AsyncConnectionWrapper::from(conn);
    let applied = tokio::task::spawn_blocking(move || -> Result<Vec<String>, StoreError> {
        let lock =
            diesel::sql_query("SELECT pg_advisory_lock($1)").bind::<BigInt, _>(MIGRATION_LOCK_KEY);
        diesel::RunQueryDsl::execute(lock, &mut conn).map_err(db_error)?;
        let result = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(migration_error);
        let unlock = diesel::sql_query("SELECT pg_advisory_unlock($1)")
            .bind::<BigInt, _>(MIGRATION_LOCK_KEY);
        let unlock = diesel::RunQueryDsl::execute(unlock, &mut conn);
        let applied = result?;
        unlock.map_err(db_error)?;
        Ok(applied)
    })
    .await
    .map_err(|e| StoreError::Database(format!("migration task failed: {e}")))??;
    if !applied.is_empty() {
        tracing::info!(backend = "postgres", migrations = ?applied, "applied migrations");
    }
    Ok(())
}

/// Keeps event publication in commit order per room.
///
/// Two transactions on one room commit in the order they got its row lock, but the tasks
/// that publish their events may run in any order. So, as the last step before COMMIT, a
/// writer takes the locks of the stripes its rooms hash to (in stripe order) and releases them
/// only after publishing. It takes them while it holds its rooms' row locks, and after taking
/// them it only commits (which waits on no lock), so no deadlock can form; the next writer on
/// the same room can only reach its own COMMIT after this one published.
struct OrderLocks {
    stripes: Vec<Arc<Mutex<()>>>,
}

type OrderGuards = Vec<OwnedMutexGuard<()>>;

impl OrderLocks {
    const STRIPES: usize = 64;

    fn new() -> Self {
        Self {
            stripes: (0..Self::STRIPES)
                .map(|_| Arc::new(Mutex::new(())))
                .collect(),
        }
    }

    async fn lock<'a>(&self, room_ids: impl IntoIterator<Item = &'a str>) -> OrderGuards {
        let hasher = BuildHasherDefault::<DefaultHasher>::default();
        let mut indexes: Vec<usize> = room_ids
            .into_iter()
            .map(|id| (hasher.hash_one(id) % Self::STRIPES as u64) as usize)
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        let mut guards = Vec::with_capacity(indexes.len());
        for i in indexes {
            if let Some(stripe) = self.stripes.get(i) {
                guards.push(stripe.clone().lock_owned().await);
            }
        }
        guards
    }
}

/// The dedupe lookup: the stored rows matching any `(room, sender, client_msg_id)` of a batch,
/// in one statement (an index lookup per key).
const FIND_STORED_SQL: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM unnest($1::text[], $2::text[], $3::text[]) AS k(k_room_id, k_sender_id, k_client_msg_id) \
     JOIN messages ON room_id = k_room_id AND sender_id = k_sender_id AND client_msg_id = k_client_msg_id"
);

/// Every touched room's `last_seq` and `last_activity_at`, in one statement.
const UPDATE_LAST_SEQ_SQL: &str = "UPDATE rooms SET last_seq = u.last_seq, last_activity_at = $3 \
     FROM unnest($1::text[], $2::int8[]) AS u(id, last_seq) WHERE rooms.id = u.id";

impl Inner {
    async fn conn(&self) -> Result<Object<AsyncPgConnection>, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Publishes what a committed transaction returned (still holding its order locks).
    fn publish(&self, events: impl IntoIterator<Item = StoreEvent>) {
        for event in events {
            self.events.publish(event);
        }
    }
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
        let mut conn = self.conn().await?;
        diesel::sql_query("SELECT 1")
            .execute(&mut conn)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn open_room(&self, members: Members, now: Timestamp) -> Result<RoomOpened, StoreError> {
        let mut conn = self.conn().await?;
        // Another call may create the pair's room between our read and our insert: the insert
        // then does nothing (the one-open-room-per-pair index) and the re-read finds that room.
        for _ in 0..3 {
            if let Some(row) = statements::pg::find_open_room(&mut conn, &members).await? {
                return Ok(room_opened(&row, false, Vec::new())?.0);
            }
            let row = new_room_row(&members, now);
            let inserted = diesel::insert_into(rooms::table)
                .values(&row)
                .on_conflict_do_nothing()
                .execute(&mut conn)
                .await
                .map_err(db_error)?;
            if inserted == 1 {
                let pair = members.as_slice().to_vec();
                let presence = statements::pg::presence_of(&mut conn, &pair, now).await?;
                let (opened, event) = room_opened(&row, true, presence)?;
                self.publish(event);
                return Ok(opened);
            }
        }
        Err(StoreError::Database(
            "the pair's open room kept changing while opening it".into(),
        ))
    }

    async fn append_batch(
        &self,
        batch: Vec<NewMessage>,
        now: Timestamp,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        let room_ids = sorted_room_ids(&batch);
        let mut conn = self.conn().await?;
        let order = &self.order;
        let (plan, _guards): (BatchPlan, OrderGuards) = conn
            .transaction(async |conn| {
                // Lock the rooms, in id order: concurrent batches queue on the rows they
                // share instead of deadlocking.
                let locked: Vec<RoomRow> = rooms::table
                    .filter(rooms::id.eq_any(&room_ids))
                    .order(rooms::id.asc())
                    .for_update()
                    .select(RoomRow::as_select())
                    .load(conn)
                    .await?;
                // Under the locks: which of the batch's messages are stored already.
                let keys = crate::append::dedupe_keys(&batch);
                let (mut k_rooms, mut k_senders, mut k_ids) = (
                    Vec::with_capacity(keys.len()),
                    Vec::with_capacity(keys.len()),
                    Vec::with_capacity(keys.len()),
                );
                for (r, s, c) in keys {
                    k_rooms.push(r);
                    k_senders.push(s);
                    k_ids.push(c);
                }
                let stored: Vec<MessageRow> = diesel::sql_query(FIND_STORED_SQL)
                    .bind::<Array<Text>, _>(&k_rooms)
                    .bind::<Array<Text>, _>(&k_senders)
                    .bind::<Array<Text>, _>(&k_ids)
                    .load(conn)
                    .await?;
                let plan = plan_batch(batch, locked, stored, now)?;
                for chunk in plan.inserts.chunks(INSERT_CHUNK) {
                    diesel::insert_into(messages::table)
                        .values(chunk)
                        .execute(conn)
                        .await?;
                }
                if !plan.room_updates.is_empty() {
                    let (ids, seqs): (Vec<&str>, Vec<i64>) = plan
                        .room_updates
                        .iter()
                        .map(|(id, seq)| (id.as_str(), *seq))
                        .unzip();
                    diesel::sql_query(UPDATE_LAST_SEQ_SQL)
                        .bind::<Array<Text>, _>(&ids)
                        .bind::<Array<BigInt>, _>(&seqs)
                        .bind::<BigInt, _>(now.unix_micros())
                        .execute(conn)
                        .await?;
                }
                let guards = if plan.events.is_empty() {
                    Vec::new()
                } else {
                    order
                        .lock(plan.room_updates.iter().map(|(id, _)| id.as_str()))
                        .await
                };
                Ok::<_, TxError>((plan, guards))
            })
            .await?;
        // Committed: now, and only now, tell the world (still holding the order locks).
        self.publish(plan.events);
        Ok(plan.results)
    }
}

/// Runs a shared read statement on a pooled connection.
macro_rules! pg_read {
    ($inner:expr, $statement:ident($($arg:expr),*)) => {{
        let mut conn = $inner.conn().await?;
        Ok(statements::pg::$statement(&mut conn, $($arg),*).await?)
    }};
}

/// Runs a shared statement that writes to one room in a transaction. When it changed
/// something, the room's order stripe is taken before COMMIT, while the row lock is still held
/// ([`OrderLocks`]), and released only after the event is published.
macro_rules! pg_write_room {
    ($inner:expr, $room:expr, $statement:ident($($arg:expr),*)) => {{
        let mut conn = $inner.conn().await?;
        let order = &$inner.order;
        let (value, events, _guards) = conn
            .transaction(async |conn| {
                let (value, events) = statements::pg::$statement(conn, $($arg),*).await?;
                let events: Vec<StoreEvent> = events.into_iter().collect();
                let guards = if events.is_empty() {
                    Vec::new()
                } else {
                    order.lock([$room]).await
                };
                Ok::<_, TxError>((value, events, guards))
            })
            .await?;
        $inner.publish(events);
        Ok(value)
    }};
}

repository_via_calls!(PgStore, read: pg_read, write_room: pg_write_room);
