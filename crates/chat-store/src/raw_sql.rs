//! The column lists of the hand-written SQL (`diesel::sql_query`), in one place.
//!
//! The append path writes a few statements by hand because Diesel's DSL cannot express them
//! (PostgreSQL's `unnest` joins, SQLite's row-value `IN (VALUES ...)` and multi-row INSERTs
//! with bind lists built per batch). Diesel cannot type-check those strings, so the column
//! lists they name are spelled here once, next to a test that holds them to `schema.rs`.
//! They are macros, not constants, so each backend can `concat!` them into its `&'static`
//! statements.

/// Every column of `messages`, in the order of `MessageRow` (read by name through
/// `QueryableByName`): what a hand-written SELECT of stored messages returns.
macro_rules! message_columns {
    () => {
        "room_id, seq, sender_id, client_msg_id, body, sent_at, seen_at, deleted_at"
    };
}

/// The columns a new message is inserted with (`NewMessageRow`: `seen_at` is left out, a new
/// message is never seen).
macro_rules! new_message_columns {
    () => {
        "room_id, seq, sender_id, client_msg_id, body, sent_at"
    };
}

pub(crate) use {message_columns, new_message_columns};

#[cfg(test)]
mod tests {
    use diesel::Column;

    use crate::schema::messages;

    #[test]
    fn column_lists_match_the_schema() {
        let all = [
            messages::room_id::NAME,
            messages::seq::NAME,
            messages::sender_id::NAME,
            messages::client_msg_id::NAME,
            messages::body::NAME,
            messages::sent_at::NAME,
            messages::seen_at::NAME,
            messages::deleted_at::NAME,
        ];
        assert_eq!(message_columns!(), all.join(", "));
        assert_eq!(new_message_columns!(), all[..6].join(", "));
    }
}
