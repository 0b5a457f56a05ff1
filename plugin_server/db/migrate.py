"""Applies the numbered .sql files in db/migrations once each, in order, under an advisory lock.

Two instances migrating at once are safe: the second waits for the lock, then finds
everything applied. Files may use `{graphile_schema}` for JOB_QUEUE_GRAPHILE_SCHEMA.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from plugin_server.logs import get_logger

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# An arbitrary constant shared by every instance: pg_advisory_lock key for migrations.
MIGRATION_LOCK_KEY = 0x706C7567696E5F73  # "plugin_s"
_NAME = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    sql: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    files = sorted(p for p in directory.iterdir() if _NAME.match(p.name))
    return [Migration(p.stem, p.read_text()) for p in files]


async def ensure_database(dsn: str, attempts: int = 20) -> bool:
    """Create the database named in `dsn` when it does not exist. True if created here."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    for _ in range(attempts):
        try:
            conn = await asyncpg.connect(dsn)
        except asyncpg.InvalidCatalogNameError:
            pass
        else:
            await conn.close()
            return False
        if not _IDENT.match(name):
            raise ValueError(f"refusing to create a database with the name {name!r}")
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            return False  # another instance created it first
        except asyncpg.ObjectInUseError:
            # Two CREATE DATABASE at once: template1 is busy with the other one; try again.
            await asyncio.sleep(0.1)
            continue
        finally:
            await admin.close()
        log.info("database created", database=name)
        return True
    raise RuntimeError(f"could not create database {name!r}")


async def migrate(dsn: str, *, graphile_schema: str = "graphile_worker") -> list[str]:
    """Apply what is not applied yet; returns the names applied now."""
    if not _IDENT.match(graphile_schema):
        raise ValueError(f"invalid schema name {graphile_schema!r}")
    await ensure_database(dsn)
    conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS plugin_server_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM plugin_server_migrations")}
            for migration in load_migrations():
                if migration.name in done:
                    continue
                sql = migration.sql.replace("{graphile_schema}", graphile_schema)
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO plugin_server_migrations (name) VALUES ($1)", migration.name
                    )
                applied_now.append(migration.name)
                log.info("migration applied", migration=migration.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()
    return applied_now
