"""Request plumbing every protocol shares: per-request deadlines and client disconnects."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ptserve.errors import ClientDisconnected, InvalidHeader, ServeError

TIMEOUT_HEADER = b"x-request-timeout-ms"


class HotRoute(Route):
    """A plain Starlette route (no FastAPI dependency solving or body parsing on the hot path)
    that records itself in the scope as FastAPI's routes do, so metrics can label by route."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def add_hot_route(
    app: FastAPI, path: str, endpoint: Callable[[Request], Awaitable[Response]]
) -> None:
    """Register a POST endpoint that reads its own body (described in OpenAPI by hand).

    It is served by HotPath; it is also in the router so that other methods get 405."""
    route = HotRoute(path, endpoint, methods=["POST"])
    app.router.routes.insert(0, route)
    app.state.hot_routes.append(route)


class HotPath:
    """The innermost middleware: serves POSTs to hot routes directly, without FastAPI's router
    and exception middleware (a per-request cost several times the model's on small inputs).
    ServeErrors become their responses here; anything else propagates to the 500 handler."""

    def __init__(self, app: ASGIApp, routes: list[HotRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for route in self.routes:
                if route.param_convertors:
                    match, child_scope = route.matches(scope)
                elif scope["path"] == route.path:  # a fixed path: no regex needed
                    match, child_scope = Match.FULL, {"endpoint": route.endpoint, "route": route}
                else:
                    continue
                if match is Match.FULL:
                    scope.update(child_scope)
                    try:
                        response = await route.endpoint(Request(scope, receive))
                    except ServeError as error:
                        response = error.response()
                    except ClientDisconnect:  # gone (or cut off) while its body was arriving
                        response = ClientDisconnected("the client left mid-body").response()
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def header(request: Request, name: bytes) -> str | None:
    """One request header (``name`` in lower case), by a single scan of the raw headers:
    cheaper on the hot path than building Starlette's case-insensitive Headers."""
    for key, value in request.scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def request_timeout(request: Request, default_ms: float) -> float:
    """Seconds this request may wait in the queue: its X-Request-Timeout-Ms, else the default."""
    raw = header(request, TIMEOUT_HEADER)
    if raw is None:
        return default_ms / 1000
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise InvalidHeader(f"X-Request-Timeout-Ms must be a positive number of ms, got {raw!r}")
    return value / 1000


@asynccontextmanager
async def cancelled_on_disconnect(request: Request, watch: bool = True) -> AsyncIterator[None]:
    """Cancel the enclosed work when the client disconnects (raising ClientDisconnected), so
    queued work for a client that left is dropped instead of computed. With ``watch`` false it
    does nothing: callers skip the watch (a task per request) when the work will not wait.

    Only for use after the body has been read: the next ASGI message is then the disconnect.
    """
    if not watch:
        yield
        return
    task = asyncio.current_task()
    assert task is not None
    gone = False

    def on_message(watch: "asyncio.Task[Message]") -> None:
        nonlocal gone
        if not watch.cancelled() and watch.result() == {"type": "http.disconnect"}:
            gone = True
            task.cancel()

    watcher = asyncio.ensure_future(request.receive())
    watcher.add_done_callback(on_message)
    try:
        yield
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        raise ClientDisconnected("the client disconnected before the answer was ready") from None
    finally:
        watcher.remove_done_callback(on_message)
        watcher.cancel()
