//! The typed query fragments both backends build their statements from, written once with
//! Diesel's `#[auto_type]` (which names each fragment's type for us, so a fragment is a plain
//! function instead of a type nobody can spell). A fragment is only an expression: it runs on
//! whatever connection the caller loads it with, PostgreSQL or SQLite, and Diesel type-checks
//! it for both. Statements (selections, updates, execution) are in [`crate::statements`].

use diesel::dsl::{self, case_when};
use diesel::{
    BoolExpressionMethods, ExpressionMethods, JoinOnDsl, NullableExpressionMethods, QueryDsl,
};

use crate::schema::{messages, rooms};

/// The room with this id.
#[dsl::auto_type]
pub(crate) fn room_by_id<'a>(id: &'a str) -> _ {
    rooms::table.find(id)
}

/// The open room of the pair `(a, b)` (in canonical order), if any: the unique partial index
/// `rooms_one_open_per_pair` makes it at most one.
#[dsl::auto_type]
pub(crate) fn open_room_of_pair<'a>(a: &'a str, b: &'a str) -> _ {
    rooms::table
        .filter(rooms::member_a.eq(a))
        .filter(rooms::member_b.eq(b))
        .filter(rooms::closed_at.is_null())
}

/// A message `user` has not seen yet: sent by the other member, `seen_at` still NULL (the
/// `messages_unseen` index), and not deleted (a tombstone never counts as unread).
#[dsl::auto_type]
pub(crate) fn unread_by<'a>(user: &'a str) -> _ {
    messages::seen_at
        .is_null()
        .and(messages::sender_id.ne(user))
        .and(messages::deleted_at.is_null())
}

/// A condition that is always true and keeps the query out of the prepared-statement cache
/// (diesel marks SQL literals unsafe to cache), so PostgreSQL plans it for the parameters of
/// each call instead of settling on a generic plan.
///
/// Why: PostgreSQL switches a named prepared statement to a cached generic plan after five
/// executions. For the room list (a join of the user's rooms with their unseen messages) the
/// generic plan chosen while the tables were empty (a fresh database, the first connections)
/// merge-joins and sorts *every* unseen message of *every* room, spilling to disk: 343 ms for
/// one call over 350,000 messages, and 16 of them at once filled the pool for a minute after a
/// throughput run (issue 11's "connects stall after a heavy run"; docs/benchmarks.md, "Server
/// issues found"). Only an `ANALYZE` throws such a plan away. A custom plan is an index scan of
/// the user's rooms' unseen messages (1.4 ms); planning it costs ~0.7 ms and one more round
/// trip, once per `ready` or room page. SQLite only re-prepares the statement.
pub(crate) fn planned_per_call() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql::<diesel::sql_types::Bool>("TRUE")
}

/// `user`'s rooms, each joined to the messages `user` has not seen, grouped per room: select
/// the room and `count(messages.seq)` for its unread count.
#[dsl::auto_type]
pub(crate) fn rooms_with_unread_of<'a>(user: &'a str) -> _ {
    let unread: unread_by<'a> = unread_by(user);
    rooms::table
        .left_join(messages::table.on(messages::room_id.eq(rooms::id).and(unread)))
        .filter(rooms::member_a.eq(user).or(rooms::member_b.eq(user)))
        .group_by(rooms::id)
}

/// The messages of one room (a range of the primary key).
#[dsl::auto_type]
pub(crate) fn messages_of_room<'a>(room: &'a str) -> _ {
    messages::table.filter(messages::room_id.eq(room))
}

/// The messages of one room `user` has not seen.
#[dsl::auto_type]
pub(crate) fn unread_in_room<'a>(room: &'a str, user: &'a str) -> _ {
    let in_room: messages_of_room<'a> = messages_of_room(room);
    let unread: unread_by<'a> = unread_by(user);
    in_room.filter(unread)
}

/// What a watermark marks: the other member's unseen messages up to `up_to`.
#[dsl::auto_type]
pub(crate) fn unseen_from_other_up_to<'a>(room: &'a str, reader: &'a str, up_to: i64) -> _ {
    let in_room: messages_of_room<'a> = messages_of_room(room);
    in_room
        .filter(messages::sender_id.ne(reader))
        .filter(messages::seq.le(up_to))
        .filter(messages::seen_at.is_null())
}

/// The `seen_at` a watermark sets: `now`, but never before the message was sent
/// (`CASE WHEN sent_at > now THEN sent_at ELSE now END`, backing `CHECK (seen_at >= sent_at)`).
#[dsl::auto_type]
pub(crate) fn seen_at_clamped(now: i64) -> _ {
    case_when(messages::sent_at.gt(now), messages::sent_at)
        .otherwise(now)
        .nullable()
}
