"""Reads the plugin configs in force from Postgres (spec/plugins.md §1.7) into plain records."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from plugin_server.logs import get_logger
from plugin_server.plugins import queries

log = get_logger(__name__)


@dataclass(slots=True)
class Plugin:
    id: int
    name: str | None
    url: str | None
    plugin_type: str | None
    is_global: bool
    organization_id: str
    tag: str | None
    archive: bytes | None
    source: str | None
    capabilities: dict[str, Any]
    metrics: dict[str, Any] | None
    public_jobs: dict[str, Any] | None
    updated_at: datetime | None


@dataclass(slots=True, frozen=True)
class Attachment:
    key: str
    content_type: str
    file_name: str
    contents: bytes


@dataclass(slots=True)
class PluginConfig:
    id: int
    team_id: int | None
    plugin_id: int
    enabled: bool
    order: int
    config: dict[str, Any]
    error: Any
    updated_at: datetime | None
    plugin: Plugin
    attachments: dict[str, Attachment] = field(default_factory=dict)
    # the organization of the config's team (for a global plugin, not the plugin's organization)
    team_organization_id: str | None = None

    @property
    def tenant(self) -> str:
        """Whose sandboxes run this config: its team's organization."""
        if self.team_organization_id is not None:
            return f"org:{self.team_organization_id}"
        return f"config:{self.id}"  # no team (never in force): a tenant of its own

    def attachment_fingerprint(self) -> str:
        digest = hashlib.sha256()
        for key in sorted(self.attachments):
            a = self.attachments[key]
            digest.update(f"{key}\0{a.file_name}\0{len(a.contents)}\0".encode())
            digest.update(hashlib.sha256(a.contents).digest())
        return digest.hexdigest()


@dataclass(slots=True)
class PluginSnapshot:
    plugins: dict[int, Plugin]
    configs: dict[int, PluginConfig]  # in query order


def _plugin(row: asyncpg.Record) -> Plugin:
    return Plugin(
        id=row["id"],
        name=row["name"],
        url=row["url"],
        plugin_type=row["plugin_type"],
        is_global=row["is_global"],
        organization_id=str(row["organization_id"]),
        tag=row["tag"],
        archive=bytes(row["archive"]) if row["archive"] is not None else None,
        source=row["source"],
        capabilities=row["capabilities"] or {},
        metrics=row["metrics"],
        public_jobs=row["public_jobs"],
        updated_at=row["updated_at"],
    )


async def fetch_plugin_configs(pg: asyncpg.Pool) -> PluginSnapshot:
    """The three queries of the original, run independently (not in one transaction)."""
    plugins = {row["id"]: _plugin(row) for row in await pg.fetch(queries.SELECT_PLUGINS)}
    attachments: dict[int, dict[str, Attachment]] = {}
    for row in await pg.fetch(queries.SELECT_ATTACHMENTS):
        attachments.setdefault(row["plugin_config_id"], {})[row["key"]] = Attachment(
            row["key"], row["content_type"], row["file_name"], bytes(row["contents"])
        )
    configs: dict[int, PluginConfig] = {}
    for row in await pg.fetch(queries.SELECT_CONFIGS):
        plugin = plugins.get(row["plugin_id"])
        if plugin is None:
            continue
        configs[row["id"]] = PluginConfig(
            id=row["id"],
            team_id=row["team_id"],
            plugin_id=row["plugin_id"],
            enabled=row["enabled"],
            order=row["order"] or 0,
            config=row["config"] or {},
            error=row["error"],
            updated_at=row["updated_at"],
            plugin=plugin,
            attachments=attachments.get(row["id"], {}),
            team_organization_id=(
                str(row["team_organization_id"]) if row["team_organization_id"] is not None else None
            ),
        )
    return PluginSnapshot(plugins, configs)


def plugin_digest(plugin: Plugin, team_id: int | None = None) -> str:
    extras = []
    if team_id is not None:
        extras.append(f"team ID {team_id}")
    extras.append(f"organization ID {plugin.organization_id}")
    if plugin.is_global:
        extras.append("global")
    return f"plugin {plugin.name} ID {plugin.id} ({' - '.join(extras)})"
