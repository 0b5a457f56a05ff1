"""Structured logging: JSON lines for machines, readable console lines on a terminal."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import structlog

# The original's levels, lowest first; `log` sits between info and warn, `none` silences all.
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "log": 25,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "none": logging.CRITICAL + 10,
}


def level_number(name: str) -> int:
    return _LEVELS.get(name.lower(), logging.INFO)


def configure_logging(level: str = "info", fmt: str = "auto", **static: Any) -> None:
    """Configure structlog (and the standard logging of libraries) once, at start."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    threshold = level_number(level)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _rename_logger,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]
    if static:
        shared.insert(0, _add_static(static))
    renderer: Any
    if use_json:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
        shared.append(structlog.processors.dict_tracebacks)
        shared.append(structlog.processors.EventRenamer("msg"))
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries (aiokafka, asyncio, aiohttp) log through the standard module: same sink.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(threshold, logging.WARNING))


def _add_static(values: dict[str, Any]) -> Any:
    def processor(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        for key, value in values.items():
            event_dict.setdefault(key, value)
        return event_dict

    return processor


def get_logger(name: str) -> Any:
    return structlog.get_logger(logger_name=name)


def _rename_logger(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    name = event_dict.pop("logger_name", None)
    if name is not None:
        event_dict["logger"] = name
    return event_dict


def _dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
