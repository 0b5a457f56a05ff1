INSERT INTO plugin_server_dead_letter (stage, error, team_id, event, raw)
VALUES ($1, $2, $3, $4::text::jsonb, $5)
