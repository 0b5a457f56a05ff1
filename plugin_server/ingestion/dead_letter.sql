-- $6: the message's id when it is remembered as committed (then a second record of the same
-- message is skipped), or NULL.
WITH fresh AS (
    INSERT INTO plugin_server_ingested_message (id) SELECT $6::bytea WHERE $6::bytea IS NOT NULL
    ON CONFLICT DO NOTHING RETURNING id
)
INSERT INTO plugin_server_dead_letter (stage, error, team_id, event, raw)
SELECT $1, $2, $3, $4::text::jsonb, $5
WHERE $6::bytea IS NULL OR EXISTS (SELECT 1 FROM fresh)
