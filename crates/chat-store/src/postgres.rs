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
use chat_domain::{
    HistoryPage, Members, Message, NewMessage, Room, RoomId, RoomSummary, SeenOutcome, Seq,
    Timestamp, UserId,
};
use deadpool::managed::{Hook, HookError};
use diesel::dsl::{case_when, count};
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
use crate::page::PageBounds;
use crate::repository::{Appended, Repository, RoomOpened};
use crate::schema::{messages, rooms};
use crate::support::{TxError, connection_error, db_error, detached, pool_error, redact_url};

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
            inner: Arc::new(Inner {
                pool,
                events: EventBus::new(config.event_capacity),
                order: OrderLocks::new(),
            }),
        })
    }

    /// The pool's current size and idle connections, for metrics.
    pub fn pool_status(&self) -> deadpool::Status {
        self.inner.pool.status()
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
async fn run_migrations(url: &str, connect_timeout: Duration) -> Result<(), StoreError> {
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

pub(crate) fn migration_error(e: Box<dyn std::error::Error + Send + Sync>) -> StoreError {
    match e.downcast::<diesel::result::Error>() {
        Ok(e) => match db_error(*e) {
            StoreError::Database(msg) => StoreError::Database(format!("migration failed: {msg}")),
            other => other,
        },
        Err(e) => StoreError::Database(format!("migration failed: {e}")),
    }
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
const FIND_STORED_SQL: &str = "SELECT m.room_id, m.seq, m.sender_id, m.client_msg_id, m.body, m.sent_at, m.seen_at \
     FROM unnest($1::text[], $2::text[], $3::text[]) AS k(room_id, sender_id, client_msg_id) \
     JOIN messages m ON m.room_id = k.room_id AND m.sender_id = k.sender_id AND m.client_msg_id = k.client_msg_id";

/// Every touched room's `last_seq`, in one statement.
const UPDATE_LAST_SEQ_SQL: &str = "UPDATE rooms SET last_seq = u.last_seq \
     FROM unnest($1::text[], $2::int8[]) AS u(id, last_seq) WHERE rooms.id = u.id";

impl Inner {
    async fn conn(&self) -> Result<Object<AsyncPgConnection>, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        diesel::sql_query("SELECT 1")
            .execute(&mut conn)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn find_room(conn: &mut AsyncPgConnection, id: &str) -> Result<RoomRow, StoreError> {
        rooms::table
            .find(id)
            .select(RoomRow::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(db_error)?
            .ok_or(StoreError::UnknownRoom)
    }

    async fn open_room(&self, members: Members, now: Timestamp) -> Result<RoomOpened, StoreError> {
        let mut conn = self.conn().await?;
        let (a, b) = (Members::first(&members).as_str(), members.second().as_str());
        // Another call may create the pair's room between our read and our insert: the insert
        // then does nothing (the one-open-room-per-pair index) and the re-read finds that room.
        for _ in 0..3 {
            let open: Option<RoomRow> = rooms::table
                .filter(rooms::member_a.eq(a))
                .filter(rooms::member_b.eq(b))
                .filter(rooms::closed_at.is_null())
                .select(RoomRow::as_select())
                .first(&mut conn)
                .await
                .optional()
                .map_err(db_error)?;
            if let Some(row) = open {
                return Ok(RoomOpened {
                    room: row.to_room()?,
                    created: false,
                });
            }
            let row =
                RoomRow::new_open(uuid::Uuid::new_v4().hyphenated().to_string(), &members, now);
            let inserted = diesel::insert_into(rooms::table)
                .values(&row)
                .on_conflict_do_nothing()
                .execute(&mut conn)
                .await
                .map_err(db_error)?;
            if inserted == 1 {
                let room = row.to_room()?;
                self.events
                    .publish(StoreEvent::RoomOpened { room: room.clone() });
                return Ok(RoomOpened {
                    room,
                    created: true,
                });
            }
        }
        Err(StoreError::Database(
            "the pair's open room kept changing while opening it".into(),
        ))
    }

    async fn room(&self, id: RoomId) -> Result<Room, StoreError> {
        let mut conn = self.conn().await?;
        Self::find_room(&mut conn, id.as_str()).await?.to_room()
    }

    async fn rooms_of(&self, user: UserId) -> Result<Vec<RoomSummary>, StoreError> {
        let mut conn = self.conn().await?;
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
            .load(&mut conn)
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|(row, unread)| row.summary(&user, *unread))
            .collect()
    }

    async fn room_summary(&self, id: RoomId, user: UserId) -> Result<RoomSummary, StoreError> {
        let mut conn = self.conn().await?;
        let row = Self::find_room(&mut conn, id.as_str()).await?;
        row.to_room()?.ensure_member(&user)?;
        let unread: i64 = messages::table
            .filter(messages::room_id.eq(id.as_str()))
            .filter(messages::seen_at.is_null())
            .filter(messages::sender_id.ne(user.as_str()))
            .count()
            .get_result(&mut conn)
            .await
            .map_err(db_error)?;
        row.summary(&user, unread)
    }

    async fn close_room(&self, id: RoomId, now: Timestamp) -> Result<Room, StoreError> {
        let mut conn = self.conn().await?;
        let order = &self.order;
        let closed = conn
            .transaction(async |conn| {
                let row: Option<RoomRow> = diesel::update(
                    rooms::table
                        .find(id.as_str())
                        .filter(rooms::closed_at.is_null()),
                )
                .set(rooms::closed_at.eq(now.unix_micros()))
                .returning(RoomRow::as_returning())
                .get_result(conn)
                .await
                .optional()?;
                let guards = match &row {
                    Some(_) => order.lock([id.as_str()]).await,
                    None => Vec::new(),
                };
                Ok::<_, TxError>((row, guards))
            })
            .await?;
        match closed {
            (Some(row), _guards) => {
                let room = row.to_room()?;
                self.events
                    .publish(StoreEvent::RoomClosed { room: room.clone() });
                Ok(room)
            }
            // Closed already (no second event), or no such room.
            (None, _) => Self::find_room(&mut conn, id.as_str()).await?.to_room(),
        }
    }

    async fn append_batch(
        &self,
        batch: Vec<NewMessage>,
        now: Timestamp,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
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
        for event in plan.events {
            self.events.publish(event);
        }
        Ok(plan.results)
    }

    async fn history(
        &self,
        room: RoomId,
        reader: UserId,
        page: HistoryPage,
    ) -> Result<Vec<Message>, StoreError> {
        let mut conn = self.conn().await?;
        Self::find_room(&mut conn, room.as_str())
            .await?
            .to_room()?
            .ensure_member(&reader)?;
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
        let mut rows: Vec<MessageRow> = query.load(&mut conn).await.map_err(db_error)?;
        if bounds.newest_first {
            rows.reverse();
        }
        rows.iter().map(MessageRow::to_message).collect()
    }

    async fn mark_seen(
        &self,
        room: RoomId,
        reader: UserId,
        up_to: Seq,
        now: Timestamp,
    ) -> Result<SeenOutcome, StoreError> {
        let mut conn = self.conn().await?;
        let order = &self.order;
        let (outcome, members, _guards) = conn
            .transaction(async |conn| {
                let row = Self::find_room(conn, room.as_str()).await?;
                let room_value = row.to_room()?;
                room_value.ensure_member(&reader)?;
                let Some(last) = row.last_seq()? else {
                    return Ok::<_, TxError>((
                        SeenOutcome {
                            up_to,
                            marked: Vec::new(),
                            seen_at: now,
                        },
                        None,
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
                    messages::seen_at.eq(case_when(
                        messages::sent_at.gt(now_us),
                        messages::sent_at,
                    )
                    .otherwise(now_us)
                    .nullable()),
                )
                .returning((messages::seq, messages::seen_at))
                .get_results(conn)
                .await?;
                marked.sort_unstable();
                let outcome = seen_outcome(up_to, now, &marked)?;
                let guards = if outcome.changed() {
                    order.lock([room.as_str()]).await
                } else {
                    Vec::new()
                };
                Ok((outcome, Some(room_value.members), guards))
            })
            .await?;
        if let (true, Some(members)) = (outcome.changed(), members) {
            self.events.publish(StoreEvent::SeenMarked {
                room_id: room,
                members,
                reader,
                up_to: outcome.up_to,
                seen_at: outcome.seen_at,
            });
        }
        Ok(outcome)
    }
}

/// Builds the outcome of a watermark from the `(seq, seen_at)` rows it changed.
pub(crate) fn seen_outcome(
    up_to: Seq,
    now: Timestamp,
    marked: &[(i64, Option<i64>)],
) -> Result<SeenOutcome, StoreError> {
    let mut seen_at = now;
    let mut seqs = Vec::with_capacity(marked.len());
    for (seq, at) in marked {
        seqs.push(
            Seq::try_from(*seq)
                .map_err(|e| StoreError::Corrupt(format!("messages.seq {seq}: {e}")))?,
        );
        if let Some(at) = at {
            let at = Timestamp::from_unix_micros(*at)
                .map_err(|e| StoreError::Corrupt(format!("messages.seen_at {at}: {e}")))?;
            seen_at = seen_at.max(at);
        }
    }
    Ok(SeenOutcome {
        up_to,
        marked: seqs,
        seen_at,
    })
}

#[async_trait]
impl Repository for PgStore {
    fn events(&self) -> &EventBus {
        &self.inner.events
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        detached(async move { inner.ping().await }).await
    }

    async fn open_room(&self, members: &Members, now: Timestamp) -> Result<RoomOpened, StoreError> {
        let (inner, members) = (self.inner.clone(), members.clone());
        detached(async move { inner.open_room(members, now).await }).await
    }

    async fn room(&self, id: &RoomId) -> Result<Room, StoreError> {
        let (inner, id) = (self.inner.clone(), id.clone());
        detached(async move { inner.room(id).await }).await
    }

    async fn rooms_of(&self, user: &UserId) -> Result<Vec<RoomSummary>, StoreError> {
        let (inner, user) = (self.inner.clone(), user.clone());
        detached(async move { inner.rooms_of(user).await }).await
    }

    async fn room_summary(&self, id: &RoomId, user: &UserId) -> Result<RoomSummary, StoreError> {
        let (inner, id, user) = (self.inner.clone(), id.clone(), user.clone());
        detached(async move { inner.room_summary(id, user).await }).await
    }

    async fn close_room(&self, id: &RoomId, now: Timestamp) -> Result<Room, StoreError> {
        let (inner, id) = (self.inner.clone(), id.clone());
        detached(async move { inner.close_room(id, now).await }).await
    }

    async fn append_batch(
        &self,
        messages: Vec<NewMessage>,
        now: Timestamp,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        let inner = self.inner.clone();
        detached(async move { inner.append_batch(messages, now).await }).await
    }

    async fn history(
        &self,
        room: &RoomId,
        reader: &UserId,
        page: HistoryPage,
    ) -> Result<Vec<Message>, StoreError> {
        let (inner, room, reader) = (self.inner.clone(), room.clone(), reader.clone());
        detached(async move { inner.history(room, reader, page).await }).await
    }

    async fn mark_seen(
        &self,
        room: &RoomId,
        reader: &UserId,
        up_to: Seq,
        now: Timestamp,
    ) -> Result<SeenOutcome, StoreError> {
        let (inner, room, reader) = (self.inner.clone(), room.clone(), reader.clone());
        detached(async move { inner.mark_seen(room, reader, up_to, now).await }).await
    }
}
