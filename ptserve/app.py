"""create_app(settings) -> FastAPI. The lifespan loads the model once, warms it up, then serves."""

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import torch
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ptserve.errors import InvalidInput, ModelLoadError, ServeError
from ptserve.middleware import ApiKeys, BodyLimit, RequestContext
from ptserve.observability.logs import setup_logging
from ptserve.observability.metrics import mark_worker_dead
from ptserve.observability.tracing import Tracing
from ptserve.protocols import docs, health, oip_v2, page, simple
from ptserve.protocols.common import HotPath
from ptserve.runtime import Runtime
from ptserve.security import KeyStore, open_paths
from ptserve.service import InferenceService
from ptserve.settings import Settings

log = logging.getLogger("ptserve")


def create_app(settings: Settings) -> FastAPI:
    """Build the app; nothing is loaded until the lifespan starts."""
    runtime = Runtime(settings, tracing=Tracing() if settings.tracing else None)
    keys = KeyStore(settings.api_key_file) if settings.api_key_file is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_logging(settings.log_level, settings.log_format)
        configure_threads(settings)
        service = runtime.service = InferenceService.start(settings, runtime.metrics)
        runtime.loads += 1
        # Everything alive now (torch, the model, the app) lives as long as the process: move it
        # out of the collector's sight. Without this, full collections over those objects took
        # ~100 ms each under load (measured: MLP p99 at c=64 116 ms -> 17 ms, +25% req/s).
        gc.collect()
        gc.freeze()
        service.start_batching()
        if keys is not None and threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, keys.refresh, True)
        runtime.ready = True
        try:
            yield
        finally:
            runtime.ready = False
            await service.stop()
            mark_worker_dead()
            gc.unfreeze()  # an app in a longer-lived process (tests) leaves nothing pinned

    app = FastAPI(
        title="ptserve",
        summary=f"Serving model {settings.model_name!r}",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # ptserve makes its own request spans (with queue and inference children), and its
        # own Prometheus metrics; FastAPI's built-in OpenTelemetry would duplicate them.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.runtime = runtime
    app.state.hot_routes = []
    app.add_exception_handler(ServeError, _serve_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(HotPath, routes=app.state.hot_routes)  # innermost: added first
    app.add_middleware(LoadErrorMessages)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if keys is not None:
        app.add_middleware(ApiKeys, keys=keys, open_prefixes=open_paths(settings))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["*"], expose_headers=["X-Request-ID", "Server-Timing"],
        )  # fmt: skip
    app.add_middleware(RequestContext, runtime=runtime)
    app.include_router(health.router)
    simple.install(app)
    oip_v2.install(app)
    docs.install(app, runtime)
    page.install(app)
    return app


def configure_threads(settings: Settings) -> None:
    """Torch intra-op threads: by default cores / workers - 1 (at least 1), so that N workers,
    each with an event loop thread besides its model's threads, do not over-subscribe the
    cores (measured: two intra-op threads on 2 cores cut a small model's throughput by ~20%
    and a conv net's by ~10%, see bench/)."""
    threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // settings.workers - 1)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # settable once per process, before any parallel work
        torch.set_num_interop_threads(1)


async def _serve_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServeError)
    return exc.response()


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return InvalidInput(f"{where}: {first['msg']}").response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = f"{request.method} {request.url.path}: {exc.detail}"
    body = {"error": message, "code": codes.get(exc.status_code, "http_error")}
    return Response(
        orjson.dumps(body),
        status_code=exc.status_code,
        headers=exc.headers,
        media_type="application/json",
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = {"error": "internal server error; the server log has details", "code": "internal_error"}
    return Response(orjson.dumps(body), status_code=500, media_type="application/json")


class LoadErrorMessages:
    """Turns a model that cannot load into one clear log line instead of a traceback.

    Starlette reports a failed lifespan with the formatted traceback as the message, which
    uvicorn logs; for a ModelLoadError the message is replaced by the error's own line.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_short(message: Message) -> None:
            error = sys.exc_info()[1]
            if message["type"] == "lifespan.startup.failed" and isinstance(error, ModelLoadError):
                message = {**message, "message": f"ptserve: cannot serve the model: {error}"}
            await send(message)

        await self.app(scope, receive, send_short)
