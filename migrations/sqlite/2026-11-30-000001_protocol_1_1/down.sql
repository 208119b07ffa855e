DROP TABLE IF EXISTS user_activity;
DROP TABLE IF EXISTS presence_connections;
DROP TABLE IF EXISTS presence_nodes;
ALTER TABLE rooms DROP COLUMN last_activity_at;
ALTER TABLE rooms DROP COLUMN a_seen_up_to;
ALTER TABLE rooms DROP COLUMN b_seen_up_to;
ALTER TABLE rooms DROP COLUMN a_delivered_up_to;
ALTER TABLE rooms DROP COLUMN b_delivered_up_to;
-- Tombstones have no body to restore: they are removed on the way down.
DELETE FROM messages WHERE body IS NULL;
ALTER TABLE messages DROP COLUMN deleted_at;
