-- PostHog tables this service reads and writes, created only where missing, so the service runs
-- both on a fresh database and on one the PostHog Django app made (same names, columns, types).

-- ---------------------------------------------------------------- users / orgs / teams
CREATE TABLE IF NOT EXISTS posthog_user (
    id                      serial PRIMARY KEY,
    password                varchar(128) NOT NULL,
    last_login              timestamptz NULL,
    first_name              varchar(150) NOT NULL DEFAULT '',
    last_name               varchar(150) NOT NULL DEFAULT '',
    is_staff                boolean NOT NULL DEFAULT false,
    is_active               boolean NOT NULL DEFAULT true,
    date_joined             timestamptz NOT NULL DEFAULT now(),
    uuid                    uuid NOT NULL UNIQUE,
    email                   varchar(254) NOT NULL UNIQUE,
    distinct_id             varchar(200) NULL UNIQUE,
    temporary_token         varchar(200) NULL UNIQUE,
    email_opt_in            boolean NULL DEFAULT false,
    anonymize_data          boolean NULL DEFAULT false,
    toolbar_mode            varchar(200) NULL,
    events_column_config    jsonb NOT NULL DEFAULT '{"active": "DEFAULT"}',
    partial_notification_settings jsonb NULL,
    current_organization_id uuid NULL,
    current_team_id         integer NULL
);

CREATE TABLE IF NOT EXISTS posthog_organization (
    id                          uuid PRIMARY KEY,
    name                        varchar(64) NOT NULL,
    slug                        varchar(48) NULL UNIQUE,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    personalization             jsonb NOT NULL DEFAULT '{}',
    setup_section_2_completed   boolean NOT NULL DEFAULT true,
    plugins_access_level        smallint NOT NULL DEFAULT 9 CHECK (plugins_access_level >= 0),
    for_internal_metrics        boolean NOT NULL DEFAULT false,
    is_member_join_email_enabled boolean NOT NULL DEFAULT true,
    domain_whitelist            varchar(256)[] NOT NULL DEFAULT '{}',
    available_features          varchar(64)[] NOT NULL DEFAULT '{}'
);

CREATE TABLE IF NOT EXISTS posthog_organizationmembership (
    id              uuid PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES posthog_organization (id) DEFERRABLE INITIALLY DEFERRED,
    user_id         integer NOT NULL REFERENCES posthog_user (id) DEFERRABLE INITIALLY DEFERRED,
    level           smallint NOT NULL DEFAULT 1 CHECK (level >= 0),
    joined_at       timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT unique_organization_membership UNIQUE (organization_id, user_id)
);
CREATE INDEX IF NOT EXISTS posthog_organizationmembership_user_id_idx ON posthog_organizationmembership (user_id);

CREATE TABLE IF NOT EXISTS posthog_team (
    id                              serial PRIMARY KEY,
    uuid                            uuid NOT NULL UNIQUE,
    organization_id                 uuid NOT NULL REFERENCES posthog_organization (id) DEFERRABLE INITIALLY DEFERRED,
    api_token                       varchar(200) NOT NULL UNIQUE,
    app_urls                        varchar(200)[] NOT NULL DEFAULT '{}',
    name                            varchar(200) NOT NULL DEFAULT 'Default Project',
    slack_incoming_webhook          varchar(500) NULL,
    created_at                      timestamptz NOT NULL DEFAULT now(),
    updated_at                      timestamptz NOT NULL DEFAULT now(),
    anonymize_ips                   boolean NOT NULL DEFAULT false,
    completed_snippet_onboarding    boolean NOT NULL DEFAULT false,
    ingested_event                  boolean NOT NULL DEFAULT false,
    session_recording_opt_in        boolean NOT NULL DEFAULT false,
    session_recording_retention_period_days integer NULL,
    signup_token                    varchar(200) NULL,
    is_demo                         boolean NOT NULL DEFAULT false,
    access_control                  boolean NOT NULL DEFAULT false,
    test_account_filters            jsonb NOT NULL DEFAULT '[]',
    path_cleaning_filters           jsonb NULL DEFAULT '[]',
    timezone                        varchar(240) NOT NULL DEFAULT 'UTC',
    data_attributes                 jsonb NOT NULL DEFAULT '["data-attr"]',
    correlation_config              jsonb NULL DEFAULT '{}',
    primary_dashboard_id            integer NULL,
    plugins_opt_in                  boolean NOT NULL DEFAULT false,
    opt_out_capture                 boolean NOT NULL DEFAULT false,
    event_names                     jsonb NOT NULL DEFAULT '[]',
    event_names_with_usage          jsonb NOT NULL DEFAULT '[]',
    event_properties                jsonb NOT NULL DEFAULT '[]',
    event_properties_with_usage     jsonb NOT NULL DEFAULT '[]',
    event_properties_numerical      jsonb NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS posthog_team_organization_id_idx ON posthog_team (organization_id);

CREATE TABLE IF NOT EXISTS posthog_personalapikey (
    id           varchar(50) PRIMARY KEY,
    user_id      integer NOT NULL REFERENCES posthog_user (id) DEFERRABLE INITIALLY DEFERRED,
    label        varchar(40) NOT NULL,
    value        varchar(50) NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NULL,
    team_id      integer NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX IF NOT EXISTS posthog_personalapikey_user_id_idx ON posthog_personalapikey (user_id);

-- ---------------------------------------------------------------- plugins
CREATE TABLE IF NOT EXISTS posthog_plugin (
    id                    serial PRIMARY KEY,
    organization_id       uuid NOT NULL REFERENCES posthog_organization (id) DEFERRABLE INITIALLY DEFERRED,
    plugin_type           varchar(200) NULL,
    is_global             boolean NOT NULL DEFAULT false,
    is_preinstalled       boolean NOT NULL DEFAULT false,
    name                  varchar(200) NULL,
    description           text NULL,
    url                   varchar(800) NULL,
    config_schema         jsonb NOT NULL DEFAULT '{}',
    tag                   varchar(200) NULL,
    archive               bytea NULL,
    source                text NULL,
    latest_tag            varchar(800) NULL,
    latest_tag_checked_at timestamptz NULL,
    capabilities          jsonb NOT NULL DEFAULT '{}',
    metrics               jsonb NULL DEFAULT '{}',
    public_jobs           jsonb NULL DEFAULT '{}',
    error                 jsonb NULL,
    from_json             boolean NOT NULL DEFAULT false,
    from_web              boolean NOT NULL DEFAULT false,
    created_at            timestamptz NULL DEFAULT now(),
    updated_at            timestamptz NULL
);
CREATE INDEX IF NOT EXISTS posthog_plugin_organization_id_idx ON posthog_plugin (organization_id);

CREATE TABLE IF NOT EXISTS posthog_pluginconfig (
    id          serial PRIMARY KEY,
    team_id     integer NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    plugin_id   integer NOT NULL REFERENCES posthog_plugin (id) DEFERRABLE INITIALLY DEFERRED,
    enabled     boolean NOT NULL DEFAULT false,
    "order"     integer NULL,
    config      jsonb NOT NULL DEFAULT '{}',
    error       jsonb NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS posthog_pluginconfig_team_id_idx ON posthog_pluginconfig (team_id);
CREATE INDEX IF NOT EXISTS posthog_pluginconfig_plugin_id_idx ON posthog_pluginconfig (plugin_id);

CREATE TABLE IF NOT EXISTS posthog_pluginattachment (
    id               serial PRIMARY KEY,
    key              varchar(200) NOT NULL,
    content_type     varchar(200) NOT NULL,
    file_name        varchar(200) NOT NULL,
    file_size        integer NOT NULL,
    contents         bytea NOT NULL,
    plugin_config_id integer NULL REFERENCES posthog_pluginconfig (id) DEFERRABLE INITIALLY DEFERRED,
    team_id          integer NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX IF NOT EXISTS posthog_pluginattachment_plugin_config_id_idx ON posthog_pluginattachment (plugin_config_id);

CREATE TABLE IF NOT EXISTS posthog_pluginstorage (
    id               serial PRIMARY KEY,
    plugin_config_id integer NOT NULL REFERENCES posthog_pluginconfig (id) DEFERRABLE INITIALLY DEFERRED,
    key              varchar(200) NOT NULL,
    value            text NULL,
    CONSTRAINT posthog_unique_plugin_storage_key UNIQUE (plugin_config_id, key)
);

CREATE TABLE IF NOT EXISTS posthog_pluginlogentry (
    id               uuid PRIMARY KEY,
    team_id          integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    plugin_id        integer NOT NULL REFERENCES posthog_plugin (id) DEFERRABLE INITIALLY DEFERRED,
    plugin_config_id integer NOT NULL REFERENCES posthog_pluginconfig (id) DEFERRABLE INITIALLY DEFERRED,
    timestamp        timestamptz NOT NULL DEFAULT now(),
    source           varchar(20) NOT NULL,
    type             varchar(20) NOT NULL,
    message          text NOT NULL,
    instance_id      uuid NOT NULL
);
CREATE INDEX IF NOT EXISTS posthog_pluginlogentry_plugin_config_id_timestamp_idx ON posthog_pluginlogentry (plugin_config_id, timestamp);

-- ---------------------------------------------------------------- persons
CREATE TABLE IF NOT EXISTS posthog_person (
    id                          serial PRIMARY KEY,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    properties_last_updated_at  jsonb NULL DEFAULT '{}',
    properties_last_operation   jsonb NULL,
    team_id                     integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    properties                  jsonb NOT NULL DEFAULT '{}',
    is_user_id                  integer NULL REFERENCES posthog_user (id) DEFERRABLE INITIALLY DEFERRED,
    is_identified               boolean NOT NULL DEFAULT false,
    uuid                        uuid NOT NULL
);
CREATE INDEX IF NOT EXISTS posthog_person_team_id_idx ON posthog_person (team_id);
CREATE INDEX IF NOT EXISTS posthog_person_uuid_idx ON posthog_person (uuid);
CREATE INDEX IF NOT EXISTS posthog_person_is_user_id_idx ON posthog_person (is_user_id);

CREATE TABLE IF NOT EXISTS posthog_persondistinctid (
    id          serial PRIMARY KEY,
    team_id     integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    person_id   integer NOT NULL REFERENCES posthog_person (id) DEFERRABLE INITIALLY DEFERRED,
    distinct_id varchar(400) NOT NULL,
    CONSTRAINT "unique distinct_id for team" UNIQUE (team_id, distinct_id)
);
CREATE INDEX IF NOT EXISTS posthog_persondistinctid_person_id_idx ON posthog_persondistinctid (person_id);

CREATE TABLE IF NOT EXISTS posthog_cohort (
    id                  serial PRIMARY KEY,
    name                varchar(400) NULL,
    description         varchar(1000) NOT NULL DEFAULT '',
    team_id             integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    deleted             boolean NOT NULL DEFAULT false,
    groups              jsonb NOT NULL DEFAULT '[]',
    created_by_id       integer NULL REFERENCES posthog_user (id) DEFERRABLE INITIALLY DEFERRED,
    created_at          timestamptz NULL DEFAULT now(),
    is_calculating      boolean NOT NULL DEFAULT false,
    last_calculation    timestamptz NULL,
    errors_calculating  integer NOT NULL DEFAULT 0,
    is_static           boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS posthog_cohort_team_id_idx ON posthog_cohort (team_id);

CREATE TABLE IF NOT EXISTS posthog_cohortpeople (
    id        bigserial PRIMARY KEY,
    cohort_id integer NOT NULL REFERENCES posthog_cohort (id) DEFERRABLE INITIALLY DEFERRED,
    person_id integer NOT NULL REFERENCES posthog_person (id) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX IF NOT EXISTS posthog_cohortpeople_cohort_id_person_id_idx ON posthog_cohortpeople (cohort_id, person_id);
CREATE INDEX IF NOT EXISTS posthog_cohortpeople_person_id_idx ON posthog_cohortpeople (person_id);

CREATE TABLE IF NOT EXISTS posthog_grouptypemapping (
    id               serial PRIMARY KEY,
    team_id          integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    group_type       varchar(400) NOT NULL,
    group_type_index integer NOT NULL,
    CONSTRAINT unique_group_types UNIQUE (team_id, group_type),
    CONSTRAINT unique_event_column_indexes UNIQUE (team_id, group_type_index),
    CONSTRAINT group_type_index_is_less_than_or_equal_5 CHECK (group_type_index <= 5)
);

-- ---------------------------------------------------------------- events
CREATE TABLE IF NOT EXISTS posthog_event (
    id             serial PRIMARY KEY,
    created_at     timestamptz NULL DEFAULT now(),
    team_id        integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    event          varchar(200) NULL,
    distinct_id    varchar(200) NOT NULL,
    properties     jsonb NOT NULL DEFAULT '{}',
    elements       jsonb NULL DEFAULT '[]',
    timestamp      timestamptz NOT NULL DEFAULT now(),
    elements_hash  varchar(200) NULL
);
CREATE INDEX IF NOT EXISTS posthog_event_team_id_idx ON posthog_event (team_id);
CREATE INDEX IF NOT EXISTS posthog_event_timestamp_team_id_event_idx ON posthog_event (timestamp, team_id, event);
CREATE INDEX IF NOT EXISTS posthog_event_team_id_distinct_id_idx ON posthog_event (team_id, distinct_id);
CREATE INDEX IF NOT EXISTS posthog_event_elements_hash_idx ON posthog_event (elements_hash);

CREATE TABLE IF NOT EXISTS posthog_elementgroup (
    id      serial PRIMARY KEY,
    hash    varchar(400) NULL,
    team_id integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT "unique hash for each team" UNIQUE (team_id, hash)
);

CREATE TABLE IF NOT EXISTS posthog_element (
    id           serial PRIMARY KEY,
    text         varchar(10000) NULL,
    tag_name     varchar(1000) NULL,
    href         varchar(10000) NULL,
    attr_id      varchar(10000) NULL,
    attr_class   varchar(200)[] NULL,
    nth_child    integer NULL,
    nth_of_type  integer NULL,
    attributes   jsonb NOT NULL DEFAULT '{}',
    "order"      integer NULL,
    event_id     integer NULL REFERENCES posthog_event (id) DEFERRABLE INITIALLY DEFERRED,
    group_id     integer NULL REFERENCES posthog_elementgroup (id) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX IF NOT EXISTS posthog_element_event_id_idx ON posthog_element (event_id);
CREATE INDEX IF NOT EXISTS posthog_element_group_id_idx ON posthog_element (group_id);

CREATE TABLE IF NOT EXISTS posthog_sessionrecordingevent (
    id            serial PRIMARY KEY,
    created_at    timestamptz NULL DEFAULT now(),
    timestamp     timestamptz NOT NULL DEFAULT now(),
    team_id       integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    distinct_id   varchar(200) NOT NULL,
    session_id    varchar(200) NOT NULL,
    window_id     varchar(200) NULL,
    snapshot_data jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS posthog_sessionrecordingevent_team_id_timestamp_idx ON posthog_sessionrecordingevent (team_id, timestamp);
CREATE INDEX IF NOT EXISTS posthog_sessionrecordingevent_team_id_session_id_idx ON posthog_sessionrecordingevent (team_id, session_id);

CREATE TABLE IF NOT EXISTS posthog_eventdefinition (
    id                 uuid PRIMARY KEY,
    team_id            integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    name               varchar(400) NOT NULL,
    volume_30_day      integer NULL,
    query_usage_30_day integer NULL,
    CONSTRAINT posthog_eventdefinition_team_id_name_unique UNIQUE (team_id, name)
);

CREATE TABLE IF NOT EXISTS posthog_propertydefinition (
    id                 uuid PRIMARY KEY,
    team_id            integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    name               varchar(400) NOT NULL,
    is_numerical       boolean NOT NULL DEFAULT false,
    volume_30_day      integer NULL,
    query_usage_30_day integer NULL,
    CONSTRAINT posthog_propertydefinition_team_id_name_unique UNIQUE (team_id, name)
);

-- ---------------------------------------------------------------- actions
CREATE TABLE IF NOT EXISTS posthog_action (
    id                   serial PRIMARY KEY,
    name                 varchar(400) NULL,
    team_id              integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    created_at           timestamptz NOT NULL DEFAULT now(),
    created_by_id        integer NULL REFERENCES posthog_user (id) DEFERRABLE INITIALLY DEFERRED,
    deleted              boolean NOT NULL DEFAULT false,
    post_to_slack        boolean NOT NULL DEFAULT false,
    slack_message_format varchar(200) NOT NULL DEFAULT '',
    is_calculating       boolean NOT NULL DEFAULT false,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    last_calculated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS posthog_action_team_id_idx ON posthog_action (team_id);

CREATE TABLE IF NOT EXISTS posthog_actionstep (
    id           serial PRIMARY KEY,
    action_id    integer NOT NULL REFERENCES posthog_action (id) DEFERRABLE INITIALLY DEFERRED,
    tag_name     varchar(400) NULL,
    text         varchar(400) NULL,
    href         varchar(65535) NULL,
    selector     varchar(65535) NULL,
    url          varchar(65535) NULL,
    url_matching varchar(400) NULL,
    name         varchar(400) NULL,
    event        varchar(400) NULL,
    properties   jsonb NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS posthog_actionstep_action_id_idx ON posthog_actionstep (action_id);

CREATE TABLE IF NOT EXISTS posthog_action_events (
    id        serial PRIMARY KEY,
    action_id integer NOT NULL REFERENCES posthog_action (id) DEFERRABLE INITIALLY DEFERRED,
    event_id  integer NOT NULL REFERENCES posthog_event (id) DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT posthog_action_events_action_id_event_id_uniq UNIQUE (action_id, event_id)
);
CREATE INDEX IF NOT EXISTS posthog_action_events_event_id_idx ON posthog_action_events (event_id);

-- ---------------------------------------------------------------- only TRUNCATEd by the test helper
CREATE TABLE IF NOT EXISTS posthog_dashboard (
    id            serial PRIMARY KEY,
    name          varchar(400) NULL,
    team_id       integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    pinned        boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by_id integer NULL REFERENCES posthog_user (id) DEFERRABLE INITIALLY DEFERRED,
    deleted       boolean NOT NULL DEFAULT false,
    is_shared     boolean NOT NULL DEFAULT false,
    share_token   varchar(400) NULL,
    filters       jsonb NOT NULL DEFAULT '{}'
);
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'posthog_team_primary_dashboard_fk') THEN
        ALTER TABLE posthog_team ADD CONSTRAINT posthog_team_primary_dashboard_fk
            FOREIGN KEY (primary_dashboard_id) REFERENCES posthog_dashboard (id) DEFERRABLE INITIALLY DEFERRED;
    END IF;
END $$;

CREATE TABLE IF NOT EXISTS posthog_dashboarditem (
    id            serial PRIMARY KEY,
    name          varchar(400) NULL,
    team_id       integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    dashboard_id  integer NULL REFERENCES posthog_dashboard (id) DEFERRABLE INITIALLY DEFERRED,
    filters       jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NULL DEFAULT now(),
    created_by_id integer NULL REFERENCES posthog_user (id) DEFERRABLE INITIALLY DEFERRED,
    deleted       boolean NOT NULL DEFAULT false,
    saved         boolean NOT NULL DEFAULT false
);

CREATE TABLE IF NOT EXISTS posthog_annotation (
    id            serial PRIMARY KEY,
    content       varchar(400) NULL,
    created_at    timestamptz NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    team_id       integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    created_by_id integer NULL REFERENCES posthog_user (id) DEFERRABLE INITIALLY DEFERRED,
    dashboard_item_id integer NULL REFERENCES posthog_dashboarditem (id) DEFERRABLE INITIALLY DEFERRED,
    scope         varchar(24) NOT NULL DEFAULT 'dashboard_item',
    creation_type varchar(3) NOT NULL DEFAULT 'USR',
    date_marker   timestamptz NULL,
    deleted       boolean NOT NULL DEFAULT false,
    apply_all     boolean NULL
);

CREATE TABLE IF NOT EXISTS posthog_featureflag (
    id                 serial PRIMARY KEY,
    name               text NOT NULL DEFAULT '',
    key                varchar(400) NOT NULL,
    filters            jsonb NOT NULL DEFAULT '{}',
    rollout_percentage integer NULL,
    team_id            integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    created_by_id      integer NULL REFERENCES posthog_user (id) DEFERRABLE INITIALLY DEFERRED,
    created_at         timestamptz NOT NULL DEFAULT now(),
    deleted            boolean NOT NULL DEFAULT false,
    active             boolean NOT NULL DEFAULT true
);

-- ---------------------------------------------------------------- EE: REST hooks (Zapier)
CREATE TABLE IF NOT EXISTS ee_hook (
    id          varchar(50) PRIMARY KEY,
    created     timestamptz NOT NULL DEFAULT now(),
    updated     timestamptz NOT NULL DEFAULT now(),
    event       varchar(64) NOT NULL,
    target      varchar(255) NOT NULL,
    resource_id integer NULL,
    team_id     integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    user_id     integer NOT NULL REFERENCES posthog_user (id) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX IF NOT EXISTS ee_hook_team_id_event_idx ON ee_hook (team_id, event);

