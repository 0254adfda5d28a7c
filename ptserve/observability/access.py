"""The access log: one line per request, cheap enough to stay on by default.

The logging module's per-record machinery (a LogRecord, handler locks, a formatter) cost about a
third of a small model's throughput. Here a request costs one dict dump and a deque append on the
event loop; a writer thread wakes when lines are waiting, gathers what came in the next few
milliseconds and writes it in one call. ``close()`` (the app's shutdown) writes every line left,
so a graceful stop loses none.
"""

import contextlib
import logging
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

LOGGER = "ptserve.access"
QUIET_PREFIXES = ("/health", "/v2/health", "/metrics")
BATCH_S = 0.02  # how long the writer gathers lines before a write


class AccessLog:
    """Formats access lines as JSON (the JSON log format's fields) or text, and writes them in
    batches to ``stream`` (default: standard error, as the other log lines)."""

    def __init__(self, fmt: str, stream: TextIO | None = None) -> None:
        self.json = fmt == "json"
        self.stream = stream if stream is not None else sys.stderr
        logger = logging.getLogger(LOGGER)
        self.info = logger.isEnabledFor(logging.INFO)
        self.debug = logger.isEnabledFor(logging.DEBUG)
        self._lines: deque[str] = deque()
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
    ) -> None:
        """Log one answered request (health and metrics requests only at debug level)."""
        quiet = path.startswith(QUIET_PREFIXES)
        if not (self.debug if quiet else self.info):
            return
        ms = round(seconds * 1000, 3)
        if self.json:
            fields: dict[str, Any] = {
                "ts": self._timestamp(), "level": "debug" if quiet else "info", "logger": LOGGER,
                "msg": f"{method} {path} {status}", "request_id": request_id,
                "event": "request", "method": method, "path": path, "route": route,
                "status": status, "duration_ms": ms, "model": model,
            }  # fmt: skip
            if code is not None:
                fields["code"] = code
            line = orjson.dumps(fields).decode()
        else:
            why = f" {code}" if code is not None else ""
            level = "DEBUG" if quiet else "INFO"
            line = f"{level}:     {method} {path} {status}{why} {ms}ms id={request_id}"
        self._lines.append(line)
        if not self._wake.is_set():
            self._wake.set()

    def close(self) -> None:
        """Write every remaining line and stop the writer."""
        self._closed = True
        self._wake.set()
        self._thread.join()

    def _timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:  # the date and time change once a second: format them once
            self._second = second
            self._stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._stamp}.{int((now - second) * 1000):03d}+00:00"

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
        lines = self._lines
        batch = []
        while lines:
            batch.append(lines.popleft())
        if batch:
            with contextlib.suppress(OSError, ValueError):  # a broken stream: lines are dropped
                self.stream.write("\n".join(batch) + "\n")
                self.stream.flush()
