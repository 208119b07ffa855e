-- matchchat's storage schema (PostgreSQL). The SQLite migration of the same name creates the
-- same tables; docs/storage.md explains how each domain rule is enforced.
--
-- Times are BIGINT unix microseconds (chat_domain::Timestamp), the same in both backends.
-- Ids compare byte-wise (COLLATE "C"), as Rust orders strings, whatever the database locale:
-- the canonical member order (member_a < member_b) and the room lock order both rely on it.

CREATE TABLE rooms (
    id         TEXT COLLATE "C" PRIMARY KEY,
    member_a   TEXT COLLATE "C" NOT NULL,
    member_b   TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    closed_at  BIGINT NULL,
    -- The seq of the newest message; 0 while there is none. Appends lock this row.
    last_seq   BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT rooms_members_canonical CHECK (member_a < member_b),
    CONSTRAINT rooms_last_seq_not_negative CHECK (last_seq >= 0)
);

-- At most one open room per pair; closed rooms keep their history beside a new open one.
CREATE UNIQUE INDEX rooms_one_open_per_pair ON rooms (member_a, member_b) WHERE closed_at IS NULL;
-- Listing a user's rooms looks the user up in either member column.
CREATE INDEX rooms_member_a ON rooms (member_a);
CREATE INDEX rooms_member_b ON rooms (member_b);

CREATE TABLE messages (
    room_id       TEXT COLLATE "C" NOT NULL REFERENCES rooms (id),
    seq           BIGINT NOT NULL,
    sender_id     TEXT COLLATE "C" NOT NULL,
    client_msg_id TEXT COLLATE "C" NOT NULL,
    body          TEXT NOT NULL,
    sent_at       BIGINT NOT NULL,
    seen_at       BIGINT NULL,
    CONSTRAINT messages_pkey PRIMARY KEY (room_id, seq),
    -- A retried send (same room, sender and client_msg_id) is the same message.
    CONSTRAINT messages_dedupe UNIQUE (room_id, sender_id, client_msg_id),
    CONSTRAINT messages_seq_positive CHECK (seq >= 1),
    -- 1..=160 Unicode code points (char_length counts characters, not bytes, in UTF8).
    CONSTRAINT messages_body_length CHECK (char_length(body) BETWEEN 1 AND 160),
    CONSTRAINT messages_seen_after_sent CHECK (seen_at IS NULL OR seen_at >= sent_at)
);

-- Unread counts: the other member's messages not seen yet.
CREATE INDEX messages_unseen ON messages (room_id, sender_id) WHERE seen_at IS NULL;

-- The sender of a message is a member of its room, and the room is open when the message is
-- inserted. The store checks both (under the room's row lock) before inserting; this
-- statement-level trigger is the database's own guard against any other writer. It runs once
-- per INSERT statement over the inserted rows, so batched inserts pay for it once.
CREATE FUNCTION messages_check_sender() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1
        FROM new_messages n
        LEFT JOIN rooms r ON r.id = n.room_id
        WHERE r.id IS NULL
           OR n.sender_id NOT IN (r.member_a, r.member_b)
           OR r.closed_at IS NOT NULL
    ) THEN
        RAISE EXCEPTION 'message sender is not a member of its room, or the room is closed'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER messages_sender_is_member
    AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_messages
    FOR EACH STATEMENT
    EXECUTE FUNCTION messages_check_sender();
