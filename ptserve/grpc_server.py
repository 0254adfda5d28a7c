"""The gRPC transport: with ``--grpc-port`` the app's process also serves the Open Inference
Protocol's ``inference.GRPCInferenceService`` and the standard health service, on the same
event loop as HTTP (``grpc.aio``), started and stopped by the app's lifespan.

Every call passes one layer here, as every HTTP request passes the gateway: a request id (the
``x-request-id`` metadata, else the request's ``id``, else a new one) in the log context, the
API key (``authorization: Bearer KEY`` or ``x-api-key`` metadata; health calls open unless
``protect_health``), Timing, metrics, an access-log line, a trace span, and the one mapping of
ptserve's errors to gRPC status codes, with the same one-line messages as HTTP. Every answer
carries ``x-request-id`` and ``server-timing`` trailing metadata; an error also carries
``ptserve-error-code`` (HTTP's ``code``) and the headers HTTP would send (``retry-after``).
"""

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any, NoReturn

try:
    import grpc
except ImportError:  # the grpc extra is not installed: say so in one line (the CLI prints it)
    raise ValueError("--grpc-port needs gRPC: pip install 'ptserve[grpc]'") from None
from google.protobuf.message import Message
from grpc import aio

from ptserve.errors import InternalError, Overloaded, ServeError, Unauthorized
from ptserve.observability import context
from ptserve.observability.context import Timing, sane_request_id
from ptserve.protocols.grpc_call import GrpcCall, Rpc
from ptserve.protocols.grpc_health import HEALTH_SERVICE, HealthServicer
from ptserve.protocols.grpc_v2 import SERVICE, InferenceServicer
from ptserve.security import KeyStore

if TYPE_CHECKING:
    from ptserve.runtime import Runtime

log = logging.getLogger("ptserve")
Context = aio.ServicerContext[Any, Any]
Metadata = Collection[tuple[str, str | bytes]]
METHOD = "GRPC"  # the access log's and trace spans' method of a gRPC call
# ServeError status -> gRPC status code; 503 is UNAVAILABLE except a full queue (Overloaded)
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(error: ServeError) -> grpc.StatusCode:
    """The gRPC status of a ptserve error: never UNKNOWN, and INTERNAL only for a server-side
    failure (a 5xx), never for a client's mistake."""
    if isinstance(error, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    found = STATUS_CODES.get(error.status_code)
    if found is not None:
        return found
    return (
        grpc.StatusCode.INTERNAL if error.status_code >= 500 else grpc.StatusCode.INVALID_ARGUMENT
    )


class Exchange:
    """One call's cross-cutting state, from its start to its answer."""

    __slots__ = (
        "call", "code", "counted", "http_status", "metadata", "request_id", "route", "span",
        "started", "status", "timing",
    )  # fmt: skip

    def __init__(self, route: str, call: GrpcCall, metadata: Metadata, request_id: str) -> None:
        self.route = route
        self.call = call
        self.metadata = metadata
        self.request_id = request_id
        self.counted = True  # in ptserve_requests_in_flight (a health watch is not)
        self.started = time.perf_counter()
        self.timing = Timing()
        self.span: Any = None
        self.status = grpc.StatusCode.OK
        self.code: str | None = None  # ptserve's error code, for the access log
        # what HTTP would have answered: the status of the access log and the trace span
        self.http_status = 200

    def outcome(self, status: grpc.StatusCode, http_status: int, code: str) -> None:
        """The call ends with an error."""
        self.status, self.http_status, self.code = status, http_status, code

    def trailers(self, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        """The trailing metadata of the answer."""
        elapsed = time.perf_counter() - self.started
        return (
            ("x-request-id", self.request_id),
            ("server-timing", self.timing.header(elapsed).decode()),
            *extra,
        )


class GrpcServer:
    """The gRPC server of one app; ``start()`` and ``stop()`` run in its lifespan."""

    def __init__(self, runtime: "Runtime", keys: KeyStore | None) -> None:
        settings = runtime.settings
        assert settings.grpc_port is not None
        if settings.grpc_port == settings.port and settings.port != 0:
            raise ValueError(f"--grpc-port {settings.grpc_port} is the HTTP port; choose another")
        self.runtime = runtime
        self.keys = keys
        self.host, self.port = settings.host, settings.grpc_port
        self.workers = settings.workers
        if self.workers == 1:  # N workers share the port (SO_REUSEPORT): each binds it itself
            _check_free(self.host, self.port)
        self.inference = InferenceServicer(runtime)
        self.health = HealthServicer(runtime)
        self._server: aio.Server | None = None
        self._durations: dict[str, Any] = {}  # the duration histogram's child per route

    async def start(self) -> None:
        """Bind and serve (on the running event loop)."""
        limit = self.runtime.settings.grpc_max_message_bytes
        server = aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # one worker must fail on a port in use, not share it with another process
                ("grpc.so_reuseport", int(self.workers > 1)),
            ]
        )
        for service, rpcs in (
            (SERVICE, self.inference.rpcs()),
            (HEALTH_SERVICE, self.health.rpcs()),
        ):
            handlers = {rpc.name: self._handler(service, rpc) for rpc in rpcs}
            server.add_registered_method_handlers(service, handlers)
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
        await server.start()
        self._server = server
        log.info("gRPC (Open Inference Protocol, health) on %s:%d", self.host, self.port)

    async def stop(self, grace: float) -> None:
        """End health watches, refuse new calls, and give calls in flight ``grace`` seconds."""
        self.health.close()
        if self._server is not None:
            await self._server.stop(grace)

    def _handler(self, service: str, rpc: Rpc) -> "grpc.RpcMethodHandler[Any, Any]":
        route = f"/{service}/{rpc.name}"
        protected = self.keys is not None and not (
            rpc.health and not self.runtime.settings.protect_health
        )
        serialize = rpc.response.SerializeToString
        if rpc.streaming is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(route, rpc.streaming, protected),
                request_deserializer=rpc.request.FromString,
                response_serializer=serialize,
            )
        assert rpc.unary is not None
        return grpc.unary_unary_rpc_method_handler(
            self._unary(route, rpc.unary, protected),
            request_deserializer=rpc.request.FromString,
            response_serializer=serialize,
        )

    def _unary(
        self,
        route: str,
        handler: Callable[[Any, GrpcCall], Awaitable[Message]],
        protected: bool,
    ) -> Callable[[Any, Context], Awaitable[Message]]:
        async def serve(request: Any, grpc_context: Context) -> Message:
            exchange = self._open(route, request, grpc_context)
            rid_token = context.request_id.set(exchange.request_id)
            timing_token = context.timing.set(exchange.timing)
            try:
                async with self._answering(route, exchange, grpc_context, protected):
                    response = await handler(request, exchange.call)
            finally:
                context.request_id.reset(rid_token)
                context.timing.reset(timing_token)
            return response

        return serve

    def _streaming(
        self,
        route: str,
        handler: Callable[[Any, GrpcCall], AsyncIterator[Message]],
        protected: bool,
    ) -> Callable[[Any, Context], AsyncIterator[Message]]:
        async def serve(request: Any, grpc_context: Context) -> AsyncIterator[Message]:
            exchange = self._open(route, request, grpc_context, counted=False)
            async with self._answering(route, exchange, grpc_context, protected):
                async for response in handler(request, exchange.call):
                    yield response

        return serve

    @contextlib.asynccontextmanager
    async def _answering(
        self, route: str, exchange: Exchange, grpc_context: Context, protected: bool
    ) -> AsyncIterator[None]:
        """One call's answer: the API key checked first; ptserve's errors (and any other, as
        INTERNAL) turned into its status; the exchange closed; trailing metadata on success."""
        try:
            if protected:
                self._authorize(exchange)
            yield
        except ServeError as error:
            await self._abort(exchange, grpc_context, error)
        except asyncio.CancelledError:
            self._cancelled(exchange, grpc_context)
            raise
        except Exception:
            log.exception("unhandled error on gRPC %s", route)
            await self._abort(exchange, grpc_context, InternalError())
        finally:
            self._close(exchange)
        grpc_context.set_trailing_metadata(exchange.trailers())

    def _open(
        self, route: str, request: Any, grpc_context: Context, counted: bool = True
    ) -> Exchange:
        metadata: Metadata = grpc_context.invocation_metadata() or ()
        call = GrpcCall(grpc_context)
        exchange = Exchange(route, call, metadata, _request_id(metadata, request))
        tracing = self.runtime.tracing
        if tracing is not None:
            headers = {k: v for k, v in metadata if isinstance(v, str)}
            exchange.span = tracing.start(headers, time.time_ns())
        exchange.counted = counted
        if counted:
            self.runtime.metrics.tally.in_flight += 1
        return exchange

    def _authorize(self, exchange: Exchange) -> None:
        assert self.keys is not None
        key = _presented_key(exchange.metadata)
        if not self.keys.accepts(key):
            what = "a valid" if key else "an"
            raise Unauthorized(
                f"this server needs {what} API key: send metadata 'authorization: Bearer KEY' "
                "or 'x-api-key: KEY'"
            )

    async def _abort(
        self, exchange: Exchange, grpc_context: Context, error: ServeError
    ) -> NoReturn:
        exchange.outcome(status_code(error), error.status_code, error.code)
        headers = [(k.lower(), v) for k, v in (error.headers or {}).items()]
        trailers = exchange.trailers(("ptserve-error-code", error.code), *headers)
        await grpc_context.abort(exchange.status, error.message, trailers)

    def _cancelled(self, exchange: Exchange, grpc_context: Context) -> None:
        """The call ended before its answer: its deadline passed, or its client left."""
        remaining = grpc_context.time_remaining()
        if remaining is not None and remaining <= 0:
            exchange.outcome(grpc.StatusCode.DEADLINE_EXCEEDED, 504, "deadline_exceeded")
        else:
            exchange.outcome(grpc.StatusCode.CANCELLED, 499, "client_closed_request")

    def _close(self, exchange: Exchange) -> None:
        elapsed = time.perf_counter() - exchange.started
        runtime = self.runtime
        tally = runtime.metrics.tally
        if exchange.counted:
            tally.in_flight -= 1
        tally.count((exchange.route, "grpc", exchange.status.name))
        histogram = self._durations.get(exchange.route)
        if histogram is None:
            histogram = runtime.metrics.request_seconds.labels(exchange.route, "grpc")
            self._durations[exchange.route] = histogram
        histogram.observe(elapsed)
        if not tally.in_flight:  # idle: publish now (under load, the timer does)
            runtime.metrics.publish()
        status = exchange.http_status
        if runtime.access_log is not None:
            runtime.access_log.record(
                METHOD, exchange.route, exchange.route, status, exchange.code, elapsed,
                exchange.call.model, exchange.request_id,
            )  # fmt: skip
        if exchange.span is not None and runtime.tracing is not None:
            runtime.tracing.finish(
                exchange.span, exchange.route, METHOD, status, exchange.request_id,
                exchange.timing,
            )  # fmt: skip


def _request_id(metadata: Metadata, request: Any) -> str:
    """The call's ``x-request-id`` metadata, else the request's ``id`` (ModelInfer), when sane;
    else a new one."""
    given: Any = next((v for k, v in metadata if k == "x-request-id"), None)
    if given is None:
        given = getattr(request, "id", None)
    if isinstance(given, str) and sane_request_id(given):
        return given
    return os.urandom(16).hex()


def _presented_key(metadata: Metadata) -> str | None:
    """The key in ``authorization: Bearer KEY`` or ``x-api-key: KEY`` metadata."""
    api_key = None
    for name, value in metadata:
        if not isinstance(value, str):
            continue
        if name == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
        elif name == "x-api-key":
            api_key = value
    return api_key


def _check_free(host: str, port: int) -> None:
    """Fail fast, before the model loads, when the gRPC port is taken."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ValueError(
                f"--grpc-port {port}: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
