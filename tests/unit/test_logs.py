"""Log formats: text for a person at a terminal, JSON for everything else."""

import io
import logging
import os
from collections.abc import Iterator

import orjson
import pytest

from ptserve.observability import context
from ptserve.observability.logs import JsonFormatter, TextFormatter, log_config, resolve_format


@pytest.fixture
def terminal() -> Iterator[io.TextIOWrapper]:
    """The writing end of a real pseudo-terminal."""
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as stream:
        yield stream
    os.close(leader)


def access_record() -> logging.LogRecord:
    fields = {"event": "request", "method": "POST", "path": "/predict", "route": "/predict",
              "status": 422, "duration_ms": 0.41, "model": "digits"}  # fmt: skip
    record = logging.LogRecord(
        "ptserve.access", logging.INFO, __file__, 1, "%s %s %d", ("POST", "/predict", 422), None
    )
    record.fields = fields
    return record


def test_auto_is_text_on_a_terminal_and_json_elsewhere(terminal: io.TextIOWrapper) -> None:
    assert resolve_format("auto", terminal) == "text"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", terminal) == "json"  # an explicit choice always wins
    assert resolve_format("text", io.StringIO()) == "text"


def test_log_config_resolves_auto_against_stderr() -> None:
    # pytest captures stderr, so it is not a terminal here: a log collector's view
    assert log_config("info", "auto")["formatters"]["default"]["()"] is JsonFormatter
    assert log_config("info", "text")["formatters"]["default"]["()"] is TextFormatter


def test_a_text_access_line_keeps_what_the_message_does_not_say() -> None:
    token = context.request_id.set("req-7")
    try:
        line = TextFormatter().format(access_record())
        data = orjson.loads(JsonFormatter().format(access_record()))
    finally:
        context.request_id.reset(token)
    assert line == "INFO:     POST /predict 422  duration_ms=0.41 model=digits request_id=req-7"
    assert (data["status"], data["route"], data["request_id"]) == (422, "/predict", "req-7")


def test_a_plain_text_line_has_nothing_appended() -> None:
    record = logging.LogRecord("ptserve", logging.WARNING, __file__, 1, "loaded %s", ("m",), None)
    assert TextFormatter().format(record) == "WARNING:  loaded m"  # aligned as uvicorn's lines
