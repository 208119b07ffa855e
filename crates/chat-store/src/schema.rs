//! The tables, as Diesel sees them. One definition serves both backends: ids and bodies are
//! TEXT, times and seqs 64-bit integers (BIGINT in PostgreSQL, INTEGER in SQLite).
//! The migrations in `migrations/{postgres,sqlite}` create them.

diesel::table! {
    rooms (id) {
        id -> Text,
        member_a -> Text,
        member_b -> Text,
        created_at -> BigInt,
        closed_at -> Nullable<BigInt>,
        last_seq -> BigInt,
    }
}

diesel::table! {
    messages (room_id, seq) {
        room_id -> Text,
        seq -> BigInt,
        sender_id -> Text,
        client_msg_id -> Text,
        body -> Text,
        sent_at -> BigInt,
        seen_at -> Nullable<BigInt>,
    }
}

diesel::joinable!(messages -> rooms (room_id));
diesel::allow_tables_to_appear_in_same_query!(rooms, messages);
