"""Settings: names, defaults, parsing and validation (spec/services.md §2, §9.6)."""

from __future__ import annotations

import pytest

from plugin_server.config import ConfigError, load_settings, require_postgres, settings_fields
from tests.fixtures import FIXTURES

ORIGINAL_SETTINGS = FIXTURES / "original_settings.txt"


def spec_variables() -> list[str]:
    """The variables the original reads (spec/services.md §2.2), kept as a fixture."""
    lines = ORIGINAL_SETTINGS.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_every_spec_variable_is_a_setting() -> None:
    names = spec_variables()
    assert len(names) == 58
    settings_names = {f.name.upper() for f in settings_fields()}
    assert set(names) <= settings_names


def test_9_6_24_numbers_bools_and_strings_from_env() -> None:
    s = load_settings({"KAFKA_ENABLED": "false", "TASK_TIMEOUT": "3008", "CLICKHOUSE_HOST": "0.0.0.0"})
    assert s.kafka_enabled is False
    assert s.task_timeout == 3008
    assert s.clickhouse_host == "0.0.0.0"
    assert s.base_dir == "."


def test_9_6_25_truthy_and_fractional() -> None:
    s = load_settings({"KAFKA_ENABLED": "1", "KAFKA_HOSTS": "k:9092", "TASK_TIMEOUT": "3008.12"})
    assert s.kafka_enabled is True
    assert s.task_timeout == 3008.12
    assert s.kafka_brokers == ["k:9092"]


def test_env_class_defaults() -> None:
    test = load_settings({"NODE_ENV": "test"})
    assert test.database_url == "postgres://localhost:5432/test_posthog"
    assert test.log_level == "warn" and test.disable_mmdb is True and test.kafka_producer_max_queue_size == 0
    dev = load_settings({"DEBUG": "1"})
    assert dev.database_url == "postgres://localhost:5432/posthog" and dev.log_level == "info"
    prod = load_settings({})
    assert prod.database_url is None and prod.disable_mmdb is False


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"KAFKA_ENABLED": "maybe"}, "KAFKA_ENABLED"),
        ({"TASK_TIMEOUT": "soon"}, "TASK_TIMEOUT"),
        ({"WORKER_CONCURRENCY": "1.5"}, "WORKER_CONCURRENCY"),
        ({"TASKS_PER_WORKER": "0"}, "TASKS_PER_WORKER"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"JOB_QUEUES": "graphile,carrier-pigeon"}, "JOB_QUEUES"),
        ({"KAFKA_ENABLED": "true"}, "KAFKA_HOSTS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.name == name
    assert name in str(info.value)


def test_postgres_from_parts_and_redis_host_override() -> None:
    s = load_settings(
        {
            "POSTHOG_DB_NAME": "ph",
            "POSTHOG_DB_USER": "u",
            "POSTHOG_DB_PASSWORD": "p",
            "POSTHOG_POSTGRES_HOST": "db",
            "POSTHOG_REDIS_HOST": "cache",
            "POSTHOG_REDIS_PASSWORD": "secret",
        }
    )
    assert s.postgres_dsn == "postgres://u:p@db:5432/ph"
    assert s.redis_dsn == "redis://:secret@cache:6379"
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        require_postgres(load_settings({}))


def test_job_queue_items_are_trimmed_and_empties_skipped() -> None:
    assert load_settings({"JOB_QUEUES": " graphile , ,fs"}).job_queue_kinds == ["graphile", "fs"]
