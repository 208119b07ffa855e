//! Presence of matches (protocol 1.1): who is online, across every node.
//!
//! The registry reports each change of a user's presence on this node (first connection,
//! last connection gone, visibility changed); this task records it in the database
//! (`presence_connections`, `user_activity`), so every node answers `peer` in room summaries
//! the same way, and announces the transitions to the users who share an open room with that
//! user, as ephemeral `presence` frames through the registry (which carries them to the other
//! nodes too).
//!
//! Why the database and not the bus alone: a node that starts, or a summary built for a
//! `ready`, must know the presence of users connected elsewhere, and `last_active_at` must
//! survive restarts. The bus only carries the live frames.
//!
//! - No flapping: the last connection's close starts a grace of [`OFFLINE_GRACE`] (5 s);
//!   a reconnect within it, here or on another node, changes nothing and sends nothing.
//!   The offline frame follows within the grace plus one tick ([`GRACE_TICK`]).
//! - A dead node: each node beats every [`NODE_HEARTBEAT`]; a node silent for
//!   [`NODE_STALE`] is reaped by whichever node gets there first, and its users who are not
//!   online elsewhere are announced offline: within 5 + 15 + 5 s, under the 30 s promised.
//! - Hiding: a user whose connections all come from tokens with `"presence": false` is
//!   recorded as hidden; they appear offline with `last_active_at: null`.
//!
//! Cost, per connection that changes a user's presence: one write transaction (two or three
//! statements), one read of the user's open peers when a frame is sent. Connections that do
//! not change it (a second tab) cost nothing here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chat_domain::presence::{NODE_HEARTBEAT, NODE_STALE, OFFLINE_GRACE};
use chat_domain::protocol::ServerFrame;
use chat_domain::{Clock, Presence, RoomSummary, Timestamp, UserId};
use chat_store::Repository;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::registry::RegistryHandle;

/// How often pending offline transitions are checked.
pub const GRACE_TICK: Duration = Duration::from_millis(250);

/// What this node last recorded for a user with connections here.
struct Local {
    visible: bool,
    /// Set while the user has no connection here: when the grace ends.
    offline_at: Option<Instant>,
}

/// Starts the presence task for node `node`, fed by the registry's reports.
pub fn spawn(
    node: String,
    store: Arc<dyn Repository>,
    registry: RegistryHandle,
    clock: Arc<dyn Clock>,
    mut changes: mpsc::UnboundedReceiver<(UserId, Option<bool>)>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let service = Service {
            node,
            store,
            registry,
            clock,
        };
        let mut local: HashMap<UserId, Local> = HashMap::new();
        let mut beat = tokio::time::interval(NODE_HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut grace = tokio::time::interval(GRACE_TICK);
        grace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(
            stale_secs = NODE_STALE.as_secs(),
            "presence service started"
        );
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Some((user, Some(visible))) => service.connected(&mut local, user, visible).await,
                    Some((user, None)) => {
                        if let Some(entry) = local.get_mut(&user) {
                            entry.offline_at = Some(Instant::now() + OFFLINE_GRACE);
                        }
                    }
                    None => break,
                },
                _ = grace.tick() => {
                    let now = Instant::now();
                    let due: Vec<UserId> = local
                        .iter()
                        .filter(|(_, e)| e.offline_at.is_some_and(|at| at <= now))
                        .map(|(u, _)| u.clone())
                        .collect();
                    for user in due {
                        local.remove(&user);
                        service.disconnected(&user).await;
                    }
                }
                _ = beat.tick() => service.beat().await,
            }
        }
    })
}

struct Service {
    node: String,
    store: Arc<dyn Repository>,
    registry: RegistryHandle,
    clock: Arc<dyn Clock>,
}

impl Service {
    /// `user` has connections here, `visible` or all hidden.
    async fn connected(&self, local: &mut HashMap<UserId, Local>, user: UserId, visible: bool) {
        let before = local.get(&user).map(|e| e.visible);
        if let Some(entry) = local.get_mut(&user) {
            // Back within the grace, or another tab: nothing to record unless visibility
            // changed.
            entry.offline_at = None;
            if entry.visible == visible {
                return;
            }
            entry.visible = visible;
        } else {
            local.insert(
                user.clone(),
                Local {
                    visible,
                    offline_at: None,
                },
            );
        }
        let now = self.clock.now();
        let elsewhere = match self
            .store
            .presence_connect(&self.node, &user, visible, now)
            .await
        {
            Ok(elsewhere) => elsewhere,
            Err(error) => {
                tracing::warn!(user = %user, %error, "recording presence failed");
                return;
            }
        };
        if elsewhere {
            return;
        }
        let was_shown = before == Some(true);
        if visible && !was_shown {
            self.announce(
                &user,
                Presence {
                    online: true,
                    last_active_at: Some(now),
                },
            )
            .await;
        } else if !visible && was_shown {
            self.announce(&user, Presence::HIDDEN).await;
        }
    }

    /// The grace after `user`'s last connection here ended without a reconnect.
    async fn disconnected(&self, user: &UserId) {
        let now = self.clock.now();
        match self.store.presence_disconnect(&self.node, user, now).await {
            Ok(true) => {
                self.announce(
                    user,
                    Presence {
                        online: false,
                        last_active_at: Some(now),
                    },
                )
                .await;
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(user = %user, %error, "recording presence failed"),
        }
    }

    /// This node is alive; dead nodes' users go offline.
    async fn beat(&self) {
        let now = self.clock.now();
        if let Err(error) = self.store.presence_beat(&self.node, now).await {
            tracing::warn!(%error, "presence heartbeat failed");
            return;
        }
        match self.store.presence_reap(&self.node, now).await {
            Ok(gone) => {
                if !gone.is_empty() {
                    tracing::info!(
                        users = gone.len(),
                        "a node stopped beating; its users are offline"
                    );
                }
                for (user, at) in gone {
                    self.announce(
                        &user,
                        Presence {
                            online: false,
                            last_active_at: Some(at),
                        },
                    )
                    .await;
                }
            }
            Err(error) => tracing::warn!(%error, "reaping dead nodes failed"),
        }
    }

    /// Sends `user`'s new presence to everyone who shares an open room with them.
    async fn announce(&self, user: &UserId, presence: Presence) {
        let peers = match self.store.open_peers(user).await {
            Ok(peers) => peers,
            Err(error) => {
                tracing::warn!(user = %user, %error, "reading who to tell of a presence change failed");
                return;
            }
        };
        if peers.is_empty() {
            return;
        }
        let frame = ServerFrame::Presence {
            user_id: user.clone(),
            online: presence.online,
            last_active_at: presence.last_active_at,
        };
        self.registry.ephemeral(peers, frame.to_json()).await;
    }
}

/// Fills `peer` in each summary `user` sees, in one read; leaves them as they are when
/// presence is off. A failed read shows the peers offline (logged): presence is a hint, never
/// a reason to refuse a room list.
pub async fn fill_peers(
    store: &dyn Repository,
    user: &UserId,
    rooms: &mut [RoomSummary],
    now: Timestamp,
) {
    let peers: Vec<UserId> = rooms
        .iter()
        .filter_map(|r| r.members.iter().find(|m| *m != user).cloned())
        .collect();
    let known: HashMap<UserId, Presence> = match store.presence_of(&peers, now).await {
        Ok(found) => found.into_iter().collect(),
        Err(error) => {
            tracing::warn!(%error, "reading presence failed; peers shown offline");
            HashMap::new()
        }
    };
    for room in rooms {
        let peer = room.members.iter().find(|m| *m != user);
        room.peer = Some(peer.and_then(|p| known.get(p).copied()).unwrap_or_default());
    }
}
