DROP TRIGGER IF EXISTS messages_sender_is_member ON messages;
DROP FUNCTION IF EXISTS messages_check_sender();
DROP TABLE IF EXISTS messages;
DROP TABLE IF EXISTS rooms;
