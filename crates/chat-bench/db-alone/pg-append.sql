-- pgbench custom script: one group commit of :rooms_b x :per_room messages (:per_room to each
-- of :rooms_b rooms), with the statements chat-store's PostgreSQL append_batch runs per batch:
-- lock the batch's rooms in id order, look the batch's dedupe keys up, insert the rows (one
-- statement; the sender-is-member trigger runs once per statement), move last_seq. Each
-- pgbench client owns :per_client rooms, as each server writer owns its share of rooms, so
-- clients never wait on each other's row locks. Messages/s = tps x :rooms_b x :per_room.
--   pgbench -n -M prepared -f pg-append.sql -D rooms_b=125 -D per_room=2 -D per_client=125 -c 4 -j 2 -T 20
\set start :client_id * :per_client + random(0, :per_client - :rooms_b)
\set u random(1, 1000000000000000)
\set first :start + 1
\set last :start + :rooms_b
BEGIN;
SELECT id, member_a, member_b, closed_at, last_seq FROM rooms WHERE id = ANY (ARRAY(SELECT 'pgb-' || g FROM generate_series(:first::int, :last::int) g)) ORDER BY id FOR UPDATE;
SELECT m.room_id, m.seq FROM unnest(ARRAY(SELECT 'pgb-' || g FROM generate_series(:first::int, :last::int) g, generate_series(1, :per_room::int) k), ARRAY(SELECT 'pgb-' || g || '-a' FROM generate_series(:first::int, :last::int) g, generate_series(1, :per_room::int) k), ARRAY(SELECT 'c' || :u::bigint || '-' || g || '-' || k FROM generate_series(:first::int, :last::int) g, generate_series(1, :per_room::int) k)) AS k(room_id, sender_id, client_msg_id) JOIN messages m ON m.room_id = k.room_id AND m.sender_id = k.sender_id AND m.client_msg_id = k.client_msg_id;
INSERT INTO messages (room_id, seq, sender_id, client_msg_id, body, sent_at) SELECT r.id, r.last_seq + k, r.member_a, 'c' || :u::bigint || '-' || r.id || '-' || k, repeat('matchchat bench ', 4), 1790000000000000 FROM rooms r, generate_series(1, :per_room::int) k WHERE r.id = ANY (ARRAY(SELECT 'pgb-' || g FROM generate_series(:first::int, :last::int) g));
UPDATE rooms SET last_seq = last_seq + :per_room::int WHERE id = ANY (ARRAY(SELECT 'pgb-' || g FROM generate_series(:first::int, :last::int) g));
END;
