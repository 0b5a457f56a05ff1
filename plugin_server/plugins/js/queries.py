"""SQL the JS plugin host runs (tables of spec plugins.md §1.6)."""

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
INSERT_LOG_ENTRY = """
INSERT INTO posthog_pluginlogentry
    (id, team_id, plugin_id, plugin_config_id, timestamp, source, type, message, instance_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""
SET_PLUGIN_CONFIG_ERROR = "UPDATE posthog_pluginconfig SET error = $1 WHERE id = $2"
