//! A stored message, exactly as the wire carries it.

use serde::{Deserialize, Serialize};

use crate::body::Body;
use crate::ids::{ClientMsgId, RoomId, Seq, UserId};
use crate::timestamp::Timestamp;

/// Fields and their JSON names are part of the public protocol: `room_id`, `seq`,
/// `sender_id`, `body` (null once deleted), `sent_at`, `seen_at` (null until seen),
/// `client_msg_id`, `deleted_at` (null unless deleted; protocol 1.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub room_id: RoomId,
    pub seq: Seq,
    pub sender_id: UserId,
    /// `None` once the message was deleted (unsend, moderation, erasure): a tombstone keeps
    /// its seq, times and sender, never its words.
    pub body: Option<Body>,
    pub sent_at: Timestamp,
    pub seen_at: Option<Timestamp>,
    pub client_msg_id: ClientMsgId,
    #[serde(default)]
    pub deleted_at: Option<Timestamp>,
}

/// What a member asks to store; the store gives it its seq and `sent_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub room_id: RoomId,
    pub sender_id: UserId,
    pub client_msg_id: ClientMsgId,
    pub body: Body,
}

impl Message {
    pub fn is_seen(&self) -> bool {
        self.seen_at.is_some()
    }

    /// True for a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }

    /// The body's text; `""` for a tombstone.
    pub fn text(&self) -> &str {
        self.body.as_ref().map_or("", Body::as_str)
    }
}
