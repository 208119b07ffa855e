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
use chat_domain::{
    HistoryPage, Members, Message, NewMessage, Room, RoomId, RoomSummary, SeenOutcome, Seq,
    Timestamp, UserId,
};
use diesel::connection::SimpleConnection;
use diesel::dsl::{case_when, count};
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
use crate::page::PageBounds;
use crate::postgres::{migration_error, seen_outcome};
use crate::repository::{Appended, Repository, RoomOpened};
use crate::schema::{messages, rooms};
use crate::support::{TxError, connection_error, db_error, detached, pool_error};

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
    inner: Arc<Inner>,
}

struct Inner {
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
        Ok(Self { inner })
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

    /// Runs Diesel code in a `BEGIN IMMEDIATE` transaction, then publishes the events it
    /// returned (only if it committed, and before the next writer of this process starts).
    async fn write<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut SqliteConnection) -> Result<(R, Vec<StoreEvent>), TxError> + Send + 'static,
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

fn find_room(c: &mut SqliteConnection, id: &str) -> Result<RoomRow, TxError> {
    rooms::table
        .find(id)
        .select(RoomRow::as_select())
        .first(c)
        .optional()?
        .ok_or(TxError::Store(StoreError::UnknownRoom))
}

fn open_room(
    c: &mut SqliteConnection,
    members: Members,
    now: Timestamp,
) -> Result<(RoomOpened, Vec<StoreEvent>), TxError> {
    let open: Option<RoomRow> = rooms::table
        .filter(rooms::member_a.eq(Members::first(&members).as_str()))
        .filter(rooms::member_b.eq(members.second().as_str()))
        .filter(rooms::closed_at.is_null())
        .select(RoomRow::as_select())
        .first(c)
        .optional()?;
    if let Some(row) = open {
        return Ok((
            RoomOpened {
                room: row.to_room()?,
                created: false,
            },
            Vec::new(),
        ));
    }
    // The IMMEDIATE transaction holds the write lock: nobody can insert the pair's room
    // between the read above and this insert.
    let row = RoomRow::new_open(uuid::Uuid::new_v4().hyphenated().to_string(), &members, now);
    diesel::insert_into(rooms::table).values(&row).execute(c)?;
    let room = row.to_room()?;
    Ok((
        RoomOpened {
            room: room.clone(),
            created: true,
        },
        vec![StoreEvent::RoomOpened { room }],
    ))
}

fn rooms_of(c: &mut SqliteConnection, user: &UserId) -> Result<Vec<RoomSummary>, TxError> {
    let u = user.as_str();
    let rows: Vec<(RoomRow, i64)> = rooms::table
        .left_join(
            messages::table.on(messages::room_id
                .eq(rooms::id)
                .and(messages::seen_at.is_null())
                .and(messages::sender_id.ne(u))),
        )
        .filter(rooms::member_a.eq(u).or(rooms::member_b.eq(u)))
        .group_by(rooms::id)
        .select((RoomRow::as_select(), count(messages::seq.nullable())))
        .order((rooms::created_at.desc(), rooms::id.desc()))
        .load(c)?;
    Ok(rows
        .iter()
        .map(|(row, unread)| row.summary(user, *unread))
        .collect::<Result<_, _>>()?)
}

fn room_summary(
    c: &mut SqliteConnection,
    id: &RoomId,
    user: &UserId,
) -> Result<RoomSummary, TxError> {
    let row = find_room(c, id.as_str())?;
    row.to_room()?.ensure_member(user)?;
    let unread: i64 = messages::table
        .filter(messages::room_id.eq(id.as_str()))
        .filter(messages::seen_at.is_null())
        .filter(messages::sender_id.ne(user.as_str()))
        .count()
        .get_result(c)?;
    Ok(row.summary(user, unread)?)
}

fn close_room(
    c: &mut SqliteConnection,
    id: &RoomId,
    now: Timestamp,
) -> Result<(Room, Vec<StoreEvent>), TxError> {
    let closed: Option<RoomRow> = diesel::update(
        rooms::table
            .find(id.as_str())
            .filter(rooms::closed_at.is_null()),
    )
    .set(rooms::closed_at.eq(now.unix_micros()))
    .returning(RoomRow::as_returning())
    .get_result(c)
    .optional()?;
    match closed {
        Some(row) => {
            let room = row.to_room()?;
            Ok((room.clone(), vec![StoreEvent::RoomClosed { room }]))
        }
        // Closed already (no second event), or no such room.
        None => Ok((find_room(c, id.as_str())?.to_room()?, Vec::new())),
    }
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
            "SELECT room_id, seq, sender_id, client_msg_id, body, sent_at, seen_at FROM messages \
             WHERE (room_id, sender_id, client_msg_id) IN (VALUES {tuples})"
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
            "INSERT INTO messages (room_id, seq, sender_id, client_msg_id, body, sent_at) VALUES {rows}"
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
            "UPDATE rooms SET last_seq = v.column2 FROM (VALUES {pairs}) AS v WHERE rooms.id = v.column1"
        ))
        .into_boxed::<diesel::sqlite::Sqlite>();
        for (id, last_seq) in chunk {
            query = query
                .bind::<diesel::sql_types::Text, _>(id.as_str())
                .bind::<diesel::sql_types::BigInt, _>(*last_seq);
        }
        query.execute(c)?;
    }
    Ok((plan.results, plan.events))
}

fn history(
    c: &mut SqliteConnection,
    room: &RoomId,
    reader: &UserId,
    page: HistoryPage,
) -> Result<Vec<Message>, TxError> {
    find_room(c, room.as_str())?
        .to_room()?
        .ensure_member(reader)?;
    let Some(bounds) = PageBounds::of(page) else {
        return Ok(Vec::new());
    };
    let mut query = messages::table
        .filter(messages::room_id.eq(room.as_str()))
        .select(MessageRow::as_select())
        .limit(bounds.limit)
        .into_boxed();
    if let Some(after) = bounds.after {
        query = query.filter(messages::seq.gt(after));
    }
    if let Some(before) = bounds.before {
        query = query.filter(messages::seq.lt(before));
    }
    query = if bounds.newest_first {
        query.order(messages::seq.desc())
    } else {
        query.order(messages::seq.asc())
    };
    let mut rows: Vec<MessageRow> = query.load(c)?;
    if bounds.newest_first {
        rows.reverse();
    }
    Ok(rows
        .iter()
        .map(MessageRow::to_message)
        .collect::<Result<_, _>>()?)
}

fn mark_seen(
    c: &mut SqliteConnection,
    room: RoomId,
    reader: UserId,
    up_to: Seq,
    now: Timestamp,
) -> Result<(SeenOutcome, Vec<StoreEvent>), TxError> {
    let row = find_room(c, room.as_str())?;
    let room_value = row.to_room()?;
    room_value.ensure_member(&reader)?;
    let Some(last) = row.last_seq()? else {
        return Ok((
            SeenOutcome {
                up_to,
                marked: Vec::new(),
                seen_at: now,
            },
            Vec::new(),
        ));
    };
    let up_to = up_to.min(last);
    let now_us = now.unix_micros();
    let mut marked: Vec<(i64, Option<i64>)> = diesel::update(
        messages::table
            .filter(messages::room_id.eq(room.as_str()))
            .filter(messages::sender_id.ne(reader.as_str()))
            .filter(messages::seq.le(i64::from(up_to)))
            .filter(messages::seen_at.is_null()),
    )
    .set(
        messages::seen_at.eq(case_when(messages::sent_at.gt(now_us), messages::sent_at)
            .otherwise(now_us)
            .nullable()),
    )
    .returning((messages::seq, messages::seen_at))
    .get_results(c)?;
    marked.sort_unstable();
    let outcome = seen_outcome(up_to, now, &marked)?;
    let events = if outcome.changed() {
        vec![StoreEvent::SeenMarked {
            room_id: room,
            members: room_value.members,
            reader,
            up_to: outcome.up_to,
            seen_at: outcome.seen_at,
        }]
    } else {
        Vec::new()
    };
    Ok((outcome, events))
}

#[async_trait]
impl Repository for SqliteStore {
    fn events(&self) -> &EventBus {
        &self.inner.events
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        detached(async move {
            inner
                .read(|c| {
                    diesel::sql_query("SELECT 1").execute(c)?;
                    Ok(())
                })
                .await
        })
        .await
    }

    async fn open_room(&self, members: &Members, now: Timestamp) -> Result<RoomOpened, StoreError> {
        let (inner, members) = (self.inner.clone(), members.clone());
        detached(async move { inner.write(move |c| open_room(c, members, now)).await }).await
    }

    async fn room(&self, id: &RoomId) -> Result<Room, StoreError> {
        let (inner, id) = (self.inner.clone(), id.clone());
        detached(async move {
            inner
                .read(move |c| Ok(find_room(c, id.as_str())?.to_room()?))
                .await
        })
        .await
    }

    async fn rooms_of(&self, user: &UserId) -> Result<Vec<RoomSummary>, StoreError> {
        let (inner, user) = (self.inner.clone(), user.clone());
        detached(async move { inner.read(move |c| rooms_of(c, &user)).await }).await
    }

    async fn room_summary(&self, id: &RoomId, user: &UserId) -> Result<RoomSummary, StoreError> {
        let (inner, id, user) = (self.inner.clone(), id.clone(), user.clone());
        detached(async move { inner.read(move |c| room_summary(c, &id, &user)).await }).await
    }

    async fn close_room(&self, id: &RoomId, now: Timestamp) -> Result<Room, StoreError> {
        let (inner, id) = (self.inner.clone(), id.clone());
        detached(async move { inner.write(move |c| close_room(c, &id, now)).await }).await
    }

    async fn append_batch(
        &self,
        messages: Vec<NewMessage>,
        now: Timestamp,
    ) -> Result<BatchResults, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let inner = self.inner.clone();
        detached(async move { inner.write(move |c| append_batch(c, messages, now)).await }).await
    }

    async fn history(
        &self,
        room: &RoomId,
        reader: &UserId,
        page: HistoryPage,
    ) -> Result<Vec<Message>, StoreError> {
        let (inner, room, reader) = (self.inner.clone(), room.clone(), reader.clone());
        detached(async move { inner.read(move |c| history(c, &room, &reader, page)).await }).await
    }

    async fn mark_seen(
        &self,
        room: &RoomId,
        reader: &UserId,
        up_to: Seq,
        now: Timestamp,
    ) -> Result<SeenOutcome, StoreError> {
        let (inner, room, reader) = (self.inner.clone(), room.clone(), reader.clone());
        detached(async move {
            inner
                .write(move |c| mark_seen(c, room, reader, up_to, now))
                .await
        })
        .await
    }
}

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
