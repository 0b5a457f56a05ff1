"""Exports events to an HTTP endpoint.

The server buffers the events of an `export_events` plugin and hands them over in batches (by
size and age: the exportEventsBuffer* config fields). A batch that raises RetryError is retried
later with back-off; any other error gives up on the batch and is shown on the plugin's page."""

from posthog_plugin import Meta, PluginEvent, RetryError

# Declared metrics are shown on the plugin's page in PostHog.
metrics = {"events_exported": "sum", "batches_failed": "sum"}

# 408 and 429 mean "later": worth a retry, like any server error.
RETRY_STATUSES = {408, 429}


def setup_plugin(meta: Meta) -> None:
    url = str(meta.config.get("url") or "")
    if not url.startswith(("https://", "http://")):
        raise ValueError("The endpoint URL must start with https:// or http://")
    headers = {"Content-Type": "application/json"}
    if meta.config.get("api_key"):
        headers["Authorization"] = f"Bearer {meta.config['api_key']}"
    meta.global_["url"] = url
    meta.global_["headers"] = headers


async def export_events(events: list[PluginEvent], meta: Meta) -> None:
    batch = [
        {
            "uuid": event.get("uuid"),
            "event": event.get("event"),
            "distinct_id": event.get("distinct_id"),
            "timestamp": event.get("timestamp") or event.get("now"),
            "properties": event.get("properties") or {},
        }
        for event in events
    ]
    try:
        response = await meta.fetch(
            meta.global_["url"],
            method="POST",
            headers=meta.global_["headers"],
            json={"batch": batch},
            timeout=10,
        )
    except Exception as error:  # could not connect, timed out, ...
        meta.metrics["batches_failed"].increment(1)
        raise RetryError(f"Could not reach the endpoint: {error}") from error
    if response.status >= 500 or response.status in RETRY_STATUSES:
        meta.metrics["batches_failed"].increment(1)
        raise RetryError(f"The endpoint answered {response.status}; the batch will be retried")
    if not response.ok:
        # a client error will not go away by retrying: say why and move on
        meta.metrics["batches_failed"].increment(1)
        meta.console.error(f"The endpoint refused {len(batch)} events ({response.status}):", response.text())
        return
    meta.metrics["events_exported"].increment(len(batch))
