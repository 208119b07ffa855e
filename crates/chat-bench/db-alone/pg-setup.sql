-- Rooms pgb-1 .. pgb-:rooms for pg-append.sql / pg-history.sql (run after the migration).
--   psql -v rooms=500 -f pg-setup.sql
INSERT INTO rooms (id, member_a, member_b, created_at)
SELECT 'pgb-' || g, 'pgb-' || g || '-a', 'pgb-' || g || '-b', 0 FROM generate_series(1, :rooms) g;
