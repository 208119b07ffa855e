//! A room is the conversation of one matched pair: exactly two distinct members, open until
//! the host app closes it (the unmatch case). A closed room keeps its history and its seen
//! marking, but takes no new messages.

use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::ids::{RoomId, Seq, UserId};
use crate::message::Message;
use crate::presence::Presence;
use crate::timestamp::Timestamp;

/// Two distinct users, kept in a canonical (sorted) order so a pair has one spelling whatever
/// order the host app names them in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Members([UserId; 2]);

impl Members {
    pub fn new(a: UserId, b: UserId) -> Result<Self, DomainError> {
        if a == b {
            return Err(DomainError::SameMembers);
        }
        Ok(if a < b { Self([a, b]) } else { Self([b, a]) })
    }

    pub fn first(&self) -> &UserId {
        &self.0[0]
    }

    pub fn second(&self) -> &UserId {
        &self.0[1]
    }

    pub fn as_slice(&self) -> &[UserId; 2] {
        &self.0
    }

    pub fn contains(&self, user: &UserId) -> bool {
        self.0.iter().any(|m| m == user)
    }

    /// The member who is not `user`; an error when `user` is not a member at all.
    pub fn other(&self, user: &UserId) -> Result<&UserId, DomainError> {
        match &self.0 {
            [a, b] if a == user => Ok(b),
            [a, b] if b == user => Ok(a),
            _ => Err(DomainError::NotAMember),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    pub id: RoomId,
    pub members: Members,
    pub created_at: Timestamp,
    pub closed_at: Option<Timestamp>,
}

impl Room {
    pub fn is_closed(&self) -> bool {
        self.closed_at.is_some()
    }

    /// Reading history and marking seen need membership only: they still work once closed.
    pub fn ensure_member(&self, user: &UserId) -> Result<(), DomainError> {
        if self.members.contains(user) {
            Ok(())
        } else {
            Err(DomainError::NotAMember)
        }
    }

    /// Sending needs membership and an open room. Membership is checked first, so a
    /// non-member learns nothing about the room's state.
    pub fn ensure_can_send(&self, user: &UserId) -> Result<(), DomainError> {
        self.ensure_member(user)?;
        if self.is_closed() {
            return Err(DomainError::RoomClosed);
        }
        Ok(())
    }
}

/// A room as one member sees it in the room list (`ready` and `room_opened` frames).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSummary {
    pub room_id: RoomId,
    pub members: Vec<UserId>,
    pub last_seq: u64,
    pub unread: u64,
    pub closed: bool,
    /// The other member's presence (protocol 1.1); left out when presence is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Presence>,
    /// The newest message (a tombstone too), or null in a room without messages.
    #[serde(default)]
    pub last_message: Option<Message>,
    /// How far the other member has seen this user's messages (0: none).
    #[serde(default)]
    pub peer_seen_up_to: u64,
    /// How far the other member's devices have received this user's messages (0: none).
    #[serde(default)]
    pub peer_delivered_up_to: u64,
    /// The newest message's `sent_at`, else the room's creation time: the room list's order.
    pub last_activity_at: Timestamp,
}

impl RoomSummary {
    /// A room as it is at creation: no messages, no watermarks, no presence yet.
    pub fn new(room: &Room, last_seq: Option<Seq>, unread: u64) -> Self {
        Self {
            room_id: room.id.clone(),
            members: room.members.as_slice().to_vec(),
            last_seq: last_seq.map_or(0, Seq::get),
            unread,
            closed: room.is_closed(),
            peer: None,
            last_message: None,
            peer_seen_up_to: 0,
            peer_delivered_up_to: 0,
            last_activity_at: room.created_at,
        }
    }

    /// The cursor of the page after this room (`rooms` frames).
    pub fn cursor(&self) -> RoomsCursor {
        RoomsCursor {
            before_activity_at: self.last_activity_at,
            before_room_id: self.room_id.clone(),
        }
    }
}

/// Where a page of a user's room list starts: rooms strictly before this one in the list's
/// order (`last_activity_at`, then `room_id`, both descending).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomsCursor {
    pub before_activity_at: Timestamp,
    pub before_room_id: RoomId,
}

/// A page of a user's rooms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoomsPage {
    pub rooms: Vec<RoomSummary>,
    /// True when rooms follow this page.
    pub more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    fn room(closed: bool) -> Room {
        Room {
            id: RoomId::new("r1").unwrap(),
            members: Members::new(user("bob"), user("alice")).unwrap(),
            created_at: Timestamp::from_unix_micros(0).unwrap(),
            closed_at: closed.then(|| Timestamp::from_unix_micros(5).unwrap()),
        }
    }

    #[test]
    fn members_are_two_distinct_users_in_canonical_order() {
        let m = Members::new(user("bob"), user("alice"));
        assert_eq!(m.as_ref().map(|m| m.first().as_str()), Ok("alice"));
        assert_eq!(m, Members::new(user("alice"), user("bob")));
        assert_eq!(
            Members::new(user("a"), user("a")),
            Err(DomainError::SameMembers)
        );
    }

    #[test]
    fn other_member() {
        let m = Members::new(user("alice"), user("bob")).unwrap();
        assert_eq!(m.other(&user("alice")), Ok(&user("bob")));
        assert_eq!(m.other(&user("bob")), Ok(&user("alice")));
        assert_eq!(m.other(&user("mallory")), Err(DomainError::NotAMember));
    }

    #[test]
    fn sending_needs_membership_then_an_open_room() {
        assert_eq!(room(false).ensure_can_send(&user("alice")), Ok(()));
        assert_eq!(
            room(false).ensure_can_send(&user("eve")),
            Err(DomainError::NotAMember)
        );
        assert_eq!(
            room(true).ensure_can_send(&user("alice")),
            Err(DomainError::RoomClosed)
        );
        assert_eq!(
            room(true).ensure_can_send(&user("eve")),
            Err(DomainError::NotAMember)
        );
        assert_eq!(room(true).ensure_member(&user("bob")), Ok(()));
    }

    #[test]
    fn summary_reflects_the_room() {
        let s = RoomSummary::new(&room(true), None, 0);
        assert_eq!(s.last_seq, 0);
        assert!(s.closed);
        assert_eq!(s.members, vec![user("alice"), user("bob")]);
    }
}
