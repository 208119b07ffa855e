//! matchchat's durable store: one [`Repository`] trait, two Diesel implementations
//! (PostgreSQL through diesel-async + deadpool, and SQLite, the embedded default, through
//! diesel-async's `SyncConnectionWrapper`), and the [`StoreEvent`]s a store publishes after
//! every commit.
//!
//! Fan-out is driven by those events, never by the code path of the writer: a node learns
//! about a committed message the same way whether it wrote it or (later, through PostgreSQL
//! LISTEN/NOTIFY or NATS) another node did. Nothing here knows about HTTP or WebSockets.

pub mod config;
pub mod error;
pub mod events;
pub mod repository;

pub use config::{Backend, StoreConfig};
pub use error::StoreError;
pub use events::{EventBus, StoreEvent};
pub use repository::{Appended, Repository, RoomOpened};
