"""`meta.geoip.locate(ip)`: one GeoLite2-City reader held by the host (services §6, plugins §4.6).

Where the database comes from, in order: nothing when DISABLE_MMDB; the file MMDB_FILE_PATH
when set; otherwise the brotli-compressed `@posthog/mmdb` row of posthog_pluginattachment,
downloaded first (once per cluster, coordinated through the Redis key
`@posthog-plugin-server/mmdb-status`) when there is none, and refreshed in the background when
older than 45 days (checked every 4 hours). When no database can be had the server still runs:
lookups fail with the "unavailable" error and readiness says why.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import brotli
import geoip2.database
import geoip2.errors
import maxminddb
import redis.asyncio as aioredis
from croniter import croniter
from prometheus_client import Gauge, Histogram

from plugin_server.logs import get_logger
from plugin_server.metrics import REGISTRY

MMDB_ENDPOINT = "https://mmdb.posthog.net/"
MMDB_ATTACHMENT_KEY = "@posthog/mmdb"
MMDB_STALE_AGE_DAYS = 45
MMDB_STATUS_KEY = "@posthog-plugin-server/mmdb-status"
MMDB_STATUS_TTL_SECONDS = 120
MMDB_UNAVAILABLE = "IP location capabilities are not available in this PostHog instance!"
STALENESS_CRON = "0 */4 * * *"
_STATUS_POLL_SECONDS = 0.2
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_FILENAME = re.compile(r'filename="?([^";]+)"?')

MMDB_AVAILABLE = Gauge("plugin_server_mmdb_available", "1 when a GeoIP database is loaded", registry=REGISTRY)
MMDB_AGE = Gauge("plugin_server_mmdb_age_days", "Age of the GeoIP database in use", registry=REGISTRY)
LOOKUP_SECONDS = Histogram(
    "plugin_server_mmdb_lookup_duration_seconds",
    "GeoIP lookups",
    registry=REGISTRY,
    buckets=(0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05),
)

log = get_logger(__name__)

_READ_ROW = """
SELECT file_name, contents FROM posthog_pluginattachment
WHERE key = $1 AND plugin_config_id IS NULL AND team_id IS NULL
ORDER BY file_name ASC LIMIT 1
"""
_INSERT_ROW = """
INSERT INTO posthog_pluginattachment
    (key, content_type, file_name, file_size, contents, plugin_config_id, team_id)
VALUES ($1, $2, $3, $4, $5, NULL, NULL) RETURNING id
"""
_DELETE_OTHER_ROWS = "DELETE FROM posthog_pluginattachment WHERE key = $1 AND id <> $2"


class GeoIpUnavailable(RuntimeError):
    def __init__(self) -> None:
        super().__init__(MMDB_UNAVAILABLE)


class GeoIpDatabaseError(RuntimeError):
    """The stored database row cannot be used (fatal at start-up, as in the original)."""


def _camel(key: str) -> str:
    if "-" in key:  # language codes such as pt-BR stay as they are
        return key
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def camel_case(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel(k): camel_case(v) for k, v in value.items()}
    if isinstance(value, list):
        return [camel_case(v) for v in value]
    return value


def file_date(file_name: str) -> date | None:
    match = _ISO_DATE.search(file_name)
    if not match:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def open_reader(data: bytes) -> geoip2.database.Reader:
    return geoip2.database.Reader(io.BytesIO(data), mode=maxminddb.MODE_FD)


class GeoIp:
    name = "geoip"

    def __init__(
        self,
        *,
        disabled: bool,
        postgres: asyncpg.Pool | None = None,
        redis: aioredis.Redis | None = None,
        file_path: str = "",
        download_url: str = MMDB_ENDPOINT,
        download_timeout: float = 120.0,
    ) -> None:
        self.disabled = disabled
        self._pg = postgres
        self._redis = redis
        self._file_path = file_path
        self._url = download_url
        self._download_timeout = download_timeout
        self._reader: geoip2.database.Reader | None = None
        self.file_name: str | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._checker: asyncio.Task[None] | None = None
        self._preparing = not disabled

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        try:
            await self._load()
        finally:
            self._preparing = False
            MMDB_AVAILABLE.set(1 if self._reader is not None else 0)
        if not self.disabled and not self._file_path:
            self._checker = asyncio.create_task(self._check_forever(), name="mmdb-staleness")

    async def _load(self) -> None:
        if self.disabled:
            log.info("GeoIP disabled (DISABLE_MMDB)")
            return
        if self._file_path:
            try:
                data = await asyncio.to_thread(Path(self._file_path).read_bytes)
                self._use(data, self._file_path)
            except (OSError, maxminddb.InvalidDatabaseError, ValueError) as exc:
                log.error(
                    "could not open MMDB_FILE_PATH; GeoIP unavailable", path=self._file_path, error=repr(exc)
                )
            return
        await self.prepare()

    async def stop(self) -> None:
        tasks = [t for t in (self._checker, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._reader is not None:
            self._reader.close()

    def ready(self) -> tuple[bool, str]:
        # Not ready while the database is being prepared. A database that cannot be had does
        # not hold the server back (everything but geoip works): it shows as
        # plugin_server_mmdb_available 0 and in the log, and lookups fail with the clear error.
        if self._preparing:
            return False, "GeoIP database loading"
        return True, ""

    @property
    def has_reader(self) -> bool:
        return self._reader is not None

    # ------------------------------------------------------------------ lookups
    def locate(self, ip: str) -> dict[str, Any] | None:
        """The City record in the camelCase shape plugins read, None for an invalid or unknown IP."""
        reader = self._reader
        if self.disabled or reader is None:
            raise GeoIpUnavailable()
        started = time.perf_counter()
        try:
            record = reader.city(str(ip).strip())
        except (ValueError, geoip2.errors.AddressNotFoundError):
            return None
        finally:
            LOOKUP_SECONDS.observe(time.perf_counter() - started)
        return camel_case(record.to_dict())

    # ------------------------------------------------------------------ database
    def _use(self, data: bytes, file_name: str) -> None:
        old, self._reader = self._reader, open_reader(data)
        MMDB_AVAILABLE.set(1)
        self.file_name = file_name
        day = file_date(file_name)
        if day is not None:
            MMDB_AGE.set((datetime.now(UTC).date() - day).days)
        if old is not None:
            old.close()

    async def prepare(self, *, background: bool = False) -> bool:
        """Load the stored database (fetching or refreshing it when needed). With `background`,
        only fetch or refresh; returns whether an update was attempted."""
        assert self._pg is not None
        row = await self._pg.fetchrow(_READ_ROW, MMDB_ATTACHMENT_KEY)
        if row is None:
            log.info("⬇️ Fetching @posthog/mmdb for the first time")
            fetched = await self._coordinated_fetch()
            if fetched == "retry":
                return await self.prepare(background=background)
            if fetched is None and not background:
                log.warning("GeoIP database unavailable: plugins using geoip will fail")
            return True
        file_name, contents = row["file_name"], row["contents"]
        if not contents:
            raise GeoIpDatabaseError(f"{MMDB_ATTACHMENT_KEY} attachment {file_name} has no file contents!")
        day = file_date(file_name)
        if day is None:
            raise GeoIpDatabaseError(
                f"{MMDB_ATTACHMENT_KEY} attachment has an invalid filename {file_name!r}: "
                "it must include an ISO date"
            )
        stale = (datetime.now(UTC).date() - day).days > MMDB_STALE_AGE_DAYS
        if not background:
            data = brotli.decompress(bytes(contents))
            log.info("🪗 Decompressed MMDB", file_name=file_name, compressed=len(contents), size=len(data))
            self._use(data, file_name)
        if stale:
            log.info("MMDB is stale; refreshing", file_name=file_name)
            if background:
                await self._refresh()
            else:
                task = asyncio.create_task(self._refresh(), name="mmdb-refresh")
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        return stale

    async def _refresh(self) -> None:
        if await self._coordinated_fetch() not in (None, "retry"):
            log.info("💉 Injected fresh @posthog/mmdb")

    async def _coordinated_fetch(self) -> str | None:
        """Download once per cluster. Returns the file name used, "retry" when another instance
        fetched meanwhile, or None when unavailable."""
        assert self._redis is not None
        status = await self._status()
        if status == "unavailable":
            log.warning("GeoIP is currently unavailable (another instance failed to fetch it)")
            return None
        if status == "fetching":
            # another instance is downloading: its status key is all there is to wait on
            while await self._status() == "fetching":  # noqa: ASYNC110
                await asyncio.sleep(_STATUS_POLL_SECONDS)
            return "retry"
        await self._redis.set(MMDB_STATUS_KEY, json.dumps("fetching"), ex=MMDB_STATUS_TTL_SECONDS)
        try:
            file_name, compressed, content_type = await self._download()
            data = brotli.decompress(compressed)
            await self._save(file_name, compressed, content_type)
            self._use(data, file_name)
        except Exception as exc:
            await self._redis.set(MMDB_STATUS_KEY, json.dumps("unavailable"), ex=MMDB_STATUS_TTL_SECONDS)
            log.error("❌ An error occurred during MMDB fetch and insert", error=repr(exc))
            return None
        await self._redis.set(MMDB_STATUS_KEY, json.dumps("idle"))
        return file_name

    async def _status(self) -> str:
        assert self._redis is not None
        raw = await self._redis.get(MMDB_STATUS_KEY)
        if raw is None:
            return "idle"
        try:
            return str(json.loads(raw))
        except ValueError:
            return "idle"

    async def _download(self) -> tuple[str, bytes, str]:
        log.info("⏳ Downloading GeoLite2 database", url=self._url)
        timeout = aiohttp.ClientTimeout(total=self._download_timeout)
        async with (
            aiohttp.ClientSession(auto_decompress=False, timeout=timeout) as session,
            session.get(self._url) as response,
        ):
            response.raise_for_status()
            disposition = response.headers.get("content-disposition", "")
            match = _FILENAME.search(disposition)
            if not match:
                raise GeoIpDatabaseError("MMDB response has no content-disposition file name")
            body = await response.read()
            content_type = response.headers.get("content-type", "")
        file_name = match[1] + ".br"
        log.info("✅ Downloaded MMDB", file_name=file_name, size=len(body))
        return file_name, body, content_type

    async def _save(self, file_name: str, compressed: bytes, content_type: str) -> None:
        assert self._pg is not None
        async with self._pg.acquire() as conn, conn.transaction():
            new_id = await conn.fetchval(
                _INSERT_ROW, MMDB_ATTACHMENT_KEY, content_type, file_name, len(compressed), compressed
            )
            await conn.execute(_DELETE_OTHER_ROWS, MMDB_ATTACHMENT_KEY, new_id)
        log.info("💾 Saved MMDB into the database", file_name=file_name)

    async def _check_forever(self) -> None:
        while True:
            now = datetime.now(UTC)
            next_at = croniter(STALENESS_CRON, now).get_next(datetime)
            await asyncio.sleep((next_at - now).total_seconds())
            log.info("⏲ Performing periodic MMDB staleness check...")
            try:
                updated = await self.prepare(background=True)
            except Exception as exc:
                log.error("MMDB staleness check failed", error=repr(exc))
                continue
            log.info(
                "✅ MMDB staleness check completed"
                + (", update performed" if updated else ", no update needed")
            )
