"""The one outermost ptserve layer: every HTTP request passes here once.

It gives each request an id, timing, metrics, an access-log line and a trace span; checks the API
key and the declared body size; renders every error (4xx, 404/405, unexpected 500) with the one
renderer (``ServeError.render``), inside the request's context so the response and the log line
carry the request id. Hot routes (inference) are dispatched here straight to their protocol
codec; everything else (docs, metadata, health) goes on to FastAPI.
"""

import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ptserve.errors import (
    BodyTooLarge,
    InternalError,
    MethodNotAllowed,
    RawHeaders,
    ServeError,
    Unauthorized,
)
from ptserve.observability import context
from ptserve.observability.context import Timing
from ptserve.protocols.http import HttpCall, Reply
from ptserve.protocols.openapi import Components, Operations
from ptserve.security import KeyStore

if TYPE_CHECKING:
    from ptserve.runtime import Runtime

log = logging.getLogger("ptserve")
MAX_REQUEST_ID = 128
ERROR_CODE = "ptserve.error_code"  # scope key: the code of an error rendered by FastAPI's handlers
Handler = Callable[[HttpCall], Awaitable[Reply]]
Describe = Callable[["Runtime", Components], dict[str, Operations]]


@dataclass(frozen=True)
class HotRoute:
    """A route the gateway serves itself: its path template, methods, handler, and what
    describes it in OpenAPI (concrete paths per model, built once the models are loaded)."""

    path: str
    handler: Handler
    describe: Describe
    methods: tuple[str, ...] = ("POST",)
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", compile_path(self.path)[0])


class RouteTable:
    """Hot routes by path: fixed paths by a dict lookup, templates by their regex."""

    def __init__(self) -> None:
        self.routes: list[HotRoute] = []
        self._fixed: dict[str, HotRoute] = {}
        self._templates: list[HotRoute] = []

    def add(self, route: HotRoute) -> None:
        self.routes.append(route)
        if "{" in route.path:
            self._templates.append(route)
        else:
            self._fixed[route.path] = route

    def match(self, path: str) -> tuple[HotRoute, dict[str, str]] | None:
        route = self._fixed.get(path)
        if route is not None:
            return route, {}
        for route in self._templates:
            found = route.regex.match(path)
            if found is not None:
                return route, found.groupdict()
        return None


class Outcome:
    """What the gateway learns of a response on its way out."""

    __slots__ = ("code", "started", "status")

    def __init__(self) -> None:
        self.status = 500
        self.code: str | None = None
        self.started = False


class Gateway:
    """The outermost ASGI layer of the app (see the module docstring)."""

    def __init__(
        self,
        inner: ASGIApp,
        runtime: "Runtime",
        routes: RouteTable,
        keys: KeyStore | None,
        open_prefixes: tuple[str, ...],
    ) -> None:
        self.inner = inner
        self.runtime = runtime
        self.routes = routes
        self.keys = keys
        self.open_prefixes = open_prefixes
        self.limit = runtime.settings.max_body_bytes
        # labelled metric children, looked up once per (route, method, status)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        started = time.perf_counter()
        rid = _request_id(scope["headers"])
        timing = Timing()
        rid_token, timing_token = context.request_id.set(rid), context.timing.set(timing)
        tracing = self.runtime.tracing
        span = tracing.start(_header_dict(scope), time.time_ns()) if tracing else None
        metrics = self.runtime.metrics
        metrics.in_flight.inc()
        outcome = Outcome()
        path, method = scope["path"], scope["method"]
        route_name = "other"
        call: HttpCall | None = None
        extra: RawHeaders = [(b"x-request-id", rid.encode())]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome.started = True
                outcome.status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()), *extra, _server_timing(timing, started)
                ]  # fmt: skip
            await send(message)

        try:
            hot = self.routes.match(path)
            if hot is not None:
                route, params = hot
                route_name = route.path
                self._admit(scope, path)
                if method not in route.methods:
                    raise MethodNotAllowed(
                        f"{method} {path}: method not allowed", list(route.methods)
                    )
                call = HttpCall(scope, receive, params, self.limit)
                reply = await route.handler(call)
                body = reply.body
                headers = [
                    (b"content-type", reply.content_type), *reply.headers, *extra,
                    (b"content-length", b"%d" % len(body)), _server_timing(timing, started),
                ]  # fmt: skip
                outcome.started = True
                outcome.status = reply.status
                await send(
                    {"type": "http.response.start", "status": reply.status, "headers": headers}
                )
                await send({"type": "http.response.body", "body": body})
            else:
                self._admit(scope, path)
                await self.inner(scope, self._counted(receive), send_with_headers)
                route_name = getattr(scope.get("route"), "path", "other")
                outcome.code = scope.get(ERROR_CODE)
        except ServeError as error:
            await self._error(error, outcome, send_with_headers)
        except Exception:
            log.exception("unhandled error on %s %s", method, path)
            await self._error(InternalError(), outcome, send_with_headers)
        finally:
            elapsed = time.perf_counter() - started
            metrics.in_flight.dec()
            self._count(route_name, method, outcome.status, elapsed)
            access = self.runtime.access_log
            if access is not None:
                model, version = (call.model, call.version) if call is not None else (None, None)
                access.record(
                    method, path, route_name, outcome.status, outcome.code, elapsed, model, rid,
                    version,
                )  # fmt: skip
            if span is not None and tracing is not None:
                tracing.finish(span, route_name, method, outcome.status, rid, timing)
            context.request_id.reset(rid_token)
            context.timing.reset(timing_token)

    def _admit(self, scope: Scope, path: str) -> None:
        """401 without a valid key (except on open paths); 413 for a declared body over the
        limit, before any of it is read."""
        if self.keys is not None and not path.startswith(self.open_prefixes):
            key = _presented_key(scope["headers"])
            if not self.keys.accepts(key):
                what = "a valid" if key else "an"
                raise Unauthorized(
                    f"this server needs {what} API key: send 'Authorization: Bearer KEY' "
                    "or 'X-API-Key: KEY'"
                )
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.limit:
                    raise BodyTooLarge(
                        f"the request body is {int(value)} bytes; the limit is {self.limit} "
                        "bytes (the max_body_bytes setting)"
                    )
                break

    def _counted(self, receive: Receive) -> Receive:
        """``receive`` for FastAPI routes: 413 as soon as a streamed body passes the limit."""
        seen = 0
        limit = self.limit

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(
                        f"the request body is over {limit} bytes; the limit is {limit} bytes "
                        "(the max_body_bytes setting)"
                    )
            return message

        return counted

    async def _error(
        self, error: ServeError, outcome: Outcome, send: Callable[[Message], Awaitable[None]]
    ) -> None:
        outcome.code = error.code
        if outcome.started:  # too late for an error response: the client sees a cut answer
            outcome.status = error.status_code
            return
        await _respond(send, *error.render())

    def _count(self, route: str, method: str, status: int, elapsed: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            metrics = self.runtime.metrics
            children = self._children[key] = (
                metrics.requests.labels(route, method, str(status)),
                metrics.request_seconds.labels(route, method),
            )
        children[0].inc()
        children[1].observe(elapsed)


async def _respond(
    send: Callable[[Message], Awaitable[None]], status: int, headers: RawHeaders, body: bytes
) -> None:
    headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _request_id(headers: RawHeaders) -> str:
    """The client's X-Request-ID when it is sane, else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if 0 < len(given) <= MAX_REQUEST_ID and given.isprintable():
                return given
            break
    return os.urandom(16).hex()  # as random as a uuid4, without building a UUID


def _presented_key(headers: RawHeaders) -> str | None:
    """The key in ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
        elif name == b"x-api-key":
            api_key = value.decode("latin-1")
    return api_key


def _server_timing(timing: Timing, started: float) -> tuple[bytes, bytes]:
    return b"server-timing", timing.header(time.perf_counter() - started)


def _header_dict(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
