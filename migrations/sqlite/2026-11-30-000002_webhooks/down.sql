DROP TABLE webhook_scan;
DROP TABLE webhook_deliveries;
DROP TABLE webhook_bursts;
DROP INDEX messages_unseen_by_time;
