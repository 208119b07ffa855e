//! Events a store publishes after a commit, in commit order per room.
//!
//! The server's room registry subscribes and fans out from them. A subscriber that falls
//! more than the bus capacity behind gets `Lagged` from the receiver and must rebuild its
//! view from the database (the server closes the affected connections with 1013 so clients
//! reconnect and catch up with `after_seq`): events are a fast path, the database is the truth.

use std::sync::Arc;

use chat_domain::{Members, Message, Presence, Room, RoomId, Seq, Timestamp, UserId};
use tokio::sync::broadcast;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A room was created for a pair (not sent when `open_room` returned an existing room),
    /// with each member's presence at that moment (each member's summary shows the other's).
    RoomOpened {
        room: Room,
        presence: Vec<(UserId, Presence)>,
    },
    /// A room was closed (the unmatch case).
    RoomClosed { room: Room },
    /// A new message was committed (never sent for a de-duplicated retry).
    MessageCommitted { members: Members, message: Message },
    /// A watermark marked at least one message seen.
    SeenMarked {
        room_id: RoomId,
        members: Members,
        reader: UserId,
        up_to: Seq,
        seen_at: Timestamp,
    },
    /// A member's delivered watermark moved (protocol 1.1).
    DeliveredMarked {
        room_id: RoomId,
        members: Members,
        reader: UserId,
        up_to: Seq,
        delivered_at: Timestamp,
    },
    /// A message's body was erased (unsend, moderation, erasure; protocol 1.1).
    MessageDeleted {
        room_id: RoomId,
        members: Members,
        seq: Seq,
        deleted_at: Timestamp,
    },
}

/// A broadcast bus of committed events. Publishing never blocks a writer.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<StoreEvent>>,
}

impl EventBus {
    /// Default capacity: enough for a couple of seconds of peak write load.
    pub const DEFAULT_CAPACITY: usize = 65_536;

    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self { sender }
    }

    /// Publishes a committed event. Having no subscriber is fine (a CLI, a test).
    pub fn publish(&self, event: StoreEvent) {
        let _ = self.sender.send(Arc::new(event));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoreEvent>> {
        self.sender.subscribe()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}
