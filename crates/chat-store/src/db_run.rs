//! `db_run!`: one statement body, expanded once per connection type (in the spirit of
//! Vaultwarden's macro of the same name).
//!
//! The two backends speak Diesel through different connections: PostgreSQL through
//! diesel-async's `AsyncPgConnection` (every statement is awaited), SQLite through Diesel's
//! synchronous `SqliteConnection`, run on Tokio's blocking pool. A query *expression* can be
//! shared as a plain function (see [`crate::queries`]); a *statement* cannot, because running it
//! is `.await`ed on one connection and not on the other, and the update statements' types
//! (`UPDATE ... RETURNING`) are beyond `#[auto_type]`. So the statement bodies are written once
//! and the macro expands them twice:
//!
//! ```text
//! db_run! {
//!     /// The room with this id.
//!     fn find_room(conn, id: &str) -> Result<RoomRow, TxError> {
//!         run!(queries::room_by_id(id).select(RoomRow::as_select()).first(conn))
//!             .optional()?
//!             .ok_or(TxError::Store(StoreError::UnknownRoom))
//!     }
//! }
//! ```
//!
//! makes `pg::find_room(&mut AsyncPgConnection, &str)` (an `async fn`) and
//! `sqlite::find_room(&mut SqliteConnection, &str)` (a plain `fn`). Inside a body, `run!(e)`
//! finishes a statement (`e.await` on PostgreSQL, `e` on SQLite), and a call to another
//! statement of the same `db_run!` block reaches the same backend's expansion (wrap it in
//! `run!` too). Each expansion has its backend's `RunQueryDsl` in scope, and everything the
//! surrounding module imports.

macro_rules! db_run {
    ($(
        $(#[$attr:meta])*
        fn $name:ident($conn:ident $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty $body:block
    )*) => {
        /// The statements on PostgreSQL (diesel-async): each one an `async fn`.
        pub(crate) mod pg {
            #[allow(unused_imports)]
            use super::*;
            use diesel_async::RunQueryDsl;

            macro_rules! run {
                ($e:expr) => {
                    $e.await
                };
            }

            $(
                $(#[$attr])*
                pub(crate) async fn $name(
                    $conn: &mut diesel_async::AsyncPgConnection,
                    $($arg: $ty),*
                ) -> $ret $body
            )*
        }

        /// The statements on SQLite (Diesel's synchronous connection, on the blocking pool).
        pub(crate) mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            use diesel::RunQueryDsl;

            macro_rules! run {
                ($e:expr) => {
                    $e
                };
            }

            $(
                $(#[$attr])*
                pub(crate) fn $name(
                    $conn: &mut diesel::SqliteConnection,
                    $($arg: $ty),*
                ) -> $ret $body
            )*
        }
    };
}

pub(crate) use db_run;
