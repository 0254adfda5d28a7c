"""create_app(settings) -> the app. The lifespan loads the model(s) once, warms them up, then
serves; with a repository, ``ptserve.lifecycle`` also loads and swaps versions while serving.

The app is a FastAPI subclass whose outermost layer is ptserve's gateway (``ptserve.gateway``):
every HTTP request passes it once; inference routes are served there, everything else goes on
to FastAPI, whose own error middleware is left out so that every error, expected or not, is
rendered by the gateway inside the request's context.
"""

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ptserve.errors import (
    InvalidInput,
    MethodNotAllowed,
    ModelLoadError,
    NotFound,
    RawHeaders,
    ServeError,
)
from ptserve.gateway import ERROR_CODE, Gateway, RouteTable
from ptserve.lifecycle import Lifecycle
from ptserve.observability.access import AccessLog
from ptserve.observability.logs import resolve_format, setup_logging
from ptserve.observability.metrics import PUBLISH_S, mark_worker_dead
from ptserve.observability.tracing import Tracing
from ptserve.protocols import docs, health, oip_v2, page, repository, simple
from ptserve.repository import is_repository
from ptserve.runtime import Runtime
from ptserve.security import KeyStore, open_paths
from ptserve.settings import Settings
from ptserve.threads import available_cores
from ptserve.watch import Watcher

log = logging.getLogger("ptserve")


class PtserveApp(FastAPI):
    """FastAPI with ptserve's gateway in front (see the module docstring)."""

    entry: ASGIApp  # the gateway, or CORS around it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.entry(scope, receive, send)
        elif scope["type"] == "lifespan":
            await super().__call__(scope, receive, _short_load_errors(send))
        else:
            await super().__call__(scope, receive, send)

    async def serve_inner(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's routing, for what the gateway does not serve itself."""
        await super().__call__(scope, receive, send)

    def build_middleware_stack(self) -> ASGIApp:
        # Only FastAPI's exception handlers and its exit stack around the router: the gateway
        # is the outermost layer, and an unexpected exception propagates to it.
        handlers = {k: v for k, v in self.exception_handlers.items() if k not in (500, Exception)}
        return ExceptionMiddleware(
            AsyncExitStackMiddleware(self.router), handlers=handlers, debug=self.debug
        )


def create_app(settings: Settings) -> PtserveApp:
    """Build the app; nothing is loaded until the lifespan starts."""
    runtime = Runtime(settings, tracing=Tracing() if settings.tracing else None)
    keys = KeyStore(settings.api_key_file) if settings.api_key_file is not None else None
    grpc_server = None
    if settings.grpc_port is not None:  # the grpc extra, imported only when it is asked for
        from ptserve.grpc_server import GrpcServer

        grpc_server = GrpcServer(runtime, keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_logging(settings.log_level, settings.log_format)
        configure_threads(settings)
        lifecycle = runtime.lifecycle = Lifecycle(runtime, on_change=lambda: _stale_schema(app))
        await lifecycle.start()
        # Everything alive now (torch, the models, the app) lives as long as the process (or
        # until a version is swapped out: memory.release_memory): move it out of the
        # collector's sight. Without this, full collections over those objects took ~100 ms
        # each under load (measured: MLP p99 at c=64 116 ms -> 17 ms, +25% req/s).
        gc.collect()
        gc.freeze()
        if settings.access_log:
            runtime.access_log = AccessLog(resolve_format(settings.log_format))
        publisher = asyncio.get_running_loop().create_task(_publish_metrics(runtime))
        if keys is not None and threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, keys.refresh, True)
        if grpc_server is not None:
            await grpc_server.start()
        runtime.ready = True
        watcher = Watcher(lifecycle) if settings.watch else None
        if watcher is not None:
            watcher.start()
        try:
            yield
        finally:
            runtime.ready = False
            if watcher is not None:
                await watcher.stop()
            if grpc_server is not None:  # calls in flight finish; the batchers still run
                await grpc_server.stop(settings.drain_timeout_s)
            await lifecycle.stop()
            publisher.cancel()
            runtime.metrics.publish()  # the last counts, before this worker's files are closed
            if runtime.access_log is not None:
                runtime.access_log.close()
            mark_worker_dead()
            gc.unfreeze()  # an app in a longer-lived process (tests) leaves nothing pinned

    served = settings.model_path
    app = PtserveApp(
        title="ptserve",
        summary=f"Serving the model repository {served.name!r}"
        if is_repository(served)
        else f"Serving model {settings.model_name!r}",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # ptserve makes its own request spans (with queue and inference children), and its
        # own Prometheus metrics; FastAPI's built-in OpenTelemetry would duplicate them.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.runtime = runtime
    app.add_exception_handler(ServeError, _serve_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    routes = RouteTable()
    for route in [*simple.routes(runtime), *oip_v2.routes(runtime)]:
        routes.add(route)
    app.include_router(health.router)
    app.include_router(repository.router)
    simple.install(app)
    oip_v2.install(app)
    docs.install(app, runtime, routes)
    page.install(app)
    gateway = Gateway(app.serve_inner, runtime, routes, keys, open_paths(settings))
    app.entry = gateway
    if settings.cors_origins:
        app.entry = CORSMiddleware(
            gateway, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["*"], expose_headers=["X-Request-ID", "Server-Timing"],
        )  # fmt: skip
    return app


def _stale_schema(app: FastAPI) -> None:
    """The served models changed: the cached OpenAPI schema describes the old ones."""
    app.openapi_schema = None


async def _publish_metrics(runtime: Runtime) -> None:
    """Publish the hot path's counts every so often (see observability.metrics), so that
    another worker's scrape sees them."""
    while True:
        await asyncio.sleep(PUBLISH_S)
        runtime.metrics.publish()


def configure_threads(settings: Settings) -> None:
    """Torch intra-op threads until warm-up chooses: cores / workers - 1 (at least 1), so that
    N workers, each with an event loop thread besides its model's threads, do not
    over-subscribe the cores; one inter-op thread (ptserve runs batches on its own threads)."""
    torch.set_num_threads(settings.torch_threads or max(1, available_cores(settings.workers) - 1))
    with contextlib.suppress(RuntimeError):  # settable once per process, before any parallel work
        torch.set_num_interop_threads(1)


async def _serve_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServeError)
    request.scope[ERROR_CODE] = exc.code
    return exc.response()


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return await _serve_error(request, InvalidInput(f"{where}: {first['msg']}"))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    error: ServeError
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        error = MethodNotAllowed(message, [m.strip() for m in allowed.split(",") if m.strip()])
    elif exc.status_code == 404:
        error = NotFound(message)
    else:
        error = HttpStatusError(message, exc.status_code)
    return await _serve_error(request, error)


class HttpStatusError(ServeError):
    """Another HTTP error FastAPI or Starlette raised, with its own status."""

    code = "http_error"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status

    def render(self) -> tuple[int, RawHeaders, bytes]:
        _, headers, body = super().render()
        return self.status, headers, body


def _short_load_errors(send: Send) -> Send:
    """Starlette reports a failed lifespan with the formatted traceback as the message, which
    uvicorn logs; for a ModelLoadError the message becomes the error's own line."""

    async def send_short(message: Message) -> None:
        error = sys.exc_info()[1]
        if message["type"] == "lifespan.startup.failed" and isinstance(error, ModelLoadError):
            message = {**message, "message": f"ptserve: cannot serve the model: {error}"}
        await send(message)

    return send_short
