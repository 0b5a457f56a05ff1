"""Every SQL statement of the Postgres-mode ingestion pipeline (spec/ingestion.md §3.1)."""

# -- teams and organizations
SELECT_TEAM = "SELECT * FROM posthog_team WHERE id = $1"
SELECT_ORGANIZATION = "SELECT * FROM posthog_organization WHERE id = $1"
MARK_TEAM_INGESTED = "UPDATE posthog_team SET ingested_event = true WHERE id = $1"

# -- persons
PERSON_COLUMNS = (
    "posthog_person.id, posthog_person.created_at, posthog_person.team_id, posthog_person.properties, "
    "posthog_person.properties_last_updated_at, posthog_person.properties_last_operation, "
    "posthog_person.is_user_id, posthog_person.is_identified, posthog_person.uuid"
)
_PERSONS_WITH_DISTINCT_ID = f"""
SELECT {PERSON_COLUMNS},
       posthog_persondistinctid.team_id AS persondistinctid__team_id,
       posthog_persondistinctid.distinct_id AS persondistinctid__distinct_id
FROM posthog_person
JOIN posthog_persondistinctid ON posthog_persondistinctid.person_id = posthog_person.id
WHERE posthog_person.team_id = $1
  AND posthog_persondistinctid.team_id = $1
"""
SELECT_PERSON = _PERSONS_WITH_DISTINCT_ID + "AND posthog_persondistinctid.distinct_id = $2 LIMIT 1"
# A join with the id list, not `= ANY($2)`: in a prepared statement's generic plan Postgres
# tests ANY against a parameter array element by element, for every row it scans.
SELECT_PERSONS_BY_DISTINCT_IDS = f"""
SELECT {PERSON_COLUMNS},
       posthog_persondistinctid.team_id AS persondistinctid__team_id,
       posthog_persondistinctid.distinct_id AS persondistinctid__distinct_id
FROM unnest($2::text[]) AS wanted(distinct_id)
JOIN posthog_persondistinctid ON posthog_persondistinctid.team_id = $1
     AND posthog_persondistinctid.distinct_id = wanted.distinct_id
JOIN posthog_person ON posthog_person.id = posthog_persondistinctid.person_id
WHERE posthog_person.team_id = $1
"""
# Only what a `$set`/`$set_once` update needs (Postgres mode: no copy of the person is sent anywhere).
SELECT_PERSON_PROPERTIES_BY_DISTINCT_IDS = """
SELECT posthog_persondistinctid.distinct_id, posthog_person.id, posthog_person.properties
FROM unnest($2::text[]) AS wanted(distinct_id)
JOIN posthog_persondistinctid ON posthog_persondistinctid.team_id = $1
     AND posthog_persondistinctid.distinct_id = wanted.distinct_id
JOIN posthog_person ON posthog_person.id = posthog_persondistinctid.person_id
WHERE posthog_person.team_id = $1
"""
SELECT_KNOWN_DISTINCT_IDS = """
SELECT team_id, distinct_id FROM posthog_persondistinctid
WHERE (team_id, distinct_id) IN (SELECT * FROM unnest($1::int[], $2::text[]))
"""
SELECT_PERSON_IDS = """
SELECT team_id, distinct_id, person_id FROM posthog_persondistinctid
WHERE (team_id, distinct_id) IN (SELECT * FROM unnest($1::int[], $2::text[]))
"""
INSERT_PERSON = """
INSERT INTO posthog_person
    (created_at, properties, properties_last_updated_at, team_id, is_user_id, is_identified, uuid)
VALUES ($1, $2, '{}', $3, NULL, $4, $5)
RETURNING id, created_at, team_id, properties, properties_last_updated_at, properties_last_operation,
          is_user_id, is_identified, uuid
"""
INSERT_PERSONS = """
INSERT INTO posthog_person
    (created_at, properties, properties_last_updated_at, team_id, is_user_id, is_identified, uuid)
SELECT created_at, '{}', '{}', team_id, NULL, false, uuid
FROM unnest($1::timestamptz[], $2::int[], $3::uuid[]) AS p(created_at, team_id, uuid)
RETURNING id, uuid
"""
INSERT_DISTINCT_ID = (
    "INSERT INTO posthog_persondistinctid (distinct_id, person_id, team_id) VALUES ($1, $2, $3)"
)
INSERT_DISTINCT_IDS = """
INSERT INTO posthog_persondistinctid (distinct_id, person_id, team_id)
SELECT * FROM unnest($1::text[], $2::int[], $3::int[])
"""
# Kafka mode needs the inserted rows (table column order) for their ClickHouse copies.
_DISTINCT_ID_ROW = " RETURNING id, team_id, person_id, distinct_id"
INSERT_DISTINCT_ID_RETURNING = INSERT_DISTINCT_ID + _DISTINCT_ID_ROW
INSERT_DISTINCT_IDS_RETURNING = INSERT_DISTINCT_IDS.rstrip() + _DISTINCT_ID_ROW
UPDATE_PERSON_PROPERTIES = "UPDATE posthog_person SET properties = $1 WHERE id = $2"
SET_PERSON_IDENTIFIED = "UPDATE posthog_person SET is_identified = true WHERE id = $1"
MERGE_INTO_PERSON = """
UPDATE posthog_person SET created_at = $1, properties = $2, is_identified = $3 WHERE id = $4
"""
MOVE_COHORT_PEOPLE = "UPDATE posthog_cohortpeople SET person_id = $1 WHERE person_id = $2"
MOVE_DISTINCT_IDS = """
UPDATE posthog_persondistinctid SET person_id = $1 WHERE person_id = $2 AND team_id = $3
RETURNING id, distinct_id
"""
DELETE_PERSON = "DELETE FROM posthog_person WHERE team_id = $1 AND id = $2"

# -- definitions
SELECT_EVENT_DEFINITION_NAMES = "SELECT name FROM posthog_eventdefinition WHERE team_id = $1"
SELECT_PROPERTY_DEFINITION_NAMES = "SELECT name FROM posthog_propertydefinition WHERE team_id = $1"
INSERT_EVENT_DEFINITION = """
INSERT INTO posthog_eventdefinition (id, name, volume_30_day, query_usage_30_day, team_id)
VALUES ($1, $2, NULL, NULL, $3) ON CONFLICT DO NOTHING
"""
INSERT_PROPERTY_DEFINITION = """
INSERT INTO posthog_propertydefinition (id, name, is_numerical, volume_30_day, query_usage_30_day, team_id)
VALUES ($1, $2, $3, NULL, NULL, $4) ON CONFLICT DO NOTHING
"""

# -- group types
SELECT_GROUP_TYPES = "SELECT group_type, group_type_index FROM posthog_grouptypemapping WHERE team_id = $1"
INSERT_GROUP_TYPE = """
WITH inserted AS (
    INSERT INTO posthog_grouptypemapping (team_id, group_type, group_type_index)
    VALUES ($1, $2, $3)
    ON CONFLICT DO NOTHING
    RETURNING group_type_index
)
SELECT group_type_index FROM inserted
UNION
SELECT group_type_index FROM posthog_grouptypemapping WHERE team_id = $1 AND group_type = $2
"""

# -- elements, events, recordings, action matches
INSERT_ELEMENT_GROUP = """
INSERT INTO posthog_elementgroup (hash, team_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING id
"""
INSERT_ELEMENT = """
INSERT INTO posthog_element
    (text, tag_name, href, attr_id, nth_child, nth_of_type, attributes, "order", event_id, attr_class,
     group_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10)
"""
NEXT_EVENT_IDS = "SELECT nextval(pg_get_serial_sequence('posthog_event', 'id')) FROM generate_series(1, $1)"
# Whole batches in one statement each; JSON goes as text so the pool's JSON codec is bypassed.
INSERT_EVENTS = """
INSERT INTO posthog_event
    (created_at, event, distinct_id, properties, team_id, timestamp, elements, elements_hash)
SELECT created_at, event, distinct_id, properties::jsonb, team_id, timestamp, elements::jsonb, elements_hash
FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::int[], $6::timestamptz[], $7::text[],
            $8::text[])
    AS e(created_at, event, distinct_id, properties, team_id, timestamp, elements, elements_hash)
"""
INSERT_EVENTS_WITH_IDS = """
INSERT INTO posthog_event
    (id, created_at, event, distinct_id, properties, team_id, timestamp, elements, elements_hash)
SELECT id, created_at, event, distinct_id, properties::jsonb, team_id, timestamp, elements::jsonb,
       elements_hash
FROM unnest($9::bigint[], $1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::int[], $6::timestamptz[],
            $7::text[], $8::text[])
    AS e(id, created_at, event, distinct_id, properties, team_id, timestamp, elements, elements_hash)
"""
INSERT_RECORDINGS = """
INSERT INTO posthog_sessionrecordingevent
    (created_at, team_id, distinct_id, session_id, timestamp, snapshot_data)
SELECT created_at, team_id, distinct_id, session_id, timestamp, snapshot_data::jsonb
FROM unnest($1::timestamptz[], $2::int[], $3::text[], $4::text[], $5::timestamptz[], $6::text[])
    AS r(created_at, team_id, distinct_id, session_id, timestamp, snapshot_data)
"""
INSERT_ACTION_EVENTS = """
INSERT INTO posthog_action_events (event_id, action_id) SELECT * FROM unnest($1::bigint[], $2::int[])
"""

# -- actions and cohorts
SELECT_ACTIONS = "SELECT * FROM posthog_action WHERE deleted = FALSE"
SELECT_ACTION_STEPS = """
SELECT posthog_actionstep.*, posthog_action.team_id
FROM posthog_actionstep JOIN posthog_action ON posthog_action.id = posthog_actionstep.action_id
WHERE posthog_action.deleted = FALSE
"""
SELECT_ACTION = "SELECT * FROM posthog_action WHERE id = $1 AND deleted = FALSE"
SELECT_STEPS_OF_ACTION = "SELECT * FROM posthog_actionstep WHERE action_id = $1"
SELECT_COHORT_MEMBERS = """
SELECT cohort_id, person_id FROM posthog_cohortpeople
WHERE cohort_id = ANY($1::int[]) AND person_id = ANY($2::int[])
"""

# -- hooks
SELECT_REST_HOOKS = (
    "SELECT * FROM ee_hook WHERE team_id = $1 AND event = 'action_performed' AND resource_id = $2"
)
DELETE_REST_HOOK = "DELETE FROM ee_hook WHERE id = $1"

# Messages whose effects this transaction commits; returns those not committed before.
REMEMBER_MESSAGES = """
INSERT INTO plugin_server_ingested_message (id) SELECT unnest($1::bytea[])
ON CONFLICT DO NOTHING RETURNING id
"""
PRUNE_REMEMBERED_MESSAGES = """
DELETE FROM plugin_server_ingested_message WHERE created_at < now() - interval '1 day'
"""
