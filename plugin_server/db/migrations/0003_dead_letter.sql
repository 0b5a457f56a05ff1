-- Events and queue messages this service could not ingest, with the reason (one row each).
CREATE TABLE IF NOT EXISTS plugin_server_dead_letter (
    id          bigserial PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    stage       text NOT NULL,          -- where it failed, e.g. celery_parse, plugin_server_ingest_event
    error       text NOT NULL,          -- the reason, as logged
    team_id     integer NULL,           -- when known
    event       jsonb NULL,             -- the assembled event, when there was one and it is storable
    raw         bytea NULL              -- the message exactly as taken off the queue
);
CREATE INDEX IF NOT EXISTS plugin_server_dead_letter_created_at_idx ON plugin_server_dead_letter (created_at);
CREATE INDEX IF NOT EXISTS plugin_server_dead_letter_team_id_idx ON plugin_server_dead_letter (team_id, created_at);
