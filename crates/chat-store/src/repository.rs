//! The repository: everything the server asks of storage.
//!
//! Every mutating call checks the domain rules inside its transaction (membership, open
//! room, seen rules) and publishes its [`StoreEvent`] on the store's [`EventBus`] only after
//! the commit succeeded.

use async_trait::async_trait;
use chat_domain::{
    Deleter, HistoryPage, Members, Message, NewMessage, Presence, Room, RoomId, RoomSummary,
    RoomsCursor, RoomsPage, SeenOutcome, Seq, Timestamp, UserId,
};

use crate::error::StoreError;
use crate::events::EventBus;

/// A store's connection pool at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStatus {
    /// Connections the pool may open.
    pub max_size: usize,
    /// Connections open now.
    pub size: usize,
    /// Open connections not in use.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

impl From<deadpool::Status> for PoolStatus {
    fn from(status: deadpool::Status) -> Self {
        Self {
            max_size: status.max_size,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
        }
    }
}

/// The result of storing a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// A new row, with the next seq of its room.
    New(Message),
    /// `(room, sender, client_msg_id)` was stored before: this is that row, unchanged, and no
    /// event is published for it.
    Duplicate(Message),
}

impl Appended {
    pub fn message(&self) -> &Message {
        match self {
            Self::New(m) | Self::Duplicate(m) => m,
        }
    }

    pub fn into_message(self) -> Message {
        match self {
            Self::New(m) | Self::Duplicate(m) => m,
        }
    }
}

/// The result of a delete (unsend or moderation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The body was erased now; `MessageDeleted` was published.
    Deleted { deleted_at: Timestamp },
    /// It was deleted before: nothing changed, no event.
    AlreadyDeleted,
}

/// The result of opening a room for a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomOpened {
    pub room: Room,
    /// False when the pair already had an open room and this is it.
    pub created: bool,
}

#[async_trait]
pub trait Repository: Send + Sync + 'static {
    /// The bus this store publishes committed events on.
    fn events(&self) -> &EventBus;

    /// The connection pool now, for metrics.
    fn pool_status(&self) -> PoolStatus;

    /// Checks the database answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// The open room of this pair, created if there is none (idempotent, either order). A pair
    /// whose room was closed gets a new room; the closed one keeps its history.
    async fn open_room(&self, members: &Members, now: Timestamp) -> Result<RoomOpened, StoreError>;

    /// One room, open or closed. `UnknownRoom` if there is none with this id.
    async fn room(&self, id: &RoomId) -> Result<Room, StoreError>;

    /// A page of a user's rooms (open and closed) as that user sees them, in the room list's
    /// order (`last_activity_at`, then room id, both descending), strictly after `cursor`:
    /// last seq, unread count (the other member's messages this user has not marked seen,
    /// tombstones excepted), last message and the other member's watermarks. `peer` is left
    /// empty (presence is the server's to add). `more` says whether rooms follow.
    async fn rooms_page(
        &self,
        user: &UserId,
        cursor: Option<RoomsCursor>,
        limit: usize,
    ) -> Result<RoomsPage, StoreError>;

    /// All of a user's rooms, in the room list's order (see [`Repository::rooms_page`]).
    async fn rooms_of(&self, user: &UserId) -> Result<Vec<RoomSummary>, StoreError> {
        Ok(self.rooms_page(user, None, usize::MAX).await?.rooms)
    }

    /// The last seq of each of these rooms that exists and has messages; rooms without
    /// messages or unknown are left out. For a cluster node's sweep.
    async fn last_seqs(&self, ids: &[RoomId]) -> Result<Vec<(RoomId, Seq)>, StoreError>;

    /// One room as `user` sees it. `NotAMember` if `user` is not in it.
    async fn room_summary(&self, id: &RoomId, user: &UserId) -> Result<RoomSummary, StoreError>;

    /// Closes a room. Closing a closed room is a no-op that returns it (no second event).
    async fn close_room(&self, id: &RoomId, now: Timestamp) -> Result<Room, StoreError>;

    /// Stores one message: checks the sender may send, assigns the room's next seq atomically,
    /// and de-duplicates on `(room, sender, client_msg_id)`.
    async fn append(&self, message: NewMessage, now: Timestamp) -> Result<Appended, StoreError> {
        let mut results = self.append_batch(vec![message], now).await?;
        results.pop().unwrap_or_else(|| {
            Err(StoreError::Database(
                "append_batch returned no result".into(),
            ))
        })
    }

    /// Stores many messages, for any rooms, in one transaction (group commit). Each message
    /// gets its own result, in input order: a message that breaks a rule fails alone, and the
    /// others still commit. The outer error means nothing was committed.
    ///
    /// Per message, in this order: `UnknownRoom`; `Rule(NotAMember)`; `Duplicate` when the
    /// key is stored already (earlier in the same batch included, and also once the room is
    /// closed: a retry learns its message was stored); `Rule(RoomClosed)`; else `New`.
    async fn append_batch(
        &self,
        messages: Vec<NewMessage>,
        now: Timestamp,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError>;

    /// A page of history, oldest first, for a member of the room (open or closed).
    async fn history(
        &self,
        room: &RoomId,
        reader: &UserId,
        page: HistoryPage,
    ) -> Result<Vec<Message>, StoreError>;

    /// Marks seen everything the other member sent in `room` up to `up_to` (clamped to the
    /// room's last seq) that is not seen yet, with `seen_at = max(now, sent_at)`. Works on
    /// closed rooms. An outcome with nothing marked publishes no event.
    async fn mark_seen(
        &self,
        room: &RoomId,
        reader: &UserId,
        up_to: Seq,
        now: Timestamp,
    ) -> Result<SeenOutcome, StoreError>;

    /// Moves `reader`'s delivered watermark to the newest of the other member's messages at
    /// or before `up_to`, never back; publishes `DeliveredMarked` when it moved (and returns
    /// where to). Works on closed rooms.
    async fn mark_received(
        &self,
        room: &RoomId,
        reader: &UserId,
        up_to: Seq,
        now: Timestamp,
    ) -> Result<Option<Seq>, StoreError>;

    /// Deletes a message as `by` may (`chat_domain::unsend`), leaving a tombstone; publishes
    /// `MessageDeleted` when it erased a body.
    async fn delete_message(
        &self,
        room: &RoomId,
        seq: Seq,
        by: Deleter,
        now: Timestamp,
    ) -> Result<DeleteOutcome, StoreError>;

    /// The other members of `user`'s open rooms.
    async fn open_peers(&self, user: &UserId) -> Result<Vec<UserId>, StoreError>;

    /// Presence: `node` is alive at `now`.
    async fn presence_beat(&self, node: &str, now: Timestamp) -> Result<(), StoreError>;

    /// Presence: `user` is connected on `node` (visibly or hiding). Returns whether they were
    /// online elsewhere already.
    async fn presence_connect(
        &self,
        node: &str,
        user: &UserId,
        visible: bool,
        now: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Presence: `user` has no connection left on `node`. True when that made them offline.
    async fn presence_disconnect(
        &self,
        node: &str,
        user: &UserId,
        now: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Presence: removes dead nodes (not `node`); returns the users that made offline, each
    /// with their new `last_active_at`.
    async fn presence_reap(
        &self,
        node: &str,
        now: Timestamp,
    ) -> Result<Vec<(UserId, Timestamp)>, StoreError>;

    /// Presence of these users as others see them.
    async fn presence_of(
        &self,
        users: &[UserId],
        now: Timestamp,
    ) -> Result<Vec<(UserId, Presence)>, StoreError>;
}
