DROP TABLE IF EXISTS user_activity;
DROP TABLE IF EXISTS presence_connections;
DROP TABLE IF EXISTS presence_nodes;
ALTER TABLE rooms DROP CONSTRAINT IF EXISTS rooms_watermarks;
ALTER TABLE rooms
    DROP COLUMN IF EXISTS last_activity_at,
    DROP COLUMN IF EXISTS a_seen_up_to,
    DROP COLUMN IF EXISTS b_seen_up_to,
    DROP COLUMN IF EXISTS a_delivered_up_to,
    DROP COLUMN IF EXISTS b_delivered_up_to;
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_tombstone;
-- Tombstones have no body to restore: they are removed on the way down.
DELETE FROM messages WHERE body IS NULL;
ALTER TABLE messages DROP COLUMN IF EXISTS deleted_at;
ALTER TABLE messages ALTER COLUMN body SET NOT NULL;
