"""Logging: one JSON object per line, or text for a person at a terminal; both carry the
request id when there is one.

Extra fields go in ``extra={"fields": {...}}``; they become keys of the JSON object, and
``key=value`` pairs after a text line's message.
"""

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from ptserve.observability import context

# Fields a text line leaves out: an access line's message already says them.
SAID_BY_MESSAGE = frozenset({"event", "method", "path", "route", "status"})


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "request_id"?, **fields, "exc"?}``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = context.request_id.get()
        if request_id is not None:
            data["request_id"] = request_id
        data.update(getattr(record, "fields", {}))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


class TextFormatter(logging.Formatter):
    """Lines laid out as uvicorn's own (``INFO:     message``), followed by the record's fields
    as ``key=value`` (``POST /predict 422  duration_ms=0.41 model=digits request_id=...``)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = {
            k: v for k, v in getattr(record, "fields", {}).items() if k not in SAID_BY_MESSAGE
        }
        request_id = context.request_id.get()
        if request_id is not None:
            fields["request_id"] = request_id
        line = f"{record.levelname + ':':<9} {record.getMessage()}"
        return f"{line}  {' '.join(f'{k}={v}' for k, v in fields.items())}" if fields else line


def resolve_format(fmt: str, stream: TextIO | None = None) -> str:
    """``json`` or ``text``; ``auto`` is text when ``stream`` (default: stderr, where the logs
    go) is a terminal, JSON otherwise (a log collector, a file, a pipe)."""
    if fmt != "auto":
        return fmt
    stream = stream or sys.stderr
    return "text" if stream.isatty() else "json"


def log_config(level: str, fmt: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn's and ptserve's loggers."""
    chosen = JsonFormatter if resolve_format(fmt) == "json" else TextFormatter
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        "stream": "ext://sys.stderr",
    }
    loggers = {
        name: {"handlers": ["default"], "level": level.upper(), "propagate": False}
        for name in ("uvicorn", "uvicorn.error", "ptserve")
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": chosen}},
        "handlers": {"default": handler},
        "loggers": loggers,
    }


def setup_logging(level: str, fmt: str) -> None:
    """Give the ``ptserve`` logger a handler when the host process configured none
    (e.g. under ``uvicorn main:app``)."""
    logger = logging.getLogger("ptserve")
    logger.setLevel(level.upper())
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if resolve_format(fmt) == "json" else TextFormatter())
    logger.addHandler(handler)
