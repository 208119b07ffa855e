-- Protocol 1.1 (issue 13): tombstones, per-member watermarks, room activity, presence.
-- The SQLite migration of the same name makes the same changes; docs/storage.md explains them.

-- Unsend and erasure leave a tombstone: the row stays (seqs stay gapless), its body goes.
ALTER TABLE messages ALTER COLUMN body DROP NOT NULL;
ALTER TABLE messages ADD COLUMN deleted_at BIGINT NULL;
ALTER TABLE messages ADD CONSTRAINT messages_tombstone CHECK ((body IS NULL) = (deleted_at IS NOT NULL));

-- Per member of a room: how far that member has seen and received the other member's
-- messages (0: nothing), so summaries and `delivered` need no scan of messages. `a_*` is
-- member_a's watermark, `b_*` member_b's. And the room's last activity (the newest
-- message's sent_at, else created_at), for the room list's order; written by the same
-- UPDATE that moves last_seq, and not indexed (a user's rooms are few enough to sort).
ALTER TABLE rooms
    ADD COLUMN last_activity_at BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN a_seen_up_to BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN b_seen_up_to BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN a_delivered_up_to BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN b_delivered_up_to BIGINT NOT NULL DEFAULT 0;

UPDATE rooms r SET
    last_activity_at = COALESCE(
        (SELECT m.sent_at FROM messages m WHERE m.room_id = r.id AND m.seq = r.last_seq),
        r.created_at),
    a_seen_up_to = COALESCE((SELECT max(m.seq) FROM messages m
        WHERE m.room_id = r.id AND m.sender_id = r.member_b AND m.seen_at IS NOT NULL), 0),
    b_seen_up_to = COALESCE((SELECT max(m.seq) FROM messages m
        WHERE m.room_id = r.id AND m.sender_id = r.member_a AND m.seen_at IS NOT NULL), 0);
UPDATE rooms SET a_delivered_up_to = a_seen_up_to, b_delivered_up_to = b_seen_up_to;

ALTER TABLE rooms ADD CONSTRAINT rooms_watermarks CHECK (
    a_seen_up_to BETWEEN 0 AND last_seq AND b_seen_up_to BETWEEN 0 AND last_seq
    AND a_delivered_up_to BETWEEN a_seen_up_to AND last_seq
    AND b_delivered_up_to BETWEEN b_seen_up_to AND last_seq);

-- Presence across nodes. Each node beats in presence_nodes; a user is online while a
-- visible connection of theirs is listed under a node whose beat is recent. A node that
-- dies stops beating; the others then remove its rows (docs/cluster.md).
CREATE TABLE presence_nodes (
    node_id      TEXT COLLATE "C" PRIMARY KEY,
    heartbeat_at BIGINT NOT NULL
);

CREATE TABLE presence_connections (
    node_id TEXT COLLATE "C" NOT NULL,
    user_id TEXT COLLATE "C" NOT NULL,
    -- False when every connection of the user on that node hides presence.
    visible BOOLEAN NOT NULL,
    PRIMARY KEY (node_id, user_id)
);
CREATE INDEX presence_connections_user ON presence_connections (user_id);

-- When a user was last seen connected (NULL: hidden, or never).
CREATE TABLE user_activity (
    user_id        TEXT COLLATE "C" PRIMARY KEY,
    last_active_at BIGINT NULL
);
