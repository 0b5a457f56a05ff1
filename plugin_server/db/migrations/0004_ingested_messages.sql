-- Queue messages whose effects are committed (rows written, or the message dead-lettered), so a
-- message delivered again is skipped instead of stored twice. Written in the same transaction as
-- the message's rows; rows older than a day are pruned. `id`: 16 bytes of SHA-256 of the message.
CREATE TABLE IF NOT EXISTS plugin_server_ingested_message (
    id          bytea PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- Rows arrive in time order: a BRIN index finds the old ones for pruning at almost no write cost.
CREATE INDEX IF NOT EXISTS plugin_server_ingested_message_created_at_idx
    ON plugin_server_ingested_message USING brin (created_at);
