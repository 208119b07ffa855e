-- pgbench custom script: the latest page (300 messages) of a random room, the query
-- chat-store's PostgreSQL history runs (membership check, then the page).
--   pgbench -n -M prepared -f pg-history.sql -D rooms=500 -c 2 -j 2 -T 10 -R 200 --latency-limit 5
\set n random(1, :rooms)
SELECT member_a, member_b FROM rooms WHERE id = 'pgb-' || :n;
SELECT room_id, seq, sender_id, client_msg_id, body, sent_at, seen_at FROM messages WHERE room_id = 'pgb-' || :n ORDER BY seq DESC LIMIT 300;
