//! Presence of a match (protocol 1.1): whether the other member of a room is around.
//!
//! A user is online while at least one of their connections is open on any node and was
//! opened with a token that does not hide presence. The timing rules are named here so the
//! server, the docs and tests agree on them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::timestamp::Timestamp;

/// After a user's last connection closes, how long the server waits before calling them
/// offline: a page reload or a network hand-over reconnects within it and does not flap.
pub const OFFLINE_GRACE: Duration = Duration::from_secs(5);

/// How often a node records that it is alive.
pub const NODE_HEARTBEAT: Duration = Duration::from_secs(5);

/// A node whose last heartbeat is older than this is dead: its users' connections no longer
/// count, and another node announces them offline. Heartbeat 5 s + stale 15 s + one reaper
/// round (5 s) keeps "a node that dies turns its users offline within 30 s".
pub const NODE_STALE: Duration = Duration::from_secs(15);

/// A user's presence as another user sees it (`peer` in room summaries, `presence` frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Presence {
    pub online: bool,
    /// Online: when they came online. Offline: when their last connection closed. Null when
    /// never seen, or when the user hides presence.
    pub last_active_at: Option<Timestamp>,
}

impl Presence {
    /// How a user who hides presence appears: offline, never active.
    pub const HIDDEN: Self = Self {
        online: false,
        last_active_at: None,
    };
}
