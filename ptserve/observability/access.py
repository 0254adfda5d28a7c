"""The access log: one line per request, cheap enough to stay on by default.

The logging module's per-record machinery (a LogRecord, handler locks, a formatter) cost about a
third of a small model's throughput. Here the event loop only appends the request's fields to a
deque; a writer thread wakes when entries are waiting, gathers what comes in the next few
milliseconds, formats it and writes it in one call. ``close()`` (the app's shutdown) writes
every entry left, so a graceful stop loses none.
"""

import contextlib
import logging
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import TextIO

import orjson

LOGGER = "ptserve.access"
QUIET_PREFIXES = (
    "/health", "/v2/health", "/metrics",
    # gRPC's health calls
    "/grpc.health.v1.Health/", "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)  # fmt: skip
BATCH_S = 0.02  # how long the writer gathers lines before a write
# The JSON log format's fields, in its order (ptserve.observability.logs.JsonFormatter).
JSON_LINE = (
    '{"ts":"%s.%03d+00:00","level":"%s","logger":"ptserve.access","msg":%s,"request_id":%s,'
    '"event":"request","method":%s,"path":%s,"route":%s,"status":%d,"duration_ms":%.3f,'
    '"model":%s%s%s}'
)
# when, quiet, method, path, route, status, error code, seconds, model, request id, version
Entry = tuple[float, bool, str, str, str, int, str | None, float, str | None, str, str | None]


class AccessLog:
    """Formats access lines as JSON (the JSON log format's fields) or text, and writes them in
    batches to ``stream`` (default: standard error, as the other log lines)."""

    def __init__(self, fmt: str, stream: TextIO | None = None) -> None:
        """``fmt``: ``json`` or ``text`` (resolve ``auto`` first: logs.resolve_format)."""
        self.json = fmt == "json"
        self.stream = stream if stream is not None else sys.stderr
        logger = logging.getLogger(LOGGER)
        self.info = logger.isEnabledFor(logging.INFO)
        self.debug = logger.isEnabledFor(logging.DEBUG)
        self._entries: deque[Entry] = deque()
        self._wake = threading.Event()
        self._closed = False
        self._second = -1
        self._stamp = ""
        self._thread = threading.Thread(target=self._write_loop, name="ptserve-access-log")
        self._thread.daemon = True
        self._thread.start()

    def record(
        self,
        method: str,
        path: str,
        route: str,
        status: int,
        code: str | None,
        seconds: float,
        model: str | None,
        request_id: str,
        version: str | None = None,
    ) -> None:
        """Log one answered request (health and metrics requests only at debug level);
        ``model`` and ``version``: the model version that answered, if one did."""
        quiet = path.startswith(QUIET_PREFIXES)
        if not (self.debug if quiet else self.info):
            return
        entry = (
            time.time(), quiet, method, path, route, status, code, seconds, model, request_id,
            version,
        )  # fmt: skip
        self._entries.append(entry)
        if not self._wake.is_set():
            self._wake.set()

    def close(self) -> None:
        """Write every remaining line and stop the writer."""
        self._closed = True
        self._wake.set()
        self._thread.join()

    def _format(self, entry: Entry) -> str:
        when, quiet, method, path, route, status, code, seconds, model, request_id, version = entry
        if not self.json:  # as ptserve.observability.logs.TextFormatter lays lines out
            level = "DEBUG:   " if quiet else "INFO:    "
            extra = f" model_version={version}" if version is not None else ""
            extra += f" code={code}" if code is not None else ""
            return (
                f"{level} {method} {path} {status}  duration_ms={seconds * 1000:.3f} "
                f"model={model}{extra} request_id={request_id}"
            )
        second = int(when)
        if second != self._second:  # the date and time change once a second: format them once
            self._second = second
            self._stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        text = _json_text
        return JSON_LINE % (
            self._stamp, int((when - second) * 1000), "debug" if quiet else "info",
            text(f"{method} {path} {status}"), text(request_id), text(method), text(path),
            text(route), status, seconds * 1000, text(model),
            "" if version is None else f',"model_version":{text(version)}',
            "" if code is None else f',"code":{text(code)}',
        )  # fmt: skip

    def _write_loop(self) -> None:
        while True:
            self._wake.wait()
            if not self._closed:
                time.sleep(BATCH_S)  # let a burst gather into one write
            self._wake.clear()
            self._flush()
            if self._closed:
                self._flush()
                return

    def _flush(self) -> None:
        entries = self._entries
        batch = []
        while entries:
            batch.append(self._format(entries.popleft()))
        if batch:
            with contextlib.suppress(OSError, ValueError):  # a broken stream: lines are dropped
                self.stream.write("\n".join(batch) + "\n")
                self.stream.flush()


def _json_text(value: str | None) -> str:
    """A JSON string (or null), escaped."""
    return orjson.dumps(value).decode()
