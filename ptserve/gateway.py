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

from starlette.requests import ClientDisconnect
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ptserve.errors import (
    BodyTooLarge,
    ClientDisconnected,
    InternalError,
    MethodNotAllowed,
    RawHeaders,
    ServeError,
    Unauthorized,
)
from ptserve.observability import context
from ptserve.observability.context import Timing, sane_request_id
from ptserve.protocols.http import HttpCall, Reply
from ptserve.protocols.openapi import Components, Operations
from ptserve.security import KeyStore

if TYPE_CHECKING:
    from ptserve.runtime import Runtime

log = logging.getLogger("ptserve")
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
        # the duration histogram's children, looked up once per (route, method)
        self._durations: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        started = time.perf_counter()
        rid, length, key = _scan(scope["headers"])
        timing = Timing()
        rid_token, timing_token = context.request_id.set(rid), context.timing.set(timing)
        tracing = self.runtime.tracing
        span = tracing.start(_header_dict(scope), time.time_ns()) if tracing else None
        metrics = self.runtime.metrics
        tally = metrics.tally
        tally.in_flight += 1
        outcome = Outcome()
        path, method = scope["path"], scope["method"]
        route_name = "other"
        call: HttpCall | None = None
        try:
            self._admit(path, length, key)
            hot = self.routes.match(path)
            if hot is not None:
                route, params = hot
                route_name = route.path
                if method not in route.methods:
                    raise MethodNotAllowed(
                        f"{method} {path}: method not allowed", list(route.methods)
                    )
                call = HttpCall(scope, receive, params, self.limit)
                reply = await route.handler(call)
                body = reply.body
                outcome.started = True
                outcome.status = reply.status
                headers = [
                    (b"content-type", reply.content_type), *reply.headers,
                    (b"x-request-id", rid.encode()), (b"content-length", b"%d" % len(body)),
                    _server_timing(timing, started),
                ]  # fmt: skip
                await send(
                    {"type": "http.response.start", "status": reply.status, "headers": headers}
                )
                await send({"type": "http.response.body", "body": body})
            else:
                await self.inner(
                    scope, self._counted(receive), _sent(send, outcome, rid, timing, started)
                )
                route_name = getattr(scope.get("route"), "path", "other")
                outcome.code = scope.get(ERROR_CODE)
        except ServeError as error:
            await self._error(error, outcome, send, rid, timing, started)
        except ClientDisconnect:  # gone (or cut off by a read deadline) while its body arrived
            await self._error(
                ClientDisconnected("the client left mid-body"), outcome, send, rid, timing, started
            )
        except Exception:
            log.exception("unhandled error on %s %s", method, path)
            await self._error(InternalError(), outcome, send, rid, timing, started)
        finally:
            elapsed = time.perf_counter() - started
            tally.in_flight -= 1
            tally.count((route_name, method, outcome.status))
            self._observe(route_name, method, elapsed)
            if not tally.in_flight:  # idle: publish now (under load, the timer does)
                metrics.publish()
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

    def _admit(self, path: str, length: bytes | None, key: str | None) -> None:
        """401 without a valid key (except on open paths); 413 for a declared body over the
        limit, before any of it is read."""
        keys = self.keys
        if keys is not None and not path.startswith(self.open_prefixes) and not keys.accepts(key):
            what = "a valid" if key else "an"
            raise Unauthorized(
                f"this server needs {what} API key: send 'Authorization: Bearer KEY' "
                "or 'X-API-Key: KEY'"
            )
        if length is not None and length.isdigit() and int(length) > self.limit:
            raise BodyTooLarge(
                f"the request body is {int(length)} bytes; the limit is {self.limit} bytes "
                "(the max_body_bytes setting)"
            )

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
        self,
        error: ServeError,
        outcome: Outcome,
        send: Send,
        rid: str,
        timing: Timing,
        started: float,
    ) -> None:
        outcome.code = error.code
        if outcome.started:  # too late for an error response: the client sees a cut answer
            outcome.status = error.status_code
            return
        status, headers, body = error.render()
        outcome.started = True
        outcome.status = status
        headers += [
            (b"x-request-id", rid.encode()), (b"content-length", b"%d" % len(body)),
            _server_timing(timing, started),
        ]  # fmt: skip
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _observe(self, route: str, method: str, elapsed: float) -> None:
        key = (route, method)
        histogram = self._durations.get(key)
        if histogram is None:
            histogram = self._durations[key] = self.runtime.metrics.request_seconds.labels(*key)
        histogram.observe(elapsed)


def _sent(send: Send, outcome: Outcome, rid: str, timing: Timing, started: float) -> Send:
    """``send`` for FastAPI's answers: adds the request id and Server-Timing."""

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            outcome.started = True
            outcome.status = message["status"]
            message["headers"] = [
                *message.get("headers", ()), (b"x-request-id", rid.encode()),
                _server_timing(timing, started),
            ]  # fmt: skip
        await send(message)

    return send_with_headers


def _scan(headers: RawHeaders) -> tuple[str, bytes | None, str | None]:
    """One pass over the headers: the request id (the client's X-Request-ID when it is sane,
    else a new one), the declared Content-Length, and the API key presented
    (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``)."""
    rid = length = bearer = api_key = None
    for name, value in headers:
        if name == b"content-length":
            length = value
        elif name == b"x-request-id":
            given = value.decode("latin-1")
            if sane_request_id(given):
                rid = given
        elif name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                bearer = token.strip()
        elif name == b"x-api-key":
            api_key = value.decode("latin-1")
    # a new id is as random as a uuid4, without building a UUID
    return rid or os.urandom(16).hex(), length, bearer if bearer is not None else api_key


def _server_timing(timing: Timing, started: float) -> tuple[bytes, bytes]:
    return b"server-timing", timing.header(time.perf_counter() - started)


def _header_dict(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
