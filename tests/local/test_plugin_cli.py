"""`python -m plugin_server plugin new|run` end to end, in subprocesses, from another folder."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from tests.conftest import REDIS_DB
from tests.factories import create_plugin, create_plugin_config, create_team
from tests.local.cli import EXAMPLES, author_env, json_lines, plugin_cli


@pytest.mark.parametrize("lang", ["python", "js"])
def test_new_plugin_runs_and_its_generated_test_passes(tmp_path: Path, lang: str) -> None:
    made = plugin_cli("new", "my-plugin", "--lang", lang, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    folder = tmp_path / "my-plugin"
    assert {p.name for p in folder.iterdir()} >= {"plugin.json", "README.md", "test_my_plugin.py"}
    main = json.loads((folder / "plugin.json").read_text())["main"]
    assert (folder / main).exists()

    ran = plugin_cli("run", ".", "--events", "events.jsonl", "--config", "greeting=hi", cwd=folder)
    assert ran.returncode == 0, ran.stderr
    events = json_lines(ran.stdout)
    assert [e["event"] for e in events] == ["pageview", "signed up"]
    assert all(e["properties"]["greeting"] == "hi" for e in events)

    tested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"],
        cwd=folder,
        env=author_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "2 passed" in tested.stdout


def test_new_refuses_an_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    result = plugin_cli("new", "taken", cwd=tmp_path)
    assert result.returncode == 2
    assert "already exists" in result.stderr


def test_property_filter_drops_and_strips_events(tmp_path: Path) -> None:
    result = plugin_cli(
        "run",
        str(EXAMPLES / "property-filter"),
        "--events",
        str(EXAMPLES / "property-filter" / "events.jsonl"),
        "--config",
        "drop_events=$pageleave",
        "--config",
        "remove_properties=email",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    events = json_lines(result.stdout)
    assert [e["event"] for e in events] == ["$pageview", "signed up"]  # $pageleave dropped
    assert all("email" not in e["properties"] for e in events)
    assert "[DEBUG] dropped $pageleave" in result.stderr


def test_pii_hasher_reads_a_json_array_from_stdin(tmp_path: Path) -> None:
    events = [{"event": "signed up", "distinct_id": "u", "properties": {"email": "a@example.com"}}]
    result = plugin_cli(
        "run",
        str(EXAMPLES / "pii-hasher"),
        "--events",
        "-",
        "--config",
        "salt=a-long-secret-salt-value",
        cwd=tmp_path,
        input=json.dumps(events),
    )
    assert result.returncode == 0, result.stderr
    [event] = json_lines(result.stdout)
    assert len(event["properties"]["email"]) == 64 and event["properties"]["email"] != "a@example.com"


def test_a_plugin_failing_setup_exits_1_with_the_reason(tmp_path: Path) -> None:
    result = plugin_cli(
        "run",
        str(EXAMPLES / "pii-hasher"),
        "--events",
        str(EXAMPLES / "pii-hasher" / "events.jsonl"),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "plugin run: PII Hasher failed to load: ValueError: The salt must be at least 16 characters long"
    ]


def _mmdb(path: Path) -> Path:
    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-City", languages=["en"], description="test")
    writer.insert_network(
        IPSet(["89.160.20.128/25"]),
        {"city": {"names": {"en": "Stockholm"}}, "country": {"iso_code": "SE", "names": {"en": "Sweden"}}},
    )
    writer.to_db_file(str(path))
    return path


def test_geoip_enrichment_uses_the_given_database(tmp_path: Path) -> None:
    mmdb = _mmdb(tmp_path / "GeoLite2-City-Test.mmdb")
    result = plugin_cli(
        "run",
        str(EXAMPLES / "geoip-enrichment"),
        "--events",
        str(EXAMPLES / "geoip-enrichment" / "events.jsonl"),
        "--mmdb",
        str(mmdb),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    located, private = json_lines(result.stdout)
    assert located["properties"]["$geoip_city_name"] == "Stockholm"
    assert located["$set_once"]["$initial_geoip_country_code"] == "SE"
    assert "$geoip_city_name" not in private["properties"]


class _Endpoint:
    def __init__(self, status: int) -> None:
        self.bodies: list[Any] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"


@pytest.fixture
def endpoint(request: pytest.FixtureRequest) -> Iterator[_Endpoint]:
    served = _Endpoint(getattr(request, "param", 200))
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    yield served
    served.server.shutdown()
    served.server.server_close()
    thread.join()


def _export(url: str, cwd: Path, *config: str) -> Any:
    return plugin_cli(
        "run",
        str(EXAMPLES / "http-export"),
        "--events",
        str(EXAMPLES / "http-export" / "events.jsonl"),
        "--config",
        f"url={url}",
        *(arg for pair in config for arg in ("--config", pair)),
        "--allow-private-fetch",
        cwd=cwd,
    )


def test_http_export_sends_the_resulting_events_as_one_batch(tmp_path: Path, endpoint: _Endpoint) -> None:
    result = _export(endpoint.url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert [e["event"] for e in json_lines(result.stdout)] == ["signed up", "$pageview"]
    [body] = endpoint.bodies
    assert [e["event"] for e in body["batch"]] == ["signed up", "$pageview"]


def test_http_export_batches_as_the_server_buffer_does(tmp_path: Path, endpoint: _Endpoint) -> None:
    result = _export(endpoint.url, tmp_path, "exportEventsBufferBytes=1")
    assert result.returncode == 0, result.stderr
    assert sorted(len(body["batch"]) for body in endpoint.bodies) == [1, 1]  # one event per batch
    endpoint.bodies.clear()
    result = _export(endpoint.url, tmp_path, "exportEventsToIgnore=$pageview, other")
    assert result.returncode == 0, result.stderr
    assert [[e["event"] for e in body["batch"]] for body in endpoint.bodies] == [["signed up"]]


@pytest.mark.parametrize("endpoint", [503], indirect=True)
def test_http_export_retry_error_exits_1_saying_it_would_be_retried(
    tmp_path: Path, endpoint: _Endpoint
) -> None:
    result = _export(endpoint.url, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "plugin run: HTTP Export: export_events failed: RetryError: The endpoint answered 503; "
        "the batch will be retried (the server would retry it later)"
    )


def test_typescript_plugin_runs_events_and_its_scheduled_task(tmp_path: Path) -> None:
    folder = EXAMPLES / "typescript-utm-tagger"
    result = plugin_cli(
        "run", str(folder), "--events", str(folder / "events.jsonl"), "--task", "runEveryMinute", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    tagged, plain = json_lines(result.stdout)
    assert tagged["properties"]["utm_source"] == "newsletter"
    assert "utm_source" not in plain["properties"]
    assert "[LOG] tagged events so far: 1" in result.stderr.splitlines()


def _write_plugin(folder: Path, source: str) -> Path:
    folder.mkdir()
    (folder / "plugin.json").write_text(json.dumps({"name": folder.name, "main": "main.py"}))
    (folder / "main.py").write_text(source)
    return folder


def test_a_plugin_importing_a_refused_module_fails_to_load(tmp_path: Path) -> None:
    folder = _write_plugin(tmp_path / "sneaky", "import subprocess\n")
    (tmp_path / "events.jsonl").write_text('{"event": "x"}\n')
    result = plugin_cli("run", str(folder), "--events", "events.jsonl", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "plugin run: sneaky failed to load: ImportError: Cannot import 'subprocess'! "
        "This package is not provided by PostHog in plugins."
    )


def test_a_failing_call_exits_1_naming_the_event_after_printing_the_earlier_ones(tmp_path: Path) -> None:
    folder = _write_plugin(
        tmp_path / "picky",
        "def process_event(event, meta):\n"
        "    if event['event'] == 'bad':\n"
        "        raise ValueError('no bad events')\n"
        "    print('saw', event['event'])\n"
        "    return event\n",
    )
    events = [{"event": "good"}, {"event": "bad"}, {"event": "never"}]
    result = plugin_cli("run", str(folder), "--events", "-", cwd=tmp_path, input=json.dumps(events))
    assert result.returncode == 1
    assert [e["event"] for e in json_lines(result.stdout)] == ["good"]
    assert result.stderr.splitlines() == [
        "[LOG] saw good",
        "plugin run: picky: process_event (event 2) failed: ValueError: no bad events",
    ]


def test_the_time_limit_applies_as_on_the_server(tmp_path: Path) -> None:
    source = "def process_event(event, meta):\n    while True:\n        pass\n"
    folder = _write_plugin(tmp_path / "looping", source)
    env = author_env(TASK_TIMEOUT="1")
    result = plugin_cli("run", str(folder), "--events", "-", cwd=tmp_path, input='{"event": "x"}', env=env)
    assert result.returncode == 1
    assert "TimeoutError: Script execution timed out after looping for 1 second" in result.stderr


def test_a_job_runs_with_its_payload_and_enqueued_jobs_are_shown(tmp_path: Path) -> None:
    folder = _write_plugin(
        tmp_path / "jobby",
        "def greet(payload, meta):\n"
        "    meta.jobs.greet({'n': payload['n'] + 1}).run_in(1, 'minutes')\n"
        "    return {'greeted': payload['n']}\n"
        "jobs = {'greet': greet}\n",
    )
    result = plugin_cli("run", str(folder), "--job", "greet", "--payload", '{"n": 1}', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json_lines(result.stdout) == [{"greeted": 1}]
    assert '[JOB] greet enqueued with payload {"n": 2}' in result.stderr.splitlines()

    missing = plugin_cli("run", str(folder), "--job", "nope", cwd=tmp_path)
    assert missing.returncode == 1
    assert 'Job "nope" not found' in missing.stderr


def test_dropped_events_print_nothing(tmp_path: Path) -> None:
    folder = _write_plugin(tmp_path / "dropper", "def process_event(event, meta):\n    return None\n")
    result = plugin_cli("run", str(folder), "--events", "-", cwd=tmp_path, input='[{"event": "x"}]')
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--events", "-"], "line 1 is not JSON"),
        ([], "give --events FILE, --task NAME or --job NAME"),
        (["--task", "runEveryMinute", "--config", "novalue"], "--config takes KEY=VALUE"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    folder = _write_plugin(tmp_path / "any", "")
    result = plugin_cli("run", str(folder), *args, cwd=tmp_path, input="{not json")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert message in line


async def test_redis_keeps_the_cache_between_runs(tmp_path: Path, redis: aioredis.Redis) -> None:
    folder = _write_plugin(
        tmp_path / "counter",
        "async def process_event(event, meta):\n"
        "    event['properties']['seen'] = await meta.cache.incr('seen')\n"
        "    return event\n",
    )
    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    for expected in (1, 2):
        result = await asyncio.to_thread(
            plugin_cli, "run", str(folder), "--events", "-", "--redis", url, cwd=tmp_path, input="{}"
        )
        assert result.returncode == 0, result.stderr
        assert json_lines(result.stdout)[0]["properties"]["seen"] == expected
    assert await redis.get("@plugin/1/1/seen") == b"2"


def test_a_failing_teardown_exits_1_after_the_events_are_printed(tmp_path: Path) -> None:
    folder = _write_plugin(
        tmp_path / "messy",
        "def process_event(event, meta):\n    return event\n"
        "def teardown_plugin(meta):\n    raise RuntimeError('left a mess')\n",
    )
    result = plugin_cli("run", str(folder), "--events", "-", cwd=tmp_path, input='{"event": "x"}')
    assert result.returncode == 1
    assert [e["event"] for e in json_lines(result.stdout)] == ["x"]
    assert result.stderr.strip() == "plugin run: messy: teardown_plugin failed: RuntimeError: left a mess"


def test_session_recordings_skip_process_event_and_go_to_on_snapshot(tmp_path: Path) -> None:
    folder = _write_plugin(
        tmp_path / "recorder",
        "def process_event(event, meta):\n    event['properties']['seen'] = True\n    return event\n"
        "def on_event(event, meta):\n    print('event', event['event'])\n"
        "def on_snapshot(event, meta):\n    print('snapshot', event['event'])\n",
    )
    events = [{"event": "$snapshot"}, {"event": "$pageview"}]
    result = plugin_cli("run", str(folder), "--events", "-", cwd=tmp_path, input=json.dumps(events))
    assert result.returncode == 0, result.stderr
    snapshot, pageview = json_lines(result.stdout)
    assert "seen" not in snapshot["properties"] and pageview["properties"]["seen"] is True
    assert result.stderr.splitlines() == ["[LOG] snapshot $snapshot", "[LOG] event $pageview"]


def test_attachments_are_read_from_files(tmp_path: Path) -> None:
    folder = _write_plugin(
        tmp_path / "attached",
        "def process_event(event, meta):\n"
        "    a = meta.attachments['list']\n"
        "    event['properties']['list'] = [a.file_name, a.contents.decode()]\n"
        "    return event\n",
    )
    (tmp_path / "names.txt").write_text("ada\nbob\n")
    result = plugin_cli(
        "run", str(folder), "--events", "-", "--attachment", "list=names.txt", cwd=tmp_path, input="{}"
    )
    assert result.returncode == 0, result.stderr
    assert json_lines(result.stdout)[0]["properties"]["list"] == ["names.txt", "ada\nbob\n"]


async def test_database_keeps_storage_in_the_plugin_configs_rows(
    tmp_path: Path, pg: asyncpg.Pool, pg_dsn: str
) -> None:
    await create_team(pg)
    await create_plugin(pg)
    await create_plugin_config(pg, config_id=39)
    folder = _write_plugin(
        tmp_path / "remember",
        "async def process_event(event, meta):\n"
        "    event['properties']['before'] = await meta.storage.get('last')\n"
        "    await meta.storage.set('last', event['event'])\n"
        "    return event\n",
    )
    args = ["run", str(folder), "--events", "-", "--database", pg_dsn, "--plugin-config-id", "39"]
    first = await asyncio.to_thread(plugin_cli, *args, cwd=tmp_path, input='{"event": "one"}')
    second = await asyncio.to_thread(plugin_cli, *args, cwd=tmp_path, input='{"event": "two"}')
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert json_lines(second.stdout)[0]["properties"]["before"] == "one"
    row = await pg.fetchrow("SELECT value FROM posthog_pluginstorage WHERE plugin_config_id = 39")
    assert row is not None and row["value"] == '"two"'
