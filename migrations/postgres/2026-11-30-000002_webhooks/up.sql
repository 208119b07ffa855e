-- Webhooks for unseen messages (issue 12, section 1). The SQLite migration of the same name
-- makes the same tables; docs/host-app.md ("Webhooks") explains what they are for.
-- Nothing here is written on the message path: a background scheduler on each node finds the
-- bursts that became due and fills the outbox, which a sender loop empties.

-- Due-finding: the scheduler reads messages still unseen some seconds after they were sent,
-- by time (a range of this index behind a persisted cursor). Partial, so a message leaves it
-- when it is seen. The one cost it adds to an append: one index entry per message.
CREATE INDEX messages_unseen_by_time ON messages (sent_at) WHERE seen_at IS NULL;

-- Per room and recipient: the newest seq the recipient was notified about. A new burst
-- starts once everything up to it is seen and a newer message stays unseen. Rows whose
-- recipient has nothing unseen left in the room are pruned (no row means 0).
CREATE TABLE webhook_bursts (
    room_id            TEXT COLLATE "C" NOT NULL,
    recipient_id       TEXT COLLATE "C" NOT NULL,
    notified_up_to_seq BIGINT NOT NULL DEFAULT 0,
    notified_at        BIGINT NULL,
    PRIMARY KEY (room_id, recipient_id),
    CONSTRAINT webhook_bursts_seq_not_negative CHECK (notified_up_to_seq >= 0)
);

-- The outbox: one row per delivery until the receiver answered 2xx (then the row is deleted),
-- or it was given up (`failed_at` set; the row stays for GET /api/webhooks/failed). A sender
-- claims a due row by setting `locked_until` (its lease): a node that dies mid-send releases
-- it when the lease ends. The payload is built from these columns at each attempt (the body
-- of the latest message is read then, never copied here).
CREATE TABLE webhook_deliveries (
    delivery_id     TEXT COLLATE "C" PRIMARY KEY,
    room_id         TEXT COLLATE "C" NOT NULL,
    recipient_id    TEXT COLLATE "C" NOT NULL,
    sender_id       TEXT COLLATE "C" NOT NULL,
    unseen_count    BIGINT NOT NULL,
    last_seq        BIGINT NOT NULL,
    last_sent_at    BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    locked_until    BIGINT NULL,
    last_error      TEXT NULL,
    failed_at       BIGINT NULL,
    CONSTRAINT webhook_deliveries_counts CHECK (unseen_count >= 1 AND last_seq >= 1 AND attempts >= 0)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE failed_at IS NULL;
CREATE INDEX webhook_deliveries_failed ON webhook_deliveries (failed_at) WHERE failed_at IS NOT NULL;

-- How far (in sent_at) the schedulers have looked for due bursts; one row, shared by the nodes.
CREATE TABLE webhook_scan (
    id            INTEGER PRIMARY KEY,
    scanned_up_to BIGINT NOT NULL,
    CONSTRAINT webhook_scan_one_row CHECK (id = 1)
);
