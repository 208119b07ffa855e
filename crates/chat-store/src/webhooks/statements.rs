//! The statements of the store of webhooks, written once and expanded per connection type by
//! [`db_run!`](crate::db_run) (`statements::pg::due(conn, ...)` on PostgreSQL,
//! `statements::sqlite::due(conn, ...)` on SQLite), the way `crate::statements` is.
//!
//! They are hand-written SQL (`EXISTS` subqueries, upserts with `RETURNING`, `VALUES` lists),
//! spelled with PostgreSQL's numbered placeholders `$n`; SQLite reads them as `?n`
//! ([`sql_for`]). What differs between the backends is chosen by [`Dialect::PG`]: only the
//! claim's `FOR UPDATE SKIP LOCKED`. The column lists are the migration's; the tests in
//! `chat-store/tests/webhooks.rs` run every statement on both backends.

use std::borrow::Cow;

use chat_domain::{RoomId, Seq, Timestamp, UserId};
use diesel::QueryableByName;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_types::{BigInt, Bool, Nullable, Text};

use super::{BurstKey, BurstPage, Candidate, Delivery, DueBurst, DueRule};
use super::{OutboxCounts, PRESENCE_FRESH, micros};
use crate::db_run::db_run;
use crate::error::StoreError;
use crate::support::TxError;

/// What a statement body needs to know about the connection it runs on.
pub(crate) trait Dialect {
    type Db: diesel::backend::Backend;
    /// PostgreSQL (else SQLite).
    const PG: bool;
}

impl Dialect for diesel_async::AsyncPgConnection {
    type Db = diesel::pg::Pg;
    const PG: bool = true;
}

impl Dialect for diesel::SqliteConnection {
    type Db = diesel::sqlite::Sqlite;
    const PG: bool = false;
}

/// `sql` for `conn`'s database: as written (`$n`) on PostgreSQL, with `?n` on SQLite.
fn sql_for<C: Dialect>(_conn: &C, sql: &str) -> String {
    if C::PG {
        sql.to_owned()
    } else {
        sqlite_placeholders(sql).into_owned()
    }
}

/// `$n` placeholders as SQLite's `?n` (the statements here have no `$` anywhere else).
fn sqlite_placeholders(sql: &str) -> Cow<'_, str> {
    if !sql.contains('$') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A statement with a number of binds known only at run time.
fn boxed<'f, C: Dialect>(conn: &C, sql: &str) -> BoxedSqlQuery<'f, C::Db, SqlQuery> {
    diesel::sql_query(sql_for(conn, sql)).into_boxed()
}

/// The rooms and senders of the unseen messages sent in `($1, $2]`, each once: aggregated
/// here, so a busy second costs one row per room, not one per message. Deleted messages are
/// not filtered out (the `due` statement does), so on SQLite the index alone answers.
const SCAN_SQL: &str = "SELECT m.room_id, m.sender_id FROM messages m \
     WHERE m.seen_at IS NULL AND m.sent_at > $1 AND m.sent_at <= $2 \
     GROUP BY m.room_id, m.sender_id";

/// Which candidates hold a due burst. `$1`: the cutoff (`now - notify_after`, micros); `$2`:
/// 1 when only offline recipients count; `$3`: the oldest fresh node heartbeat; then the
/// candidates' `(room_id, sender_id)` pairs from `$4`. The checks are a CASE so they run in
/// this order and stop at the first that fails: a burst notified and still unseen (the common
/// case of a busy room) is told apart by the first entry of the `messages_unseen` index
/// (oldest first), without walking the burst's unseen messages.
const DUE_SQL_HEAD: &str = "WITH c (room_id, sender_id) AS (VALUES ";
const DUE_SQL_TAIL: &str = "), \
k AS ( \
    SELECT c.room_id, c.sender_id, \
           CASE WHEN r.member_a = c.sender_id THEN r.member_b ELSE r.member_a END AS recipient_id \
    FROM c JOIN rooms r ON r.id = c.room_id \
    WHERE r.closed_at IS NULL AND c.sender_id IN (r.member_a, r.member_b) \
), \
s AS ( \
    SELECT k.room_id, k.sender_id, k.recipient_id, COALESCE(b.notified_up_to_seq, 0) AS notified \
    FROM k LEFT JOIN webhook_bursts b ON b.room_id = k.room_id AND b.recipient_id = k.recipient_id \
) \
SELECT s.room_id, s.sender_id, s.recipient_id FROM s \
WHERE CASE \
    WHEN s.notified > 0 AND EXISTS ( \
        SELECT 1 FROM messages m \
        WHERE m.room_id = s.room_id AND m.sender_id = s.sender_id AND m.seen_at IS NULL \
          AND m.deleted_at IS NULL AND m.seq <= s.notified) THEN 0 \
    WHEN COALESCE((SELECT m.seen_at FROM messages m \
        WHERE m.room_id = s.room_id AND m.seq = s.notified), 0) > $1 THEN 0 \
    WHEN NOT EXISTS ( \
        SELECT 1 FROM messages m \
        WHERE m.room_id = s.room_id AND m.sender_id = s.sender_id AND m.seen_at IS NULL \
          AND m.deleted_at IS NULL AND m.seq > s.notified AND m.sent_at <= $1) THEN 0 \
    WHEN $2 <> 0 AND EXISTS ( \
        SELECT 1 FROM presence_connections pc JOIN presence_nodes pn ON pn.node_id = pc.node_id \
        WHERE pc.user_id = s.recipient_id AND pn.heartbeat_at >= $3) THEN 0 \
    ELSE 1 END = 1";

/// Candidates per `due` statement (two binds each).
pub(crate) const DUE_CHUNK: usize = 200;

/// Creates the burst rows of `n` `(room_id, recipient_id)` pairs if missing, and locks them
/// (an upsert that changes nothing takes the row lock on PostgreSQL, row after row in the
/// order given; SQLite's writer holds the database's lock already).
fn lock_bursts_sql(n: usize) -> String {
    format!(
        "INSERT INTO webhook_bursts (room_id, recipient_id, notified_up_to_seq) VALUES {} \
         ON CONFLICT (room_id, recipient_id) \
         DO UPDATE SET notified_up_to_seq = webhook_bursts.notified_up_to_seq",
        tuples(n, 2, 1, ", 0")
    )
}

/// For `n` `(room_id, sender_id)` pairs: the newest unseen, undeleted message of the sender
/// in the room, its time, and how many there are.
fn latest_unseen_sql(n: usize) -> String {
    format!(
        "WITH c (room_id, sender_id) AS (VALUES {}), \
         l AS ( \
            SELECT c.room_id, c.sender_id, \
              (SELECT max(m.seq) FROM messages m WHERE m.room_id = c.room_id \
                 AND m.sender_id = c.sender_id AND m.seen_at IS NULL AND m.deleted_at IS NULL) AS last_seq, \
              (SELECT count(*) FROM messages m WHERE m.room_id = c.room_id \
                 AND m.sender_id = c.sender_id AND m.seen_at IS NULL AND m.deleted_at IS NULL) AS unseen_count \
            FROM c) \
         SELECT l.room_id, l.sender_id, l.last_seq, m.sent_at AS last_sent_at, l.unseen_count \
         FROM l JOIN messages m ON m.room_id = l.room_id AND m.seq = l.last_seq",
        tuples(n, 2, 1, "")
    )
}

/// Moves `n` bursts' `notified_up_to_seq` (`$1`: now; then `(room_id, recipient_id, seq)`).
/// VALUES columns are `column1`... in both databases.
fn move_bursts_sql(n: usize) -> String {
    format!(
        "UPDATE webhook_bursts SET notified_up_to_seq = v.column3, notified_at = $1 \
         FROM (VALUES {}) AS v \
         WHERE webhook_bursts.room_id = v.column1 AND webhook_bursts.recipient_id = v.column2",
        tuples(n, 3, 2, "")
    )
}

/// Inserts `n` deliveries, due at once (`$1`: now, their `created_at`; then per delivery its
/// id, room, recipient, sender, unseen count, last seq and last `sent_at`).
fn insert_deliveries_sql(n: usize) -> String {
    format!(
        "INSERT INTO webhook_deliveries \
         (delivery_id, room_id, recipient_id, sender_id, unseen_count, last_seq, last_sent_at, \
          created_at, attempts, next_attempt_at) VALUES {}",
        tuples(n, 7, 2, ", $1, 0, $1")
    )
}

/// `n` tuples of `width` placeholders numbered from `first`, each followed by `tail`:
/// `($1, $2, 0), ($3, $4, 0)`.
fn tuples(n: usize, width: usize, first: usize, tail: &str) -> String {
    let mut out = String::with_capacity(n * (width * 5 + tail.len() + 4));
    for row in 0..n {
        if row > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for col in 0..width {
            if col > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!("${}", first + row * width + col));
        }
        out.push_str(tail);
        out.push(')');
    }
    out
}

/// Every column of `webhook_deliveries`, in the order of [`DeliveryRow`] (read by name).
macro_rules! delivery_columns {
    () => {
        "delivery_id, room_id, recipient_id, sender_id, unseen_count, last_seq, last_sent_at, \
         created_at, attempts, next_attempt_at, locked_until, last_error, failed_at"
    };
}

/// Whether any delivery is due at `$1`: the claim's cheap first look (a read, so a node
/// with nothing to send takes no lock, and SQLite's writer is not disturbed).
const ANY_DUE_SQL: &str = "SELECT delivery_id FROM webhook_deliveries \
     WHERE failed_at IS NULL AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT 1";

/// Claims up to `$3` deliveries due at `$1` until `$2`. The lease is also the next attempt's
/// time, so a claimed row is not due again until its lease ends.
const CLAIM_SQL_PG: &str = concat!(
    "UPDATE webhook_deliveries SET locked_until = $2, next_attempt_at = $2, attempts = attempts + 1 \
     WHERE delivery_id IN ( \
        SELECT delivery_id FROM webhook_deliveries \
        WHERE failed_at IS NULL AND next_attempt_at <= $1 \
        ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
     RETURNING ",
    delivery_columns!()
);
const CLAIM_SQL_SQLITE: &str = concat!(
    "UPDATE webhook_deliveries SET locked_until = $2, next_attempt_at = $2, attempts = attempts + 1 \
     WHERE delivery_id IN ( \
        SELECT delivery_id FROM webhook_deliveries \
        WHERE failed_at IS NULL AND next_attempt_at <= $1 \
        ORDER BY next_attempt_at LIMIT $3) \
     RETURNING ",
    delivery_columns!()
);

const BODY_SQL: &str =
    "SELECT body FROM messages WHERE room_id = $1 AND seq = $2 AND deleted_at IS NULL";

/// Deliveries deleted per statement.
pub(crate) const DELETE_CHUNK: usize = 500;

const RETRY_SQL: &str = "UPDATE webhook_deliveries \
     SET next_attempt_at = $3, locked_until = NULL, last_error = $4 \
     WHERE delivery_id = $1 AND locked_until = $2 AND failed_at IS NULL";

const GIVE_UP_SQL: &str = "UPDATE webhook_deliveries \
     SET failed_at = $3, locked_until = NULL, last_error = $4 \
     WHERE delivery_id = $1 AND locked_until = $2 AND failed_at IS NULL";

const COUNTS_SQL: &str = "SELECT \
     (SELECT count(*) FROM webhook_deliveries WHERE failed_at IS NULL) AS pending, \
     (SELECT count(*) FROM webhook_deliveries WHERE failed_at IS NOT NULL) AS failed";

const FAILED_SQL: &str = concat!(
    "SELECT ",
    delivery_columns!(),
    " FROM webhook_deliveries WHERE failed_at IS NOT NULL \
     ORDER BY failed_at DESC, delivery_id DESC LIMIT $1"
);

const CURSOR_SQL: &str = "SELECT scanned_up_to FROM webhook_scan WHERE id = 1";

/// Erasure: the user's burst rows.
const FORGET_BURSTS_SQL: &str = "DELETE FROM webhook_bursts WHERE recipient_id = $1";
/// Erasure: every delivery about the user.
const FORGET_DELIVERIES_SQL: &str =
    "DELETE FROM webhook_deliveries WHERE recipient_id = $1 OR sender_id = $1";

const SAVE_CURSOR_SQL: &str = "INSERT INTO webhook_scan (id, scanned_up_to) VALUES (1, $1) \
     ON CONFLICT (id) DO UPDATE SET scanned_up_to = CASE \
        WHEN excluded.scanned_up_to > webhook_scan.scanned_up_to THEN excluded.scanned_up_to \
        ELSE webhook_scan.scanned_up_to END";

/// A page of burst rows after `($1, $2)` (`$3` = 0: from the start), at most `$4`, each with
/// the other member (the sender) and whether its recipient has anything unseen left.
const BURST_PAGE_SQL: &str = "SELECT b.room_id, b.recipient_id, \
       CASE WHEN r.member_a = b.recipient_id THEN r.member_b ELSE r.member_a END AS sender_id, \
       EXISTS (SELECT 1 FROM messages m WHERE m.room_id = b.room_id \
          AND m.sender_id <> b.recipient_id AND m.seen_at IS NULL AND m.deleted_at IS NULL) AS has_unseen \
     FROM webhook_bursts b LEFT JOIN rooms r ON r.id = b.room_id \
     WHERE $3 = 0 OR (b.room_id, b.recipient_id) > ($1, $2) \
     ORDER BY b.room_id, b.recipient_id LIMIT $4";

/// Deletes a burst row whose recipient has nothing unseen in the room (re-checked here).
const PRUNE_BURST_SQL: &str = "DELETE FROM webhook_bursts \
     WHERE room_id = $1 AND recipient_id = $2 AND NOT EXISTS ( \
        SELECT 1 FROM messages m WHERE m.room_id = $1 AND m.sender_id <> $2 \
          AND m.seen_at IS NULL AND m.deleted_at IS NULL)";

#[derive(QueryableByName)]
pub(crate) struct ScanRow {
    #[diesel(sql_type = Text)]
    room_id: String,
    #[diesel(sql_type = Text)]
    sender_id: String,
}

#[derive(QueryableByName)]
pub(crate) struct DueRow {
    #[diesel(sql_type = Text)]
    room_id: String,
    #[diesel(sql_type = Text)]
    sender_id: String,
    #[diesel(sql_type = Text)]
    recipient_id: String,
}

#[derive(QueryableByName)]
struct LatestRow {
    #[diesel(sql_type = Text)]
    room_id: String,
    #[diesel(sql_type = Text)]
    sender_id: String,
    #[diesel(sql_type = BigInt)]
    last_seq: i64,
    #[diesel(sql_type = BigInt)]
    last_sent_at: i64,
    #[diesel(sql_type = BigInt)]
    unseen_count: i64,
}

#[derive(QueryableByName)]
pub(crate) struct DeliveryRow {
    #[diesel(sql_type = Text)]
    delivery_id: String,
    #[diesel(sql_type = Text)]
    room_id: String,
    #[diesel(sql_type = Text)]
    recipient_id: String,
    #[diesel(sql_type = Text)]
    sender_id: String,
    #[diesel(sql_type = BigInt)]
    unseen_count: i64,
    #[diesel(sql_type = BigInt)]
    last_seq: i64,
    #[diesel(sql_type = BigInt)]
    last_sent_at: i64,
    #[diesel(sql_type = BigInt)]
    created_at: i64,
    #[diesel(sql_type = BigInt)]
    attempts: i64,
    #[diesel(sql_type = BigInt)]
    next_attempt_at: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    locked_until: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    failed_at: Option<i64>,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = Text)]
    #[allow(dead_code)]
    delivery_id: String,
}

#[derive(QueryableByName)]
struct BodyRow {
    #[diesel(sql_type = Nullable<Text>)]
    body: Option<String>,
}

#[derive(QueryableByName)]
struct CountsRow {
    #[diesel(sql_type = BigInt)]
    pending: i64,
    #[diesel(sql_type = BigInt)]
    failed: i64,
}

#[derive(QueryableByName)]
struct CursorRow {
    #[diesel(sql_type = BigInt)]
    scanned_up_to: i64,
}

#[derive(QueryableByName)]
struct BurstRow {
    #[diesel(sql_type = Text)]
    room_id: String,
    #[diesel(sql_type = Text)]
    recipient_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    sender_id: Option<String>,
    #[diesel(sql_type = Bool)]
    has_unseen: bool,
}

db_run! {
    /// The saved scan cursor.
    fn scan_cursor(conn) -> Result<Option<Timestamp>, TxError> {
        let rows: Vec<CursorRow> = run!(diesel::sql_query(sql_for(&*conn, CURSOR_SQL)).load(conn))?;
        rows.into_iter().next()
            .map(|r| time("webhook_scan.scanned_up_to", r.scanned_up_to))
            .transpose()
    }

    /// Moves the scan cursor forward (never back).
    /// Erasure: removes `user`'s bursts and every delivery about them (as recipient or
    /// sender), pending or failed. Returns how many deliveries went.
    fn forget_user(conn, user: &str) -> Result<u64, TxError> {
        run!(diesel::sql_query(sql_for(&*conn, FORGET_BURSTS_SQL))
            .bind::<Text, _>(user)
            .execute(conn))?;
        let gone = run!(diesel::sql_query(sql_for(&*conn, FORGET_DELIVERIES_SQL))
            .bind::<Text, _>(user)
            .execute(conn))?;
        Ok(u64::try_from(gone).unwrap_or(0))
    }

    fn save_scan_cursor(conn, at: i64) -> Result<(), TxError> {
        run!(diesel::sql_query(sql_for(&*conn, SAVE_CURSOR_SQL))
            .bind::<BigInt, _>(at)
            .execute(conn))?;
        Ok(())
    }

    /// The rooms and senders of unseen messages sent in `(after, up_to]`.
    fn unseen_between(conn, after: i64, up_to: i64) -> Result<Vec<Candidate>, TxError> {
        let rows: Vec<ScanRow> = run!(diesel::sql_query(sql_for(&*conn, SCAN_SQL))
            .bind::<BigInt, _>(after)
            .bind::<BigInt, _>(up_to)
            .load(conn))?;
        rows.iter()
            .map(|row| {
                Ok(Candidate {
                    room_id: room_id("messages.room_id", &row.room_id)?,
                    sender_id: user_id("messages.sender_id", &row.sender_id)?,
                })
            })
            .collect()
    }

    /// Which of `candidates` (at most [`DUE_CHUNK`]) hold a due burst at `now`.
    fn due(conn, candidates: &[Candidate], now: Timestamp, rule: DueRule) -> Result<Vec<DueBurst>, TxError> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = boxed(&*conn, &due_sql(candidates.len()))
            .bind::<BigInt, _>(rule.cutoff(now))
            .bind::<BigInt, _>(i64::from(rule.offline_only))
            .bind::<BigInt, _>(now.unix_micros().saturating_sub(micros(PRESENCE_FRESH)));
        for c in candidates {
            query = query
                .bind::<Text, _>(c.room_id.as_str())
                .bind::<Text, _>(c.sender_id.as_str());
        }
        let rows: Vec<DueRow> = run!(query.load(conn))?;
        rows.iter().map(DueRow::to_due).collect()
    }

    /// Makes the deliveries of those of `bursts` (at most [`super::OPEN_CHUNK`]) that are
    /// still due (see `WebhookStore::open_bursts`); `ids` are their ids, one per burst. Five
    /// statements, whatever the number of bursts. Run in a transaction.
    fn open_bursts(conn, bursts: &[DueBurst], now: Timestamp, rule: DueRule, ids: &[String]) -> Result<Vec<Delivery>, TxError> {
        // Lock the rows in key order, so two nodes opening overlapping sets cannot deadlock.
        let mut order: Vec<(&DueBurst, &String)> = bursts.iter().zip(ids).collect();
        order.sort();
        order.dedup_by(|a, b| a.0 == b.0);
        if order.is_empty() {
            return Ok(Vec::new());
        }
        let mut lock = boxed(&*conn, &lock_bursts_sql(order.len()));
        for (burst, _) in &order {
            lock = lock
                .bind::<Text, _>(burst.room_id.as_str())
                .bind::<Text, _>(burst.recipient_id.as_str());
        }
        run!(lock.execute(conn))?;
        // Under the locks: which are still due, and their newest unseen messages.
        let candidates: Vec<Candidate> = order.iter().map(|(b, _)| b.candidate()).collect();
        let still_due = run!(due(conn, &candidates, now, rule))?;
        order.retain(|(burst, _)| still_due.contains(burst));
        if order.is_empty() {
            return Ok(Vec::new());
        }
        let mut latest = boxed(&*conn, &latest_unseen_sql(order.len()));
        for (burst, _) in &order {
            latest = latest
                .bind::<Text, _>(burst.room_id.as_str())
                .bind::<Text, _>(burst.sender_id.as_str());
        }
        let latest: Vec<LatestRow> = run!(latest.load(conn))?;
        let mut rows = Vec::with_capacity(order.len());
        for (burst, delivery_id) in &order {
            let Some(l) = latest
                .iter()
                .find(|l| l.room_id == burst.room_id.as_str() && l.sender_id == burst.sender_id.as_str())
            else {
                continue;
            };
            rows.push(DeliveryRow {
                delivery_id: (*delivery_id).clone(),
                room_id: burst.room_id.as_str().to_owned(),
                recipient_id: burst.recipient_id.as_str().to_owned(),
                sender_id: burst.sender_id.as_str().to_owned(),
                unseen_count: l.unseen_count,
                last_seq: l.last_seq,
                last_sent_at: l.last_sent_at,
                created_at: now.unix_micros(),
                attempts: 0,
                next_attempt_at: now.unix_micros(),
                locked_until: None,
                last_error: None,
                failed_at: None,
            });
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut moved = boxed(&*conn, &move_bursts_sql(rows.len())).bind::<BigInt, _>(now.unix_micros());
        for row in &rows {
            moved = moved
                .bind::<Text, _>(row.room_id.as_str())
                .bind::<Text, _>(row.recipient_id.as_str())
                .bind::<BigInt, _>(row.last_seq);
        }
        run!(moved.execute(conn))?;
        let mut insert = boxed(&*conn, &insert_deliveries_sql(rows.len())).bind::<BigInt, _>(now.unix_micros());
        for row in &rows {
            insert = insert
                .bind::<Text, _>(row.delivery_id.as_str())
                .bind::<Text, _>(row.room_id.as_str())
                .bind::<Text, _>(row.recipient_id.as_str())
                .bind::<Text, _>(row.sender_id.as_str())
                .bind::<BigInt, _>(row.unseen_count)
                .bind::<BigInt, _>(row.last_seq)
                .bind::<BigInt, _>(row.last_sent_at);
        }
        run!(insert.execute(conn))?;
        rows.iter().map(DeliveryRow::to_delivery).collect()
    }

    /// Whether a delivery is due at `now`.
    fn any_due(conn, now: i64) -> Result<bool, TxError> {
        let rows: Vec<IdRow> = run!(diesel::sql_query(sql_for(&*conn, ANY_DUE_SQL))
            .bind::<BigInt, _>(now)
            .load(conn))?;
        Ok(!rows.is_empty())
    }

    /// Claims due deliveries (see `WebhookStore::claim`).
    fn claim(conn, now: i64, lease_until: i64, limit: u32) -> Result<Vec<Delivery>, TxError> {
        let sql = if is_pg(&*conn) { CLAIM_SQL_PG } else { CLAIM_SQL_SQLITE };
        let rows: Vec<DeliveryRow> = run!(diesel::sql_query(sql_for(&*conn, sql))
            .bind::<BigInt, _>(now)
            .bind::<BigInt, _>(lease_until)
            .bind::<BigInt, _>(i64::from(limit))
            .load(conn))?;
        rows.iter().map(DeliveryRow::to_delivery).collect()
    }

    /// The body of a message, unless it is deleted.
    fn message_body(conn, room: &RoomId, seq: Seq) -> Result<Option<String>, TxError> {
        let rows: Vec<BodyRow> = run!(diesel::sql_query(sql_for(&*conn, BODY_SQL))
            .bind::<Text, _>(room.as_str())
            .bind::<BigInt, _>(i64::from(seq))
            .load(conn))?;
        Ok(rows.into_iter().next().and_then(|r| r.body))
    }

    /// Deletes delivered deliveries (at most [`DELETE_CHUNK`]).
    fn delivered(conn, delivery_ids: &[String]) -> Result<(), TxError> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        let mut query = boxed(&*conn, &delete_sql(delivery_ids.len()));
        for id in delivery_ids {
            query = query.bind::<Text, _>(id.as_str());
        }
        run!(query.execute(conn))?;
        Ok(())
    }

    /// Schedules the next attempt, if `lease` is still the delivery's.
    fn retry_at(conn, delivery_id: &str, lease: i64, at: i64, error: &str) -> Result<bool, TxError> {
        let changed = run!(diesel::sql_query(sql_for(&*conn, RETRY_SQL))
            .bind::<Text, _>(delivery_id)
            .bind::<BigInt, _>(lease)
            .bind::<BigInt, _>(at)
            .bind::<Text, _>(error)
            .execute(conn))?;
        Ok(changed == 1)
    }

    /// Marks a delivery failed, if `lease` is still the delivery's.
    fn give_up(conn, delivery_id: &str, lease: i64, now: i64, error: &str) -> Result<bool, TxError> {
        let changed = run!(diesel::sql_query(sql_for(&*conn, GIVE_UP_SQL))
            .bind::<Text, _>(delivery_id)
            .bind::<BigInt, _>(lease)
            .bind::<BigInt, _>(now)
            .bind::<Text, _>(error)
            .execute(conn))?;
        Ok(changed == 1)
    }

    /// Pending and failed deliveries.
    fn counts(conn) -> Result<OutboxCounts, TxError> {
        let row: CountsRow = run!(diesel::sql_query(sql_for(&*conn, COUNTS_SQL)).get_result(conn))?;
        Ok(OutboxCounts {
            pending: u64::try_from(row.pending).unwrap_or_default(),
            failed: u64::try_from(row.failed).unwrap_or_default(),
        })
    }

    /// Failed deliveries, most recent first.
    fn failed(conn, limit: u32) -> Result<Vec<Delivery>, TxError> {
        let rows: Vec<DeliveryRow> = run!(diesel::sql_query(sql_for(&*conn, FAILED_SQL))
            .bind::<BigInt, _>(i64::from(limit))
            .load(conn))?;
        rows.iter().map(DeliveryRow::to_delivery).collect()
    }

    /// A page of burst rows (see `WebhookStore::burst_page`).
    fn burst_page(conn, after: Option<BurstKey>, limit: u32) -> Result<BurstPage, TxError> {
        let (room, recipient) = after
            .as_ref()
            .map(|k| (k.room_id.as_str(), k.recipient_id.as_str()))
            .unwrap_or_default();
        let rows: Vec<BurstRow> = run!(diesel::sql_query(sql_for(&*conn, BURST_PAGE_SQL))
            .bind::<Text, _>(room)
            .bind::<Text, _>(recipient)
            .bind::<BigInt, _>(i64::from(after.is_some()))
            .bind::<BigInt, _>(i64::from(limit))
            .load(conn))?;
        burst_page_of(&rows, limit)
    }

    /// Deletes the rows of `keys` whose recipient has nothing unseen. Run in a transaction.
    fn prune_bursts(conn, keys: &[BurstKey]) -> Result<u64, TxError> {
        let mut pruned = 0;
        for key in keys {
            pruned += run!(diesel::sql_query(sql_for(&*conn, PRUNE_BURST_SQL))
                .bind::<Text, _>(key.room_id.as_str())
                .bind::<Text, _>(key.recipient_id.as_str())
                .execute(conn))? as u64;
        }
        Ok(pruned)
    }
}

fn is_pg<C: Dialect>(_conn: &C) -> bool {
    C::PG
}

/// The `due` statement for `n` candidates.
fn due_sql(n: usize) -> String {
    let mut sql = String::with_capacity(DUE_SQL_HEAD.len() + DUE_SQL_TAIL.len() + n * 12);
    sql.push_str(DUE_SQL_HEAD);
    for i in 0..n {
        if i > 0 {
            sql.push_str(", ");
        }
        let first = 4 + 2 * i;
        sql.push_str(&format!("(${first}, ${})", first + 1));
    }
    sql.push_str(DUE_SQL_TAIL);
    sql
}

/// Deletes `n` deliveries by id.
fn delete_sql(n: usize) -> String {
    let binds: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
    format!(
        "DELETE FROM webhook_deliveries WHERE delivery_id IN ({})",
        binds.join(", ")
    )
}

fn burst_page_of(rows: &[BurstRow], limit: u32) -> Result<BurstPage, TxError> {
    let mut page = BurstPage::default();
    for row in rows {
        let key = BurstKey {
            room_id: room_id("webhook_bursts.room_id", &row.room_id)?,
            recipient_id: user_id("webhook_bursts.recipient_id", &row.recipient_id)?,
        };
        match (&row.sender_id, row.has_unseen) {
            (Some(sender), true) => page.open.push(Candidate {
                room_id: key.room_id.clone(),
                sender_id: user_id("rooms.member_a/member_b", sender)?,
            }),
            // Nothing unseen, or the room is gone: nothing to notify, the row can go.
            _ => page.seen.push(key.clone()),
        }
        if rows.len() >= limit as usize {
            page.next = Some(key);
        }
    }
    Ok(page)
}

impl DueRow {
    fn to_due(&self) -> Result<DueBurst, TxError> {
        Ok(DueBurst {
            room_id: room_id("rooms.id", &self.room_id)?,
            sender_id: user_id("rooms.member", &self.sender_id)?,
            recipient_id: user_id("rooms.member", &self.recipient_id)?,
        })
    }
}

impl DeliveryRow {
    fn to_delivery(&self) -> Result<Delivery, TxError> {
        let what = |column: &str| format!("webhook_deliveries.{column} of {}", self.delivery_id);
        let count = |column: &str, v: i64| {
            u64::try_from(v).map_err(|_| corrupt(&what(column), format!("negative: {v}")))
        };
        Ok(Delivery {
            delivery_id: self.delivery_id.clone(),
            room_id: room_id(&what("room_id"), &self.room_id)?,
            recipient_id: user_id(&what("recipient_id"), &self.recipient_id)?,
            sender_id: user_id(&what("sender_id"), &self.sender_id)?,
            unseen_count: count("unseen_count", self.unseen_count)?,
            last_seq: Seq::try_from(self.last_seq).map_err(|e| corrupt(&what("last_seq"), e))?,
            last_sent_at: time(&what("last_sent_at"), self.last_sent_at)?,
            created_at: time(&what("created_at"), self.created_at)?,
            attempts: count("attempts", self.attempts)?,
            next_attempt_at: time(&what("next_attempt_at"), self.next_attempt_at)?,
            locked_until: self
                .locked_until
                .map(|t| time(&what("locked_until"), t))
                .transpose()?,
            last_error: self.last_error.clone(),
            failed_at: self
                .failed_at
                .map(|t| time(&what("failed_at"), t))
                .transpose()?,
        })
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> TxError {
    TxError::Store(StoreError::Corrupt(format!("{what}: {e}")))
}

fn time(what: &str, micros: i64) -> Result<Timestamp, TxError> {
    Timestamp::from_unix_micros(micros).map_err(|e| corrupt(what, e))
}

fn room_id(what: &str, id: &str) -> Result<RoomId, TxError> {
    RoomId::new(id).map_err(|e| corrupt(what, e))
}

fn user_id(what: &str, id: &str) -> Result<UserId, TxError> {
    UserId::new(id).map_err(|e| corrupt(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_sqlite_ones() {
        assert_eq!(
            sqlite_placeholders("a = $1 AND b = $12 OR c = $1"),
            "a = ?1 AND b = ?12 OR c = ?1"
        );
        assert!(matches!(sqlite_placeholders("no binds"), Cow::Borrowed(_)));
    }

    #[test]
    fn batch_statements_number_their_binds() {
        assert_eq!(tuples(2, 2, 1, ", 0"), "($1, $2, 0), ($3, $4, 0)");
        assert_eq!(tuples(2, 3, 2, ""), "($2, $3, $4), ($5, $6, $7)");
        let insert = insert_deliveries_sql(2);
        assert!(
            insert.ends_with("($2, $3, $4, $5, $6, $7, $8, $1, 0, $1), ($9, $10, $11, $12, $13, $14, $15, $1, 0, $1)"),
            "{insert}"
        );
        assert_eq!(
            delete_sql(3),
            "DELETE FROM webhook_deliveries WHERE delivery_id IN ($1, $2, $3)"
        );
    }

    #[test]
    fn the_due_statement_numbers_its_candidates_after_the_fixed_binds() {
        let sql = due_sql(2);
        assert!(sql.contains("VALUES ($4, $5), ($6, $7))"), "{sql}");
        assert!(!sql.contains("$8"));
    }
}
