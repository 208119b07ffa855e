//! The store of webhooks on SQLite: the chat's own [`SqliteStore`], its pool and its one
//! writer queue. SQLite has one writer at a time: a second pool's writes would fight the
//! group-commit writer in SQLite's busy handler (measured: under a 18,000 msg/s load, burst
//! transactions waited seconds, and each one that won made the writer sleep in the handler).
//! Queued on the store's own write mutex instead, a webhook write waits for at most the batch
//! being committed, and the writer for at most one short webhook transaction.

use crate::sqlite::SqliteStore;
use crate::webhooks::statements;
use crate::webhooks::via::webhook_store_via;

/// Runs a statement on a pooled connection, in parallel with the writer (WAL).
macro_rules! sqlite_read {
    ($inner:expr, $statement:ident($($arg:expr),*)) => {
        $inner
            .read(move |c| statements::sqlite::$statement(c, $($arg),*))
            .await
    };
}

/// Runs a statement as this process's one writer, in a `BEGIN IMMEDIATE` transaction (it
/// publishes no event).
macro_rules! sqlite_write {
    ($inner:expr, $statement:ident($($arg:expr),*)) => {
        $inner
            .write(move |c| {
                statements::sqlite::$statement(c, $($arg),*)
                    .map(|value| (value, None::<$crate::events::StoreEvent>))
            })
            .await
    };
}

webhook_store_via!(SqliteStore, read: sqlite_read, write: sqlite_write);
