-- Webhooks for unseen messages (issue 12, section 1). The PostgreSQL migration of the same
-- name makes the same tables and explains each one.

-- With sender_id, seen_at (NULL in every entry; SQLite counts the column as used) and the
-- primary key's room_id (which every index entry of a WITHOUT ROWID table holds), the scan
-- reads the index alone: half the time of reading the table too, measured on 40,000 rows.
CREATE INDEX messages_unseen_by_time ON messages (sent_at, sender_id, seen_at) WHERE seen_at IS NULL;

CREATE TABLE webhook_bursts (
    room_id            TEXT NOT NULL,
    recipient_id       TEXT NOT NULL,
    notified_up_to_seq INTEGER NOT NULL DEFAULT 0,
    notified_at        INTEGER NULL,
    PRIMARY KEY (room_id, recipient_id),
    CONSTRAINT webhook_bursts_seq_not_negative CHECK (notified_up_to_seq >= 0)
) STRICT, WITHOUT ROWID;

CREATE TABLE webhook_deliveries (
    delivery_id     TEXT NOT NULL PRIMARY KEY,
    room_id         TEXT NOT NULL,
    recipient_id    TEXT NOT NULL,
    sender_id       TEXT NOT NULL,
    unseen_count    INTEGER NOT NULL,
    last_seq        INTEGER NOT NULL,
    last_sent_at    INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    locked_until    INTEGER NULL,
    last_error      TEXT NULL,
    failed_at       INTEGER NULL,
    CONSTRAINT webhook_deliveries_counts CHECK (unseen_count >= 1 AND last_seq >= 1 AND attempts >= 0)
) STRICT;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE failed_at IS NULL;
CREATE INDEX webhook_deliveries_failed ON webhook_deliveries (failed_at) WHERE failed_at IS NOT NULL;

CREATE TABLE webhook_scan (
    id            INTEGER NOT NULL PRIMARY KEY,
    scanned_up_to INTEGER NOT NULL,
    CONSTRAINT webhook_scan_one_row CHECK (id = 1)
) STRICT;
