"""The standard gRPC health service, ``grpc.health.v1.Health``: what ``grpc_health_probe``,
Kubernetes' gRPC probes and gRPC's client-side health checking call.

The status is readiness, read at each call (as ``GET /health/ready`` reads it): SERVING once
the models are loaded and warm, NOT_SERVING while loading, draining, or with a stopped batch
loop. It is the same for the server as a whole (service ``""``) and for the V2 service.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ptserve.errors import NotFound, NotReady
from ptserve.grpc.health_pb2 import (
    HealthCheckRequest,
    HealthCheckResponse,
    HealthListRequest,
    HealthListResponse,
)
from ptserve.protocols.grpc_call import GrpcCall, Rpc
from ptserve.protocols.grpc_v2 import SERVICE

if TYPE_CHECKING:
    from ptserve.runtime import Runtime

HEALTH_SERVICE = "grpc.health.v1.Health"
KNOWN = ("", SERVICE)  # the server as a whole, and the inference service
# Readiness has no change events to wait on (draining is set by a signal handler), so a
# watcher looks again this often; the server's stop ends every watch at once.
WATCH_INTERVAL_S = 1.0
Status = HealthCheckResponse.ServingStatus


class HealthServicer:
    """Check, List and Watch over the runtime's readiness."""

    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime
        self._closed = asyncio.Event()

    def rpcs(self) -> list[Rpc]:
        """The service's methods, for the transport; every one is a health call."""
        return [
            Rpc("Check", HealthCheckRequest, HealthCheckResponse, self.check, health=True),
            Rpc("List", HealthListRequest, HealthListResponse, self.list, health=True),
            Rpc(
                "Watch",
                HealthCheckRequest,
                HealthCheckResponse,
                streaming=self.watch,
                health=True,
            ),
        ]

    def status(self) -> Status:
        try:
            self.runtime.check_ready()
        except NotReady:
            return HealthCheckResponse.NOT_SERVING
        return HealthCheckResponse.SERVING

    async def check(self, request: HealthCheckRequest, call: GrpcCall) -> HealthCheckResponse:
        """The status of the server or of one of its services; NOT_FOUND for another name."""
        if request.service not in KNOWN:
            known = " and ".join(repr(name) for name in KNOWN)
            raise NotFound(f"unknown service {request.service!r}; this server knows {known}")
        return HealthCheckResponse(status=self.status())

    async def list(self, request: HealthListRequest, call: GrpcCall) -> HealthListResponse:
        """The status of every service the server knows."""
        status = HealthCheckResponse(status=self.status())
        return HealthListResponse(statuses={name: status for name in KNOWN})

    async def watch(
        self, request: HealthCheckRequest, call: GrpcCall
    ) -> AsyncIterator[HealthCheckResponse]:
        """The status now and at each change (SERVICE_UNKNOWN for a name the server does not
        know), until the client leaves or the server stops (NOT_SERVING, then the end)."""
        known = request.service in KNOWN
        last = None
        while not self._closed.is_set():
            status = self.status() if known else HealthCheckResponse.SERVICE_UNKNOWN
            if status != last:
                yield HealthCheckResponse(status=status)
                last = status
            try:
                await asyncio.wait_for(self._closed.wait(), WATCH_INTERVAL_S)
            except TimeoutError:
                continue
        if known and last != HealthCheckResponse.NOT_SERVING:
            yield HealthCheckResponse(status=HealthCheckResponse.NOT_SERVING)

    def close(self) -> None:
        """End every watch: the server is stopping."""
        self._closed.set()
