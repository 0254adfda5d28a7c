"""create_app(settings) -> FastAPI. The lifespan loads the model once, warms it up, then serves."""

import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import orjson
import torch
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ptserve.errors import InvalidInput, ModelLoadError, ModelNotFound, NotReady, ServeError
from ptserve.logs import setup_logging
from ptserve.protocols import docs, health, simple
from ptserve.service import InferenceService
from ptserve.settings import Settings

log = logging.getLogger("ptserve")
WORKER_SETTINGS_ENV = "_PTSERVE_WORKER_SETTINGS"


@dataclass
class Runtime:
    """The app's long-lived state; routes reach it through ``request.app.state.runtime``."""

    settings: Settings
    service: InferenceService | None = None
    ready: bool = False
    loads: int = 0

    def serving(self, name: str | None = None) -> InferenceService:
        """The service (named ``name``, when given); 503 while loading or draining, 404 for an
        unknown name."""
        if self.service is None or not self.ready:
            raise NotReady("the model is not ready; try again shortly")
        if name is not None and name != self.service.name:
            raise ModelNotFound(
                f"no model named {name!r}; this server serves {self.service.name!r}"
            )
        return self.service


def create_app(settings: Settings) -> FastAPI:
    """Build the app; nothing is loaded until the lifespan starts."""
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_logging(settings.log_level)
        configure_threads(settings)
        runtime.service = InferenceService.start(settings)
        runtime.loads += 1
        runtime.service.start_batching()
        runtime.ready = True
        try:
            yield
        finally:
            runtime.ready = False
            await runtime.service.stop()

    app = FastAPI(
        title="ptserve",
        summary=f"Serving model {settings.model_name!r}",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.add_exception_handler(ServeError, _serve_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(LoadErrorMessages)
    app.include_router(health.router)
    simple.install(app)
    docs.install(app, runtime)
    return app


def configure_threads(settings: Settings) -> None:
    """Torch intra-op threads: cores / workers by default, so N workers don't over-subscribe."""
    threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // settings.workers)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # settable once per process, before any parallel work
        torch.set_num_interop_threads(1)


def app_from_environment() -> FastAPI:
    """Factory for ``--workers N``: each worker process rebuilds the parent's settings."""
    return create_app(Settings.model_validate_json(os.environ[WORKER_SETTINGS_ENV]))


def error_response(error: ServeError) -> Response:
    return Response(
        orjson.dumps(error.body()),
        status_code=error.status_code,
        headers=error.headers,
        media_type="application/json",
    )


async def _serve_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServeError)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return error_response(InvalidInput(f"{where}: {first['msg']}"))


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
