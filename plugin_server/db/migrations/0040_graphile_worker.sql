-- The job queue schema (services §5.3.2): the objects graphile-worker 0.11.1 has after its
-- migrations 1-8, with the same names, columns and function signatures and behaviour, so that
-- queued jobs survive switching between this server and the Node one. A schema that is
-- already at migration 8 is left alone; one part-way through is refused.
CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA public;
CREATE SCHEMA IF NOT EXISTS {graphile_schema};
CREATE TABLE IF NOT EXISTS {graphile_schema}.migrations (
    id int PRIMARY KEY,
    ts timestamptz DEFAULT now() NOT NULL
);

DO $install$
DECLARE
    v_latest int;
BEGIN
    SELECT max(id) INTO v_latest FROM {graphile_schema}.migrations;
    IF v_latest = 8 THEN
        RETURN;
    ELSIF v_latest IS NOT NULL THEN
        RAISE EXCEPTION 'job queue schema {graphile_schema} is at migration %, expected none or 8', v_latest;
    END IF;

    CREATE TABLE {graphile_schema}.job_queues (
        queue_name text NOT NULL PRIMARY KEY,
        job_count int NOT NULL,
        locked_at timestamptz,
        locked_by text
    );
    ALTER TABLE {graphile_schema}.job_queues ENABLE ROW LEVEL SECURITY;

    CREATE TABLE {graphile_schema}.jobs (
        id bigserial PRIMARY KEY,
        queue_name text DEFAULT (public.gen_random_uuid())::text,
        task_identifier text NOT NULL,
        payload json DEFAULT '{}'::json NOT NULL,
        priority int DEFAULT 0 NOT NULL,
        run_at timestamptz DEFAULT now() NOT NULL,
        attempts int DEFAULT 0 NOT NULL,
        max_attempts int DEFAULT 25 NOT NULL,
        last_error text,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        key text UNIQUE CHECK (length(key) > 0),
        locked_at timestamptz,
        locked_by text,
        revision int DEFAULT 0 NOT NULL,
        flags jsonb DEFAULT NULL
    );
    ALTER TABLE {graphile_schema}.jobs ENABLE ROW LEVEL SECURITY;
    CREATE INDEX jobs_priority_run_at_id_locked_at_without_failures_idx
        ON {graphile_schema}.jobs (priority, run_at, id, locked_at)
        WHERE attempts < max_attempts;

    CREATE TABLE {graphile_schema}.known_crontabs (
        identifier text NOT NULL PRIMARY KEY,
        known_since timestamptz NOT NULL,
        last_execution timestamptz
    );
    ALTER TABLE {graphile_schema}.known_crontabs ENABLE ROW LEVEL SECURITY;

    -- updated_at always moves forward, by at least a millisecond per update
    CREATE FUNCTION {graphile_schema}.tg__update_timestamp() RETURNS trigger AS $fn$
    BEGIN
        NEW.updated_at = greatest(now(), OLD.updated_at + interval '1 millisecond');
        RETURN NEW;
    END;
    $fn$ LANGUAGE plpgsql;
    CREATE TRIGGER _100_timestamps BEFORE UPDATE ON {graphile_schema}.jobs
        FOR EACH ROW EXECUTE PROCEDURE {graphile_schema}.tg__update_timestamp();

    -- job_queues.job_count follows the jobs of each named queue; the row goes at zero
    CREATE FUNCTION {graphile_schema}.jobs__decrease_job_queue_count() RETURNS trigger AS $fn$
    DECLARE
        v_count int;
    BEGIN
        UPDATE {graphile_schema}.job_queues SET job_count = job_queues.job_count - 1
            WHERE queue_name = OLD.queue_name
            RETURNING job_count INTO v_count;
        IF v_count <= 0 THEN
            DELETE FROM {graphile_schema}.job_queues WHERE queue_name = OLD.queue_name AND job_count <= 0;
        END IF;
        RETURN OLD;
    END;
    $fn$ LANGUAGE plpgsql;
    CREATE FUNCTION {graphile_schema}.jobs__increase_job_queue_count() RETURNS trigger AS $fn$
    BEGIN
        INSERT INTO {graphile_schema}.job_queues (queue_name, job_count) VALUES (NEW.queue_name, 1)
            ON CONFLICT (queue_name) DO UPDATE SET job_count = job_queues.job_count + 1;
        RETURN NEW;
    END;
    $fn$ LANGUAGE plpgsql;
    CREATE TRIGGER _500_increase_job_queue_count AFTER INSERT ON {graphile_schema}.jobs
        FOR EACH ROW WHEN (NEW.queue_name IS NOT NULL)
        EXECUTE PROCEDURE {graphile_schema}.jobs__increase_job_queue_count();
    CREATE TRIGGER _500_decrease_job_queue_count AFTER DELETE ON {graphile_schema}.jobs
        FOR EACH ROW WHEN (OLD.queue_name IS NOT NULL)
        EXECUTE PROCEDURE {graphile_schema}.jobs__decrease_job_queue_count();
    CREATE TRIGGER _500_increase_job_queue_count_update AFTER UPDATE OF queue_name ON {graphile_schema}.jobs
        FOR EACH ROW WHEN (NEW.queue_name IS DISTINCT FROM OLD.queue_name AND NEW.queue_name IS NOT NULL)
        EXECUTE PROCEDURE {graphile_schema}.jobs__increase_job_queue_count();
    CREATE TRIGGER _500_decrease_job_queue_count_update AFTER UPDATE OF queue_name ON {graphile_schema}.jobs
        FOR EACH ROW WHEN (NEW.queue_name IS DISTINCT FROM OLD.queue_name AND OLD.queue_name IS NOT NULL)
        EXECUTE PROCEDURE {graphile_schema}.jobs__decrease_job_queue_count();

    -- consumers LISTEN on jobs:insert to hear about new jobs at once
    CREATE FUNCTION {graphile_schema}.tg_jobs__notify_new_jobs() RETURNS trigger AS $fn$
    BEGIN
        PERFORM pg_notify('jobs:insert', '');
        RETURN NEW;
    END;
    $fn$ LANGUAGE plpgsql;
    CREATE TRIGGER _900_notify_worker AFTER INSERT ON {graphile_schema}.jobs
        FOR EACH STATEMENT EXECUTE PROCEDURE {graphile_schema}.tg_jobs__notify_new_jobs();

    CREATE FUNCTION {graphile_schema}.add_job(
        identifier text,
        payload json = NULL,
        queue_name text = NULL,
        run_at timestamptz = NULL,
        max_attempts integer = NULL,
        job_key text = NULL,
        priority integer = NULL,
        flags text[] = NULL,
        job_key_mode text = 'replace'
    ) RETURNS {graphile_schema}.jobs AS $fn$
    DECLARE
        v_job {graphile_schema}.jobs;
        v_flags jsonb := (SELECT jsonb_object_agg(flag, true) FROM unnest(flags) AS item(flag));
    BEGIN
        IF length(identifier) > 128 THEN
            RAISE EXCEPTION 'Task identifier is too long (max length: 128).' USING errcode = 'GWBID';
        END IF;
        IF queue_name IS NOT NULL AND length(queue_name) > 128 THEN
            RAISE EXCEPTION 'Job queue name is too long (max length: 128).' USING errcode = 'GWBQN';
        END IF;
        IF job_key IS NOT NULL AND length(job_key) > 512 THEN
            RAISE EXCEPTION 'Job key is too long (max length: 512).' USING errcode = 'GWBJK';
        END IF;
        IF max_attempts < 1 THEN
            RAISE EXCEPTION 'Job maximum attempts must be at least 1.' USING errcode = 'GWBMA';
        END IF;

        IF job_key IS NOT NULL AND (job_key_mode IS NULL OR job_key_mode IN ('replace', 'preserve_run_at')) THEN
            -- replace an unlocked job with this key; a locked one has started already, so it keeps
            -- running without its key and without retries while a new job takes the key
            INSERT INTO {graphile_schema}.jobs
                    (task_identifier, payload, queue_name, run_at, max_attempts, key, priority, flags)
                VALUES (identifier, coalesce(payload, '{}'::json), queue_name, coalesce(run_at, now()),
                        coalesce(max_attempts, 25), job_key, coalesce(priority, 0), v_flags)
                ON CONFLICT (key) DO UPDATE SET
                    task_identifier = excluded.task_identifier,
                    payload = excluded.payload,
                    queue_name = excluded.queue_name,
                    max_attempts = excluded.max_attempts,
                    run_at = CASE WHEN job_key_mode = 'preserve_run_at' AND jobs.attempts = 0
                                  THEN jobs.run_at ELSE excluded.run_at END,
                    priority = excluded.priority,
                    revision = jobs.revision + 1,
                    flags = excluded.flags,
                    attempts = 0,
                    last_error = NULL
                WHERE jobs.locked_at IS NULL
                RETURNING * INTO v_job;
            IF NOT (v_job IS NULL) THEN
                RETURN v_job;
            END IF;
            UPDATE {graphile_schema}.jobs SET key = NULL, attempts = jobs.max_attempts WHERE key = job_key;
        ELSIF job_key IS NOT NULL AND job_key_mode = 'unsafe_dedupe' THEN
            INSERT INTO {graphile_schema}.jobs
                    (task_identifier, payload, queue_name, run_at, max_attempts, key, priority, flags)
                VALUES (identifier, coalesce(payload, '{}'::json), queue_name, coalesce(run_at, now()),
                        coalesce(max_attempts, 25), job_key, coalesce(priority, 0), v_flags)
                ON CONFLICT (key) DO UPDATE SET revision = jobs.revision + 1
                RETURNING * INTO v_job;
            RETURN v_job;
        ELSIF job_key IS NOT NULL THEN
            RAISE EXCEPTION 'Invalid job_key_mode value, expected ''replace'', ''preserve_run_at'' or ''unsafe_dedupe''.'
                USING errcode = 'GWBKM';
        END IF;

        INSERT INTO {graphile_schema}.jobs
                (task_identifier, payload, queue_name, run_at, max_attempts, key, priority, flags)
            VALUES (identifier, coalesce(payload, '{}'::json), queue_name, coalesce(run_at, now()),
                    coalesce(max_attempts, 25), job_key, coalesce(priority, 0), v_flags)
            RETURNING * INTO v_job;
        RETURN v_job;
    END;
    $fn$ LANGUAGE plpgsql VOLATILE;

    CREATE FUNCTION {graphile_schema}.get_job(
        worker_id text,
        task_identifiers text[] = NULL,
        job_expiry interval = interval '4 hours',
        forbidden_flags text[] = NULL
    ) RETURNS {graphile_schema}.jobs AS $fn$
    DECLARE
        v_job_id bigint;
        v_queue_name text;
        v_row {graphile_schema}.jobs;
        v_now timestamptz := now();
    BEGIN
        IF worker_id IS NULL OR length(worker_id) < 10 THEN
            RAISE EXCEPTION 'invalid worker id';
        END IF;

        SELECT jobs.queue_name, jobs.id INTO v_queue_name, v_job_id
            FROM {graphile_schema}.jobs
            WHERE (jobs.locked_at IS NULL OR jobs.locked_at < (v_now - job_expiry))
              AND (
                  jobs.queue_name IS NULL
                  OR EXISTS (
                      SELECT 1 FROM {graphile_schema}.job_queues
                      WHERE job_queues.queue_name = jobs.queue_name
                        AND (job_queues.locked_at IS NULL OR job_queues.locked_at < (v_now - job_expiry))
                      FOR UPDATE SKIP LOCKED
                  )
              )
              AND run_at <= v_now
              AND attempts < max_attempts
              AND (task_identifiers IS NULL OR task_identifier = any(task_identifiers))
              AND (forbidden_flags IS NULL OR (flags ?| forbidden_flags) IS NOT TRUE)
            ORDER BY priority ASC, run_at ASC, id ASC
            LIMIT 1
            FOR UPDATE SKIP LOCKED;

        IF v_job_id IS NULL THEN
            RETURN NULL;
        END IF;
        IF v_queue_name IS NOT NULL THEN
            UPDATE {graphile_schema}.job_queues SET locked_by = worker_id, locked_at = v_now
                WHERE job_queues.queue_name = v_queue_name;
        END IF;
        UPDATE {graphile_schema}.jobs
            SET attempts = attempts + 1, locked_by = worker_id, locked_at = v_now
            WHERE id = v_job_id
            RETURNING * INTO v_row;
        RETURN v_row;
    END;
    $fn$ LANGUAGE plpgsql VOLATILE;

    CREATE FUNCTION {graphile_schema}.complete_job(worker_id text, job_id bigint)
    RETURNS {graphile_schema}.jobs AS $fn$
    DECLARE
        v_row {graphile_schema}.jobs;
    BEGIN
        DELETE FROM {graphile_schema}.jobs WHERE id = job_id RETURNING * INTO v_row;
        IF v_row.queue_name IS NOT NULL THEN
            UPDATE {graphile_schema}.job_queues SET locked_by = NULL, locked_at = NULL
                WHERE queue_name = v_row.queue_name AND locked_by = worker_id;
        END IF;
        RETURN v_row;
    END;
    $fn$ LANGUAGE plpgsql;

    -- back-off: e^attempts seconds (capped at e^10, about 6 hours)
    CREATE FUNCTION {graphile_schema}.fail_job(worker_id text, job_id bigint, error_message text)
    RETURNS {graphile_schema}.jobs AS $fn$
    DECLARE
        v_row {graphile_schema}.jobs;
    BEGIN
        UPDATE {graphile_schema}.jobs
            SET last_error = error_message,
                run_at = greatest(now(), run_at) + (exp(least(attempts, 10))::text || ' seconds')::interval,
                locked_by = NULL,
                locked_at = NULL
            WHERE id = job_id AND locked_by = worker_id
            RETURNING * INTO v_row;
        IF v_row.queue_name IS NOT NULL THEN
            UPDATE {graphile_schema}.job_queues SET locked_by = NULL, locked_at = NULL
                WHERE queue_name = v_row.queue_name AND locked_by = worker_id;
        END IF;
        RETURN v_row;
    END;
    $fn$ LANGUAGE plpgsql VOLATILE STRICT;

    CREATE FUNCTION {graphile_schema}.remove_job(job_key text) RETURNS {graphile_schema}.jobs AS $fn$
    DECLARE
        v_job {graphile_schema}.jobs;
    BEGIN
        DELETE FROM {graphile_schema}.jobs WHERE key = job_key AND locked_at IS NULL RETURNING * INTO v_job;
        IF NOT (v_job IS NULL) THEN
            RETURN v_job;
        END IF;
        UPDATE {graphile_schema}.jobs SET attempts = max_attempts, key = NULL WHERE key = job_key
            RETURNING * INTO v_job;
        RETURN v_job;
    END;
    $fn$ LANGUAGE plpgsql STRICT;

    CREATE FUNCTION {graphile_schema}.complete_jobs(job_ids bigint[])
    RETURNS SETOF {graphile_schema}.jobs AS $fn$
        DELETE FROM {graphile_schema}.jobs
            WHERE id = any(job_ids) AND (locked_by IS NULL OR locked_at < now() - interval '4 hours')
            RETURNING *;
    $fn$ LANGUAGE sql VOLATILE;

    CREATE FUNCTION {graphile_schema}.permanently_fail_jobs(job_ids bigint[], error_message text = NULL)
    RETURNS SETOF {graphile_schema}.jobs AS $fn$
        UPDATE {graphile_schema}.jobs
            SET last_error = coalesce(error_message, 'Manually marked as failed'), attempts = max_attempts
            WHERE id = any(job_ids) AND (locked_by IS NULL OR locked_at < now() - interval '4 hours')
            RETURNING *;
    $fn$ LANGUAGE sql VOLATILE;

    CREATE FUNCTION {graphile_schema}.reschedule_jobs(
        job_ids bigint[],
        run_at timestamptz = NULL,
        priority int = NULL,
        attempts int = NULL,
        max_attempts int = NULL
    ) RETURNS SETOF {graphile_schema}.jobs AS $fn$
        UPDATE {graphile_schema}.jobs
            SET run_at = coalesce(reschedule_jobs.run_at, jobs.run_at),
                priority = coalesce(reschedule_jobs.priority, jobs.priority),
                attempts = coalesce(reschedule_jobs.attempts, jobs.attempts),
                max_attempts = coalesce(reschedule_jobs.max_attempts, jobs.max_attempts)
            WHERE id = any(job_ids) AND (locked_by IS NULL OR locked_at < now() - interval '4 hours')
            RETURNING *;
    $fn$ LANGUAGE sql VOLATILE;

    INSERT INTO {graphile_schema}.migrations (id) SELECT generate_series(1, 8);
END;
$install$;
