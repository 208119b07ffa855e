//! The [`Repository`](crate::Repository) impl both stores share.
//!
//! Most calls are one shared statement ([`crate::statements`]) run the backend's way: a read
//! on a pooled connection, or a write to one room inside the backend's transaction, with its
//! locking and event ordering. A backend says how with two small macros and implements
//! [`StoreCalls`] for the calls that really differ (`ping`, `open_room`, `append_batch`);
//! [`repository_via_calls!`] then writes the `Repository` impl once for both. It clones the
//! arguments and runs each call as its own task on the store's runtime
//! ([`detached`](crate::support::detached)), so any runtime may await it and a dropped caller
//! never abandons a transaction half-way or leaves a commit unannounced.

use async_trait::async_trait;
use chat_domain::{Members, NewMessage, Timestamp};

use crate::error::StoreError;
use crate::events::EventBus;
use crate::repository::{Appended, RoomOpened};

/// The calls each backend implements its own way; the contract of each is the
/// [`Repository`](crate::Repository) method of the same name. `append_batch` is never called
/// with an empty batch.
#[async_trait]
pub(crate) trait StoreCalls: Send + Sync + 'static {
    fn events(&self) -> &EventBus;
    fn pool_status(&self) -> crate::repository::PoolStatus;
    async fn ping(&self) -> Result<(), StoreError>;
    async fn open_room(&self, members: Members, now: Timestamp) -> Result<RoomOpened, StoreError>;
    async fn append_batch(
        &self,
        batch: Vec<NewMessage>,
        now: Timestamp,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError>;
}

/// `impl Repository for $store`, where `$store` has the fields `inner: Arc<impl StoreCalls>`
/// and `runtime: tokio::runtime::Handle` (the runtime every call runs on; see
/// [`crate::support::detached`]).
///
/// `$read!(inner, statement(args))` must run `statements::<backend>::statement(conn, args)` on
/// a pooled connection; `$write_room!(inner, room_id, statement(args))` must run it in a write
/// transaction on the room `room_id` (a `&str`), then publish the event it returned, if any,
/// in commit order.
macro_rules! repository_via_calls {
    ($store:ty, read: $read:ident, write_room: $write_room:ident) => {
        #[async_trait::async_trait]
        impl $crate::repository::Repository for $store {
            fn events(&self) -> &$crate::events::EventBus {
                $crate::store_calls::StoreCalls::events(&*self.inner)
            }

            fn pool_status(&self) -> $crate::repository::PoolStatus {
                $crate::store_calls::StoreCalls::pool_status(&*self.inner)
            }

            async fn ping(&self) -> Result<(), $crate::error::StoreError> {
                let inner = self.inner.clone();
                $crate::support::detached(&self.runtime, async move {
                    $crate::store_calls::StoreCalls::ping(&*inner).await
                })
                .await
            }

            async fn open_room(
                &self,
                members: &chat_domain::Members,
                now: chat_domain::Timestamp,
            ) -> Result<$crate::repository::RoomOpened, $crate::error::StoreError> {
                let (inner, members) = (self.inner.clone(), members.clone());
                $crate::support::detached(&self.runtime, async move {
                    $crate::store_calls::StoreCalls::open_room(&*inner, members, now).await
                })
                .await
            }

            async fn room(
                &self,
                id: &chat_domain::RoomId,
            ) -> Result<chat_domain::Room, $crate::error::StoreError> {
                let (inner, id) = (self.inner.clone(), id.clone());
                $crate::support::detached(
                    &self.runtime,
                    async move { $read!(inner, room(id.as_str())) },
                )
                .await
            }

            async fn rooms_page(
                &self,
                user: &chat_domain::UserId,
                cursor: Option<chat_domain::RoomsCursor>,
                limit: usize,
            ) -> Result<chat_domain::RoomsPage, $crate::error::StoreError> {
                let (inner, user) = (self.inner.clone(), user.clone());
                $crate::support::detached(&self.runtime, async move {
                    $read!(inner, rooms_page(&user, cursor, limit))
                })
                .await
            }

            async fn mark_received(
                &self,
                room: &chat_domain::RoomId,
                reader: &chat_domain::UserId,
                up_to: chat_domain::Seq,
                now: chat_domain::Timestamp,
            ) -> Result<Option<chat_domain::Seq>, $crate::error::StoreError> {
                let (inner, room, reader) = (self.inner.clone(), room.clone(), reader.clone());
                $crate::support::detached(&self.runtime, async move {
                    $write_room!(inner, room.as_str(), mark_received(&room, &reader, up_to, now))
                })
                .await
            }

            async fn delete_message(
                &self,
                room: &chat_domain::RoomId,
                seq: chat_domain::Seq,
                by: chat_domain::Deleter,
                now: chat_domain::Timestamp,
            ) -> Result<$crate::repository::DeleteOutcome, $crate::error::StoreError> {
                let (inner, room) = (self.inner.clone(), room.clone());
                $crate::support::detached(&self.runtime, async move {
                    $write_room!(inner, room.as_str(), delete_message(&room, seq, by, now))
                })
                .await
            }

            async fn open_peers(
                &self,
                user: &chat_domain::UserId,
            ) -> Result<Vec<chat_domain::UserId>, $crate::error::StoreError> {
                let (inner, user) = (self.inner.clone(), user.clone());
                $crate::support::detached(&self.runtime, async move {
                    $read!(inner, open_peers(&user))
                })
                .await
            }

            async fn presence_beat(
                &self,
                node: &str,
                now: chat_domain::Timestamp,
            ) -> Result<(), $crate::error::StoreError> {
                let (inner, node) = (self.inner.clone(), node.to_owned());
                $crate::support::detached(&self.runtime, async move {
                    $write_room!(inner, "", presence_beat(&node, now))
                })
                .await
            }

            async fn presence_connect(
                &self,
                node: &str,
                user: &chat_domain::UserId,
                visible: bool,
                now: chat_domain::Timestamp,
            ) -> Result<bool, $crate::error::StoreError> {
                let (inner, node, user) = (self.inner.clone(), node.to_owned(), user.clone());
                $crate::support::detached(&self.runtime, async move {
                    $write_room!(inner, "", presence_connect(&node, &user, visible, now))
                })
                .await
            }

            async fn presence_disconnect(
                &self,
                node: &str,
                user: &chat_domain::UserId,
                now: chat_domain::Timestamp,
            ) -> Result<bool, $crate::error::StoreError> {
                let (inner, node, user) = (self.inner.clone(), node.to_owned(), user.clone());
                $crate::support::detached(&self.runtime, async move {
                    $write_room!(inner, "", presence_disconnect(&node, &user, now))
                })
                .await
            }

            async fn presence_reap(
                &self,
                node: &str,
                now: chat_domain::Timestamp,
            ) -> Result<Vec<(chat_domain::UserId, chat_domain::Timestamp)>, $crate::error::StoreError>
            {
                let (inner, node) = (self.inner.clone(), node.to_owned());
                $crate::support::detached(&self.runtime, async move {
                    $write_room!(inner, "", presence_reap(&node, now))
                })
                .await
            }

            async fn presence_of(
                &self,
                users: &[chat_domain::UserId],
                now: chat_domain::Timestamp,
            ) -> Result<Vec<(chat_domain::UserId, chat_domain::Presence)>, $crate::error::StoreError>
            {
                let (inner, users) = (self.inner.clone(), users.to_vec());
                $crate::support::detached(&self.runtime, async move {
                    $read!(inner, presence_of(&users, now))
                })
                .await
            }

            async fn last_seqs(
                &self,
                ids: &[chat_domain::RoomId],
            ) -> Result<Vec<(chat_domain::RoomId, chat_domain::Seq)>, $crate::error::StoreError>
            {
                let (inner, ids) = (self.inner.clone(), ids.to_vec());
                $crate::support::detached(
                    &self.runtime,
                    async move { $read!(inner, last_seqs(&ids)) },
                )
                .await
            }

            async fn room_summary(
                &self,
                id: &chat_domain::RoomId,
                user: &chat_domain::UserId,
            ) -> Result<chat_domain::RoomSummary, $crate::error::StoreError> {
                let (inner, id, user) = (self.inner.clone(), id.clone(), user.clone());
                $crate::support::detached(&self.runtime, async move {
                    $read!(inner, room_summary(&id, &user))
                })
                .await
            }

            async fn close_room(
                &self,
                id: &chat_domain::RoomId,
                now: chat_domain::Timestamp,
            ) -> Result<chat_domain::Room, $crate::error::StoreError> {
                let (inner, id) = (self.inner.clone(), id.clone());
                $crate::support::detached(&self.runtime, async move {
                    $write_room!(inner, id.as_str(), close_room(&id, now))
                })
                .await
            }

            async fn append_batch(
                &self,
                messages: Vec<chat_domain::NewMessage>,
                now: chat_domain::Timestamp,
            ) -> Result<
                Vec<Result<$crate::repository::Appended, $crate::error::StoreError>>,
                $crate::error::StoreError,
            > {
                if messages.is_empty() {
                    return Ok(Vec::new());
                }
                let inner = self.inner.clone();
                $crate::support::detached(&self.runtime, async move {
                    $crate::store_calls::StoreCalls::append_batch(&*inner, messages, now).await
                })
                .await
            }

            async fn history(
                &self,
                room: &chat_domain::RoomId,
                reader: &chat_domain::UserId,
                page: chat_domain::HistoryPage,
            ) -> Result<Vec<chat_domain::Message>, $crate::error::StoreError> {
                let (inner, room, reader) = (self.inner.clone(), room.clone(), reader.clone());
                $crate::support::detached(&self.runtime, async move {
                    $read!(inner, history(&room, &reader, page))
                })
                .await
            }

            async fn mark_seen(
                &self,
                room: &chat_domain::RoomId,
                reader: &chat_domain::UserId,
                up_to: chat_domain::Seq,
                now: chat_domain::Timestamp,
            ) -> Result<chat_domain::SeenOutcome, $crate::error::StoreError> {
                let (inner, room, reader) = (self.inner.clone(), room.clone(), reader.clone());
                $crate::support::detached(&self.runtime, async move {
                    $write_room!(inner, room.as_str(), mark_seen(&room, &reader, up_to, now))
                })
                .await
            }
        }
    };
}

pub(crate) use repository_via_calls;
