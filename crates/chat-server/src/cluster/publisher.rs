//! Tells the other nodes what this node committed: one notice per batch of committed
//! events, published after the commit.
//!
//! It reads the store's event bus like the registry does, takes every event already
//! waiting (a group commit publishes its events together, so they arrive together) and
//! publishes them as one [`Notice`]: consecutive messages of a room become one seq range.
//! Under load, batches grow by themselves; idle, a commit is announced alone, at once.

use std::sync::Arc;

use chat_store::StoreEvent;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::notice::pair;
use super::{Bus, Item, Notice};

/// Events taken into one notice at most.
const MAX_EVENTS_PER_NOTICE: usize = 4096;
/// Items kept while the bus is down; beyond, the oldest go (messages among them are found
/// by the other nodes' sweeps; seen receipts and room events are then lost).
const MAX_PENDING_ITEMS: usize = 100_000;
/// Retry back-off for a failed publish.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// The running publisher. [`Publisher::finish`] announces what is still waiting and stops.
pub struct Publisher {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Publisher {
    /// `ephemeral`: items never stored (typing, presence) that this node's registry hands
    /// over for the other nodes.
    pub fn spawn(
        node: String,
        bus: Arc<dyn Bus>,
        mut events: broadcast::Receiver<Arc<StoreEvent>>,
        mut ephemeral: mpsc::Receiver<Item>,
    ) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            // Items not yet published: a failed publish keeps them and tries again, so a
            // bus that is down (or not up yet at start) delays seen receipts and room events
            // instead of losing them.
            let mut pending: Vec<Item> = Vec::new();
            let mut backoff = RETRY_FIRST;
            let mut stopping = false;
            loop {
                if pending.is_empty() && !stopping {
                    tokio::select! {
                        event = events.recv() => match event {
                            Ok(event) => pending.extend(items(&[event])),
                            Err(broadcast::error::RecvError::Lagged(lost)) => {
                                // The other nodes' sweeps find the messages these notices
                                // would have announced.
                                tracing::warn!(lost, "cluster publisher fell behind the event bus");
                                continue;
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                        Some(item) = ephemeral.recv() => pending.push(item),
                        _ = &mut stopped => stopping = true,
                    }
                }
                while pending.len() < MAX_EVENTS_PER_NOTICE {
                    match ephemeral.try_recv() {
                        Ok(item) => pending.push(item),
                        Err(_) => break,
                    }
                }
                let mut batch = Vec::new();
                while batch.len() < MAX_EVENTS_PER_NOTICE {
                    match events.try_recv() {
                        Ok(event) => batch.push(event),
                        Err(_) => break,
                    }
                }
                pending.extend(items(&batch));
                if pending.len() > MAX_PENDING_ITEMS {
                    let dropped = pending.len() - MAX_PENDING_ITEMS;
                    tracing::warn!(dropped, "cluster bus down too long: oldest notices dropped");
                    pending.drain(..dropped);
                }
                if pending.is_empty() {
                    if stopping {
                        return;
                    }
                    continue;
                }
                let notice = Notice {
                    node: node.clone(),
                    items: std::mem::take(&mut pending),
                };
                match bus.publish(&notice).await {
                    Ok(()) => backoff = RETRY_FIRST,
                    Err(error) => {
                        tracing::warn!(%error, items = notice.items.len(), "notice not published yet; retrying");
                        metrics::counter!(crate::metrics::BUS_PUBLISH_FAILURES).increment(1);
                        pending = notice.items;
                        if stopping {
                            return;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = &mut stopped => stopping = true,
                        }
                        backoff = (backoff * 2).min(RETRY_MAX);
                    }
                }
                if stopping && pending.is_empty() {
                    return;
                }
            }
        });
        Self { stop, task }
    }

    /// Announces the events already committed (the writers have stopped) and stops, within
    /// `grace`.
    pub async fn finish(self, grace: std::time::Duration) {
        let _ = self.stop.send(());
        if tokio::time::timeout(grace, self.task).await.is_err() {
            tracing::warn!("the cluster publisher did not finish in time");
        }
    }
}

/// The items announcing these events, in order; consecutive messages of one room merge into
/// one range.
pub fn items(events: &[Arc<StoreEvent>]) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::new();
    for event in events {
        match event.as_ref() {
            StoreEvent::MessageCommitted { members, message } => {
                let seq = message.seq;
                let merged = items.iter_mut().rev().find_map(|item| match item {
                    Item::Messages {
                        room,
                        last,
                        messages,
                        ..
                    } if *room == message.room_id => Some((last, messages)),
                    _ => None,
                });
                match merged {
                    Some((last, messages)) if last.next() == seq => {
                        *last = seq;
                        messages.push(message.clone());
                    }
                    _ => items.push(Item::Messages {
                        room: message.room_id.clone(),
                        members: pair(members),
                        first: seq,
                        last: seq,
                        messages: vec![message.clone()],
                    }),
                }
            }
            StoreEvent::SeenMarked {
                room_id,
                members,
                reader,
                up_to,
                seen_at,
            } => items.push(Item::Seen {
                room: room_id.clone(),
                members: pair(members),
                reader: reader.clone(),
                up_to: *up_to,
                at: *seen_at,
            }),
            StoreEvent::RoomOpened { room, presence } => items.push(Item::RoomOpened {
                room: room.id.clone(),
                members: pair(&room.members),
                created_at: room.created_at,
                presence: presence.clone(),
            }),
            StoreEvent::DeliveredMarked {
                room_id,
                members,
                reader,
                up_to,
                delivered_at,
            } => items.push(Item::Delivered {
                room: room_id.clone(),
                members: pair(members),
                reader: reader.clone(),
                up_to: *up_to,
                at: *delivered_at,
            }),
            StoreEvent::MessageDeleted {
                room_id,
                members,
                seq,
                deleted_at,
            } => items.push(Item::Deleted {
                room: room_id.clone(),
                members: pair(members),
                seq: *seq,
                at: *deleted_at,
            }),
            StoreEvent::RoomClosed { room } => items.push(Item::RoomClosed {
                room: room.id.clone(),
                members: pair(&room.members),
                created_at: room.created_at,
                closed_at: room.closed_at.unwrap_or(room.created_at),
            }),
        }
    }
    items
}
