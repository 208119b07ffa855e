//! The store's statements that both backends run the same way, written once and expanded per
//! connection type by [`db_run!`](crate::db_run): `statements::pg::history(conn, ...)` on
//! PostgreSQL, `statements::sqlite::history(conn, ...)` on SQLite.
//!
//! What is left in `postgres.rs` and `sqlite.rs` is what really differs: how a call takes its
//! locks and keeps events in commit order (row locks and order stripes on PostgreSQL, one
//! `BEGIN IMMEDIATE` writer on SQLite), how a room is inserted race-free, the multi-row
//! append statements, pool and connection set-up, and migrations. Every statement here
//! returns [`TxError`], so it can run inside either backend's transaction.

use chat_domain::{
    HistoryPage, Members, Message, Room, RoomId, RoomSummary, SeenOutcome, Seq, Timestamp, UserId,
};
use diesel::dsl::count;
use diesel::{
    ExpressionMethods, NullableExpressionMethods, OptionalExtension, QueryDsl, SelectableHelper,
};

use crate::db_run::db_run;
use crate::error::StoreError;
use crate::events::StoreEvent;
use crate::models::{MessageRow, RoomRow};
use crate::page::PageBounds;
use crate::queries;
use crate::repository::RoomOpened;
use crate::schema::{messages, rooms};
use crate::support::TxError;

db_run! {
    /// The room with this id; `UnknownRoom` if there is none.
    fn find_room(conn, id: &str) -> Result<RoomRow, TxError> {
        run!(queries::room_by_id(id).select(RoomRow::as_select()).first(conn))
            .optional()?
            .ok_or(TxError::Store(StoreError::UnknownRoom))
    }

    /// The room with this id, as a domain value.
    fn room(conn, id: &str) -> Result<Room, TxError> {
        Ok(run!(find_room(conn, id))?.to_room()?)
    }

    /// The pair's open room, if it has one.
    fn find_open_room(conn, members: &Members) -> Result<Option<RoomRow>, TxError> {
        let (a, b) = (Members::first(members).as_str(), members.second().as_str());
        Ok(run!(queries::open_room_of_pair(a, b)
            .select(RoomRow::as_select())
            .first(conn))
        .optional()?)
    }

    /// `user`'s rooms, newest first (`created_at`, then id), with unread counts, in one query.
    fn rooms_of(conn, user: &UserId) -> Result<Vec<RoomSummary>, TxError> {
        let rows: Vec<(RoomRow, i64)> = run!(queries::rooms_with_unread_of(user.as_str())
            .select((RoomRow::as_select(), count(messages::seq.nullable())))
            .order((rooms::created_at.desc(), rooms::id.desc()))
            .load(conn))?;
        Ok(rows
            .iter()
            .map(|(row, unread)| row.summary(user, *unread))
            .collect::<Result<_, _>>()?)
    }

    /// The last seq of each of these rooms that exists (a cluster node's sweep: it finds
    /// messages whose notice was lost).
    fn last_seqs(conn, ids: &[RoomId]) -> Result<Vec<(RoomId, Seq)>, TxError> {
        let names: Vec<&str> = ids.iter().map(RoomId::as_str).collect();
        let rows: Vec<(String, i64)> = run!(rooms::table
            .filter(rooms::id.eq_any(names))
            .filter(rooms::last_seq.gt(0))
            .select((rooms::id, rooms::last_seq))
            .load(conn))?;
        Ok(rows
            .into_iter()
            .map(|(id, last)| Ok((RoomId::new(id)?, Seq::try_from(last)?)))
            .collect::<Result<_, chat_domain::DomainError>>()?)
    }

    /// One room as `user` sees it; `NotAMember` if `user` is not in it.
    fn room_summary(conn, id: &RoomId, user: &UserId) -> Result<RoomSummary, TxError> {
        let row = run!(find_room(conn, id.as_str()))?;
        row.to_room()?.ensure_member(user)?;
        let unread: i64 = run!(queries::unread_in_room(id.as_str(), user.as_str())
            .count()
            .get_result(conn))?;
        Ok(row.summary(user, unread)?)
    }

    /// Closes the room if it is open. Returns the room and, when this call closed it, the
    /// `RoomClosed` event to publish after the commit (a closed room stays as it was: no
    /// second event).
    fn close_room(conn, id: &RoomId, now: Timestamp) -> Result<(Room, Option<StoreEvent>), TxError> {
        let closed: Option<RoomRow> = run!(diesel::update(
            queries::room_by_id(id.as_str()).filter(rooms::closed_at.is_null())
        )
        .set(rooms::closed_at.eq(now.unix_micros()))
        .returning(RoomRow::as_returning())
        .get_result(conn))
        .optional()?;
        match closed {
            Some(row) => {
                let room = row.to_room()?;
                Ok((room.clone(), Some(StoreEvent::RoomClosed { room })))
            }
            // Closed already, or no such room.
            None => Ok((run!(find_room(conn, id.as_str()))?.to_room()?, None)),
        }
    }

    /// A page of history, oldest first, for a member of the room: one range scan of the
    /// primary key (`PageBounds` says which).
    fn history(conn, room: &RoomId, reader: &UserId, page: HistoryPage) -> Result<Vec<Message>, TxError> {
        run!(find_room(conn, room.as_str()))?
            .to_room()?
            .ensure_member(reader)?;
        let Some(bounds) = PageBounds::of(page) else {
            return Ok(Vec::new());
        };
        let mut query = queries::messages_of_room(room.as_str())
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
        let mut rows: Vec<MessageRow> = run!(query.load(conn))?;
        if bounds.newest_first {
            rows.reverse();
        }
        Ok(rows
            .iter()
            .map(MessageRow::to_message)
            .collect::<Result<_, _>>()?)
    }

    /// Marks seen what `reader` may mark up to `up_to` (clamped to the room's last seq) in one
    /// `UPDATE ... RETURNING`. Returns the outcome and, when it marked anything, the
    /// `SeenMarked` event to publish after the commit.
    fn mark_seen(
        conn,
        room: &RoomId,
        reader: &UserId,
        up_to: Seq,
        now: Timestamp,
    ) -> Result<(SeenOutcome, Option<StoreEvent>), TxError> {
        let row = run!(find_room(conn, room.as_str()))?;
        let room_value = row.to_room()?;
        room_value.ensure_member(reader)?;
        let Some(last) = row.last_seq()? else {
            let nothing = SeenOutcome {
                up_to,
                marked: Vec::new(),
                seen_at: now,
            };
            return Ok((nothing, None));
        };
        let up_to = up_to.min(last);
        let target = queries::unseen_from_other_up_to(room.as_str(), reader.as_str(), i64::from(up_to));
        let mut marked: Vec<(i64, Option<i64>)> = run!(diesel::update(target)
            .set(messages::seen_at.eq(queries::seen_at_clamped(now.unix_micros())))
            .returning((messages::seq, messages::seen_at))
            .get_results(conn))?;
        marked.sort_unstable();
        let outcome = seen_outcome(up_to, now, &marked)?;
        let event = outcome.changed().then(|| StoreEvent::SeenMarked {
            room_id: room.clone(),
            members: room_value.members,
            reader: reader.clone(),
            up_to: outcome.up_to,
            seen_at: outcome.seen_at,
        });
        Ok((outcome, event))
    }
}

/// The result of `open_room` for a room this call found (`created: false`, no event) or
/// created (`created: true`, with the `RoomOpened` event to publish after the commit).
pub(crate) fn room_opened(
    row: &RoomRow,
    created: bool,
) -> Result<(RoomOpened, Option<StoreEvent>), StoreError> {
    let room = row.to_room()?;
    let event = created.then(|| StoreEvent::RoomOpened { room: room.clone() });
    Ok((RoomOpened { room, created }, event))
}

/// A new open room for the pair, with a fresh id (a v4 UUID).
pub(crate) fn new_room_row(members: &Members, now: Timestamp) -> RoomRow {
    RoomRow::new_open(uuid::Uuid::new_v4().hyphenated().to_string(), members, now)
}

/// Builds the outcome of a watermark from the `(seq, seen_at)` rows it changed.
fn seen_outcome(
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
