//! The store's statements that both backends run the same way, written once and expanded per
//! connection type by [`db_run!`](crate::db_run): `statements::pg::history(conn, ...)` on
//! PostgreSQL, `statements::sqlite::history(conn, ...)` on SQLite.
//!
//! What is left in `postgres.rs` and `sqlite.rs` is what really differs: how a call takes its
//! locks and keeps events in commit order (row locks and order stripes on PostgreSQL, one
//! `BEGIN IMMEDIATE` writer on SQLite), how a room is inserted race-free, the multi-row
//! append statements, pool and connection set-up, and migrations. Every statement here
//! returns [`TxError`], so it can run inside either backend's transaction.

use std::collections::{HashMap, HashSet};

use chat_domain::presence::NODE_STALE;
use chat_domain::unsend::{self, Deleter, Unsend};
use chat_domain::{
    DomainError, HistoryPage, Members, Message, Presence, Room, RoomId, RoomSummary, RoomsCursor,
    RoomsPage, SeenOutcome, Seq, Timestamp, UserId,
};
use diesel::dsl::count;
use diesel::{
    BoolExpressionMethods, ExpressionMethods, JoinOnDsl, NullableExpressionMethods,
    OptionalExtension, QueryDsl, SelectableHelper,
};

use crate::db_run::db_run;
use crate::error::StoreError;
use crate::events::StoreEvent;
use crate::models::{MessageRow, RoomRow};
use crate::page::PageBounds;
use crate::queries;
use crate::repository::{DeleteOutcome, RoomOpened};
use crate::schema::{messages, presence_connections, presence_nodes, rooms, user_activity};
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

    /// A page of `user`'s rooms in the room list's order (`last_activity_at`, then id, both
    /// descending), after `cursor`: the rooms with their unread counts in one query, their
    /// newest messages in a second. `limit + 1` rows are read to know whether more follow.
    fn rooms_page(
        conn,
        user: &UserId,
        cursor: Option<RoomsCursor>,
        limit: usize,
    ) -> Result<RoomsPage, TxError> {
        // `planned_per_call()`: see `crate::queries::planned_per_call` (issue 11's stall).
        let mut query = queries::rooms_with_unread_of(user.as_str())
            .select((RoomRow::as_select(), count(messages::seq.nullable())))
            .filter(queries::planned_per_call())
            .order((rooms::last_activity_at.desc(), rooms::id.desc()))
            .into_boxed();
        if let Some(cursor) = &cursor {
            let at = cursor.before_activity_at.unix_micros();
            query = query.filter(
                rooms::last_activity_at.lt(at).or(rooms::last_activity_at
                    .eq(at)
                    .and(rooms::id.lt(cursor.before_room_id.as_str().to_owned()))),
            );
        }
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1).saturating_add(1);
        let mut rows: Vec<(RoomRow, i64)> = run!(query.limit(fetch).load(conn))?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let with_messages: Vec<&str> = rows
            .iter()
            .filter(|(row, _)| row.last_seq > 0)
            .map(|(row, _)| row.id.as_str())
            .collect();
        let mut last: HashMap<String, Message> = HashMap::new();
        for chunk in with_messages.chunks(500) {
            let found: Vec<MessageRow> = run!(messages::table
                .inner_join(rooms::table.on(rooms::id
                    .eq(messages::room_id)
                    .and(rooms::last_seq.eq(messages::seq))))
                .filter(rooms::id.eq_any(chunk))
                .filter(queries::planned_per_call())
                .select(MessageRow::as_select())
                .load(conn))?;
            for row in found {
                last.insert(row.room_id.clone(), row.to_message()?);
            }
        }
        let rooms = rows
            .iter()
            .map(|(row, unread)| row.summary(user, *unread, last.remove(&row.id)))
            .collect::<Result<_, _>>()?;
        Ok(RoomsPage { rooms, more })
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
        let last = match row.last_seq {
            0 => None,
            seq => run!(messages::table
                .find((id.as_str(), seq))
                .select(MessageRow::as_select())
                .first(conn))
            .optional()?
            .map(|m| m.to_message())
            .transpose()?,
        };
        Ok(row.summary(user, unread, last)?)
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
    ) -> Result<(SeenOutcome, Vec<StoreEvent>), TxError> {
        let row = run!(find_room(conn, room.as_str()))?;
        let room_value = row.to_room()?;
        room_value.ensure_member(reader)?;
        let Some(last) = row.last_seq()? else {
            let nothing = SeenOutcome {
                up_to,
                marked: Vec::new(),
                seen_at: now,
            };
            return Ok((nothing, Vec::new()));
        };
        let up_to = up_to.min(last);
        let target = queries::unseen_from_other_up_to(room.as_str(), reader.as_str(), i64::from(up_to));
        let mut marked: Vec<(i64, Option<i64>)> = run!(diesel::update(target)
            .set(messages::seen_at.eq(queries::seen_at_clamped(now.unix_micros())))
            .returning((messages::seq, messages::seen_at))
            .get_results(conn))?;
        marked.sort_unstable();
        let outcome = seen_outcome(up_to, now, &marked)?;
        let mut events = Vec::new();
        if let Some(&(highest, _)) = marked.last() {
            // The watermark columns: delivered first (it never trails seen), then seen.
            let is_a = row.member_a == reader.as_str();
            if run!(raise_delivered(conn, room.as_str(), is_a, highest))? {
                events.push(StoreEvent::DeliveredMarked {
                    room_id: room.clone(),
                    members: room_value.members.clone(),
                    reader: reader.clone(),
                    up_to: Seq::try_from(highest)?,
                    delivered_at: now,
                });
            }
            run!(raise_seen(conn, room.as_str(), is_a, highest))?;
        }
        if outcome.changed() {
            events.push(StoreEvent::SeenMarked {
                room_id: room.clone(),
                members: room_value.members,
                reader: reader.clone(),
                up_to: outcome.up_to,
                seen_at: outcome.seen_at,
            });
        }
        Ok((outcome, events))
    }

    /// Moves `member_a`'s (`is_a`) or `member_b`'s seen watermark column up to `to`, never
    /// back (the messages' own `seen_at` are the truth; this is the summary's copy).
    fn raise_seen(conn, room: &str, is_a: bool, to: i64) -> Result<(), TxError> {
        let target = queries::room_by_id(room);
        if is_a {
            run!(diesel::update(target.filter(rooms::a_seen_up_to.lt(to)))
                .set(rooms::a_seen_up_to.eq(to))
                .execute(conn))?;
        } else {
            run!(diesel::update(target.filter(rooms::b_seen_up_to.lt(to)))
                .set(rooms::b_seen_up_to.eq(to))
                .execute(conn))?;
        }
        Ok(())
    }

    /// Moves `member_a`'s (`is_a`) or `member_b`'s delivered watermark up to `to`, never
    /// back. True when it moved.
    fn raise_delivered(conn, room: &str, is_a: bool, to: i64) -> Result<bool, TxError> {
        let target = queries::room_by_id(room);
        let moved = if is_a {
            run!(diesel::update(target.filter(rooms::a_delivered_up_to.lt(to)))
                .set(rooms::a_delivered_up_to.eq(to))
                .execute(conn))?
        } else {
            run!(diesel::update(target.filter(rooms::b_delivered_up_to.lt(to)))
                .set(rooms::b_delivered_up_to.eq(to))
                .execute(conn))?
        };
        Ok(moved > 0)
    }

    /// Records that `reader`'s device got the other member's messages up to `up_to`: the
    /// delivered watermark moves to the newest of the other member's messages at or before
    /// `up_to` (so clamped to the room's last seq), never back. Returns where it moved to,
    /// with the `DeliveredMarked` event; `None` and no event when it moved nothing.
    fn mark_received(
        conn,
        room: &RoomId,
        reader: &UserId,
        up_to: Seq,
        now: Timestamp,
    ) -> Result<(Option<Seq>, Option<StoreEvent>), TxError> {
        let row = run!(find_room(conn, room.as_str()))?;
        let room_value = row.to_room()?;
        room_value.ensure_member(reader)?;
        let up_to = i64::from(up_to).min(row.last_seq);
        let highest: Option<i64> = run!(queries::messages_of_room(room.as_str())
            .filter(messages::sender_id.ne(reader.as_str()))
            .filter(messages::seq.le(up_to))
            .select(diesel::dsl::max(messages::seq))
            .first(conn))?;
        let Some(highest) = highest else {
            return Ok((None, None));
        };
        let is_a = row.member_a == reader.as_str();
        if !run!(raise_delivered(conn, room.as_str(), is_a, highest))? {
            return Ok((None, None));
        }
        let seq = Seq::try_from(highest)?;
        let event = StoreEvent::DeliveredMarked {
            room_id: room.clone(),
            members: room_value.members,
            reader: reader.clone(),
            up_to: seq,
            delivered_at: now,
        };
        Ok((Some(seq), Some(event)))
    }

    /// Deletes message `seq` of `room` as `by` may (`chat_domain::unsend`): erases its body
    /// and stamps `deleted_at`, leaving the row as a tombstone. A non-member learns nothing
    /// (`NotAMember` before any lookup of the message); a seq that does not exist is
    /// `NoSuchMessage`.
    fn delete_message(
        conn,
        room: &RoomId,
        seq: Seq,
        by: Deleter,
        now: Timestamp,
    ) -> Result<(DeleteOutcome, Option<StoreEvent>), TxError> {
        let row = run!(find_room(conn, room.as_str()))?;
        let room_value = row.to_room()?;
        if let Deleter::Member { user, .. } = &by {
            room_value.ensure_member(user)?;
        }
        let found: Option<MessageRow> = run!(messages::table
            .find((room.as_str(), i64::from(seq)))
            .select(MessageRow::as_select())
            .first(conn))
        .optional()?;
        let message = found
            .ok_or(TxError::Store(StoreError::Rule(DomainError::NoSuchMessage)))?
            .to_message()?;
        if unsend::decide(&message, &by, now)? == Unsend::AlreadyDeleted {
            return Ok((DeleteOutcome::AlreadyDeleted, None));
        }
        let erased = run!(diesel::update(
            messages::table
                .find((room.as_str(), i64::from(seq)))
                .filter(messages::deleted_at.is_null())
        )
        .set((
            messages::body.eq(None::<String>),
            messages::deleted_at.eq(Some(now.unix_micros())),
        ))
        .execute(conn))?;
        if erased == 0 {
            return Ok((DeleteOutcome::AlreadyDeleted, None));
        }
        let event = StoreEvent::MessageDeleted {
            room_id: room.clone(),
            members: room_value.members,
            seq,
            deleted_at: now,
        };
        Ok((DeleteOutcome::Deleted { deleted_at: now }, Some(event)))
    }

    /// Every room `user` is a member of, open or closed.
    fn rooms_of_member(conn, user: &UserId) -> Result<Vec<Room>, TxError> {
        let rows: Vec<RoomRow> = run!(rooms::table
            .filter(rooms::member_a.eq(user.as_str()).or(rooms::member_b.eq(user.as_str())))
            .order(rooms::id.asc())
            .select(RoomRow::as_select())
            .load(conn))?;
        Ok(rows.iter().map(RoomRow::to_room).collect::<Result<_, _>>()?)
    }

    /// Erases, in one short transaction, at most `limit` bodies `sender` sent in `room`
    /// (oldest first), leaving tombstones. Returns how many; 0 when none is left. The lookup
    /// walks the `(room_id, sender_id, ...)` unique index: no scan of other users' rows.
    fn erase_sent(
        conn,
        room: &RoomId,
        sender: &UserId,
        now: Timestamp,
        limit: i64,
    ) -> Result<(u64, Option<StoreEvent>), TxError> {
        let seqs: Vec<i64> = run!(queries::messages_of_room(room.as_str())
            .filter(messages::sender_id.eq(sender.as_str()))
            .filter(messages::deleted_at.is_null())
            .order(messages::seq.asc())
            .select(messages::seq)
            .limit(limit)
            .load(conn))?;
        let erased = run!(erase_seqs(conn, room.as_str(), &seqs, now))?;
        Ok((erased, None))
    }

    /// Erases the bodies of these messages of `room` that are not deleted yet.
    fn erase_seqs(conn, room: &str, seqs: &[i64], now: Timestamp) -> Result<u64, TxError> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let erased = run!(diesel::update(
            queries::messages_of_room(room)
                .filter(messages::seq.eq_any(seqs))
                .filter(messages::deleted_at.is_null())
        )
        .set((
            messages::body.eq(None::<String>),
            messages::deleted_at.eq(Some(now.unix_micros())),
        ))
        .execute(conn))?;
        Ok(u64::try_from(erased).unwrap_or(0))
    }

    /// Retention: erases at most `limit` bodies of `room` sent before `cutoff`, oldest first
    /// (a range of the primary key: seqs follow commit order, and so `sent_at`).
    fn erase_older_than(
        conn,
        room: &RoomId,
        cutoff: Timestamp,
        now: Timestamp,
        limit: i64,
    ) -> Result<(u64, Option<StoreEvent>), TxError> {
        let seqs: Vec<i64> = run!(queries::messages_of_room(room.as_str())
            .filter(messages::sent_at.lt(cutoff.unix_micros()))
            .filter(messages::deleted_at.is_null())
            .order(messages::seq.asc())
            .select(messages::seq)
            .limit(limit)
            .load(conn))?;
        let erased = run!(erase_seqs(conn, room.as_str(), &seqs, now))?;
        Ok((erased, None))
    }

    /// Room ids after `after` (by id), `limit` at most: a retention pass walks every room.
    fn room_ids_after(conn, after: Option<RoomId>, limit: i64) -> Result<Vec<RoomId>, TxError> {
        let mut query = rooms::table.select(rooms::id).order(rooms::id.asc()).limit(limit).into_boxed();
        if let Some(after) = after {
            query = query.filter(rooms::id.gt(after.as_str().to_owned()));
        }
        let ids: Vec<String> = run!(query.load(conn))?;
        Ok(ids.into_iter().map(RoomId::new).collect::<Result<_, _>>()?)
    }

    /// Removes `user`'s presence rows and last activity (erasure).
    fn forget_presence(conn, user: &UserId) -> Result<((), Option<StoreEvent>), TxError> {
        run!(diesel::delete(presence_connections::table.filter(presence_connections::user_id.eq(user.as_str()))).execute(conn))?;
        run!(diesel::delete(user_activity::table.find(user.as_str())).execute(conn))?;
        Ok(((), None))
    }

    /// The other members of `user`'s open rooms: who hears of `user`'s presence.
    fn open_peers(conn, user: &UserId) -> Result<Vec<UserId>, TxError> {
        let pairs: Vec<(String, String)> = run!(rooms::table
            .filter(rooms::member_a.eq(user.as_str()).or(rooms::member_b.eq(user.as_str())))
            .filter(rooms::closed_at.is_null())
            .select((rooms::member_a, rooms::member_b))
            .load(conn))?;
        let mut peers: Vec<UserId> = Vec::with_capacity(pairs.len());
        let mut seen = HashSet::new();
        for (a, b) in pairs {
            let other = if a == user.as_str() { b } else { a };
            if seen.insert(other.clone()) {
                peers.push(UserId::new(other)?);
            }
        }
        Ok(peers)
    }

    /// Records that `node` is alive.
    fn presence_beat(conn, node: &str, now: Timestamp) -> Result<((), Option<StoreEvent>), TxError> {
        run!(diesel::insert_into(presence_nodes::table)
            .values((
                presence_nodes::node_id.eq(node),
                presence_nodes::heartbeat_at.eq(now.unix_micros()),
            ))
            .on_conflict(presence_nodes::node_id)
            .do_update()
            .set(presence_nodes::heartbeat_at.eq(now.unix_micros()))
            .execute(conn))?;
        Ok(((), None))
    }

    /// True when `user` has a visible connection on a live node other than `node`.
    fn online_elsewhere(conn, node: &str, user: &str, now: Timestamp) -> Result<bool, TxError> {
        let alive = stale_before(now);
        let found: Option<String> = run!(presence_connections::table
            .inner_join(presence_nodes::table)
            .filter(presence_connections::user_id.eq(user))
            .filter(presence_connections::visible.eq(true))
            .filter(presence_connections::node_id.ne(node))
            .filter(presence_nodes::heartbeat_at.ge(alive))
            .select(presence_connections::node_id)
            .first(conn))
        .optional()?;
        Ok(found.is_some())
    }

    /// `user` has connections on `node` now, `visible` or all hiding presence. Returns
    /// whether they were online (visibly, on a live node) elsewhere already. Their
    /// `last_active_at` becomes `now` when they come online here, and null while they are
    /// connected only hiding presence.
    fn presence_connect(
        conn,
        node: &str,
        user: &UserId,
        visible: bool,
        now: Timestamp,
    ) -> Result<(bool, Option<StoreEvent>), TxError> {
        let elsewhere = run!(online_elsewhere(conn, node, user.as_str(), now))?;
        run!(diesel::insert_into(presence_connections::table)
            .values((
                presence_connections::node_id.eq(node),
                presence_connections::user_id.eq(user.as_str()),
                presence_connections::visible.eq(visible),
            ))
            .on_conflict((presence_connections::node_id, presence_connections::user_id))
            .do_update()
            .set(presence_connections::visible.eq(visible))
            .execute(conn))?;
        if !elsewhere {
            let at = visible.then_some(now.unix_micros());
            run!(set_last_active(conn, user.as_str(), at))?;
        }
        Ok((elsewhere, None))
    }

    /// `user` has no connection left on `node`. Returns true when that made them offline
    /// (they were visible here and are not online elsewhere); `last_active_at` is then `now`.
    fn presence_disconnect(
        conn,
        node: &str,
        user: &UserId,
        now: Timestamp,
    ) -> Result<(bool, Option<StoreEvent>), TxError> {
        let was_visible: Option<bool> = run!(diesel::delete(
            presence_connections::table.find((node, user.as_str()))
        )
        .returning(presence_connections::visible)
        .get_result(conn))
        .optional()?;
        if was_visible != Some(true) || run!(online_elsewhere(conn, node, user.as_str(), now))? {
            return Ok((false, None));
        }
        run!(set_last_active(conn, user.as_str(), Some(now.unix_micros())))?;
        Ok((true, None))
    }

    fn set_last_active(conn, user: &str, at: Option<i64>) -> Result<(), TxError> {
        run!(diesel::insert_into(user_activity::table)
            .values((user_activity::user_id.eq(user), user_activity::last_active_at.eq(at)))
            .on_conflict(user_activity::user_id)
            .do_update()
            .set(user_activity::last_active_at.eq(at))
            .execute(conn))?;
        Ok(())
    }

    /// Removes the nodes that stopped beating ([`NODE_STALE`]) and their users' rows.
    /// Returns the users that made offline (visible there, not online elsewhere), with the
    /// time of their node's last beat, which becomes their `last_active_at`. Several nodes
    /// may reap at once: a node's rows go to whichever deletes them.
    fn presence_reap(
        conn,
        node: &str,
        now: Timestamp,
    ) -> Result<(Reaped, Option<StoreEvent>), TxError> {
        let alive = stale_before(now);
        let dead: Vec<(String, i64)> = run!(diesel::delete(
            presence_nodes::table
                .filter(presence_nodes::heartbeat_at.lt(alive))
                .filter(presence_nodes::node_id.ne(node))
        )
        .returning((presence_nodes::node_id, presence_nodes::heartbeat_at))
        .get_results(conn))?;
        let mut offline = Vec::new();
        for (dead_node, last_beat) in dead {
            let users: Vec<(String, bool)> = run!(diesel::delete(
                presence_connections::table.filter(presence_connections::node_id.eq(&dead_node))
            )
            .returning((presence_connections::user_id, presence_connections::visible))
            .get_results(conn))?;
            for (user, visible) in users {
                if !visible || run!(online_elsewhere(conn, &dead_node, &user, now))? {
                    continue;
                }
                run!(set_last_active(conn, &user, Some(last_beat)))?;
                offline.push((UserId::new(user)?, Timestamp::from_unix_micros(last_beat)?));
            }
        }
        Ok((offline, None))
    }

    /// The presence of each of `users` (those never seen: offline, never active).
    fn presence_of(conn, users: &[UserId], now: Timestamp) -> Result<Vec<(UserId, Presence)>, TxError> {
        let alive = stale_before(now);
        let mut online: HashSet<String> = HashSet::new();
        let mut active: HashMap<String, Option<i64>> = HashMap::new();
        let names: Vec<&str> = users.iter().map(UserId::as_str).collect();
        for chunk in names.chunks(500) {
            let found: Vec<String> = run!(presence_connections::table
                .inner_join(presence_nodes::table)
                .filter(presence_connections::user_id.eq_any(chunk))
                .filter(presence_connections::visible.eq(true))
                .filter(presence_nodes::heartbeat_at.ge(alive))
                .select(presence_connections::user_id)
                .load(conn))?;
            online.extend(found);
            let times: Vec<(String, Option<i64>)> = run!(user_activity::table
                .filter(user_activity::user_id.eq_any(chunk))
                .select((user_activity::user_id, user_activity::last_active_at))
                .load(conn))?;
            active.extend(times);
        }
        users
            .iter()
            .map(|user| {
                let last_active_at = active
                    .get(user.as_str())
                    .copied()
                    .flatten()
                    .map(Timestamp::from_unix_micros)
                    .transpose()?;
                let presence = Presence {
                    online: online.contains(user.as_str()),
                    last_active_at,
                };
                Ok((user.clone(), presence))
            })
            .collect::<Result<_, DomainError>>()
            .map_err(TxError::from)
    }
}

/// The result of `open_room` for a room this call found (`created: false`, no event) or
/// created (`created: true`, with the `RoomOpened` event to publish after the commit).
pub(crate) fn room_opened(
    row: &RoomRow,
    created: bool,
    presence: Vec<(UserId, Presence)>,
) -> Result<(RoomOpened, Option<StoreEvent>), StoreError> {
    let room = row.to_room()?;
    let event = created.then(|| StoreEvent::RoomOpened {
        room: room.clone(),
        presence,
    });
    Ok((RoomOpened { room, created }, event))
}

/// A new open room for the pair, with a fresh id (a v4 UUID).
pub(crate) fn new_room_row(members: &Members, now: Timestamp) -> RoomRow {
    RoomRow::new_open(uuid::Uuid::new_v4().hyphenated().to_string(), members, now)
}

/// The users a reap turned offline, each with their new `last_active_at`.
type Reaped = Vec<(UserId, Timestamp)>;

/// Heartbeats older than this (unix micros) are a dead node's.
fn stale_before(now: Timestamp) -> i64 {
    let stale = i64::try_from(NODE_STALE.as_micros()).unwrap_or(i64::MAX);
    now.unix_micros().saturating_sub(stale)
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
