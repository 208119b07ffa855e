-- Protocol 1.1 (issue 13): tombstones, per-member watermarks, room activity, presence.
-- The PostgreSQL migration of the same name makes the same changes; docs/storage.md
-- explains them. SQLite cannot drop NOT NULL from a column, so `messages` is rebuilt.

CREATE TABLE messages_v2 (
    room_id       TEXT NOT NULL REFERENCES rooms (id),
    seq           INTEGER NOT NULL,
    sender_id     TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    -- NULL once deleted (unsend, moderation, erasure): the row stays as a tombstone.
    body          TEXT NULL,
    sent_at       INTEGER NOT NULL,
    seen_at       INTEGER NULL,
    deleted_at    INTEGER NULL,
    PRIMARY KEY (room_id, seq),
    CONSTRAINT messages_dedupe UNIQUE (room_id, sender_id, client_msg_id),
    CONSTRAINT messages_seq_positive CHECK (seq >= 1),
    CONSTRAINT messages_body_length CHECK (length(body) BETWEEN 1 AND 160),
    CONSTRAINT messages_seen_after_sent CHECK (seen_at IS NULL OR seen_at >= sent_at),
    CONSTRAINT messages_tombstone CHECK ((body IS NULL) = (deleted_at IS NOT NULL))
) STRICT, WITHOUT ROWID;

INSERT INTO messages_v2 (room_id, seq, sender_id, client_msg_id, body, sent_at, seen_at)
    SELECT room_id, seq, sender_id, client_msg_id, body, sent_at, seen_at FROM messages;
DROP TRIGGER messages_sender_is_member;
DROP TABLE messages;
ALTER TABLE messages_v2 RENAME TO messages;

CREATE INDEX messages_unseen ON messages (room_id, sender_id) WHERE seen_at IS NULL;

CREATE TRIGGER messages_sender_is_member
BEFORE INSERT ON messages
WHEN NOT EXISTS (
    SELECT 1 FROM rooms r
    WHERE r.id = NEW.room_id
      AND NEW.sender_id IN (r.member_a, r.member_b)
      AND r.closed_at IS NULL
)
BEGIN
    SELECT RAISE(ABORT, 'message sender is not a member of its room, or the room is closed');
END;

-- Per member: how far they have seen and received the other member's messages; and the
-- room's last activity (newest message's sent_at, else created_at). See the PostgreSQL file.
ALTER TABLE rooms ADD COLUMN last_activity_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN a_seen_up_to INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN b_seen_up_to INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN a_delivered_up_to INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN b_delivered_up_to INTEGER NOT NULL DEFAULT 0;

UPDATE rooms SET
    last_activity_at = COALESCE(
        (SELECT m.sent_at FROM messages m WHERE m.room_id = rooms.id AND m.seq = rooms.last_seq),
        rooms.created_at),
    a_seen_up_to = COALESCE((SELECT max(m.seq) FROM messages m
        WHERE m.room_id = rooms.id AND m.sender_id = rooms.member_b AND m.seen_at IS NOT NULL), 0),
    b_seen_up_to = COALESCE((SELECT max(m.seq) FROM messages m
        WHERE m.room_id = rooms.id AND m.sender_id = rooms.member_a AND m.seen_at IS NOT NULL), 0);
UPDATE rooms SET a_delivered_up_to = a_seen_up_to, b_delivered_up_to = b_seen_up_to;

CREATE TABLE presence_nodes (
    node_id      TEXT NOT NULL PRIMARY KEY,
    heartbeat_at INTEGER NOT NULL
) STRICT;

CREATE TABLE presence_connections (
    node_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    visible INTEGER NOT NULL,
    PRIMARY KEY (node_id, user_id)
) STRICT;
CREATE INDEX presence_connections_user ON presence_connections (user_id);

CREATE TABLE user_activity (
    user_id        TEXT NOT NULL PRIMARY KEY,
    last_active_at INTEGER NULL
) STRICT;
