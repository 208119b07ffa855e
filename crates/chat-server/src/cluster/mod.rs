//! Fan-out across nodes: several chat-server processes on one PostgreSQL.
//!
//! The database is the truth; the bus is only the fast path. After a commit, the node that
//! committed publishes a [`Notice`] (routing data: which rooms, which members, which seqs; not
//! the messages) on the cluster bus, one per batch of committed events. Every other node
//! receives it; a node with no member of a room online skips it, a node with one reads the
//! messages from the database by the room's gapless seq and hands them to its registry in
//! seq order (`registry.rs`). A lost or late notice only delays: the next notice of the room,
//! or the node's periodic sweep of the rooms it serves, finds the gap and fills it from the
//! database. Catch-up never goes by a global id (those do not follow commit order).
//!
//! Engines, behind the one [`Bus`] seam (`CHAT_BUS`):
//! - `local` (default): one node; nothing is published.
//! - `postgres`: `NOTIFY` in its own short transaction after the batch committed, `LISTEN` on
//!   a dedicated connection that reconnects by itself (`postgres.rs`).
//! - `nats`: core NATS publish/subscribe through `async-nats` (`nats.rs`).
//!
//! The seam also carries events that are never stored ([`Item::Ephemeral`]: typing and
//! presence of protocol 1.1), so they reach every node the same way.

pub mod nats;
pub mod notice;
pub mod postgres;
pub mod publisher;
pub mod sequencer;
#[cfg(test)]
mod test_support;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use notice::{Item, Notice};

/// Which engine carries notices between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BusKind {
    /// One node: nothing leaves the process.
    Local,
    /// PostgreSQL LISTEN/NOTIFY on the database in `DATABASE_URL`.
    Postgres,
    /// Core NATS at `CHAT_NATS_URL`.
    Nats,
}

/// What an engine hands the node.
#[derive(Debug)]
pub enum Incoming {
    /// A notice from another node (the engine drops the node's own).
    Notice(Notice),
    /// The engine (re)connected: notices may have been lost meanwhile, so the node sweeps
    /// its rooms at once instead of waiting for the next periodic sweep.
    Reconnected,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cluster bus unavailable: {0}")]
    Unavailable(String),
    #[error("cluster bus misconfigured: {0}")]
    Config(String),
}

/// Publishes this node's notices. Engines reconnect by themselves; a publish while
/// disconnected fails, and the receivers' sweep recovers what it carried.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes one notice, split into several messages if the engine limits their size.
    async fn publish(&self, notice: &Notice) -> Result<(), BusError>;
}

/// A running engine: its publisher and the notices of the other nodes.
pub struct Engine {
    pub bus: Arc<dyn Bus>,
    pub incoming: mpsc::Receiver<Incoming>,
}

/// Starts the engine `kind` names on `core` (its connections belong to that runtime), or
/// nothing for a single node. `node` is this process's id in notices.
pub async fn start(
    kind: BusKind,
    database_url: &str,
    nats_url: &str,
    nats_subject: Option<&str>,
    node: String,
    core: &tokio::runtime::Handle,
) -> Result<Option<Engine>, BusError> {
    let joined = match kind {
        BusKind::Local => return Ok(None),
        BusKind::Postgres => {
            let url = database_url.to_owned();
            core.spawn(async move { postgres::start(&url, node).await })
                .await
        }
        BusKind::Nats => {
            let url = nats_url.to_owned();
            let subject = nats::subject_for(database_url, nats_subject);
            tracing::info!(subject, "NATS subject of this cluster");
            core.spawn(async move { nats::start(&url, subject, node).await })
                .await
        }
    };
    joined
        .map_err(|e| BusError::Unavailable(format!("starting the bus was cancelled: {e}")))?
        .map(Some)
}
