"""Every setting, read once from the environment into one typed, validated object.

Names and defaults follow the Node plugin server (spec/services.md §2); settings this
service adds are marked as such in their help text.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

EnvClass = Literal["prod", "dev", "test"]
LOG_LEVELS = ("none", "debug", "info", "log", "warn", "error")
JOB_QUEUE_KINDS = ("graphile", "s3", "fs")
_TRUE = frozenset({"y", "yes", "t", "true", "on", "1"})
_FALSE = frozenset({"n", "no", "f", "false", "off", "0", ""})


class ConfigError(ValueError):
    """A setting has a value the service cannot use."""

    def __init__(self, name: str, value: str, expected: str) -> None:
        super().__init__(f"Invalid value for {name}: {value!r} (expected {expected})")
        self.name = name


def _var(
    default: Any,
    help: str,
    *,
    dev: Any = dataclasses.MISSING,
    test: Any = dataclasses.MISSING,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
) -> Any:
    meta = {"help": help, "dev": dev, "test": test, "choices": choices, "minimum": minimum}
    return field(default=default, metadata=meta)


def _cpu_count() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class Settings:
    """Field names are the environment variable names, lower-cased."""

    # -- worker pool and plugins
    worker_concurrency: int = _var(
        _cpu_count(),
        "Most plugin sandboxes (sub-interpreters) one organization uses at once; 0 means one per core",
        minimum=0,
    )
    tasks_per_worker: int = _var(10, "Plugin invocations one sandbox runs at once", minimum=1)
    task_timeout: float = _var(
        30.0,
        "Seconds a plugin call may run before it is stopped; also the slow-operation warning threshold",
        minimum=0.001,
    )
    # -- Celery
    celery_default_queue: str = _var(
        "celery", "Outgoing Celery queue (kept for compatibility; nothing is sent)"
    )
    plugins_celery_queue: str = _var("posthog-plugins", "Redis list the PostHog app pushes Celery tasks onto")
    # -- Postgres
    database_url: str | None = _var(
        None,
        "Postgres URL (required unless POSTHOG_DB_NAME is set)",
        dev="postgres://localhost:5432/posthog",
        test="postgres://localhost:5432/test_posthog",
    )
    posthog_db_name: str | None = _var(None, "Postgres database name, used when DATABASE_URL is empty")
    posthog_db_user: str = _var("postgres", "Postgres user, used with POSTHOG_DB_NAME")
    posthog_db_password: str = _var("", "Postgres password, used with POSTHOG_DB_NAME")
    posthog_postgres_host: str = _var("localhost", "Postgres host, used with POSTHOG_DB_NAME")
    posthog_postgres_port: int = _var(5432, "Postgres port, used with POSTHOG_DB_NAME", minimum=1)
    # -- ClickHouse
    clickhouse_host: str = _var("localhost", "ClickHouse host (Kafka mode)")
    clickhouse_database: str = _var("default", "ClickHouse database", test="posthog_test")
    clickhouse_user: str = _var("default", "ClickHouse user")
    clickhouse_password: str | None = _var(None, "ClickHouse password")
    clickhouse_ca: str | None = _var(None, "CA file for ClickHouse, relative to BASE_DIR")
    clickhouse_secure: bool = _var(False, "Use TLS (port 8443) for ClickHouse")
    # -- Kafka
    kafka_enabled: bool = _var(False, "Ingest from Kafka and write for ClickHouse instead of Postgres")
    kafka_hosts: str | None = _var(None, "Comma-separated Kafka brokers (required when KAFKA_ENABLED)")
    kafka_client_cert_b64: str | None = _var(None, "Kafka client certificate, base64 PEM")
    kafka_client_cert_key_b64: str | None = _var(None, "Kafka client key, base64 PEM")
    kafka_trusted_cert_b64: str | None = _var(None, "Kafka CA certificate, base64 PEM")
    kafka_consumption_topic: str = _var("events_plugin_ingestion", "Kafka topic events are ingested from")
    kafka_producer_max_queue_size: int = _var(1000, "Messages per Kafka producer batch", test=0, minimum=0)
    kafka_max_message_batch_size: int = _var(900000, "Bytes per Kafka producer batch", minimum=1)
    kafka_flush_frequency_ms: int = _var(500, "Longest a Kafka producer batch waits, in ms", minimum=0)
    kafka_batch_timeout_seconds: float = _var(
        120.0,
        "Longest one batch from the Kafka topic may take; past it the batch's events are retried one by "
        "one and an event that keeps failing is dead-lettered (added)",
        minimum=0.1,
    )
    # -- Redis
    redis_url: str = _var("redis://127.0.0.1", "Redis URL (must be the PostHog app's)")
    posthog_redis_password: str = _var("", "Redis password, used with POSTHOG_REDIS_HOST")
    posthog_redis_host: str = _var("", "Redis host; when set, REDIS_URL is ignored")
    posthog_redis_port: int = _var(6379, "Redis port, used with POSTHOG_REDIS_HOST", minimum=1)
    redis_pool_min_size: int = _var(1, "Redis connections kept open", minimum=1)
    redis_pool_max_size: int = _var(3, "Redis connections at most (the service opens at least 10)", minimum=1)
    # -- plugins, reload, schedules, jobs
    base_dir: str = _var(".", "Base directory for local (file:) plugins and CLICKHOUSE_CA")
    plugins_reload_pubsub_channel: str = _var("reload-plugins", "Redis pub/sub channel for plugin reloads")
    schedule_lock_ttl: int = _var(60, "Seconds the scheduler and job-consumer locks live", minimum=1)
    job_queues: str = _var("graphile", "Job queue backends, comma-separated: graphile, s3, fs")
    job_queue_graphile_url: str = _var("", "Postgres URL for the job queue; empty means DATABASE_URL")
    job_queue_graphile_schema: str = _var("graphile_worker", "Postgres schema of the job queue")
    job_queue_graphile_prepared_statements: bool = _var(False, "Use named prepared statements for jobs")
    job_queue_s3_aws_access_key: str = _var("", "S3 job queue access key")
    job_queue_s3_aws_secret_access_key: str = _var("", "S3 job queue secret key")
    job_queue_s3_aws_region: str = _var("us-west-1", "S3 job queue region")
    job_queue_s3_bucket_name: str = _var("", "S3 job queue bucket")
    job_queue_s3_prefix: str = _var("", "S3 job queue key prefix")
    crash_if_no_persistent_job_queue: bool = _var(False, "Exit when no job queue backend can start")
    # -- observability
    log_level: str = _var("info", "Lowest log level shown", test="warn", choices=LOG_LEVELS)
    sentry_dsn: str | None = _var(None, "Sentry DSN (accepted; errors are logged)")
    statsd_host: str | None = _var(None, "StatsD host (accepted; metrics are served on /metrics)")
    statsd_port: int = _var(8125, "StatsD port", minimum=1)
    statsd_prefix: str = _var("plugin-server.", "StatsD metric prefix")
    capture_internal_metrics: bool = _var(False, "Capture internal metrics as PostHog events")
    staleness_restart_seconds: int = _var(
        0, "Restart when no event was ingested for this many seconds; 0 disables", minimum=0
    )
    # -- GeoIP
    disable_mmdb: bool = _var(False, "Disable GeoIP", test=True)
    distinct_id_lru_size: int = _var(10000, "Size of the seen-person cache", minimum=0)
    internal_mmdb_server_port: int = _var(
        0, "Port of the original's internal GeoIP server (unused)", minimum=0
    )
    # -- modes
    plugin_server_idle: bool = _var(False, "Start, serve probes and process nothing")
    piscina_use_atomics: bool = _var(True, "Accepted for compatibility; no effect")
    piscina_atomics_timeout: int = _var(5000, "Accepted for compatibility; no effect", minimum=0)
    # -- added by this service
    http_server_host: str = _var("0.0.0.0", "Address of the HTTP probe and metrics server (added)")
    http_server_port: int = _var(
        6738, "Port of the HTTP probe and metrics server; 0 disables it (added)", minimum=0
    )
    shutdown_timeout_seconds: float = _var(
        30.0, "Longest a graceful shutdown may take before the process exits non-zero (added)", minimum=0
    )
    log_format: str = _var(
        "auto",
        "Log format: json, text, or auto (text on a terminal, else json) (added)",
        choices=("auto", "json", "text"),
    )
    ingestion_batch_size: int = _var(2000, "Celery/Kafka messages taken per batch (added)", minimum=1)
    celery_heartbeat_ttl_seconds: float = _var(
        30.0,
        "Seconds without a heartbeat after which an instance's in-flight Celery batch is re-queued (added)",
        minimum=1,
    )
    ingestion_max_event_bytes: int = _var(
        10_000_000,
        "Largest stored properties (or snapshot data) of one event, in bytes; larger events are "
        "dead-lettered (added)",
        minimum=1024,
    )
    hook_timeout_seconds: float = _var(
        10.0, "Timeout of one webhook or REST hook request, in seconds (added)", minimum=0.001
    )
    mmdb_file_path: str = _var("", "Path of a GeoLite2-City .mmdb file to use for GeoIP (added)")
    sandbox_memory_limit_mb: int = _var(
        512, "Memory one plugin sandbox may allocate before its call fails, in MB (added)", minimum=16
    )
    sandbox_max_alive: int = _var(
        100,
        "Most Python plugin sandboxes alive at once, over all organizations; at the cap the least "
        "recently used idle one is closed (added)",
        minimum=1,
    )
    sandbox_idle_seconds: float = _var(
        0.0,
        "Seconds an organization's unused plugin sandbox stays alive; 0 = until the cap needs its "
        "place (added)",
        minimum=0,
    )
    plugin_fetch_allow_private: bool = _var(
        False, "Let plugins fetch private, loopback and link-local addresses (added)"
    )
    env_class: str = field(default="prod", metadata={"internal": True})

    # ------------------------------------------------------------------ derived values
    @property
    def postgres_dsn(self) -> str:
        if self.database_url:
            return self.database_url
        assert self.posthog_db_name
        password = f":{self.posthog_db_password}" if self.posthog_db_password else ""
        return (
            f"postgres://{self.posthog_db_user}{password}@{self.posthog_postgres_host}:"
            f"{self.posthog_postgres_port}/{self.posthog_db_name}"
        )

    @property
    def redis_dsn(self) -> str:
        if self.posthog_redis_host:
            password = f":{self.posthog_redis_password}@" if self.posthog_redis_password else ""
            return f"redis://{password}{self.posthog_redis_host}:{self.posthog_redis_port}"
        return self.redis_url

    @property
    def sandbox_count(self) -> int:
        return self.worker_concurrency if self.worker_concurrency > 0 else _cpu_count()

    @property
    def job_queue_kinds(self) -> list[str]:
        return [item.strip() for item in self.job_queues.split(",") if item.strip()]

    @property
    def kafka_brokers(self) -> list[str]:
        return [h.strip() for h in (self.kafka_hosts or "").split(",") if h.strip()]

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def settings_fields() -> list[dataclasses.Field[Any]]:
    """Fields that are environment variables, in declaration order."""
    return [f for f in dataclasses.fields(Settings) if not f.metadata.get("internal")]


def env_name(f: dataclasses.Field[Any]) -> str:
    return f.name.upper()


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(name, raw, "one of true/false, yes/no, on/off, 1/0")


def _env_class(env: Mapping[str, str]) -> EnvClass:
    node_env = env.get("NODE_ENV", "").lower()
    if node_env.startswith("test"):
        return "test"
    if node_env.startswith("dev"):
        return "dev"
    debug = env.get("DEBUG", "").strip().lower()
    return "dev" if debug in _TRUE else "prod"


def default_for(f: dataclasses.Field[Any], env_class: EnvClass) -> Any:
    for klass in ("test", "dev") if env_class == "test" else ("dev",) if env_class == "dev" else ():
        value = f.metadata.get(klass, dataclasses.MISSING)
        # test defaults fall back to dev defaults, as in the original
        if value is not dataclasses.MISSING:
            return value
    return f.default


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    name = env_name(f)
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    value: Any
    if kind == "bool":
        value = parse_bool(name, raw)
    elif kind in ("int", "float"):
        text = raw.strip()
        try:
            value = int(text) if kind == "int" else float(text)
        except ValueError:
            raise ConfigError(name, raw, "an integer" if kind == "int" else "a number") from None
        minimum = f.metadata.get("minimum")
        if minimum is not None and value < minimum:
            raise ConfigError(name, raw, f"a number >= {minimum:g}")
    else:
        value = raw
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(name, raw, "one of " + ", ".join(choices))
    return value


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build the settings from defaults, then the environment, then explicit overrides."""
    env = os.environ if env is None else env
    env_class = _env_class(env)
    values: dict[str, Any] = {"env_class": env_class}
    for f in settings_fields():
        name = env_name(f)
        values[f.name] = _convert(f, env[name]) if name in env else default_for(f, env_class)
    if "LOG_LEVEL" in env:
        values["log_level"] = values["log_level"].lower()
    values.update(overrides)
    settings = Settings(**values)
    _validate(settings)
    return settings


def require_postgres(settings: Settings) -> None:
    """The modes that use Postgres call this; --healthcheck and idle mode need none."""
    if not settings.database_url and not settings.posthog_db_name:
        raise ConfigError("DATABASE_URL", "", "a Postgres URL, or POSTHOG_DB_NAME set")


def _validate(settings: Settings) -> None:
    for kind in settings.job_queue_kinds:
        if kind not in JOB_QUEUE_KINDS:
            raise ConfigError(
                "JOB_QUEUES", settings.job_queues, "a comma list of " + ", ".join(JOB_QUEUE_KINDS)
            )
    if settings.kafka_enabled and not settings.kafka_brokers:
        raise ConfigError(
            "KAFKA_HOSTS", settings.kafka_hosts or "", "brokers to use when KAFKA_ENABLED is true"
        )


def help_lines(env_class: EnvClass = "prod") -> list[str]:
    """One line per setting: name, default and meaning."""
    lines = []
    for f in settings_fields():
        default = default_for(f, env_class)
        shown = "(unset)" if default is None else repr(default) if isinstance(default, str) else str(default)
        if f.name == "worker_concurrency":
            shown = "number of CPU cores"
        lines.append(f"  {env_name(f):<40} default {shown:<28} {f.metadata['help']}")
    return lines
