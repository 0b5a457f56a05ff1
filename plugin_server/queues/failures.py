"""Which failures of a batch are worth waiting for (a store or the broker is down) and which are
the events' own (the batch is then retried one event at a time, and an event that fails alone is
dead-lettered): both queue consumers decide the same way."""

from __future__ import annotations

from plugin_server.queues.kafka_producer import KafkaDeliveryError


def is_infrastructure_error(exc: BaseException) -> bool:
    """True for failures of a store or the broker (worth waiting for), not of an event."""
    if isinstance(exc, TimeoutError):
        return False  # our own batch time-out (TimeoutError is an OSError): an event's fault
    if isinstance(exc, ConnectionError | OSError | KafkaDeliveryError):
        return True
    module = type(exc).__module__ or ""
    name = type(exc).__name__
    if module.startswith("asyncpg"):
        return (
            name
            in {
                "ConnectionDoesNotExistError",
                "ConnectionFailureError",
                "CannotConnectNowError",
                "TooManyConnectionsError",
                "InterfaceError",
                "PostgresConnectionError",
                "AdminShutdownError",
                "CrashShutdownError",
            }
            or "Connection" in name
        )
    if module.startswith("redis"):
        return name in {"ConnectionError", "TimeoutError", "BusyLoadingError"}
    if module.startswith("aiokafka"):
        return True
    return False
