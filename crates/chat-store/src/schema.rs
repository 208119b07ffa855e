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
        last_activity_at -> BigInt,
        a_seen_up_to -> BigInt,
        b_seen_up_to -> BigInt,
        a_delivered_up_to -> BigInt,
        b_delivered_up_to -> BigInt,
    }
}

diesel::table! {
    messages (room_id, seq) {
        room_id -> Text,
        seq -> BigInt,
        sender_id -> Text,
        client_msg_id -> Text,
        body -> Nullable<Text>,
        sent_at -> BigInt,
        seen_at -> Nullable<BigInt>,
        deleted_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    presence_nodes (node_id) {
        node_id -> Text,
        heartbeat_at -> BigInt,
    }
}

diesel::table! {
    presence_connections (node_id, user_id) {
        node_id -> Text,
        user_id -> Text,
        visible -> Bool,
    }
}

diesel::table! {
    user_activity (user_id) {
        user_id -> Text,
        last_active_at -> Nullable<BigInt>,
    }
}

diesel::joinable!(presence_connections -> presence_nodes (node_id));

diesel::joinable!(messages -> rooms (room_id));
diesel::allow_tables_to_appear_in_same_query!(
    rooms,
    messages,
    presence_nodes,
    presence_connections,
    user_activity
);
