"""SQL of the plugin store (posthog_plugin, posthog_pluginconfig, attachments, storage, logs)."""

# Plugin configs in force (spec/plugins.md §1.7): enabled, in an organization with plugin access,
# whose plugin belongs to that organization or is global.
_IN_FORCE = """
    FROM posthog_pluginconfig pc
    LEFT JOIN posthog_team t ON t.id = pc.team_id
    LEFT JOIN posthog_organization o ON o.id = t.organization_id
    LEFT JOIN posthog_plugin p ON p.id = pc.plugin_id
    WHERE pc.enabled AND o.plugins_access_level > 0
      AND (p.organization_id = o.id OR p.is_global)
"""

SELECT_PLUGINS = f"""
SELECT id, name, url, plugin_type, is_global, organization_id, tag, archive, source,
       capabilities, metrics, public_jobs, updated_at
FROM posthog_plugin
WHERE id IN (SELECT pc.plugin_id {_IN_FORCE})
"""

SELECT_ATTACHMENTS = f"""
SELECT id, plugin_config_id, team_id, key, content_type, file_name, file_size, contents
FROM posthog_pluginattachment
WHERE plugin_config_id IN (SELECT pc.id {_IN_FORCE})
"""

SELECT_CONFIGS = f"""
SELECT pc.id, pc.team_id, pc.plugin_id, pc.enabled, pc."order", pc.config, pc.error, pc.updated_at,
       t.organization_id AS team_organization_id
{_IN_FORCE}
"""

UPDATE_CAPABILITIES = "UPDATE posthog_plugin SET capabilities = $1 WHERE id = $2"
UPDATE_METRICS = "UPDATE posthog_plugin SET metrics = $1 WHERE id = $2"
SET_CONFIG_ERROR = "UPDATE posthog_pluginconfig SET error = $1 WHERE id = $2"
CLEAR_CONFIG_ERROR = "UPDATE posthog_pluginconfig SET error = NULL WHERE id = $1"
DISABLE_CONFIG = "UPDATE posthog_pluginconfig SET enabled = false WHERE id = $1 AND enabled = true"

INSERT_LOG_ENTRIES = """
INSERT INTO posthog_pluginlogentry
    (id, team_id, plugin_id, plugin_config_id, timestamp, source, type, message, instance_id)
SELECT * FROM unnest($1::uuid[], $2::int[], $3::int[], $4::int[], $5::timestamptz[],
                     $6::varchar[], $7::varchar[], $8::text[], $9::uuid[])
"""

STORAGE_GET = "SELECT value FROM posthog_pluginstorage WHERE plugin_config_id = $1 AND key = $2 LIMIT 1"
STORAGE_SET = """
INSERT INTO posthog_pluginstorage (plugin_config_id, key, value) VALUES ($1, $2, $3)
ON CONFLICT (plugin_config_id, key) DO UPDATE SET value = EXCLUDED.value
"""
STORAGE_DELETE = "DELETE FROM posthog_pluginstorage WHERE plugin_config_id = $1 AND key = $2"
CURSOR_INIT = """
INSERT INTO posthog_pluginstorage (plugin_config_id, key, value) VALUES ($1, $2, $3)
ON CONFLICT (plugin_config_id, key) DO NOTHING
"""
CURSOR_INCREMENT = """
INSERT INTO posthog_pluginstorage (plugin_config_id, key, value) VALUES ($1, $2, $3)
ON CONFLICT (plugin_config_id, key)
DO UPDATE SET value = (posthog_pluginstorage.value::numeric + EXCLUDED.value::numeric)::text
RETURNING value
"""
