"""`python -m plugin_server plugin new|run`: make a plugin folder, or run a plugin on sample
events the way the server would, without a PostHog instance."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from plugin_server.config import ConfigError, Settings, load_settings
from plugin_server.db.postgres import create_pool
from plugin_server.local.plugin import LocalPlugin, PluginCallFailed, PluginLoadFailed
from plugin_server.local.scaffold import LANGUAGES, ScaffoldError, new_plugin

EXIT_FAILED = 1
EXIT_USAGE = 2


class BadInput(ValueError):
    """The command line or the events file cannot be used."""


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="python -m plugin_server plugin",
        description="Write and try PostHog plugins. Guide: docs/writing-plugins.md",
    )
    commands = main.add_subparsers(dest="command", required=True)

    new = commands.add_parser("new", help="make a plugin folder with a test that passes")
    new.add_argument("name", help="the plugin's name; also the folder made in the current directory")
    new.add_argument("--lang", choices=LANGUAGES, default="python", help="default: python")
    new.add_argument("--dir", default=".", help="where to make the folder (default: here)")

    run = commands.add_parser(
        "run",
        help="load a plugin from a folder and run it on events",
        description=(
            "Loads the plugin as the server does (same loader, sandbox or V8 isolate, guard and "
            "limits), runs setup, process_event on each event, then on_event and export_events. "
            "Prints the resulting events as JSON lines on stdout (a dropped event prints nothing) "
            "and the plugin's log on stderr. Exit status 1 with a one-line reason when the "
            "plugin fails to load or a call fails. Limits come from TASK_TIMEOUT and "
            "SANDBOX_MEMORY_LIMIT_MB as for the server."
        ),
    )
    run.add_argument("directory", help="the plugin folder (with plugin.json)")
    run.add_argument("--events", help="a JSON array or JSON lines of events; - for stdin")
    run.add_argument("--config", action="append", default=[], metavar="KEY=VALUE", help="a config value")
    run.add_argument("--attachment", action="append", default=[], metavar="KEY=PATH", help="an attachment")
    run.add_argument("--task", help="run a scheduled task, e.g. runEveryMinute")
    run.add_argument("--job", help="run a job by name (with --payload)")
    run.add_argument("--payload", default="null", help="the job's payload as JSON (default: null)")
    run.add_argument("--team-id", type=int, default=1, help="team of the plugin config (default: 1)")
    run.add_argument("--plugin-config-id", type=int, default=1, help="plugin config id (default: 1)")
    run.add_argument("--redis", metavar="URL", help="keep meta.cache in this Redis instead of memory")
    run.add_argument(
        "--database",
        metavar="URL",
        help="keep meta.storage in this Postgres (a PostHog database: --plugin-config-id must exist)",
    )
    run.add_argument("--mmdb", metavar="FILE", help="a GeoLite2-City .mmdb answering meta.geoip.locate")
    run.add_argument(
        "--allow-private-fetch",
        action="store_true",
        help="let fetch reach loopback and private addresses (PLUGIN_FETCH_ALLOW_PRIVATE)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="print the stack of a failure too")
    return main


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    if args.command == "new":
        try:
            path = new_plugin(args.name, args.lang, args.dir)
        except ScaffoldError as exc:
            print(f"plugin new: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"Made {path}. Next: cd {path} && python -m pytest")
        return 0
    try:
        settings = load_settings()
        config = _pairs(args.config, "--config")
        attachments = _pairs(args.attachment, "--attachment")
        events = _read_events(args.events) if args.events else []
        payload = _payload(args.payload)
        if not (args.events or args.task or args.job):
            raise BadInput("give --events FILE, --task NAME or --job NAME")
    except (BadInput, ConfigError, OSError) as exc:
        print(f"plugin run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_run(args, settings, config, attachments, events, payload))


async def _run(
    args: argparse.Namespace,
    settings: Settings,
    config: dict[str, str],
    attachments: dict[str, str],
    events: list[Any],
    payload: Any,
) -> int:
    redis: aioredis.Redis | None = None
    pg: asyncpg.Pool | None = None
    name = args.directory
    try:
        if args.redis:
            redis = aioredis.Redis.from_url(args.redis)
        if args.database:
            pg = await create_pool(args.database, max_size=2)
        plugin = LocalPlugin(
            args.directory,
            config,
            attachments=attachments,
            team_id=args.team_id,
            plugin_config_id=args.plugin_config_id,
            task_timeout=settings.task_timeout,
            memory_limit_mb=settings.sandbox_memory_limit_mb,
            redis=redis,
            pg=pg,
            mmdb_path=args.mmdb or settings.mmdb_file_path or None,
            allow_private_fetch=args.allow_private_fetch or settings.plugin_fetch_allow_private,
            on_log=_print_log,
        )
        name = plugin.name
        async with plugin:
            try:
                await _drive(plugin, args, events, payload)
            finally:
                _report_side_effects(plugin)
    except PluginLoadFailed as exc:
        print(f"plugin run: {name} failed to load: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except PluginCallFailed as exc:
        if args.verbose and exc.error.get("stack"):
            print(str(exc.error["stack"]).rstrip(), file=sys.stderr)
        retry = " (the server would retry it later)" if exc.retry else ""
        print(f"plugin run: {name}: {exc}{retry}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, asyncpg.PostgresError, RedisError) as exc:
        print(f"plugin run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if redis is not None:
            await redis.aclose()
        if pg is not None:
            await pg.close()
    return 0


async def _drive(plugin: LocalPlugin, args: argparse.Namespace, events: list[Any], payload: Any) -> None:
    """setup has run: process_event on each event, then on_event (on_snapshot for session
    recordings) and export_events (in the server's batches) on the results, then the task or job
    asked for; teardown follows when the plugin is closed."""
    results = []
    for number, event in enumerate(events, 1):
        try:
            result = await plugin.process_event(event)
        except PluginCallFailed as exc:
            raise PluginCallFailed(f"{exc.method} (event {number})", exc.error) from None
        if result is not None:
            _print_json(result)
            results.append(result)
    for result in results:
        await plugin.on_event(result)
    await plugin.export_buffered(results)
    if args.task:
        _print_json_value(await plugin.run_task(args.task))
    if args.job:
        _print_json_value(await plugin.run_job(args.job, payload))


def _pairs(items: Sequence[str], option: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadInput(f"{option} takes KEY=VALUE, not {item!r}")
        pairs[key] = value
    return pairs


def _payload(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadInput(f"--payload is not JSON: {exc}") from None


def _read_events(path: str) -> list[Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path} is not UTF-8 text: {exc}") from None
    stripped = text.strip()
    if not stripped:
        return []
    if stripped.startswith("["):
        try:
            events = json.loads(stripped)
        except ValueError as exc:
            raise BadInput(f"{path} is not a JSON array: {exc}") from None
    else:
        events = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    events.append(json.loads(line))
                except ValueError as exc:
                    raise BadInput(f"{path} line {number} is not JSON: {exc}") from None
    for number, event in enumerate(events, 1):
        if not isinstance(event, dict):
            raise BadInput(f"event {number} of {path} is not a JSON object")
    return list(events)


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, default=str), flush=True)


def _print_json_value(value: Any) -> None:
    if value is not None:
        _print_json(value)


def _print_log(level: str, message: str) -> None:
    print(f"[{level}] {message}", file=sys.stderr, flush=True)


def _report_side_effects(plugin: LocalPlugin) -> None:
    """What a server would have done next, shown on stderr."""
    for job in plugin.jobs:
        print(f"[JOB] {job.name} enqueued with payload {json.dumps(job.payload)}", file=sys.stderr)
    for captured in plugin.captured:
        print(f"[CAPTURE] {captured.event} {json.dumps(captured.properties)}", file=sys.stderr)
    plugin.jobs.clear()
    plugin.captured.clear()
