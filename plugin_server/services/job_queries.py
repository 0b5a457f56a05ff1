"""SQL the job queue runs against the graphile_worker schema; `{schema}` is the quoted schema."""

ADD_JOB = """
SELECT id FROM {schema}.add_job(
    identifier => 'pluginJob',
    payload => ($1::text)::json,
    run_at => to_timestamp($2::double precision / 1000),
    max_attempts => $3::int
)
"""

GET_JOB = """
SELECT id, payload::text AS payload, attempts, max_attempts
FROM {schema}.get_job($1, ARRAY['pluginJob'], $2::interval)
WHERE id IS NOT NULL
"""

COMPLETE_JOB = "SELECT id FROM {schema}.complete_job($1, $2)"

FAIL_JOB = "SELECT attempts, max_attempts, run_at FROM {schema}.fail_job($1, $2, $3)"

# A job that can never run (unreadable payload) stays in the table for inspection, without retries.
GIVE_UP_JOB = """
UPDATE {schema}.jobs
SET attempts = max_attempts, last_error = $2, locked_at = NULL, locked_by = NULL
WHERE id = $1
"""

NEXT_RUN_AT = """
SELECT extract(epoch FROM min(run_at) - now())::float8 AS seconds
FROM {schema}.jobs
WHERE task_identifier = 'pluginJob' AND locked_at IS NULL AND attempts < max_attempts
"""

# Only the lock holder consumes, so jobs another holder had taken when it died are free again.
UNLOCK_ABANDONED = """
UPDATE {schema}.jobs SET locked_at = NULL, locked_by = NULL
WHERE task_identifier = 'pluginJob' AND locked_by IS NOT NULL AND NOT (locked_by = ANY($1::text[]))
"""

SCHEMA_VERSION = "SELECT max(id) FROM {schema}.migrations"
