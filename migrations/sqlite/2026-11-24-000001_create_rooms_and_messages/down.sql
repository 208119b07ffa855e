DROP TRIGGER IF EXISTS messages_sender_is_member;
DROP TABLE IF EXISTS messages;
DROP TABLE IF EXISTS rooms;
