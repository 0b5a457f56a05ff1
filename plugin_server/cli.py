"""Command line: `python -m plugin_server [--help|--version|--healthcheck|--migrate|--idle]`, and
`python -m plugin_server plugin new|run ...` for plugin authors (plugin_server/local/cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from plugin_server.config import ConfigError, Settings, help_lines, load_settings, require_postgres
from plugin_server.logs import configure_logging, get_logger
from plugin_server.version import NAME, VERSION

EXIT_CONFIG = 2
log = get_logger("plugin_server.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m plugin_server",
        description="PostHog plugin server: ingests events and runs plugins. Settings: environment.",
        add_help=False,
    )
    parser.add_argument("-h", "--help", action="store_true", help="show settings and exit")
    parser.add_argument("-v", "--version", action="store_true", help="print the version and exit")
    parser.add_argument("--healthcheck", action="store_true", help="exit 0 if a server is alive, else 1")
    parser.add_argument("--migrate", action="store_true", help="apply database migrations and exit")
    parser.add_argument("--idle", action="store_true", help="serve probes only; process nothing")
    parser.epilog = "Plugin authors: `python -m plugin_server plugin --help` (new, run)."
    return parser


def print_help() -> None:
    parser = _parser()
    print(f"⚡ {NAME} v{VERSION}")
    print(parser.format_help())
    print("Supported configuration environment variables:")
    for line in help_lines():
        print(line)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["plugin"]:
        from plugin_server.local.cli import main as plugin_main

        return plugin_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.help:
        print_help()
        return 0
    if args.version:
        print(VERSION)
        return 0
    try:
        settings = load_settings()
        if not (args.healthcheck or args.idle or settings.plugin_server_idle):
            require_postgres(settings)
    except ConfigError as exc:
        print(f"plugin-server: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format, version=VERSION, pid=os.getpid())
    log.info(f"⚡ {NAME} v{VERSION}")
    return asyncio.run(_dispatch(args, settings))


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.healthcheck:
        from plugin_server.healthcheck import healthcheck

        return await healthcheck(settings)
    if args.migrate:
        return await _migrate(settings)
    if args.idle or settings.plugin_server_idle:
        from plugin_server.app import run_idle

        return await run_idle(settings)
    from plugin_server.app import Server

    return await Server(settings).serve()


async def _migrate(settings: Settings) -> int:
    from plugin_server.db.migrate import migrate

    try:
        applied = await migrate(settings.postgres_dsn, graphile_schema=settings.job_queue_graphile_schema)
        if settings.job_queue_graphile_url and "graphile" in settings.job_queue_kinds:
            from plugin_server.services.jobs import migrate_job_queue

            await migrate_job_queue(settings.job_queue_graphile_url, settings.job_queue_graphile_schema)
    except Exception as exc:
        log.error("🔴 Error running migrations!", error=repr(exc))
        return 1
    log.info("✅ Migrations are now up to date!", applied=applied)
    return 0
