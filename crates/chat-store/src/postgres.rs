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
use crate::schema::rooms;
use crate::statements::{self, new_room_row, room_opened};
use crate::store_calls::{StoreCalls, repository_via_calls};
use crate::support::{
    TxError, connection_error, db_error, migration_error, pool_error, redact_url,
};

/// The PostgreSQL migrations, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");

/// Serialises concurrent `open` calls' migrations across processes.
const MIGRATION_LOCK_KEY: i64 = 0x6d61_7463_6863_6174; // "matchcat"

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
    // No `SELECT 1` on every checkout (`Verified`): it was one round trip of the ten an
    // append paid. A connection the server dropped is still never handed out: deadpool's
    // recycle asks diesel-async's `is_broken`, which is true once tokio-postgres's connection
    // task has seen the socket close (a restart's "terminating connection" or EOF arrive at
    // once). What this gives up is the check of a connection that died silently (no FIN,
    // e.g. a network partition), which `SELECT 1` would only have turned into a wait for the
    // TCP timeout as well.
    manager_config.recycling_method = RecyclingMethod::Fast;
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

/// The batch's new rows and every touched room's `last_seq` and `last_activity_at`, in one
/// statement (two round trips, prepare and run, where there were four). `$6` is the batch's
/// time, the rows' `sent_at` and the rooms' `last_activity_at`.
const INSERT_AND_BUMP_SQL: &str = "WITH inserted AS ( \
     INSERT INTO messages (room_id, seq, sender_id, client_msg_id, body, sent_at) \
     SELECT m.room_id, m.seq, m.sender_id, m.client_msg_id, m.body, $6 \
     FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[]) \
       AS m(room_id, seq, sender_id, client_msg_id, body)) \
     UPDATE rooms SET last_seq = u.last_seq, last_activity_at = $6 \
     FROM unnest($7::text[], $8::int8[]) AS u(id, last_seq) WHERE rooms.id = u.id";

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
        let keys = DedupeArrays::new(&batch);
        let mut attempt = 1;
        loop {
            match self.append_once(&batch, &room_ids, &keys, now).await {
                Err(TxError::Db(e)) if is_dedupe_race(&e) && attempt < APPEND_ATTEMPTS => {
                    // The dedupe read ran before the room lock (see `append_once`) and missed
                    // a retry another writer committed meanwhile; the constraint caught it and
                    // nothing was written. Again, now that the row is there to be found.
                    tracing::debug!(attempt, "append raced a retried send; running it again");
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
                Ok((plan, _guards)) => {
                    // Committed: now, and only now, tell the world (still holding the order
                    // locks).
                    self.publish(plan.events);
                    return Ok(plan.results);
                }
            }
        }
    }
}

/// How often a batch is tried when it loses the dedupe race (`is_dedupe_race`): the second
/// attempt reads after the lock it then holds, so a third is for a second race on the same
/// key, which would take three tries of one message on three writers at once.
const APPEND_ATTEMPTS: u32 = 3;

/// The batch's distinct dedupe keys, as the three arrays `FIND_STORED_SQL` binds.
struct DedupeArrays {
    rooms: Vec<String>,
    senders: Vec<String>,
    ids: Vec<String>,
}

impl DedupeArrays {
    fn new(batch: &[NewMessage]) -> Self {
        let keys = crate::append::dedupe_keys(batch);
        let mut arrays = Self {
            rooms: Vec::with_capacity(keys.len()),
            senders: Vec::with_capacity(keys.len()),
            ids: Vec::with_capacity(keys.len()),
        };
        for (r, s, c) in keys {
            arrays.rooms.push(r);
            arrays.senders.push(s);
            arrays.ids.push(c);
        }
        arrays
    }
}

/// A unique violation of `messages_dedupe`: the one error a batch is retried on.
fn is_dedupe_race(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    matches!(e, Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
        if info.constraint_name() == Some("messages_dedupe"))
}

impl Inner {
    /// One attempt at a batch: six round trips (`BEGIN`; the room lock pipelined with the
    /// dedupe read, two; the insert and the rooms' update as one statement, two; `COMMIT`),
    /// where it used to take ten (a `SELECT 1` pool check, `BEGIN`, the lock, then the dedupe
    /// read, the multi-row `INSERT` and the `UPDATE` at two each, `COMMIT`). Raw SQL and
    /// multi-row inserts cost two because diesel never caches them: each is prepared (one
    /// round trip) before it runs. At 100 msg/s a batch is one message and its commit is the
    /// floor of the latency (commit p50 2.0 -> 1.6 ms, docs/benchmarks.md "The latency
    /// floor"), so every round trip (~0.2 ms on loopback with the backend's wake-up) counts.
    ///
    /// Pipelining the two reads means PostgreSQL runs them in the order their `Execute`s
    /// arrive. The dedupe read is prepared first on every call, so its `Execute` follows the
    /// lock's with diesel-async 0.9; were that to change (a cached dedupe statement and a lock
    /// statement still to be prepared on a connection's first use), the read could run before
    /// the lock is held and miss a retried send another writer commits in between. That cannot
    /// store a duplicate: the insert then violates `messages_dedupe`, the transaction rolls
    /// back, and `append_batch` runs the batch again.
    async fn append_once(
        &self,
        batch: &[NewMessage],
        room_ids: &[String],
        keys: &DedupeArrays,
        now: Timestamp,
    ) -> Result<(BatchPlan, OrderGuards), TxError> {
        let mut conn = self.conn().await.map_err(TxError::Store)?;
        let order = &self.order;
        conn.transaction(async |conn| {
            let (locked, stored) = {
                let shared: &AsyncPgConnection = conn;
                let (mut lock_conn, mut read_conn) = (shared, shared);
                // Lock the rooms, in id order: concurrent batches queue on the rows they share
                // instead of deadlocking.
                let lock = rooms::table
                    .filter(rooms::id.eq_any(room_ids))
                    .order(rooms::id.asc())
                    .for_update()
                    .select(RoomRow::as_select())
                    .load::<RoomRow>(&mut lock_conn);
                // Which of the batch's messages are stored already.
                let find = diesel::sql_query(FIND_STORED_SQL)
                    .bind::<Array<Text>, _>(&keys.rooms)
                    .bind::<Array<Text>, _>(&keys.senders)
                    .bind::<Array<Text>, _>(&keys.ids)
                    .load::<MessageRow>(&mut read_conn);
                tokio::try_join!(lock, find)?
            };
            let plan = plan_batch(batch.to_vec(), locked, stored, now)?;
            if !plan.inserts.is_empty() {
                let rows = InsertArrays::new(&plan);
                let (ids, seqs): (Vec<&str>, Vec<i64>) = plan
                    .room_updates
                    .iter()
                    .map(|(id, seq)| (id.as_str(), *seq))
                    .unzip();
                diesel::sql_query(INSERT_AND_BUMP_SQL)
                    .bind::<Array<Text>, _>(&rows.room_ids)
                    .bind::<Array<BigInt>, _>(&rows.seqs)
                    .bind::<Array<Text>, _>(&rows.sender_ids)
                    .bind::<Array<Text>, _>(&rows.client_msg_ids)
                    .bind::<Array<Text>, _>(&rows.bodies)
                    .bind::<BigInt, _>(now.unix_micros())
                    .bind::<Array<Text>, _>(&ids)
                    .bind::<Array<BigInt>, _>(&seqs)
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
        .await
    }
}

/// The new rows of a plan as the column arrays `INSERT_AND_BUMP_SQL` binds: one statement
/// text and five array binds for every batch size (diesel's multi-row `INSERT` had six binds
/// a row and one text per number of rows).
struct InsertArrays<'a> {
    room_ids: Vec<&'a str>,
    seqs: Vec<i64>,
    sender_ids: Vec<&'a str>,
    client_msg_ids: Vec<&'a str>,
    bodies: Vec<&'a str>,
}

impl<'a> InsertArrays<'a> {
    fn new(plan: &'a BatchPlan) -> Self {
        let n = plan.inserts.len();
        let mut rows = Self {
            room_ids: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            sender_ids: Vec::with_capacity(n),
            client_msg_ids: Vec::with_capacity(n),
            bodies: Vec::with_capacity(n),
        };
        for row in &plan.inserts {
            rows.room_ids.push(&row.room_id);
            rows.seqs.push(row.seq);
            rows.sender_ids.push(&row.sender_id);
            rows.client_msg_ids.push(&row.client_msg_id);
            rows.bodies.push(&row.body);
        }
        rows
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
