"""Pure ASGI middleware: request context (id, Server-Timing, metrics, access log), API keys and
the body-size limit. Pure ASGI keeps the request in one task, so context variables set here are
seen by the route and the batcher."""

import logging
import os
import time
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ptserve.errors import BodyTooLarge, Unauthorized
from ptserve.observability import context
from ptserve.observability.context import Timing
from ptserve.security import KeyStore

if TYPE_CHECKING:
    from ptserve.runtime import Runtime

log = logging.getLogger("ptserve.access")
QUIET_PREFIXES = ("/health", "/v2/health", "/metrics")
MAX_REQUEST_ID = 128


class RequestContext:
    """Gives every request an id (``X-Request-ID``, honoured or made), a ``Server-Timing``
    header, request metrics and one access-log line."""

    def __init__(self, app: ASGIApp, runtime: "Runtime") -> None:
        self.app = app
        self.runtime = runtime
        # labelled metric children, looked up once per (route, method, status) on the hot path
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope["headers"])
        timing = Timing()
        rid_token, timing_token = context.request_id.set(rid), context.timing.set(timing)
        metrics = self.runtime.metrics
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                server_timing = timing.header(time.perf_counter() - started)
                headers = [
                    *message.get("headers", []),
                    (b"x-request-id", rid.encode()),
                    (b"server-timing", server_timing.encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        tracing = self.runtime.tracing
        span = tracing.start(Headers(scope=scope), time.time_ns()) if tracing else None
        metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            elapsed = time.perf_counter() - started
            metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", "other")
            method = scope["method"]
            if tracing is not None:
                tracing.finish(span, route, method, status, rid, timing)
            key = (route, method, status)
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (
                    metrics.requests.labels(route, method, str(status)),
                    metrics.request_seconds.labels(route, method),
                )
            children[0].inc()
            children[1].observe(elapsed)
            if self.runtime.settings.access_log:
                path = scope["path"]
                level = logging.DEBUG if path.startswith(QUIET_PREFIXES) else logging.INFO
                fields = {
                    "event": "request", "method": method, "path": path, "route": route,
                    "status": status, "duration_ms": round(elapsed * 1000, 3),
                    "model": self.runtime.settings.model_name,
                }  # fmt: skip
                log.log(level, "%s %s %d", method, path, status, extra={"fields": fields})
            context.request_id.reset(rid_token)
            context.timing.reset(timing_token)


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID when it is sane, else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if 0 < len(given) <= MAX_REQUEST_ID and given.isprintable():
                return given
            break
    return os.urandom(16).hex()  # as random as a uuid4, without building a UUID


class ApiKeys:
    """401 unless the request carries a known key (``Authorization: Bearer`` or ``X-API-Key``).
    Paths under ``open_prefixes`` need none."""

    def __init__(self, app: ASGIApp, keys: KeyStore, open_prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.keys = keys
        self.open_prefixes = open_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(self.open_prefixes):
            headers = Headers(scope=scope)
            scheme, _, token = headers.get("authorization", "").partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else headers.get("x-api-key")
            if not self.keys.accepts(key):
                what = "a valid" if key else "an"
                error = Unauthorized(
                    f"this server needs {what} API key: send 'Authorization: Bearer KEY' "
                    "or 'X-API-Key: KEY'"
                )
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a body over ``limit`` bytes: at once from Content-Length, or as soon as a
    streamed body passes the limit - never after reading all of it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(int(declared)).response()(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise self._too_large(seen, streamed=True)
            return message

        await self.app(scope, counted, send)

    def _too_large(self, size: int, streamed: bool = False) -> BodyTooLarge:
        amount = f"over {self.limit}" if streamed else str(size)
        return BodyTooLarge(
            f"the request body is {amount} bytes; the limit is {self.limit} bytes "
            "(the max_body_bytes setting)"
        )
