"""Drops events by name and removes properties, as configured."""

from posthog_plugin import Meta, PluginEvent


def _names(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def setup_plugin(meta: Meta) -> None:
    # parse the config once per load, not once per event
    meta.global_["drop"] = set(_names(meta.config.get("drop_events")))
    meta.global_["remove"] = _names(meta.config.get("remove_properties"))


def process_event(event: PluginEvent, meta: Meta) -> PluginEvent | None:
    if event.get("event") in meta.global_["drop"]:
        meta.console.debug("dropped", event.get("event"))
        return None
    properties = event.get("properties") or {}
    for name in meta.global_["remove"]:
        container, _, key = name.rpartition(".")
        target = properties.get(container) if container else properties
        if isinstance(target, dict):
            target.pop(key, None)
        if not container:
            # person properties set with the event live at the top level too
            for person_key in ("$set", "$set_once"):
                person = event.get(person_key)
                if isinstance(person, dict):
                    person.pop(key, None)
    event["properties"] = properties
    return event
