"""The TypeScript plugin runs in a V8 isolate, as on the server; the tests are Python."""

from pathlib import Path

from plugin_server.testing import load_plugin, make_event

HERE = Path(__file__).parent
LANDING = "https://example.com/?utm_source=newsletter&utm_medium=email&utm_campaign=spring&x=1"


def test_utm_parameters_are_copied_to_the_event_and_the_first_touch() -> None:
    with load_plugin(HERE) as plugin:
        result = plugin.process_event(make_event(properties={"$current_url": LANDING}))
    assert result is not None
    assert result["properties"] == {
        "$current_url": LANDING,
        "utm_source": "newsletter",
        "utm_medium": "email",
        "utm_campaign": "spring",
    }
    assert result["$set_once"] == {
        "initial_utm_source": "newsletter",
        "initial_utm_medium": "email",
        "initial_utm_campaign": "spring",
    }


def test_only_the_configured_parameters_are_copied() -> None:
    with load_plugin(HERE, {"parameters": "utm_campaign"}) as plugin:
        result = plugin.process_event(make_event(properties={"$current_url": LANDING}))
    assert result is not None
    assert result["properties"]["utm_campaign"] == "spring"
    assert "utm_source" not in result["properties"]


def test_events_without_utm_parameters_pass_unchanged() -> None:
    events = [
        make_event(properties={"$current_url": "https://example.com/pricing"}),
        make_event(properties={"$current_url": "not a url"}),
        make_event(),
    ]
    with load_plugin(HERE) as plugin:
        assert plugin.process_events(events) == events
        assert plugin.cached("tagged_events") is None


def test_the_scheduled_task_logs_the_number_of_tagged_events() -> None:
    with load_plugin(HERE) as plugin:
        assert plugin.exports["run_every"] == ["run_every_minute"]
        for _ in range(3):
            plugin.process_event(make_event(properties={"$current_url": LANDING}))
        plugin.run_task("runEveryMinute")
        assert plugin.cached("tagged_events") == 3
        assert plugin.log_messages == ["tagged events so far: 3"]
