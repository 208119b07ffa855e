//! A stored message, exactly as the wire carries it.

use serde::{Deserialize, Serialize};

use crate::body::Body;
use crate::ids::{ClientMsgId, RoomId, Seq, UserId};
use crate::timestamp::Timestamp;

/// Fields and their JSON names are part of the public protocol: `room_id`, `seq`,
/// `sender_id`, `body`, `sent_at`, `seen_at` (null until seen), `client_msg_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub room_id: RoomId,
    pub seq: Seq,
    pub sender_id: UserId,
    pub body: Body,
    pub sent_at: Timestamp,
    pub seen_at: Option<Timestamp>,
    pub client_msg_id: ClientMsgId,
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
}
