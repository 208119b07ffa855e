-- matchchat's storage schema (SQLite). The PostgreSQL migration of the same name creates the
-- same tables; docs/storage.md explains how each domain rule is enforced.
--
-- Times are 64-bit INTEGER unix microseconds (chat_domain::Timestamp); Diesel reads them as
-- BigInt, like PostgreSQL's BIGINT, so one schema.rs serves both backends. Tables are STRICT
-- (a value of the wrong type is refused, not coerced). Text compares byte-wise (BINARY), as
-- Rust orders strings. Connections run with foreign_keys=ON (set on every connection).

CREATE TABLE rooms (
    id         TEXT NOT NULL PRIMARY KEY,
    member_a   TEXT NOT NULL,
    member_b   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    closed_at  INTEGER NULL,
    -- The seq of the newest message; 0 while there is none.
    last_seq   INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT rooms_members_canonical CHECK (member_a < member_b),
    CONSTRAINT rooms_last_seq_not_negative CHECK (last_seq >= 0)
) STRICT;

-- At most one open room per pair; closed rooms keep their history beside a new open one.
CREATE UNIQUE INDEX rooms_one_open_per_pair ON rooms (member_a, member_b) WHERE closed_at IS NULL;
-- Listing a user's rooms looks the user up in either member column.
CREATE INDEX rooms_member_a ON rooms (member_a);
CREATE INDEX rooms_member_b ON rooms (member_b);

-- WITHOUT ROWID: rows are stored in primary key order, so a room's history is contiguous.
CREATE TABLE messages (
    room_id       TEXT NOT NULL REFERENCES rooms (id),
    seq           INTEGER NOT NULL,
    sender_id     TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    body          TEXT NOT NULL,
    sent_at       INTEGER NOT NULL,
    seen_at       INTEGER NULL,
    PRIMARY KEY (room_id, seq),
    -- A retried send (same room, sender and client_msg_id) is the same message.
    CONSTRAINT messages_dedupe UNIQUE (room_id, sender_id, client_msg_id),
    CONSTRAINT messages_seq_positive CHECK (seq >= 1),
    -- 1..=160 Unicode code points (length() of a TEXT value counts characters, not bytes).
    CONSTRAINT messages_body_length CHECK (length(body) BETWEEN 1 AND 160),
    CONSTRAINT messages_seen_after_sent CHECK (seen_at IS NULL OR seen_at >= sent_at)
) STRICT, WITHOUT ROWID;

-- Unread counts: the other member's messages not seen yet.
CREATE INDEX messages_unseen ON messages (room_id, sender_id) WHERE seen_at IS NULL;

-- The sender of a message is a member of its room, and the room is open when the message is
-- inserted. The store checks both inside its write transaction before inserting; this
-- trigger is the database's own guard against any other writer.
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
