//! Rows as stored, and their conversions to and from domain types. A stored row that no
//! longer satisfies a domain rule (hand-edited data, a bad migration) converts to
//! [`StoreError::Corrupt`] instead of being trusted.

use chat_domain::{
    Body, ClientMsgId, Members, Message, NewMessage, Room, RoomId, RoomSummary, Seq, Timestamp,
    UserId,
};
use diesel::prelude::*;

use crate::error::StoreError;
use crate::schema::{messages, rooms};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, QueryableByName, Insertable)]
#[diesel(table_name = rooms)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub(crate) struct RoomRow {
    pub id: String,
    pub member_a: String,
    pub member_b: String,
    pub created_at: i64,
    pub closed_at: Option<i64>,
    pub last_seq: i64,
    pub last_activity_at: i64,
    pub a_seen_up_to: i64,
    pub b_seen_up_to: i64,
    pub a_delivered_up_to: i64,
    pub b_delivered_up_to: i64,
}

impl RoomRow {
    /// A new, open, empty room.
    pub fn new_open(id: String, members: &Members, now: Timestamp) -> Self {
        Self {
            id,
            member_a: Members::first(members).as_str().to_owned(),
            member_b: members.second().as_str().to_owned(),
            created_at: now.unix_micros(),
            closed_at: None,
            last_seq: 0,
            last_activity_at: now.unix_micros(),
            a_seen_up_to: 0,
            b_seen_up_to: 0,
            a_delivered_up_to: 0,
            b_delivered_up_to: 0,
        }
    }

    /// `(seen_up_to, delivered_up_to)` of `user`'s watermarks over the other member's
    /// messages; `None` if `user` is not a member.
    pub fn watermarks_of(&self, user: &UserId) -> Option<(i64, i64)> {
        if self.member_a == user.as_str() {
            Some((self.a_seen_up_to, self.a_delivered_up_to))
        } else if self.member_b == user.as_str() {
            Some((self.b_seen_up_to, self.b_delivered_up_to))
        } else {
            None
        }
    }

    pub fn to_room(&self) -> Result<Room, StoreError> {
        let id = RoomId::new(self.id.as_str()).map_err(|e| corrupt("rooms.id", &self.id, e))?;
        let a = UserId::new(self.member_a.as_str())
            .map_err(|e| corrupt("rooms.member_a", &self.id, e))?;
        let b = UserId::new(self.member_b.as_str())
            .map_err(|e| corrupt("rooms.member_b", &self.id, e))?;
        let members =
            Members::new(a, b).map_err(|e| corrupt("rooms.member_a/member_b", &self.id, e))?;
        if Members::first(&members).as_str() != self.member_a {
            return Err(StoreError::Corrupt(format!(
                "room {}: members are not in canonical order",
                self.id
            )));
        }
        let created_at =
            timestamp(self.created_at).map_err(|e| corrupt("rooms.created_at", &self.id, e))?;
        let closed_at = self
            .closed_at
            .map(timestamp)
            .transpose()
            .map_err(|e| corrupt("rooms.closed_at", &self.id, e))?;
        Ok(Room {
            id,
            members,
            created_at,
            closed_at,
        })
    }

    /// The newest seq, `None` while the room has no message.
    pub fn last_seq(&self) -> Result<Option<Seq>, StoreError> {
        match self.last_seq {
            0 => Ok(None),
            n => Seq::try_from(n)
                .map(Some)
                .map_err(|e| corrupt("rooms.last_seq", &self.id, e)),
        }
    }

    /// The room as `user` sees it, with its newest message; `NotAMember` if `user` is not
    /// in it. Presence (`peer`) is filled in by the caller.
    pub fn summary(
        &self,
        user: &UserId,
        unread: i64,
        last_message: Option<Message>,
    ) -> Result<RoomSummary, StoreError> {
        let room = self.to_room()?;
        room.ensure_member(user)?;
        let unread = u64::try_from(unread)
            .map_err(|_| StoreError::Corrupt(format!("room {}: negative unread count", self.id)))?;
        let peer = room.members.other(user)?;
        let (seen, delivered) = self.watermarks_of(peer).unwrap_or_default();
        let count = |what: &str, v: i64| {
            u64::try_from(v)
                .map_err(|_| StoreError::Corrupt(format!("room {}: negative {what}", self.id)))
        };
        let mut summary = RoomSummary::new(&room, self.last_seq()?, unread);
        summary.last_message = last_message;
        summary.peer_seen_up_to = count("seen watermark", seen)?;
        summary.peer_delivered_up_to = count("delivered watermark", delivered)?;
        summary.last_activity_at = timestamp(self.last_activity_at)
            .map_err(|e| corrupt("rooms.last_activity_at", &self.id, e))?;
        Ok(summary)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = messages)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub(crate) struct MessageRow {
    pub room_id: String,
    pub seq: i64,
    pub sender_id: String,
    pub client_msg_id: String,
    pub body: Option<String>,
    pub sent_at: i64,
    pub seen_at: Option<i64>,
    pub deleted_at: Option<i64>,
}

impl MessageRow {
    pub fn to_message(&self) -> Result<Message, StoreError> {
        let at = |what: &str, e| corrupt_message(what, &self.room_id, self.seq, e);
        Ok(Message {
            room_id: RoomId::new(self.room_id.as_str()).map_err(|e| at("room_id", e))?,
            seq: Seq::try_from(self.seq).map_err(|e| at("seq", e))?,
            sender_id: UserId::new(self.sender_id.as_str()).map_err(|e| at("sender_id", e))?,
            body: self
                .body
                .as_deref()
                .map(Body::new)
                .transpose()
                .map_err(|e| at("body", e))?,
            sent_at: timestamp(self.sent_at).map_err(|e| at("sent_at", e))?,
            seen_at: self
                .seen_at
                .map(timestamp)
                .transpose()
                .map_err(|e| at("seen_at", e))?,
            client_msg_id: ClientMsgId::new(self.client_msg_id.as_str())
                .map_err(|e| at("client_msg_id", e))?,
            deleted_at: self
                .deleted_at
                .map(timestamp)
                .transpose()
                .map_err(|e| at("deleted_at", e))?,
        })
    }
}

/// A new message row. `seen_at` is left out: a new message is never seen, and leaving it out
/// keeps multi-row INSERTs possible on SQLite (no DEFAULT values).
#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = messages)]
pub(crate) struct NewMessageRow {
    pub room_id: String,
    pub seq: i64,
    pub sender_id: String,
    pub client_msg_id: String,
    pub body: String,
    pub sent_at: i64,
}

impl NewMessageRow {
    pub fn new(message: &NewMessage, seq: Seq, sent_at: Timestamp) -> Self {
        Self {
            room_id: message.room_id.as_str().to_owned(),
            seq: i64::from(seq),
            sender_id: message.sender_id.as_str().to_owned(),
            client_msg_id: message.client_msg_id.as_str().to_owned(),
            body: message.body.as_str().to_owned(),
            sent_at: sent_at.unix_micros(),
        }
    }
}

fn timestamp(micros: i64) -> Result<Timestamp, chat_domain::DomainError> {
    Timestamp::from_unix_micros(micros)
}

fn corrupt(what: &str, room: &str, e: chat_domain::DomainError) -> StoreError {
    StoreError::Corrupt(format!("room {room:?}: {what}: {e}"))
}

fn corrupt_message(what: &str, room: &str, seq: i64, e: chat_domain::DomainError) -> StoreError {
    StoreError::Corrupt(format!("message {room:?}#{seq}: {what}: {e}"))
}
