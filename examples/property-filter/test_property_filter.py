from pathlib import Path

from plugin_server.testing import PluginUnderTest, load_plugin, make_event, plugin_fixture

HERE = Path(__file__).parent
CONFIG = {"drop_events": "$pageleave, debug", "remove_properties": "email,$set.phone"}

# loaded afresh for each test that takes a `plugin` argument
plugin = plugin_fixture(HERE, CONFIG)


def test_events_named_in_the_config_are_dropped(plugin: PluginUnderTest) -> None:
    assert plugin.process_event(make_event("$pageleave")) is None
    assert plugin.process_event(make_event("debug")) is None
    assert plugin.process_event(make_event("$pageview")) is not None


def test_configured_properties_are_removed_from_the_event_and_the_person(plugin: PluginUnderTest) -> None:
    event = make_event(
        "signed up",
        properties={"email": "a@example.com", "plan": "pro", "$set": {"phone": "123", "name": "A"}},
        **{"$set": {"email": "a@example.com", "name": "A"}},
    )
    result = plugin.process_event(event)
    assert result is not None
    assert result["properties"] == {"plan": "pro", "$set": {"name": "A"}}
    assert result["$set"] == {"name": "A"}


def test_without_config_every_event_passes_unchanged() -> None:
    event = make_event("$pageleave", properties={"email": "a@example.com"})
    with load_plugin(HERE) as unconfigured:
        assert unconfigured.process_event(event) == event
