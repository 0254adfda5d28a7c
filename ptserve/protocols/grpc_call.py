"""One gRPC call as a service's method sees it, and the declaration of a method.

The transport (``ptserve.grpc_server``) wraps each declared method in the cross-cutting layer
(request id, API key, metrics, access log, the mapping of errors to status codes) and hands the
method the request message and a ``GrpcCall``.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from grpc import aio


class GrpcCall:
    """The call being answered: its gRPC context, and the model that answered it (for the
    access log)."""

    __slots__ = ("context", "model")

    def __init__(self, context: "aio.ServicerContext[Any, Any]") -> None:
        self.context = context
        self.model: str | None = None

    def timeout(self, default_s: float) -> float:
        """Seconds this call may wait in the queue: what is left of its deadline, else the
        default."""
        remaining = self.context.time_remaining()
        return default_s if remaining is None else max(remaining, 0.0)


Unary = Callable[[Any, GrpcCall], Awaitable[Message]]
Streaming = Callable[[Any, GrpcCall], AsyncIterator[Message]]


@dataclass(frozen=True)
class Rpc:
    """A method of a service: its name, what it takes and gives, and its handler (``unary``,
    or ``streaming`` for a server-streaming method). ``health``: a health call, open without
    an API key unless the ``protect_health`` setting is on."""

    name: str
    request: type[Message]
    response: type[Message]
    unary: Unary | None = None
    streaming: Streaming | None = None
    health: bool = False
